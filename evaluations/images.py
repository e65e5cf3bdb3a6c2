"""Reading evaluation images: local paths or URLs, decoded to RGB.

Every image is checked before any embedding starts, so a bad manifest fails in seconds
with the full list of offenders instead of after a long run.
"""

from __future__ import annotations

import io
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from PIL import Image, UnidentifiedImageError
from tqdm.auto import tqdm

from flame.errors import FlameError

URL_TIMEOUT_S = 20
MAX_LISTED = 20


@dataclass
class ImageCheck:
    ok: list[int] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)  # (image, reason)


def read_image(ref: str) -> Image.Image:
    """Decode one image to RGB; raises ``OSError``/``ValueError`` with a short reason."""
    if "://" in ref:
        try:
            with urllib.request.urlopen(ref, timeout=URL_TIMEOUT_S) as resp:
                data = resp.read()
        except urllib.error.HTTPError as exc:
            raise OSError(f"cannot fetch: HTTP {exc.code} {exc.reason}") from None
        except (urllib.error.URLError, TimeoutError, ValueError) as exc:
            raise OSError(f"cannot fetch: {getattr(exc, 'reason', exc)}") from None
        source = io.BytesIO(data)
    else:
        if not Path(ref).is_file():
            raise OSError("file not found")
        source = ref
    try:
        with Image.open(source) as img:
            img.load()
            return img.convert("RGB")
    except (UnidentifiedImageError, OSError, SyntaxError) as exc:
        raise OSError(f"not a readable image ({exc.__class__.__name__}: {exc})") from None


def check_images(images: Sequence[str], skip_missing: bool = False, what: str = "evaluation") -> ImageCheck:
    """Decode each image once. Failures raise a ``FlameError`` listing them, unless ``skip_missing``."""
    result = ImageCheck()
    for i, ref in enumerate(tqdm(images, desc=f"checking {what} images", unit="img", leave=False)):
        try:
            read_image(ref)
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
