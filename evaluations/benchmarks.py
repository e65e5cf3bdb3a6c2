"""The benchmarks by name: where each one's data lives, how it is loaded, which task scores it.

``sample-dev-*`` use the sample set bundled in git (``data/sample/dev.jsonl``), so they
always run. The others read ``$FLAME_SHARED_DATA`` (default ``<repo>/../shared/data``)
and are skipped by ``--benchmark all`` when it is absent.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from evaluations import datasets as ds
from flame.config import EvalConfig, repo_root
from flame.errors import FlameError


@dataclass(frozen=True)
class Benchmark:
    name: str
    task: str
    description: str
    path: Callable[[], Path]
    load: Callable[[Path, EvalConfig], Any]

    def available(self) -> bool:
        return self.path().exists()


def _sample_dev() -> Path:
    return repo_root() / "data" / "sample" / "dev.jsonl"


def _flickr8k() -> Path:
    return ds.shared_data_dir() / "flickr8k-866" / "manifest.jsonl"


def _imagenet() -> Path:
    return ds.shared_data_dir() / "imagenet-200x5" / "manifest.jsonl"


def _iiw() -> Path:
    return ds.shared_data_dir() / "iiw-long-descriptions"


SAMPLE = {"image_fields": ("url",), "caption_fields": ("captions", "caption")}
FLICKR_DEV = {"image_fields": ("image",), "where": {"flickr8k_split": "dev"}}
# (file, query field, target field): files that describe one image twice.
IIW_PAIRS = (("DOCCI_Test.jsonl", "DOCCI", "IIW"), ("IIW-400.jsonl", "IIW", "IIW-P5B"))


def _load_iiw(path: Path, cfg: EvalConfig) -> list[ds.TextPairSet]:
    return [
        ds.load_text_pairs(path / file, q, t, name=f"{Path(file).stem.lower()}_{q.lower()}_vs_{t.lower()}", limit=cfg.text_pairs_per_file)
        for file, q, t in IIW_PAIRS
    ]


_ENTRIES = [
    Benchmark("sample-dev-retrieval", "retrieval", "bundled sample dev split (113 Flickr8k images, 5 English captions each)",
              _sample_dev, lambda p, c: ds.load_retrieval(p, "sample-dev-retrieval", **SAMPLE)),
    Benchmark("sample-dev-long", "long_retrieval", "bundled sample dev split, the 5 captions of an image joined into one description",
              _sample_dev, lambda p, c: ds.load_retrieval(p, "sample-dev-long", join_captions=True, **SAMPLE)),
    Benchmark("sample-dev-multilingual", "multilingual_retrieval", "bundled sample dev split: en, zh, ar and Multi30k de/fr/cs",
              _sample_dev, lambda p, c: ds.load_multilingual(p, "sample-dev-multilingual", image_fields=("url",))),
    Benchmark("flickr8k-dev-retrieval", "retrieval", "flickr8k-866, official dev split only, 5 English captions per image",
              _flickr8k, lambda p, c: ds.load_retrieval(p, "flickr8k-dev-retrieval", caption_fields=("en",), **FLICKR_DEV)),
    Benchmark("flickr8k-dev-long", "long_retrieval", "flickr8k-866 dev split, the 5 captions of an image joined into one description",
              _flickr8k, lambda p, c: ds.load_retrieval(p, "flickr8k-dev-long", caption_fields=("en",), join_captions=True, **FLICKR_DEV)),
    Benchmark("flickr8k-dev-multilingual", "multilingual_retrieval", "flickr8k-866 dev split: en, zh, ar and Multi30k de/fr/cs where present",
              _flickr8k, lambda p, c: ds.load_multilingual(p, "flickr8k-dev-multilingual", **FLICKR_DEV)),
    Benchmark("imagenet-200x5-zeroshot", "zeroshot_classification", "200 ILSVRC detection classes x 5 photos, class prompts from templates",
              _imagenet, lambda p, c: ds.load_classification(p, "imagenet-200x5-zeroshot")),
    Benchmark("imagenet-200x5-linear-probe", "linear_probe", "200 classes x 5 photos: logistic regression on the first 3 of each class, tested on the rest",
              _imagenet, lambda p, c: ds.load_classification(p, "imagenet-200x5-linear-probe")),
    Benchmark("iiw-long-text", "text_pair_retrieval", "text side only: DOCCI vs IIW and IIW vs IIW-P5B descriptions of the same image find each other (raw vs long facets)",
              _iiw, _load_iiw),
]

BENCHMARKS: dict[str, Benchmark] = {b.name: b for b in _ENTRIES}


def get_benchmark(name: str) -> Benchmark:
    try:
        return BENCHMARKS[name]
    except KeyError:
        raise FlameError(f"unknown benchmark {name!r}; available: {', '.join(BENCHMARKS)} (or 'all')") from None
