"""img2dataset's ``download`` with a fetcher of ours: the one place img2dataset is patched.

Our fetcher adds two checks to img2dataset's ``download_image``: an HTTP Content-Type that is
not an image, and a body over ``data.max_image_bytes`` (read no further than that).

Why a patch, in img2dataset 1.47.0 (the version this was written for and checked against):
- No option does either check. Its limits (``max_image_area``, ``min_image_size``,
  ``max_aspect_ratio``) apply to the decoded image, so ``download_image`` first reads the whole
  body into memory (``r.read()``): a web page fails only at decoding ("Image decoding error"), and
  a huge file is held whole before it is refused.
- It has no hook for a fetcher. ``Downloader.download_shard`` calls the module function
  ``img2dataset.downloader.download_image`` (through ``download_image_with_retry``), and
  ``download()`` builds its ``Downloader`` itself, under the name ``img2dataset.main.Downloader``.
- Its workers are processes started with "spawn", or Ray or Spark tasks on other machines: they
  import img2dataset afresh, so a patch made here would not reach them.
So the patch has two parts: while :func:`checked_download` runs, ``img2dataset.main.Downloader``
builds a :class:`CheckedDownloader`; that object, pickled to each worker (every distributor sends
it with each shard), installs :func:`fetch_image` as ``download_image`` in the worker before it
downloads a shard. No setup hook on the workers is needed.

``tests/test_img2dataset_patch.py`` fails when the installed img2dataset is not
``PATCHED_FOR_IMG2DATASET``: after an upgrade, check the points above (and whether a new option
now does the job), then update that constant and the pin in ``pyproject.toml``."""

from __future__ import annotations

import functools
import importlib
import io
import os
import urllib.request

# albumentations (imported by img2dataset) otherwise asks PyPI for a newer version on import.
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import img2dataset.downloader as downloader_module  # noqa: E402 - after the environment above
from img2dataset.downloader import Downloader, is_disallowed  # noqa: E402

PATCHED_FOR_IMG2DATASET = "1.47.0"
NON_IMAGE_OK_TYPES = ("application/octet-stream", "binary/octet-stream")


def fetch_image(row, timeout, user_agent_token, disallowed_header_directives, max_bytes):
    """img2dataset's ``download_image`` (same arguments, results and user agent) plus two checks
    it lacks: an HTTP Content-Type that is not an image, and a body over ``max_bytes`` (read no
    further than that)."""
    key, url = row
    agent = "Mozilla/5.0 (X11; Ubuntu; Linux x86_64; rv:72.0) Gecko/20100101 Firefox/72.0"
    if user_agent_token:
        agent += f" (compatible; {user_agent_token}; +https://github.com/rom1504/img2dataset)"
    try:
        request = urllib.request.Request(url, data=None, headers={"User-Agent": agent})
        with urllib.request.urlopen(request, timeout=timeout) as r:
            if disallowed_header_directives and is_disallowed(r.headers, user_agent_token, disallowed_header_directives):
                return key, None, "Use of image disallowed by X-Robots-Tag directive"
            # Only a server's own header is evidence; urllib guesses file:// types from the name.
            if url.startswith(("http://", "https://")) and r.headers.get("Content-Type"):
                ctype = r.headers.get_content_type()
                if not ctype.startswith("image/") and ctype not in NON_IMAGE_OK_TYPES:
                    return key, None, f"not an image: content type {ctype}"
            length = r.headers.get("Content-Length")
            if length and length.isdigit() and int(length) > max_bytes:
                return key, None, f"image too large: {length} bytes > max_image_bytes {max_bytes}"
            data = r.read(max_bytes + 1)
            if len(data) > max_bytes:
                return key, None, f"image too large: more than max_image_bytes {max_bytes}"
        return key, io.BytesIO(data), None
    except Exception as err:  # noqa: BLE001 - like img2dataset: every failure is a counted sample
        return key, None, str(err)


class CheckedDownloader(Downloader):
    """img2dataset's Downloader, installing :func:`fetch_image` in the worker process (spawned,
    or a Ray or Spark worker) that runs it, before each shard."""

    def __init__(self, *args, max_image_bytes: int, **kwargs):
        super().__init__(*args, **kwargs)
        self.max_image_bytes = max_image_bytes  # an attribute: it travels to the workers, pickled

    def __call__(self, row):
        downloader_module.download_image = functools.partial(fetch_image, max_bytes=self.max_image_bytes)
        return super().__call__(row)


def checked_download(max_image_bytes: int, **options) -> None:
    """img2dataset's ``download(**options)``, fetching with :func:`fetch_image`."""
    # The package exports a function named ``main`` that hides the module of that name.
    i2d_main = importlib.import_module("img2dataset.main")
    original = i2d_main.Downloader
    i2d_main.Downloader = functools.partial(CheckedDownloader, max_image_bytes=max_image_bytes)
    try:
        i2d_main.download(**options)
    finally:
        i2d_main.Downloader = original
