"""Latent-space editing (paper §4.3): paste a region of image B's canvas onto image A's, then decode.

Each part is local on the canvas, so the edit changes the decoded image locally.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.utils import save_image

from npdraw_core.model import NPDraw


@dataclass(frozen=True)
class Region:
    """A box on the canvas, in canvas pixels."""

    top: int
    left: int
    height: int
    width: int

    @classmethod
    def parse(cls, text: str) -> Region:
        """"top,left,height,width" → Region."""
        try:
            top, left, height, width = (int(v) for v in text.split(","))
        except ValueError:
            raise ValueError(f"region {text!r} must be four integers top,left,height,width, e.g. 0,14,28,14") from None
        return cls(top, left, height, width)

    def check(self, canvas_size: int) -> None:
        inside = 0 <= self.top and 0 <= self.left and self.top + self.height <= canvas_size and self.left + self.width <= canvas_size
        if not inside or self.height < 1 or self.width < 1:
            raise ValueError(f"region {self} does not fit the {canvas_size}×{canvas_size} canvas; give a box inside it")


@dataclass
class Edit:
    canvas_a: Tensor
    canvas_b: Tensor
    composed: Tensor
    result: Tensor  # decoded composed canvas, the output distribution's mean


@torch.no_grad()
def edit(model: NPDraw, images_a: Tensor, images_b: Tensor, region: Region) -> Edit:
    """images (B, C, H, W) in [0, 1] → canvases of A and B, A's canvas with B's region, and its decoding."""
    region.check(model.grid.canvas_size)
    model.eval()
    canvas_a, canvas_b = model.encode_canvas(images_a), model.encode_canvas(images_b)
    composed = canvas_a.clone()
    rows = slice(region.top, region.top + region.height)
    cols = slice(region.left, region.left + region.width)
    composed[..., rows, cols] = canvas_b[..., rows, cols]
    return Edit(canvas_a, canvas_b, composed, model.output.mean(model.decode(composed)))


def save_edit_figure(images_a: Tensor, images_b: Tensor, result: Edit, path) -> None:
    """One row per pair: A, B, A's canvas, B's canvas, the composed canvas, the decoded edit."""
    size = images_a.shape[-2:]

    def up(canvas: Tensor) -> Tensor:
        return F.interpolate(canvas, size=size, mode="nearest")

    columns = [images_a, images_b, up(result.canvas_a), up(result.canvas_b), up(result.composed), result.result]
    rows = torch.stack([c.cpu() for c in columns], dim=1).flatten(0, 1)
    save_image(rows, path, nrow=len(columns), pad_value=0.5)
