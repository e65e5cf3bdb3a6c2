"""The frozen-LLM caption encoder: PromptEOL facets, their shared prefix computed once."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from flame.config import ConfigError, FacetSet, TextConfig, load_config, profile_names
from flame.errors import FlameError
from flame.text.facet_attention import PromptTokens, facet_batch, length_batches, separate_forward, shared_prefix_forward
from flame.text.llm import LoadedLLM, load_llm, truncated_decoder
from flame.text.prompts import NORMALISATION_VERSION, normalise_caption, prompt_texts, split_on_bos, split_prefix
from flame.text.store import fingerprint_of

# v2: the separator token between prefix and facets.
ENCODING_METHOD = "promptEOL-facet-decoupled-v2"


@dataclass
class EncodeStats:
    captions: int = 0
    tokens: int = 0
    truncated: int = 0


class TextEncoder:
    """Frozen causal LM + facet sets. ``encode`` returns float32 ``[N, K, D]``, not normalised."""

    def __init__(self, config: TextConfig, loaded: LoadedLLM):
        if config.mode != "flame":
            raise ConfigError(f"text.mode={config.mode!r}: the LLM encoder needs text.mode 'flame'")
        self.config = config
        self.loaded = loaded
        self.model = loaded.model
        self.tokenizer = loaded.tokenizer
        self.dtype = loaded.dtype
        self.device = loaded.device
        n_layers = int(self.model.config.num_hidden_layers)
        layer = config.layer if config.layer >= 0 else n_layers + 1 + config.layer
        if not 0 <= layer <= n_layers:
            raise ConfigError(
                f"text.layer={config.layer}: the model has hidden_states indices 0..{n_layers} (or -1..-{n_layers + 1})"
            )
        self.layer = layer
        self.decoder = truncated_decoder(self.model, layer)
        self.hidden_size = int(self.model.config.hidden_size)
        self.pad_id = self._pad_id()
        self._bos = self._leading_special_ids()
        self.separator_token, self.separator_ids = self._separator()
        self._cache: dict[str, tuple[list[int], list[int], list[list[int]]]] = {}
        # The compute dtype is left out on purpose: a store embedded in bf16 on a GPU stays
        # usable where fp32 is chosen for new text. The store records it instead.
        self.fingerprint_inputs = {
            "method": ENCODING_METHOD,
            "llm": loaded.source.identity,
            "layer": self.layer,
            "max_tokens": config.max_tokens,
            "separator": {"token": self.separator_token, "ids": self.separator_ids},
            "normalisation": NORMALISATION_VERSION,
            "facet_sets": {k: v.model_dump() for k, v in sorted(config.facet_sets.items())},
        }
        self.fingerprint = fingerprint_of(self.fingerprint_inputs)

    @property
    def dtype_name(self) -> str:
        return str(self.dtype).replace("torch.", "")

    @classmethod
    def from_config(cls, config: TextConfig, device: str | torch.device | None = None) -> "TextEncoder":
        loaded = load_llm(
            config.llm,
            gguf_file=config.gguf_file,
            revision=config.revision,
            dtype=config.dtype,
            trust_remote_code=config.trust_remote_code,
            cache_dir=config.cache_dir,
            device=device,
        )
        return cls(config, loaded)

    # ---- tokens --------------------------------------------------------------------
    def _pad_id(self) -> int:
        for candidate in (self.tokenizer.pad_token_id, self.tokenizer.eos_token_id, 0):
            if candidate is not None:
                return int(candidate)
        return 0

    def _leading_special_ids(self) -> list[int]:
        """What the tokenizer puts before text (a BOS for Llama/Mistral, nothing for SmolLM2)."""
        with_special = self.tokenizer("a", add_special_tokens=True)["input_ids"]
        plain = self.tokenizer("a", add_special_tokens=False)["input_ids"]
        for start in range(len(with_special)):
            if with_special[start:start + len(plain)] == plain:
                return list(with_special[:start])
        return []

    def _separator(self) -> tuple[str, list[int]]:
        """What ``{bos}`` becomes: ``(token, [id])``, or ``("", [])`` when configured off."""
        wanted = self.config.bos_token
        if wanted == "":
            return "", []
        token = self.tokenizer.bos_token if wanted == "auto" else wanted
        if not token:
            raise ConfigError(
                f"text.bos_token=auto: the tokenizer of {self.config.llm!r} has no BOS token; "
                "set text.bos_token to one of its special tokens, or \"\" for no separator"
            )
        token_id = self.tokenizer.get_vocab().get(token)
        if token_id is None:
            raise ConfigError(f"text.bos_token={token!r} is not a token of the {self.config.llm!r} vocabulary")
        return token, [int(token_id)]

    def _ids(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"]) if text else []

    def _template_ids(self, text: str) -> list[int]:
        """Template text with each ``{bos}`` as the separator token's id."""
        pieces = split_on_bos(text)
        ids = self._ids(pieces[0])
        for piece in pieces[1:]:
            ids += self.separator_ids + self._ids(piece)
        return ids

    def facet_set(self, name: str) -> FacetSet:
        try:
            return self.config.facet_sets[name]
        except KeyError:
            raise FlameError(f"unknown facet set {name!r}; text.facet_sets has {sorted(self.config.facet_sets)}") from None

    def _facet_set_ids(self, name: str) -> tuple[list[int], list[int], list[list[int]]]:
        """``(head, tail, facets)`` token ids of a facet set, tokenised once."""
        if name not in self._cache:
            fs = self.facet_set(name)
            head, tail = split_prefix(fs)
            facets = [self._ids(f) for f in fs.facets]
            if any(not f for f in facets):
                raise ConfigError(f"text.facet_sets.{name}.facets: a facet suffix tokenises to nothing")
            self._cache[name] = (self._bos + self._ids(head), self._template_ids(tail), facets)
        return self._cache[name]

    def prompt_texts(self, caption: str, facet_set: str) -> list[str]:
        """The K prompt strings of a caption, ``{bos}`` shown as the separator token."""
        return prompt_texts(caption, self.facet_set(facet_set), self.separator_token)

    def prompt_tokens(self, caption: str, facet_set: str) -> PromptTokens:
        """Token pieces for one caption, its caption part cut to fit ``text.max_tokens``
        (the limit applies to each prompt ``prefix + facet_i``)."""
        head, tail, facets = self._facet_set_ids(facet_set)
        text = normalise_caption(caption)
        if not text:
            raise ValueError(f"empty caption {caption!r} (nothing left after normalisation)")
        budget = self.config.max_tokens - len(head) - len(tail) - max(len(f) for f in facets)
        if budget < 1:
            raise ConfigError(
                f"text.max_tokens={self.config.max_tokens} leaves no room for a caption in facet set {facet_set!r} "
                f"(its template alone takes {self.config.max_tokens - budget} tokens)"
            )
        caption_ids = self._ids(text)
        truncated = len(caption_ids) > budget
        return PromptTokens(head + caption_ids[:budget] + tail, [list(f) for f in facets], truncated)

    def facet_token_ids(self, caption: str, facet_set: str) -> list[list[int]]:
        """The K sequences ``prefix + facet_i`` whose last-token states ``encode`` reproduces."""
        return self.prompt_tokens(caption, facet_set).separate_sequences()

    def num_facets(self, facet_set: str) -> int:
        return len(self.facet_set(facet_set).facets)

    # ---- encoding ------------------------------------------------------------------
    def encode(self, captions: list[str], facet_set: str, batch_size: int | None = None) -> torch.Tensor:
        """float32 ``[N, K, D]``: the facet embeddings of each caption, one pass per batch."""
        return self.encode_with_stats(captions, facet_set, batch_size)[0]

    def encode_with_stats(
        self, captions: list[str], facet_set: str, batch_size: int | None = None
    ) -> tuple[torch.Tensor, EncodeStats]:
        if isinstance(captions, str):
            raise TypeError("encode() takes a list of captions, not one string")
        items = [self.prompt_tokens(c, facet_set) for c in captions]
        k = self.num_facets(facet_set)
        out = torch.empty((len(items), k, self.hidden_size), dtype=torch.float32)
        stats = EncodeStats(captions=len(items), truncated=sum(i.truncated for i in items))
        # Longest first (memory peaks at once), rows of similar length together (little padding).
        size = batch_size or self.config.batch_size
        for chunk in length_batches([i.token_count for i in items], size):
            out[chunk] = self._forward([items[i] for i in chunk]).float().cpu()
            stats.tokens += sum(items[i].token_count for i in chunk)
        return out, stats

    def _forward(self, items: list[PromptTokens]) -> torch.Tensor:
        """``[B, K, D]`` for one batch; one prompt needs no shared prefix, just one pass."""
        if len(items[0].facets) == 1:
            return separate_forward(self.decoder, [item.separate_sequences()[0] for item in items], self.pad_id)[:, None]
        return shared_prefix_forward(self.decoder, facet_batch(items, self.pad_id))

    def encode_separate(self, captions: list[str], facet_set: str, batch_size: int | None = None) -> torch.Tensor:
        """Reference path: each of the K prompts in its own ordinary causal pass. Same output as ``encode``."""
        seqs = [s for c in captions for s in self.facet_token_ids(c, facet_set)]
        k = self.num_facets(facet_set)
        flat = torch.empty((len(seqs), self.hidden_size), dtype=torch.float32)
        size = batch_size or self.config.batch_size
        for chunk in length_batches([len(s) for s in seqs], size):
            flat[chunk] = separate_forward(self.decoder, [seqs[i] for i in chunk], self.pad_id).float().cpu()
        return flat.view(len(captions), k, self.hidden_size)


def load_encoder(profile_or_path: str = "tiny", config_path: str | None = None) -> TextEncoder:
    """``profile_or_path``: a profile of params.yaml, a params.yaml-style file (its default
    profile), or an LLM (folder, .gguf file, hub id) used with the default profile's prompts."""
    candidate = Path(profile_or_path).expanduser()
    if candidate.suffix in (".yaml", ".yml") and candidate.is_file():
        config = load_config(candidate)
    elif profile_or_path in profile_names(config_path):
        config = load_config(config_path, profile_or_path)
    else:
        # a model folder, .gguf file or hub id, with the default profile's prompts
        config = load_config(config_path, overrides={"text": {"llm": profile_or_path}})
    return TextEncoder.from_config(config.text)
