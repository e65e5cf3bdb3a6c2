"""Evaluation datasets read from JSONL manifests.

A manifest line is one image: ``image`` (a path relative to the manifest, an absolute
path, a ``file://`` or ``http(s)://`` URL; resolved as ``flame download`` resolves them)
with ``captions`` (a list or one string) or a ``label``. Other keys
name other caption fields, e.g. ``zh``. Loaders return plain lists that the tasks turn
into embeddings; nothing here touches a model.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

from flame.data.manifest import resolve_location
from flame.errors import FlameError
from flame.jsonl import iter_jsonl

DEFAULT_IMAGE_FIELDS = ("image", "url")
DEFAULT_CAPTION_FIELDS = ("captions", "caption")
DEFAULT_LABEL_FIELD = "label"

# Which manifest keys hold a language's captions, first present wins. Flickr8k-866 keeps
# English in ``en`` (the sample set in ``captions``) and Multi30k German as a list of five
# (task 2) for some images and a single translation (task 1) for more.
LANGUAGE_FIELDS: dict[str, tuple[str, ...]] = {
    "en": ("en", "captions", "caption"),
    "zh": ("zh",),
    "ar": ("ar",),
    "de": ("m30k_task2_de", "m30k_task1_de", "de"),
    "fr": ("m30k_task1_fr", "fr"),
    "cs": ("m30k_task1_cs", "cs"),
}


def shared_data_dir() -> Path:
    """``$FLAME_SHARED_DATA``, else ``<repo>/../shared/data``."""
    env = os.environ.get("FLAME_SHARED_DATA")
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[1].parent / "shared" / "data"


@dataclass
class Row:
    line: int
    image: str
    record: dict


@dataclass
class RetrievalSet:
    """Images and texts; ``text_to_image[j]`` is the image of text j."""

    name: str
    images: list[str]
    texts: list[str]
    text_to_image: list[int]
    skipped_rows: int = 0

    def subset(self, keep: list[int]) -> "RetrievalSet":
        """Only the images at ``keep`` (and their texts), e.g. after dropping unreadable images."""
        new_index = {old: new for new, old in enumerate(keep)}
        texts, t2i = [], []
        for text, img in zip(self.texts, self.text_to_image):
            if img in new_index:
                texts.append(text)
                t2i.append(new_index[img])
        return RetrievalSet(self.name, [self.images[i] for i in keep], texts, t2i, self.skipped_rows)


@dataclass
class ClassificationSet:
    name: str
    images: list[str]
    labels: list[int]
    classnames: list[str]

    def subset(self, keep: list[int]) -> "ClassificationSet":
        return ClassificationSet(self.name, [self.images[i] for i in keep], [self.labels[i] for i in keep], self.classnames)


@dataclass
class MultilingualSet:
    """One image list; per language, texts pointing into it (a language may cover fewer images)."""

    name: str
    images: list[str]
    languages: dict[str, tuple[list[str], list[int]]] = field(default_factory=dict)
    skipped_rows: int = 0

    def for_language(self, lang: str) -> tuple[list[int], RetrievalSet]:
        """The images this language covers (indices into ``images``) and its retrieval set."""
        texts, t2i = self.languages[lang]
        used = sorted(set(t2i))
        remap = {old: new for new, old in enumerate(used)}
        return used, RetrievalSet(f"{self.name}/{lang}", [self.images[i] for i in used], list(texts), [remap[i] for i in t2i])

    def subset(self, keep: list[int]) -> "MultilingualSet":
        new_index = {old: new for new, old in enumerate(keep)}
        languages = {}
        for lang, (texts, t2i) in self.languages.items():
            pairs = [(t, new_index[i]) for t, i in zip(texts, t2i) if i in new_index]
            if pairs:
                languages[lang] = ([t for t, _ in pairs], [i for _, i in pairs])
        return MultilingualSet(self.name, [self.images[i] for i in keep], languages, self.skipped_rows)


@dataclass
class TextPairSet:
    """Two texts describing the same image, row by row (a text-to-text retrieval)."""

    name: str
    queries: list[str]
    targets: list[str]
    skipped_rows: int = 0


def read_manifest(
    path: str | Path,
    image_fields: Iterable[str] = DEFAULT_IMAGE_FIELDS,
    where: dict[str, str] | None = None,
) -> list[Row]:
    """The rows of a JSONL manifest (optionally only those matching ``where``), images resolved."""
    path = Path(path)
    if not path.is_file():
        raise FlameError(f"evaluation manifest not found: {path}")
    if path.suffix.lower() not in (".jsonl", ".json"):
        raise FlameError(f"{path}: evaluation manifests are JSONL (one JSON object per line)")
    image_fields = tuple(image_fields)
    rows: list[Row] = []
    for n, record in iter_jsonl(path):
        if where and any(record.get(k) != v for k, v in where.items()):
            continue
        ref = next((record[f] for f in image_fields if record.get(f)), None)
        if not isinstance(ref, str):
            raise FlameError(f"{path}:{n}: no image path; expected a string in one of the keys {list(image_fields)}")
        try:
            location = resolve_location(ref, path.parent)
        except ValueError as exc:
            raise FlameError(f"{path}:{n}: {exc}") from None
        rows.append(Row(n, location, record))
    if not rows:
        raise FlameError(f"{path}: no rows" + (f" matching {where}" if where else ""))
    return rows


def texts_of(record: dict, fields: Iterable[str], where: str) -> list[str]:
    """The captions of the first field present: a list of strings or one string; blanks dropped."""
    for name in fields:
        value = record.get(name)
        if value is None:
            continue
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise FlameError(f"{where}: key {name!r} must be a string or a list of strings, got {value!r:.80}")
        return [v.strip() for v in value if v.strip()]
    return []


def load_retrieval(
    path: str | Path,
    name: str | None = None,
    caption_fields: Iterable[str] = DEFAULT_CAPTION_FIELDS,
    image_fields: Iterable[str] = DEFAULT_IMAGE_FIELDS,
    where: dict[str, str] | None = None,
    join_captions: bool = False,
) -> RetrievalSet:
    """Images with their captions; ``join_captions`` makes one long description of them all.

    Rows without any caption are skipped and counted in ``skipped_rows``.
    """
    caption_fields = tuple(caption_fields)
    result = RetrievalSet(name or Path(path).stem, [], [], [])
    for row in read_manifest(path, image_fields, where):
        texts = texts_of(row.record, caption_fields, f"{path}:{row.line}")
        if not texts:
            result.skipped_rows += 1
            continue
        if join_captions:
            texts = [" ".join(t.rstrip(" .") + "." for t in texts)]
        result.texts.extend(texts)
        result.text_to_image.extend([len(result.images)] * len(texts))
        result.images.append(row.image)
    if not result.images:
        raise FlameError(f"{path}: no row has a caption in any of the keys {list(caption_fields)}")
    return result


def load_classification(
    path: str | Path,
    name: str | None = None,
    label_field: str = DEFAULT_LABEL_FIELD,
    image_fields: Iterable[str] = DEFAULT_IMAGE_FIELDS,
    where: dict[str, str] | None = None,
) -> ClassificationSet:
    """Images with one class label each; class names are the sorted distinct labels."""
    rows = read_manifest(path, image_fields, where)
    labels: list[str] = []
    for row in rows:
        value = row.record.get(label_field)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            value = str(value)
        if not isinstance(value, str) or not value.strip():
            raise FlameError(f"{path}:{row.line}: key {label_field!r} must be a non-empty class name, got {value!r}")
        labels.append(value.strip())
    classnames = sorted(set(labels))
    index = {c: i for i, c in enumerate(classnames)}
    return ClassificationSet(name or Path(path).stem, [r.image for r in rows], [index[c] for c in labels], classnames)


def load_multilingual(
    path: str | Path,
    name: str | None = None,
    languages: Iterable[str] | None = None,
    image_fields: Iterable[str] = DEFAULT_IMAGE_FIELDS,
    where: dict[str, str] | None = None,
    language_fields: dict[str, tuple[str, ...]] | None = None,
) -> MultilingualSet:
    """Per language, the captions from that language's keys (see ``LANGUAGE_FIELDS``).

    Without ``languages``, every known language present in the manifest is used. A
    language no row has is an error when asked for explicitly. Rows without a caption in
    any of the languages are skipped and counted in ``skipped_rows``.
    """
    fields_of = dict(LANGUAGE_FIELDS)
    fields_of.update(language_fields or {})
    rows = read_manifest(path, image_fields, where)
    wanted = list(languages) if languages else list(fields_of)
    result = MultilingualSet(name or Path(path).stem, [r.image for r in rows])
    for lang in wanted:
        keys = fields_of.get(lang, (lang,))
        texts, t2i = [], []
        for i, row in enumerate(rows):
            found = texts_of(row.record, keys, f"{path}:{row.line}")
            texts.extend(found)
            t2i.extend([i] * len(found))
        if texts:
            result.languages[lang] = (texts, t2i)
        elif languages:
            raise FlameError(f"{path}: language {lang!r}: no row has captions in the keys {list(keys)}")
    if not result.languages:
        raise FlameError(f"{path}: no captions for any of the languages {wanted}")
    covered = sorted({i for _, t2i in result.languages.values() for i in t2i})
    if len(covered) < len(rows):
        result = result.subset(covered)
        result.skipped_rows = len(rows) - len(covered)
    return result


def load_text_pairs(path: str | Path, query_field: str, target_field: str, name: str | None = None, limit: int | None = None) -> TextPairSet:
    """Rows holding both fields, in file order, at most ``limit``; rows read without both
    are counted in ``skipped_rows``."""
    path = Path(path)
    if not path.is_file():
        raise FlameError(f"text-pair file not found: {path}")
    queries, targets, skipped = [], [], 0
    for _, record in iter_jsonl(path):
        q, t = record.get(query_field), record.get(target_field)
        if isinstance(q, str) and isinstance(t, str) and q.strip() and t.strip():
            queries.append(q.strip())
            targets.append(t.strip())
        else:
            skipped += 1
        if limit and len(queries) >= limit:
            break
    if not queries:
        raise FlameError(f"{path}: no row has both {query_field!r} and {target_field!r}")
    return TextPairSet(name or path.stem, queries, targets, skipped)
