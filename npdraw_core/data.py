"""Turning a dataset's uint8 images into model inputs: [0, 1] floats, canvas-size copies, dynamic
binarisation and shuffled mini-batches. Everything takes an explicit `torch.Generator`."""

from __future__ import annotations

from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import Tensor

from npdraw_core.interfaces import ImageSet


def to_unit(images: Tensor) -> Tensor:
    """uint8 (N, C, H, W) → float32 in [0, 1]."""
    if images.dtype != torch.uint8:
        raise TypeError(f"expected uint8 images, got {images.dtype}")
    return images.float().div_(255.0)


def at_canvas_size(images: Tensor, canvas_size: int) -> Tensor:
    """Float images (N, C, H, W) → (N, C, canvas_size, canvas_size). Part banks and parses work on the
    canvas, which can be smaller than the image (CelebA: 64 → 32); area averaging keeps grey levels."""
    if images.shape[-1] == canvas_size and images.shape[-2] == canvas_size:
        return images
    if images.shape[-1] < canvas_size:
        raise ValueError(
            f"images of side {images.shape[-1]} are smaller than canvas_size {canvas_size}; "
            "set model.canvas_size to at most the image size"
        )
    return F.interpolate(images, size=(canvas_size, canvas_size), mode="area")


def canvas_images(image_set: ImageSet, canvas_size: int) -> Tensor:
    """A split as [0, 1] floats at canvas size: what the part bank and the parser see."""
    return at_canvas_size(to_unit(image_set.images), canvas_size)


def dynamic_binarize(images: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """A fresh Bernoulli draw of the grey levels (binary datasets, every time an image is read)."""
    uniform = torch.rand(images.shape, generator=generator, device=images.device)
    return (uniform < images).to(images.dtype)


def prepare_images(images: Tensor, *, binary: bool, generator: torch.Generator | None) -> Tensor:
    """A uint8 batch → model input: [0, 1] floats, freshly binarised for binary datasets."""
    images = to_unit(images)
    return dynamic_binarize(images, generator) if binary else images


def minibatch_indices(
    num_items: int, batch_size: int, *, generator: torch.Generator | None = None, shuffle: bool = True, drop_last: bool = False
) -> Iterator[Tensor]:
    """Index tensors covering range(num_items) in batches, shuffled with `generator` when asked."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    order = torch.randperm(num_items, generator=generator) if shuffle else torch.arange(num_items)
    stop = num_items - num_items % batch_size if drop_last else num_items
    for start in range(0, stop, batch_size):
        yield order[start : start + batch_size]
