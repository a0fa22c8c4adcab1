"""Image preprocessing with Pillow and NumPy (no torchvision): aspect kept, padded to a white square,
resized, normalised with mean = std = 0.5 (what EfficientNet-Lite expects)."""

from __future__ import annotations

import io
import random
from pathlib import Path

import numpy as np
import torch
from PIL import Image

Image.MAX_IMAGE_PIXELS = 40_000_000


def square_pad(image: Image.Image, fill=(255, 255, 255)) -> tuple[Image.Image, tuple[int, int, int, int]]:
    """The image centred on a square canvas, and its (left, top, width, height) on that canvas."""
    image = image.convert("RGB")
    w, h = image.size
    side = max(w, h)
    canvas = Image.new("RGB", (side, side), fill)
    left, top = (side - w) // 2, (side - h) // 2
    canvas.paste(image, (left, top))
    return canvas, (left, top, w, h)


def to_tensor(image: Image.Image, size: int = 224) -> torch.Tensor:
    canvas, _ = square_pad(image)
    array = np.asarray(canvas.resize((size, size), Image.BICUBIC), dtype=np.float32) / 255.0
    return torch.from_numpy((array - 0.5) / 0.5).permute(2, 0, 1)


def open_image(path: Path) -> Image.Image | None:
    """The decoded RGB image, or None when the file is missing or not a decodable image (the listing is
    then scored by its title)."""
    try:
        with Image.open(path) as image:
            return image.convert("RGB")
    except (OSError, ValueError, Image.DecompressionBombError):
        return None


def load_image(path: Path, size: int = 224) -> torch.Tensor | None:
    image = open_image(path)
    return None if image is None else to_tensor(image, size)


def augment(image: Image.Image, rng: random.Random) -> Image.Image:
    """A re-listing of the same product: a slight crop and a JPEG re-encode (as duplicates look)."""
    image = image.convert("RGB")
    w, h = image.size
    c = rng.uniform(0.0, 0.08)
    image = image.crop((int(w * c), int(h * c), int(w * (1 - c)), int(h * (1 - c))))
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=rng.choice([60, 75, 90]))
    return Image.open(io.BytesIO(buffer.getvalue()))
