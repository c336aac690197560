"""The latent sequence z^1..z^T of NP-DRAW and how it renders onto the canvas (spec §2, §4).

One representation serves parses, prior samples and relaxed posterior samples: per step a weight vector
over the bank (`what`), over the cells (`where`) and a draw flag (`whether`). Hard latents are one-hot;
relaxed ones (Gumbel-softmax during training) are soft. When `whether` is 0 a step draws nothing and its
`what`/`where` carry no probability mass (see `npdraw_core.distributions`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from npdraw_core.geometry import Grid, cumulative_canvases, cumulative_max, final_canvas


@dataclass(frozen=True)
class Latents:
    whether: Tensor  # (B, T) float in [0, 1]
    what: Tensor  # (B, T, M) weights over the bank
    where: Tensor  # (B, T, T) weights over the cells

    def __post_init__(self) -> None:
        batch, steps = self.whether.shape
        if self.what.shape[:2] != (batch, steps) or self.where.shape[:2] != (batch, steps):
            raise ValueError(
                f"latent shapes disagree: whether {tuple(self.whether.shape)}, what {tuple(self.what.shape)}, "
                f"where {tuple(self.where.shape)}; expected (B, T), (B, T, M), (B, T, T)"
            )

    @classmethod
    def from_indices(cls, *, what: Tensor, where: Tensor, whether: Tensor, bank_size: int, num_cells: int) -> Latents:
        """Hard latents from integer arrays (B, T) — the stored form of parses and samples."""
        return cls(
            whether=whether.float(),
            what=F.one_hot(what.long(), bank_size).float(),
            where=F.one_hot(where.long(), num_cells).float(),
        )

    def indices(self) -> dict[str, Tensor]:
        """Integer form: what/where as argmax indices (int64), whether as 0/1 (uint8)."""
        return {
            "what": self.what.argmax(-1),
            "where": self.where.argmax(-1),
            "whether": (self.whether > 0.5).to(torch.uint8),
        }

    @property
    def batch_size(self) -> int:
        return self.whether.shape[0]

    @property
    def num_steps(self) -> int:
        return self.whether.shape[1]

    def to(self, device: torch.device | str) -> Latents:
        return Latents(self.whether.to(device), self.what.to(device), self.where.to(device))

    def __getitem__(self, index) -> Latents:
        return Latents(self.whether[index], self.what[index], self.where[index])


def step_maps(latents: Latents, bank: Tensor, grid: Grid) -> Tensor:
    """Draw(x̃_{what^t}, where^t) for every step, before gating: (B, T, C, S, S).

    With soft `what` the pasted part is the weighted mix of exemplars (a matmul with the bank).
    """
    parts = torch.einsum("btm,mckl->btckl", latents.what, bank)
    return grid.draw(parts, latents.where)


def render(latents: Latents, bank: Tensor, grid: Grid) -> Tensor:
    """The final canvas c^T: (B, C, S, S)."""
    return final_canvas(step_maps(latents, bank, grid), latents.whether)


def canvases(latents: Latents, bank: Tensor, grid: Grid) -> Tensor:
    """All canvases c^1..c^T as one cumulative max: (B, T, C, S, S)."""
    return cumulative_canvases(step_maps(latents, bank, grid), latents.whether)


def prior_frames(
    latents: Latents, bank: Tensor, grid: Grid, *, union_masks: bool = False, maps: Tensor | None = None
) -> Tensor:
    """Input frames of the prior (spec §4), (B, T, C+1, S, S): frame t holds canvas c^t and the location
    mask of step t (zero when step t was skipped); frame 0 is all zeros; position t predicts z^{t+1}.

    `union_masks=True` uses the union of all past location masks instead (the authors' code). `maps`: the
    latents' `step_maps`, when the caller already rendered them (each step is rendered once per loss).
    """
    maps = step_maps(latents, bank, grid) if maps is None else maps
    all_canvases = cumulative_canvases(maps, latents.whether)  # c^1..c^T
    masks = grid.location_masks(latents.where) * latents.whether[:, :, None, None, None]  # (B, T, 1, S, S)
    if union_masks:
        masks = cumulative_max(masks)
    frames = torch.cat([all_canvases, masks], dim=2)[:, :-1]
    blank = frames.new_zeros(frames.shape[0], 1, *frames.shape[2:])
    return torch.cat([blank, frames], dim=1)


def located(latents: Latents) -> bool:
    """True when every step's `where` has exactly one nonzero weight (hard latents, and straight-through
    ones in the forward pass): each step then draws into one cell only."""
    return bool(((latents.where != 0).sum(-1) == 1).all())


def render_located(latents: Latents, bank: Tensor, grid: Grid) -> Tensor:
    """`render` for `located` latents without per-cell maps: each step's part (weight · part · whether, the
    same products as `step_maps`) is max-reduced into its cell, then the cells are assembled. The same
    values as `render` for non-negative banks (parts in [0, 1]): (B, C, S, S)."""
    batch = latents.batch_size
    cells = latents.where.argmax(-1)
    weight = latents.where.gather(-1, cells[..., None])[..., 0]
    parts = torch.einsum("btm,mckl->btckl", latents.what, bank)
    values = (weight[..., None, None, None] * parts) * latents.whether[:, :, None, None, None]
    per_cell = values.new_zeros(batch, grid.num_cells, *values.shape[2:])
    index = cells[:, :, None, None, None].expand_as(values)
    per_cell.scatter_reduce_(1, index, values, reduce="amax", include_self=True)
    return grid.assemble(per_cell)
