"""What the Dagster UI shows for an asset: tables, plots inline, and clickable MLflow links."""

import base64
import io
from pathlib import Path

from dagster import MetadataValue
from PIL import Image

from flame.locations import fetch, location

# Dagster stores metadata in its event log; an inline plot is shrunk until it fits this.
INLINE_IMAGE_BYTES = 150_000


def md_table(rows: list[dict]) -> str:
    if not rows:
        return "(none)"
    cols = list(rows[0])
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for row in rows:
        lines.append("| " + " | ".join(str(row.get(c, "")).replace("|", "/")[:80] for c in cols) + " |")
    return "\n".join(lines)


def inline_png(path: str | Path, title: str = "") -> MetadataValue:
    """Markdown with the image at ``path`` embedded as a PNG data URI (downscaled to fit)."""
    with Image.open(fetch(location(path))) as image:
        image = image.convert("RGB")
        width = min(image.width, 900)
        while True:
            scaled = image.resize((width, max(1, round(image.height * width / image.width))))
            buffer = io.BytesIO()
            scaled.save(buffer, format="PNG", optimize=True)
            if buffer.tell() <= INLINE_IMAGE_BYTES or width <= 160:
                break
            width = int(width * 0.75)
    encoded = base64.b64encode(buffer.getvalue()).decode("ascii")
    heading = f"**{title}**\n\n" if title else ""
    return MetadataValue.md(f"{heading}![{location(path).name}](data:image/png;base64,{encoded})")


def mlflow_ui(tracking_uri: str, ui_url: str) -> str:
    """The MLflow UI base: the tracking server itself, else ``tracking.ui_url`` (``mlflow ui``)."""
    return (tracking_uri if tracking_uri.startswith(("http://", "https://")) else ui_url).rstrip("/")


def mlflow_run_url(base: str, experiment_id: str, run_id: str) -> MetadataValue:
    return MetadataValue.url(f"{base}/#/experiments/{experiment_id}/runs/{run_id}")


def model_version_url(base: str, name: str, version: str | int) -> MetadataValue:
    return MetadataValue.url(f"{base}/#/models/{name}/versions/{version}")
