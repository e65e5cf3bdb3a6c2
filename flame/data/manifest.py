"""Reading a download manifest (CSV, TSV, JSONL or parquet) into normalised rows.

Each row gets ``url`` (absolute: ``http(s)://``, ``file://``), ``caption`` (the first
caption) and ``captions`` (all captions, a list); every other column is carried as is.
Relative paths are resolved against the manifest's folder.
"""

from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote, urlparse

from flame.atomic import write_text
from flame.errors import FlameError
from flame.jsonl import iter_jsonl

REMOTE_SCHEMES = ("http", "https")
# Columns img2dataset writes itself; a manifest column of that name is kept as ``manifest_<name>``.
RESERVED_COLUMNS = frozenset(
    {"key", "url", "caption", "status", "error_message", "width", "height", "original_width",
     "original_height", "exif", "md5", "sha256", "sha512"}
)
URL_FALLBACK_COLUMN = "image"  # evaluation manifests name their image column this way


@dataclass
class Manifest:
    path: Path
    rows: list[dict]
    columns: list[str]
    skipped: dict[str, list[int]] = field(default_factory=dict)  # reason -> row numbers (1-based)

    @property
    def skipped_count(self) -> int:
        return sum(len(v) for v in self.skipped.values())


def _is_missing(value) -> bool:
    if value is None:
        return True
    if isinstance(value, float) and math.isnan(value):
        return True
    return isinstance(value, str) and not value.strip()


def _read_csv(path: Path, delimiter: str) -> list[dict]:
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise FlameError(f"{path}: not UTF-8 ({exc.reason} at byte {exc.start})") from None
    reader = csv.DictReader(text.splitlines(), delimiter=delimiter)
    if not reader.fieldnames:
        raise FlameError(f"{path}: empty file, expected a header row")
    rows = []
    for row in reader:
        clean = {}
        for k, v in row.items():
            if k is None:
                raise FlameError(f"{path}: line {reader.line_num} has more fields than the header")
            # A cell holding a JSON list (e.g. several captions) is decoded.
            if isinstance(v, str) and v.startswith("[") and v.endswith("]"):
                try:
                    v = json.loads(v)
                except json.JSONDecodeError:
                    pass
            clean[k] = None if v == "" else v
        rows.append(clean)
    return rows


def _read_parquet(path: Path) -> list[dict]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        return pq.read_table(path).to_pylist()
    except (pa.ArrowException, OSError) as exc:
        raise FlameError(f"{path}: not a readable parquet file ({exc})") from None


def read_rows(path: str | Path) -> list[dict]:
    """The raw rows of a manifest file, chosen by extension."""
    path = Path(path)
    if not path.is_file():
        raise FlameError(f"manifest not found: {path}")
    suffix = path.suffix.lower()
    try:
        if suffix in (".jsonl", ".ndjson", ".json"):
            return [record for _, record in iter_jsonl(path)]
        if suffix == ".csv":
            return _read_csv(path, ",")
        if suffix == ".tsv":
            return _read_csv(path, "\t")
        if suffix == ".parquet":
            return _read_parquet(path)
    except PermissionError as exc:
        raise FlameError(f"{path}: cannot read manifest ({exc.strerror})") from None
    raise FlameError(f"{path}: unknown manifest format {suffix!r}; use .csv, .tsv, .jsonl or .parquet")


def resolve_location(value: str, base_dir: Path) -> str:
    """Where an image is: an ``http(s)://`` URL as it is, anything else an absolute local path
    (``file://`` URLs unwrapped, relative paths taken from ``base_dir``)."""
    value = value.strip()
    parsed = urlparse(value)
    if parsed.scheme in REMOTE_SCHEMES:
        return value
    if parsed.scheme == "file":
        return unquote(parsed.path)
    if parsed.scheme and len(parsed.scheme) > 1:  # one letter would be a Windows drive
        raise ValueError(f"unsupported URL scheme {parsed.scheme!r} (use http, https, file or a path)")
    path = Path(value).expanduser()
    return str(path if path.is_absolute() else base_dir / path)


def resolve_url(value: str, base_dir: Path) -> str:
    """A URL img2dataset fetches: ``http(s)://`` and ``file://`` stay; a plain path becomes the
    ``file://`` URI of its ``resolve_location``."""
    value = value.strip()
    if urlparse(value).scheme in (*REMOTE_SCHEMES, "file"):
        return value
    return Path(resolve_location(value, base_dir)).resolve().as_uri()


def _caption_list(value) -> list[str]:
    if _is_missing(value):
        return []
    if isinstance(value, str):
        return [value]
    if isinstance(value, (list, tuple)):
        return [str(v) for v in value if not _is_missing(v)]
    return [str(value)]


def load_manifest(path: str | Path, url_col: str = "url", caption_col: str = "caption") -> Manifest:
    """Read and normalise a manifest. Missing columns raise; rows without a URL or any
    caption are skipped and counted."""
    path = Path(path)
    raw_rows = read_rows(path)
    if not raw_rows:
        raise FlameError(f"{path}: manifest has no rows")
    columns: list[str] = []
    for row in raw_rows:
        for k in row:
            if k not in columns:
                columns.append(k)
    if url_col not in columns:
        if url_col == "url" and URL_FALLBACK_COLUMN in columns:
            url_col = URL_FALLBACK_COLUMN
        else:
            raise FlameError(f"{path}: no URL column {url_col!r} (columns: {columns}); set data.url_col")
    if caption_col not in columns and "captions" not in columns:
        raise FlameError(
            f"{path}: no caption column {caption_col!r} or 'captions' (columns: {columns}); set data.caption_col"
        )

    base_dir = path.resolve().parent
    rows: list[dict] = []
    skipped: dict[str, list[int]] = {}
    for number, raw in enumerate(raw_rows, start=1):
        url = raw.get(url_col)
        if _is_missing(url) or not isinstance(url, str):
            skipped.setdefault("missing_url", []).append(number)
            continue
        try:
            url = resolve_url(url, base_dir)
        except ValueError as exc:
            raise FlameError(f"{path}: row {number}, column {url_col!r}: {exc}") from None
        captions = _caption_list(raw.get("captions")) or _caption_list(raw.get(caption_col))
        first = _caption_list(raw.get(caption_col))
        if not captions:
            skipped.setdefault("missing_caption", []).append(number)
            continue
        row = {"url": url, "caption": first[0] if first else captions[0], "captions": captions}
        for k, v in raw.items():
            if k in (url_col, caption_col, "captions"):
                continue
            name = f"manifest_{k}" if k in RESERVED_COLUMNS else k
            row[name] = None if _is_missing(v) else v
        rows.append(row)
    if not rows:
        raise FlameError(f"{path}: no usable rows (skipped: { {k: len(v) for k, v in skipped.items()} })")
    out_columns = ["url", "caption", "captions"] + [
        (f"manifest_{k}" if k in RESERVED_COLUMNS else k)
        for k in columns
        if k not in (url_col, caption_col, "captions")
    ]
    return Manifest(path=path, rows=rows, columns=out_columns, skipped=skipped)


def _column_values(rows: list[dict], name: str) -> list:
    """One column, made storable in parquet: uniform lists of strings or scalars stay as
    they are; mixed or nested values are JSON-encoded (``ShardSample.captions`` decodes them)."""
    values = [row.get(name) for row in rows]
    present = [v for v in values if v is not None]
    if all(isinstance(v, list) and all(isinstance(x, str) for x in v) for v in present):
        return values
    kinds = {type(v) for v in present}
    if len(kinds) <= 1 and not (kinds & {list, dict, tuple}):
        return values
    if kinds <= {int, float}:
        return [None if v is None else float(v) for v in values]
    return [None if v is None else (v if isinstance(v, str) else json.dumps(v, ensure_ascii=False)) for v in values]


def write_img2dataset_input(manifest: Manifest, target: str | Path) -> None:
    """Write the normalised rows as the parquet file img2dataset reads."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.table({name: _column_values(manifest.rows, name) for name in manifest.columns})
    pq.write_table(table, target)


def write_manifest_slice(source: str | Path, start: int, stop: int, target: str | Path,
                         url_col: str = "url", caption_col: str = "caption") -> Manifest:
    """Rows ``start:stop`` of ``source`` as a JSONL manifest at ``target`` (written atomically),
    their image locations made absolute so that the slice reads the same from any folder;
    returns the slice read back with ``load_manifest`` (its skips counted)."""
    source, target = Path(source), Path(target)
    rows = read_rows(source)[start:stop]
    base_dir = source.resolve().parent
    for row in rows:
        col = url_col if url_col in row else URL_FALLBACK_COLUMN
        if isinstance(row.get(col), str) and row[col].strip():
            try:
                row[col] = resolve_url(row[col], base_dir)
            except ValueError:
                pass  # load_manifest below reports the row with its number
    text = "".join(json.dumps(r, ensure_ascii=False, default=str) + "\n" for r in rows)
    write_text(target, text)
    return load_manifest(target, url_col, caption_col)
