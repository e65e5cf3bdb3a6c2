"""Checking evaluation images before any embedding starts, so a bad manifest fails in
seconds with the full list of offenders instead of after a long run. Images are read by
the project's one reader, ``flame.data.images.read_image``."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

from tqdm.auto import tqdm

from flame.data.images import read_image
from flame.errors import FlameError

MAX_LISTED = 20


@dataclass
class ImageCheck:
    ok: list[int] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)  # (image, reason)


def check_images(images: Sequence[str], skip_missing: bool = False, what: str = "evaluation",
                 max_pixels: int | None = None) -> ImageCheck:
    """Decode each image once (larger than ``max_pixels``: unreadable). Failures raise a
    ``FlameError`` listing them, unless ``skip_missing``."""
    result = ImageCheck()
    for i, ref in enumerate(tqdm(images, desc=f"checking {what} images", unit="img", leave=False)):
        try:
            read_image(ref, max_pixels)
        except OSError as exc:
            result.failed.append((ref, str(exc)))
        else:
            result.ok.append(i)
    if result.failed and not skip_missing:
        listed = "\n".join(f"  {ref}: {reason}" for ref, reason in result.failed[:MAX_LISTED])
        more = f"\n  ... and {len(result.failed) - MAX_LISTED} more" if len(result.failed) > MAX_LISTED else ""
        raise FlameError(
            f"{len(result.failed)} of {len(images)} {what} images are missing or unreadable "
            f"(pass --skip-missing to skip them):\n{listed}{more}"
        )
    if not result.ok:
        raise FlameError(f"none of the {len(images)} {what} images could be read")
    return result
