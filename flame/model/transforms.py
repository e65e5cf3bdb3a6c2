"""Image transforms: the eval transform (resize + centre crop) and the seeded
RandomResizedCrop used for training."""

from __future__ import annotations

import math

import numpy as np
import torch
from PIL import Image
from torchvision.transforms import InterpolationMode
from torchvision.transforms import functional as TF

from flame.config import ImageConfig


def _to_normalised_tensor(img: Image.Image, image: ImageConfig) -> torch.Tensor:
    return TF.normalize(TF.to_tensor(img), list(image.mean), list(image.std))


def eval_transform(img: Image.Image, image: ImageConfig) -> torch.Tensor:
    """PIL image -> normalised ``[3, S, S]`` tensor: shorter side resized to S, centre crop."""
    img = img.convert("RGB")
    size = image.img_size
    img = TF.resize(img, size, interpolation=InterpolationMode.BICUBIC, antialias=True)
    img = TF.center_crop(img, [size, size])
    return _to_normalised_tensor(img, image)


def random_resized_crop_params(
    width: int, height: int, scale: tuple[float, float], rng: np.random.Generator,
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
) -> tuple[int, int, int, int]:
    """(top, left, h, w) of a RandomResizedCrop, drawn from ``rng`` (not torch's global RNG),
    so a sample's crop depends only on its seed, whichever worker decodes it."""
    area = width * height
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target_area = area * rng.uniform(scale[0], scale[1])
        aspect = math.exp(rng.uniform(*log_ratio))
        w = int(round(math.sqrt(target_area * aspect)))
        h = int(round(math.sqrt(target_area / aspect)))
        if 0 < w <= width and 0 < h <= height:
            top = int(rng.integers(0, height - h + 1))
            left = int(rng.integers(0, width - w + 1))
            return top, left, h, w
    # Fallback as torchvision: the whole image, centre-cropped to the nearest allowed ratio.
    in_ratio = width / height
    if in_ratio < ratio[0]:
        w, h = width, int(round(width / ratio[0]))
    elif in_ratio > ratio[1]:
        h, w = height, int(round(height * ratio[1]))
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


def train_transform(img: Image.Image, image: ImageConfig, scale: tuple[float, float],
                    rng: np.random.Generator) -> torch.Tensor:
    img = img.convert("RGB")
    top, left, h, w = random_resized_crop_params(img.width, img.height, scale, rng)
    size = image.img_size
    img = TF.resized_crop(img, top, left, h, w, [size, size],
                          interpolation=InterpolationMode.BICUBIC, antialias=True)
    return _to_normalised_tensor(img, image)
