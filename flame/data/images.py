"""The one image reader: a local path, a ``file://`` or ``http(s)://`` URL, a ``data:`` URI or
the encoded bytes themselves, decoded to an RGB PIL image.

Every failure is an ``ImageReadError`` (an ``OSError``) whose message is a short reason
("file not found", "cannot fetch: HTTP 404 Not Found", "too large: ...", "not a readable
image (...)"); the caller adds which image, row or flag it was. An image of more pixels
than the limit (``image.max_pixels``) is refused from its header, before it is decoded.
"""

from __future__ import annotations

import base64
import binascii
import io
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import unquote, urlparse

from PIL import Image, UnidentifiedImageError

from flame.config import ImageConfig

URL_TIMEOUT_S = 20
DEFAULT_MAX_PIXELS: int = ImageConfig.model_fields["max_pixels"].default


class ImageReadError(OSError):
    """An image that cannot be read; the message says why."""


def _fetch(url: str) -> bytes:
    try:
        with urllib.request.urlopen(url, timeout=URL_TIMEOUT_S) as resp:
            return resp.read()
    except urllib.error.HTTPError as exc:
        raise ImageReadError(f"cannot fetch: HTTP {exc.code} {exc.reason}") from None
    except (urllib.error.URLError, TimeoutError, ValueError) as exc:
        raise ImageReadError(f"cannot fetch: {getattr(exc, 'reason', exc)}") from None


def _source(ref: str | Path | bytes) -> io.BytesIO | Path:
    if isinstance(ref, (bytes, bytearray)):
        return io.BytesIO(ref)
    text = str(ref)
    if text.startswith("data:"):
        try:
            return io.BytesIO(base64.b64decode(text.split(",", 1)[-1], validate=True))
        except (binascii.Error, ValueError):
            raise ImageReadError("data: URI is not valid base64") from None
    if "://" in text:
        parsed = urlparse(text)
        if parsed.scheme != "file":
            return io.BytesIO(_fetch(text))
        text = unquote(parsed.path)
    path = Path(text)
    if not path.is_file():
        raise ImageReadError("file not found")
    return path


def _check_size(size: tuple[int, int], limit: int) -> None:
    width, height = size
    if width * height > limit:
        raise ImageReadError(f"too large: {width} x {height} = {width * height} pixels > limit {limit} (image.max_pixels)")


def read_image(ref: str | Path | bytes, max_pixels: int | None = None) -> Image.Image:
    """Decode one image to RGB; raises ``ImageReadError`` with a short reason.

    ``max_pixels``: the most pixels an image may have (default: ``image.max_pixels``'s default).
    """
    limit = DEFAULT_MAX_PIXELS if max_pixels is None else max_pixels
    source = _source(ref)
    try:
        with Image.open(source) as img:  # reads the header only
            _check_size(img.size, limit)
            img.load()
            return img.convert("RGB")
    except ImageReadError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        # Pillow's own guard (PIL.Image.MAX_IMAGE_PIXELS) fires inside Image.open, before the
        # size is known here; the warning is an exception only under -W error.
        raise ImageReadError(f"too large: {exc} (image.max_pixels: {limit})") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise ImageReadError(f"not a readable image ({exc.__class__.__name__}: {exc})") from None
