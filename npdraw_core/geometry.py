"""Grid and canvas geometry (spec §2), written once and used by every component.

A canvas of side `canvas_size` is split into `cells_per_side`² cells of side `patch_size`; the image is
zero-padded by `cells_per_side * patch_size - canvas_size` pixels, floor half on the top/left. Cells are
indexed in raster order. Everything here is batched tensor code: no Python loop over images or steps.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor


@dataclass(frozen=True)
class Grid:
    canvas_size: int
    patch_size: int

    def __post_init__(self) -> None:
        if self.canvas_size < 1 or self.patch_size < 1:
            raise ValueError(f"canvas_size and patch_size must be positive, got {self.canvas_size} and {self.patch_size}")
        if self.patch_size > self.canvas_size:
            raise ValueError(
                f"patch_size {self.patch_size} is larger than canvas_size {self.canvas_size}; "
                "choose a patch no larger than the canvas"
            )

    @property
    def cells_per_side(self) -> int:
        return math.ceil(self.canvas_size / self.patch_size)

    @property
    def num_cells(self) -> int:
        return self.cells_per_side**2

    @property
    def padded_size(self) -> int:
        return self.cells_per_side * self.patch_size

    @property
    def pad_before(self) -> int:
        return (self.padded_size - self.canvas_size) // 2

    @property
    def pad_after(self) -> int:
        return self.padded_size - self.canvas_size - self.pad_before

    def pad(self, images: Tensor) -> Tensor:
        """(B, C, S, S) → (B, C, P, P), zero padding split floor-half before."""
        self._check_canvas(images)
        before, after = self.pad_before, self.pad_after
        return F.pad(images, (before, after, before, after))

    def crop(self, padded: Tensor) -> Tensor:
        """(..., C, P, P) → (..., C, S, S): drop the padding again."""
        start, stop = self.pad_before, self.pad_before + self.canvas_size
        return padded[..., start:stop, start:stop]

    def cells(self, images: Tensor) -> Tensor:
        """(B, C, S, S) → (B, T, C, K, K): the K×K crop of every cell of the padded image, raster order."""
        padded = self.pad(images)
        batch, channels = padded.shape[:2]
        n, k = self.cells_per_side, self.patch_size
        blocks = padded.reshape(batch, channels, n, k, n, k).permute(0, 2, 4, 1, 3, 5)
        return blocks.reshape(batch, n * n, channels, k, k)

    def assemble(self, cell_patches: Tensor) -> Tensor:
        """(..., T, C, K, K) → (..., C, S, S): inverse of `cells` (cells do not overlap)."""
        *lead, num_cells, channels, k, _ = cell_patches.shape
        if num_cells != self.num_cells or k != self.patch_size:
            raise ValueError(
                f"expected (..., {self.num_cells}, C, {self.patch_size}, {self.patch_size}) cell patches, "
                f"got shape {tuple(cell_patches.shape)}"
            )
        n = self.cells_per_side
        blocks = cell_patches.reshape(*lead, n, n, channels, k, k)
        lead_dims = list(range(len(lead)))
        d = len(lead)
        padded = blocks.permute(*lead_dims, d + 2, d, d + 3, d + 1, d + 4)
        return self.crop(padded.reshape(*lead, channels, n * k, n * k))

    def draw(self, parts: Tensor, where: Tensor) -> Tensor:
        """Draw(part, cell) for every step: parts (B, N, C, K, K), where (B, N, T) one-hot or soft weights
        over cells → (B, N, C, S, S) maps, zero outside the chosen cell, cropped to the canvas.

        With soft `where` weights each map is the weighted sum of the part placed in every cell, so
        straight-through gradients reach the location logits.
        """
        placed = where[..., :, None, None, None] * parts[..., None, :, :, :]  # (B, N, T, C, K, K)
        return self.assemble(placed)

    def location_masks(self, where: Tensor, channels: int = 1) -> Tensor:
        """where (B, N, T) weights → (B, N, channels, S, S) maps that are `weight` on each cell's area."""
        ones = where.new_ones(*where.shape[:-1], channels, self.patch_size, self.patch_size)
        return self.draw(ones, where)

    def _check_canvas(self, images: Tensor) -> None:
        if images.dim() != 4 or images.shape[-1] != self.canvas_size or images.shape[-2] != self.canvas_size:
            raise ValueError(
                f"expected images of shape (B, C, {self.canvas_size}, {self.canvas_size}), got {tuple(images.shape)}"
            )


def cumulative_canvases(step_maps: Tensor, whether: Tensor) -> Tensor:
    """Paper Eq. 3 for all steps at once: c^t = max(c^{t-1}, z_is^t · Draw^t), c^0 = 0.

    step_maps (B, T, C, S, S) ≥ 0, whether (B, T) in [0, 1] → canvases (B, T, C, S, S) with c^1..c^T.
    Multiplying by `whether` turns skipped steps into blank maps, which the max then ignores.
    """
    return cumulative_max(step_maps * whether[:, :, None, None, None])


def cumulative_max(values: Tensor) -> Tensor:
    """Running max over dim 1 (steps). torch.cummax is several times faster along the contiguous last
    dimension, so the steps are moved there and back; values and gradients are the same."""
    return torch.cummax(values.movedim(1, -1).contiguous(), dim=-1).values.movedim(-1, 1)


def final_canvas(step_maps: Tensor, whether: Tensor) -> Tensor:
    """c^T only: (B, T, C, S, S), (B, T) → (B, C, S, S)."""
    gated = step_maps * whether[:, :, None, None, None]
    return gated.amax(dim=1)


@dataclass(frozen=True)
class ModelShape:
    """Everything a network needs to know about the data and the latent space to size itself."""

    channels: int
    image_size: int
    canvas_size: int
    patch_size: int
    bank_size: int

    @property
    def grid(self) -> Grid:
        return Grid(self.canvas_size, self.patch_size)

    @property
    def num_steps(self) -> int:
        return self.grid.num_cells
