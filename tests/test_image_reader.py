"""The one image reader refuses images over its pixel limit, from the header, before decoding."""

from __future__ import annotations

import warnings

import pytest
from PIL import Image

from flame.config import load_config
from flame.data.images import ImageReadError, read_image
from tests.fixtures.huge_png import write_huge_png


def test_a_decompression_bomb_is_an_image_read_error(tmp_path):
    bomb = write_huge_png(tmp_path / "bomb.png")  # 14000 x 14000: over Pillow's own hard limit
    with pytest.raises(ImageReadError, match="too large"):
        read_image(bomb)
    with pytest.raises(ImageReadError, match="too large"):
        read_image(bomb.read_bytes())


def test_the_limit_is_checked_from_the_header_and_names_the_size(tmp_path):
    image = write_huge_png(tmp_path / "wide.png", width=3000, height=2000)
    with pytest.raises(ImageReadError, match=r"too large: 3000 x 2000 = 6000000 pixels > limit 5000000 \(image.max_pixels\)"):
        read_image(image, max_pixels=5_000_000)
    assert read_image(image, max_pixels=6_000_000).size == (3000, 2000)


def test_pillows_bomb_warning_as_an_error_is_an_image_read_error(tmp_path):
    """Under ``-W error`` Pillow's DecompressionBombWarning is raised from Image.open, for an
    image between its limit and twice that, even when image.max_pixels allows it."""
    image = write_huge_png(tmp_path / "big.png", width=10_000, height=10_000)
    assert Image.MAX_IMAGE_PIXELS < 10_000 * 10_000 < 2 * Image.MAX_IMAGE_PIXELS
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(ImageReadError, match="too large"):
            read_image(image, max_pixels=200_000_000)


def test_image_max_pixels_is_configurable_and_positive():
    assert load_config(profile="tiny", overrides={"image": {"max_pixels": 1000}}).image.max_pixels == 1000
    with pytest.raises(ValueError, match="max_pixels"):
        load_config(profile="tiny", overrides={"image": {"max_pixels": 0}})
