"""Title-guided attention heatmaps: the spatial attention ("where") upsampled over the listing image
as a PNG overlay. Rendering only; the map comes from `MapsOutput.spatial_attention`."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image

from ml_worker.images import square_pad


def _colormap(values: np.ndarray) -> np.ndarray:
    """A perceptual blue-to-yellow ramp (viridis-like) for values in [0, 1]."""
    anchors = np.array(
        [[68, 1, 84], [59, 82, 139], [33, 145, 140], [94, 201, 98], [253, 231, 37]], dtype=np.float32
    )
    scaled = np.clip(values, 0, 1) * (len(anchors) - 1)
    low = np.floor(scaled).astype(int).clip(0, len(anchors) - 2)
    frac = (scaled - low)[..., None]
    return anchors[low] * (1 - frac) + anchors[low + 1] * frac


def render_heatmap(
    image_path: Path | str, attention: np.ndarray, *, size: int = 256, alpha: float = 0.55
) -> bytes:
    """PNG bytes: the image (as the model saw it: padded square) with the attention map over it.

    The map is normalised to its own maximum and smoothly upsampled; low attention stays transparent
    so the product remains visible."""
    with Image.open(image_path) as image:
        canvas, _ = square_pad(image)
    canvas = canvas.resize((size, size), Image.BICUBIC)
    att = np.asarray(attention, dtype=np.float32)
    att = att / att.max() if att.max() > 0 else att
    upsampled = (
        np.asarray(
            Image.fromarray((att * 255).astype(np.uint8)).resize((size, size), Image.BICUBIC),
            dtype=np.float32,
        )
        / 255.0
    )
    colours = _colormap(upsampled)
    base = np.asarray(canvas, dtype=np.float32)
    weight = (alpha * upsampled**0.7)[..., None]
    blended = base * (1 - weight) + colours * weight
    buffer = io.BytesIO()
    Image.fromarray(blended.clip(0, 255).astype(np.uint8)).save(buffer, "PNG", compress_level=3)
    return buffer.getvalue()
