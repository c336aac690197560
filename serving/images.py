"""Arrays in [0, 1] → PNG bytes, and grids of them (numpy + Pillow; no torchvision on the request path).

One encoder for every format, so the PNG of sample i is the same bytes whether it came alone (`png`) or
inside a JSON response: that is what makes "same seed → same image" checkable byte for byte.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image


def to_uint8(image: np.ndarray) -> np.ndarray:
    """(C, H, W) floats in [0, 1] → (H, W) or (H, W, 3) uint8, rounded (not truncated)."""
    pixels = np.clip(np.nan_to_num(image, nan=0.0), 0.0, 1.0) * 255.0 + 0.5
    pixels = pixels.astype(np.uint8)
    return pixels[0] if pixels.shape[0] == 1 else np.moveaxis(pixels, 0, -1)


def png_bytes(image: np.ndarray, *, scale: int = 1) -> bytes:
    """One (C, H, W) image as PNG; `scale` enlarges it by pixel repetition (for tiny bank patches)."""
    pixels = to_uint8(image)
    if scale > 1:
        pixels = pixels.repeat(scale, axis=0).repeat(scale, axis=1)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format="PNG", optimize=False)
    return out.getvalue()


def grid(images: np.ndarray, *, per_row: int = 8, pad: int = 2, pad_value: float = 0.5) -> np.ndarray:
    """(N, C, H, W) → one (C, rows·(H+pad)+pad, cols·(W+pad)+pad) image, raster order."""
    count, channels, height, width = images.shape
    cols = max(1, min(per_row, count))
    rows = -(-count // cols)
    out = np.full((channels, rows * (height + pad) + pad, cols * (width + pad) + pad), pad_value, np.float32)
    for index in range(count):
        top = pad + (index // cols) * (height + pad)
        left = pad + (index % cols) * (width + pad)
        out[:, top : top + height, left : left + width] = images[index]
    return out


def side_by_side(left: np.ndarray, right: np.ndarray) -> np.ndarray:
    """Two (N, C, H, W) stacks of equal height → one stack, each pair joined left to right."""
    return np.concatenate([left, right], axis=-1)


def resize_nearest(images: np.ndarray, size: int) -> np.ndarray:
    """(N, C, h, w) → (N, C, size, size) by nearest neighbour (canvases shown beside larger images)."""
    height, width = images.shape[-2:]
    if (height, width) == (size, size):
        return images
    rows = np.arange(size) * height // size
    cols = np.arange(size) * width // size
    return images[..., rows[:, None], cols[None, :]]
