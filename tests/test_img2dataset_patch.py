"""The one runtime patch of img2dataset (flame/data/img2dataset_patch.py): written for one
img2dataset version, and its fetcher's two checks against a real HTTP server on 127.0.0.1."""

from __future__ import annotations

import importlib.metadata
import time
import tomllib

from flame.config import repo_root
from flame.data.download_summary import failure_reason
from flame.data.img2dataset_patch import PATCHED_FOR_IMG2DATASET, fetch_image
from tests.fixtures.data import SAMPLE_DIR

MAX_BYTES = 1000
TIMEOUT_S = 2.0
STALL_S = TIMEOUT_S + 3


def test_patch_was_written_for_the_installed_img2dataset():
    installed = importlib.metadata.version("img2dataset")
    assert installed == PATCHED_FOR_IMG2DATASET, (
        f"img2dataset {installed} is installed, but flame/data/img2dataset_patch.py was written for "
        f"{PATCHED_FOR_IMG2DATASET}: check the reasons in its docstring against the new version, then "
        "update PATCHED_FOR_IMG2DATASET and the pin in pyproject.toml")
    dependencies = tomllib.loads((repo_root() / "pyproject.toml").read_text(encoding="utf-8"))["project"]["dependencies"]
    assert f"img2dataset=={PATCHED_FOR_IMG2DATASET}" in dependencies


def _fetch(url: str):
    return fetch_image((7, url), timeout=TIMEOUT_S, user_agent_token=None, disallowed_header_directives=None,
                       max_bytes=MAX_BYTES)


def _stalled_stream():
    """More than MAX_BYTES at once, then nothing for longer than the fetch timeout."""
    yield b"\xff" * (2 * MAX_BYTES)
    time.sleep(STALL_S)
    yield b"\xff" * MAX_BYTES


def test_fetch_refuses_non_images_and_bodies_over_max_image_bytes(http_server, tmp_path):
    small = b"\xff\xd8\xff" + b"\0" * 500
    base = http_server({
        "/small.jpg": (200, "image/jpeg", small, 0.0),
        "/octets": (200, "application/octet-stream", small, 0.0),
        "/page.jpg": (200, "text/html; charset=utf-8", b"<html><body>Not here</body></html>", 0.0),
        "/declared.jpg": (200, "image/jpeg", b"\xff" * (2 * MAX_BYTES), 0.0),
        "/stream.jpg": (200, "image/jpeg", _stalled_stream(), 0.0),
    })
    for path in ("/small.jpg", "/octets"):
        key, stream, error = _fetch(base + path)
        assert (key, error, stream.read()) == (7, None, small)

    key, stream, error = _fetch(base + "/page.jpg")
    assert (key, stream, error) == (7, None, "not an image: content type text/html")
    assert failure_reason(error) == "not_an_image"

    _, stream, error = _fetch(base + "/declared.jpg")
    assert stream is None and error == f"image too large: {2 * MAX_BYTES} bytes > max_image_bytes {MAX_BYTES}"
    assert failure_reason(error) == "too_large"

    # No Content-Length: refused after MAX_BYTES + 1 bytes, without waiting for the rest (which
    # would end in a timeout).
    started = time.monotonic()
    _, stream, error = _fetch(base + "/stream.jpg")
    assert stream is None and error == f"image too large: more than max_image_bytes {MAX_BYTES}"
    assert time.monotonic() - started < TIMEOUT_S

    # file:// has no server header to go by: any content is handed on to decoding.
    text = tmp_path / "notes.txt"
    text.write_bytes(b"plain text")
    _, stream, error = _fetch(text.as_uri())
    assert error is None and stream.read() == b"plain text"
    _, stream, error = _fetch((SAMPLE_DIR / "missing.jpg").as_uri())
    assert stream is None and failure_reason(error) == "file_not_found"
