"""Reading img2dataset-style webdataset shards: ``NNNNN.tar`` holding ``<key>.jpg``,
``<key>.txt`` and ``<key>.json`` members, with ``NNNNN.parquet`` and
``NNNNN_stats.json`` beside each tar."""

from __future__ import annotations

import json
import logging
import tarfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from flame.errors import FlameError

log = logging.getLogger(__name__)

IMAGE_EXTS = ("jpg", "jpeg", "png", "webp")
# Written by ``flame download`` into its output folder (not *.json: img2dataset reads those as stats).
DOWNLOAD_STATE_FILE = ".download_state"


@dataclass
class ShardSample:
    key: str
    shard: str
    image: bytes | None = None
    text: str | None = None
    meta: dict = field(default_factory=dict)

    def captions(self, field_name: str = "caption") -> list[str]:
        """All captions of ``field_name`` for this sample.

        ``caption`` looks at the json's ``captions`` list first, then ``caption``, then
        the ``.txt`` member; other fields (``short_caption``, ``long_caption``, ``zh``)
        come from the json and may be a string or a list.
        """
        if field_name == "caption":
            value = self.meta.get("captions") or self.meta.get("caption") or self.text
        else:
            value = self.meta.get(field_name)
        if value is None:
            return []
        if isinstance(value, str):
            try:
                decoded = json.loads(value) if value.startswith("[") else value
            except json.JSONDecodeError:
                decoded = value
            value = decoded
        if isinstance(value, str):
            return [value]
        return [str(v) for v in value if v is not None]


def shard_name(path: str | Path) -> str:
    """``.../00012.tar`` -> ``00012``."""
    return Path(path).name.split(".")[0]


def list_shards(directory: str | Path) -> list[Path]:
    """The ``.tar`` shards of ``directory``, sorted; a missing folder or none found is an error.

    In a folder made by ``flame download`` (it holds ``DOWNLOAD_STATE_FILE``), a tar whose
    ``NNNNN_stats.json`` is missing is still being written, or was cut off by a kill, and
    is left out.
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise FlameError(f"shard directory not found: {directory}")
    shards = sorted(p for p in directory.glob("*.tar") if not p.name.startswith("."))
    if (directory / DOWNLOAD_STATE_FILE).exists():
        complete = [p for p in shards if (directory / f"{shard_name(p)}_stats.json").exists()]
        if len(complete) < len(shards):
            log.warning("%s: %d incomplete shard(s) left out; rerun flame download to finish them",
                        directory, len(shards) - len(complete))
        shards = complete
    if not shards:
        raise FlameError(f"no .tar shards in {directory}")
    return shards


def _decode_text(data: bytes, where: str) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise FlameError(f"{where}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None


def iter_shard(path: str | Path, with_images: bool = True) -> Iterator[ShardSample]:
    """Yield the samples of one tar in order. Members of a sample share the key before the first dot."""
    path = Path(path)
    name = shard_name(path)
    current: ShardSample | None = None
    try:
        tar = tarfile.open(path, "r")
    except (tarfile.TarError, OSError) as exc:
        raise FlameError(f"{path}: not a readable tar shard ({exc})") from None
    with tar:
        for member in tar:
            if not member.isfile():
                continue
            base = Path(member.name).name
            key, _, ext = base.partition(".")
            ext = ext.lower()
            if current is None or current.key != key:
                if current is not None:
                    yield current
                current = ShardSample(key=key, shard=name)
            if ext in IMAGE_EXTS:
                if with_images:
                    current.image = tar.extractfile(member).read()
            elif ext == "txt":
                current.text = _decode_text(tar.extractfile(member).read(), f"{path}:{member.name}")
            elif ext == "json":
                raw = _decode_text(tar.extractfile(member).read(), f"{path}:{member.name}")
                try:
                    current.meta = json.loads(raw)
                except json.JSONDecodeError as exc:
                    raise FlameError(f"{path}:{member.name}: invalid JSON ({exc})") from None
        if current is not None:
            yield current
