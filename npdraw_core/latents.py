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


def located_prior_frames(latents: Latents, bank: Tensor, grid: Grid, *, union_masks: bool = False) -> Tensor:
    """`prior_frames` of `located` latents, with the gradients autograd gives `prior_frames` (those of the
    draw, of the running max with its ties and of the masks) but computed cell by cell: each step pastes
    into one cell, so the frames are built from cell-sized pastes and the backward never forms a
    per-step map of the whole canvas. For relaxed latents in training (soft `what`, straight-through
    `where`, hard or straight-through `whether`): the same values and gradients within float tolerance
    (tests/test_speed_properties.py)."""
    return _LocatedFrames.apply(latents.whether, latents.what, latents.where, bank, grid, union_masks)


class _LocatedFrames(torch.autograd.Function):
    """Frames (B, T, C+1, S, S) of located latents. Step t = 0..T-1 pastes v_t = (w_t · part_t) · whether_t
    into cell j_t (w_t: its one nonzero `where` weight); frame f holds c^f = max_{t<f} v_t and the mask of
    step f-1 (or the union of masks 0..f-1). Kept as one padded canvas per frame, frames last:
    (C+1, n, K, n, K, T, B), so a cell is a (C, K, K, T, B) slice, every op runs along contiguous runs of
    T·B numbers, and the frames handed out are a view of it."""

    @staticmethod
    def forward(ctx, whether: Tensor, what: Tensor, where: Tensor, bank: Tensor, grid: Grid, union_masks: bool):
        batch, steps = whether.shape
        channels, size, side = bank.shape[1], grid.patch_size, grid.cells_per_side
        cells = where.argmax(-1)
        weight = where.gather(-1, cells[..., None])[..., 0]
        parts = torch.einsum("btm,mckl->btckl", what, bank)  # (B, T, C, K, K)
        pasted = (weight[..., None, None, None] * parts) * whether[..., None, None, None]  # step_maps · whether
        buffer = parts.new_empty(channels + 1, side, size, side, size, steps, batch)  # every frame written below
        buffer[..., 0, :] = 0
        canvas = parts.new_zeros(channels, side, size, side, size, batch)  # c^f
        rows, cols, samples = cells // side, cells % side, torch.arange(batch, device=cells.device)
        for frame in range(1, steps):
            row, col = rows[:, frame - 1], cols[:, frame - 1]
            canvas[:, row, :, col, :, samples] = torch.maximum(
                canvas[:, row, :, col, :, samples], pasted[:, frame - 1]
            )
            buffer[:channels, ..., frame, :] = canvas
        marks = weight * whether  # each step's mask value: (where · 1) · whether
        placed = torch.zeros_like(where).scatter_(2, cells[..., None], marks[..., None])  # (B, T, J)
        masks = cumulative_max(placed) if union_masks else placed
        masks = masks[:, :-1].permute(2, 1, 0).contiguous()  # frames last before broadcasting over the pixels
        buffer[channels, ..., 1:, :] = masks.view(side, 1, side, 1, steps - 1, batch)
        ctx.grid, ctx.union_masks = grid, union_masks
        ctx.save_for_backward(whether, where, bank, cells, weight, parts, pasted, buffer)
        padded, start = buffer.view(channels + 1, side * size, side * size, steps, batch), grid.pad_before
        return padded[:, start : start + grid.canvas_size, start : start + grid.canvas_size].permute(4, 3, 0, 1, 2)

    @staticmethod
    def backward(ctx, grad_frames: Tensor):
        whether, where, bank, cells, weight, parts, pasted, buffer = ctx.saved_tensors
        grid, union_masks = ctx.grid, ctx.union_masks
        channels, side, size, steps, batch = bank.shape[1], grid.cells_per_side, grid.patch_size, *cells.shape[::-1]
        used, start, end = steps - 1, grid.pad_before, grid.pad_before + grid.canvas_size
        grads = torch.empty_like(buffer)
        padded = grads.view(channels + 1, side * size, side * size, steps, batch)
        padded[:, start:end, start:end] = grad_frames.permute(2, 3, 4, 1, 0)
        padded[..., 0, :] = 0  # frame 0 is a constant blank
        for edge in (slice(0, start), slice(end, None)):  # padding pixels get none (they are cropped)
            padded[:, edge] = 0
            padded[:, :, edge] = 0
        canvas, history = grads[:channels], buffer[:channels]  # (C, n, K, n, K, T, B)
        steps_index = torch.arange(used, device=cells.device)[:, None]
        own_rows, own_cols = (cells[:, :used] // side).T, (cells[:, :used] % side).T  # (T-1, B)
        # The running max sends frame f's gradient at pixel p to the LAST step t < f with v_t(p) = c^f(p)
        # (torch.cummax's ties). Where nothing is drawn yet (c^f(p) = 0) that is step f-1, in every cell;
        # in its own cell, step t wins frame t+1 iff v_t(p) ≥ c^t(p) and keeps winning until a later step
        # reaches its value there (any later step, when that value is 0).
        blank = torch.where(history[..., :used, :] == 0, canvas[..., 1:, :], 0)  # (C, n, K, n, K, T-1, B)
        # the parts laid out frames last before the product, which then reads them in order (~2x faster)
        part_layout = parts[:, :used].permute(2, 3, 4, 1, 0).contiguous()[:, None, :, None]  # (C, 1, K, 1, K, T-1, B)
        # summed one dimension at a time: torch's reduction over several strided dimensions at once is ~3x slower
        grad_where = (blank * part_layout).sum(4).sum(2).sum(0).flatten(0, 1)  # (J, T-1, B)
        own_frame = steps_index[..., None, None, None]  # frame t: the canvas step t draws on
        own_blank = _own_cells(blank, own_rows, own_cols, own_frame)  # (T-1, B, C, K, K)
        own_before = _own_cells(history, own_rows, own_cols, own_frame)
        own_values = pasted[:, :used].transpose(0, 1)  # (T-1, B, C, K, K)
        later = (steps_index.T > steps_index)[..., None]  # (t, t', 1): t' after t
        # pairs (t, t', b) of a step and a later one in the same cell: few (cells are rarely drawn twice), so
        # the pixel comparisons run on these pairs only
        earlier, following, sample = ((cells[:, :used].T[:, None] == cells[:, :used].T[None]) & later).nonzero().unbind(1)
        # a later step t' in the same cell wins frame t'+1 from step t where it reaches t's value; t's reign
        # ends at the first such t', or at frame T
        takes_over = own_values[following, sample] >= own_values[earlier, sample]  # (pairs, C, K, K)
        last_frame = torch.full(own_values.shape, steps - 1, device=cells.device)  # (T-1, B, C, K, K)
        last_frame.view(used * batch, -1).scatter_reduce_(
            0, (earlier * batch + sample)[:, None].expand(-1, last_frame[0, 0].numel()),
            torch.where(takes_over, following[:, None, None, None], steps - 1).flatten(1), reduce="amin",
        )  # fmt: skip
        # where step t pastes 0 the very next step wins (any later step reaches 0)
        last_frame = torch.where(own_values == 0, own_frame + 1, last_frame)
        totals = _running_sum_(canvas, dim=5)  # Σ_{f' ≤ f} of frame f''s gradient (canvas is not needed after)
        reign = _own_cells(totals, own_rows, own_cols, last_frame) - _own_cells(totals, own_rows, own_cols, own_frame)
        own_grad = torch.zeros_like(pasted)  # (B, T, C, K, K): the last step feeds no frame
        own_grad[:, :used] = ((own_values >= own_before) * reign).transpose(0, 1)
        correction = ((own_grad[:, :used].transpose(0, 1) - own_blank) * parts[:, :used].transpose(0, 1)).sum((2, 3, 4))
        grad_where = grad_where.permute(2, 1, 0)  # (B, T-1, J)
        grad_where = grad_where.scatter_add(2, cells[:, :used, None], correction.T[..., None])
        grad_where = torch.cat([grad_where, grad_where.new_zeros(batch, 1, grad_where.shape[2])], dim=1)
        # v_t = (Σ_j where_tj · placed_j(part_t)) · whether_t
        grad_where = grad_where * whether[..., None]
        grad_what = ((weight * whether)[..., None] * own_grad.flatten(2)) @ bank.flatten(1).T
        grad_whether = (weight[..., None] * (parts * own_grad).flatten(2)).sum(-1)
        # masks: (where · 1) · whether on each cell, and their running max with union masks
        mask = grads[channels].sum(3).sum(1).flatten(0, 1).permute(2, 1, 0)  # (B, T, J): summed over the cell
        if union_masks:
            with torch.enable_grad():
                where_, whether_ = where.detach().requires_grad_(), whether.detach().requires_grad_()
                union = cumulative_max(where_ * whether_[..., None])
                mask_where, mask_whether = torch.autograd.grad(union[:, :used], (where_, whether_), mask[:, 1:])
            grad_where, grad_whether = grad_where + mask_where, grad_whether + mask_whether
        else:
            grad_where[:, :used] += whether[:, :used, None] * mask[:, 1:]
            grad_whether[:, :used] += weight[:, :used] * mask[:, 1:].gather(2, cells[:, :used, None])[..., 0]
        return grad_whether, grad_what, grad_where, None, None, None


def _own_cells(values: Tensor, rows: Tensor, cols: Tensor, frames: Tensor) -> Tensor:
    """values[:, rows, :, cols, :, frames, samples] of frames-last values (C, n, K, n, K, F, B): each step's
    own cell (rows, cols: (T-1, B)) in the given frames (broadcast to (T-1, B, C, K, K)), as (T-1, B, C, K, K).
    One flat torch.take: ~10x faster than the same advanced indexing, which works out 7 indices per element."""
    channels, side, size, _, _, frame_count, batch = values.shape
    stride_b, stride_f = 1, batch  # torch.take reads values in their logical (row-major) order
    stride_kx = frame_count * batch
    stride_col, stride_ky = size * stride_kx, side * size * stride_kx
    stride_row, stride_c = size * stride_ky, side * size * stride_ky
    device = values.device
    lanes = (
        torch.arange(channels, device=device)[:, None, None] * stride_c
        + torch.arange(size, device=device)[:, None] * stride_ky
        + torch.arange(size, device=device) * stride_kx
    )  # (C, K, K)
    cell = rows * stride_row + cols * stride_col + torch.arange(batch, device=device) * stride_b  # (T-1, B)
    return torch.take(values, lanes + cell[..., None, None, None] + frames * stride_f)


def _running_sum_(values: Tensor, dim: int) -> Tensor:
    """torch.cumsum along `dim`, in place: one add per index, ~2x faster than torch.cumsum along an outer
    dimension of a large tensor on a CPU (which walks it element by element)."""
    for index in range(1, values.shape[dim]):
        values.select(dim, index).add_(values.select(dim, index - 1))
    return values


def located_final_canvas(latents: Latents, bank: Tensor, grid: Grid) -> Tensor:
    """`final_canvas(step_maps(latents, bank, grid), latents.whether)` of `located` latents, with the
    gradients autograd gives it (amax splits a pixel's gradient evenly among the steps that reach its
    maximum), computed cell by cell instead of through a per-step map of the whole canvas."""
    return _LocatedFinalCanvas.apply(latents.whether, latents.what, latents.where, bank, grid)


class _LocatedFinalCanvas(torch.autograd.Function):
    """c^T (B, C, S, S) = max over all steps of v_t = (w_t · part_t) · whether_t, pasted into cell j_t."""

    @staticmethod
    def forward(ctx, whether: Tensor, what: Tensor, where: Tensor, bank: Tensor, grid: Grid):
        batch, steps = whether.shape
        cells = where.argmax(-1)
        weight = where.gather(-1, cells[..., None])[..., 0]
        parts = torch.einsum("btm,mckl->btckl", what, bank).flatten(2)  # (B, T, Q)
        pasted = (weight[..., None] * parts) * whether[..., None]
        final = pasted.new_zeros(batch, grid.num_cells, parts.shape[-1])
        final.scatter_reduce_(1, cells[..., None].expand_as(pasted), pasted, reduce="amax", include_self=True)
        ctx.grid = grid
        ctx.save_for_backward(whether, bank, cells, weight, parts, pasted, final)
        return grid.assemble(final.view(batch, grid.num_cells, bank.shape[1], grid.patch_size, grid.patch_size))

    @staticmethod
    def backward(ctx, grad_canvas: Tensor):
        whether, bank, cells, weight, parts, pasted, final = ctx.saved_tensors
        grid, steps = ctx.grid, cells.shape[1]
        grads = grid.cells(grad_canvas).flatten(2)  # (B, J, Q), padding pixels 0
        own_final = final.gather(1, cells[..., None].expand_as(pasted))  # (B, T, Q)
        reaches = pasted == own_final  # step t reaches the maximum of its own cell's pixel
        drawn_there = torch.zeros_like(final).scatter_add_(1, cells[..., None].expand_as(pasted), reaches.to(final.dtype))
        in_cell = torch.zeros_like(final[..., 0]).scatter_add_(1, cells, torch.ones_like(weight))  # steps per cell
        # ties at the maximum: the steps of the cell that reach it, and, where it is 0, every other step too
        count = drawn_there + (final == 0) * (steps - in_cell)[..., None]
        share = grads / count.clamp(min=1)
        blank = share * (final == 0)  # what a step gets at a pixel of a cell it does not draw into
        own_grad = reaches * share.gather(1, cells[..., None].expand_as(pasted))  # (B, T, Q)
        grad_where = torch.einsum("bjq,btq->btj", blank, parts)
        own_blank = blank.gather(1, cells[..., None].expand_as(pasted))
        grad_where = grad_where.scatter_add(2, cells[..., None], ((own_grad - own_blank) * parts).sum(-1, keepdim=True))
        grad_where = grad_where * whether[..., None]
        grad_what = ((weight * whether)[..., None] * own_grad) @ bank.flatten(1).T
        grad_whether = (weight[..., None] * parts * own_grad).sum(-1)
        return grad_whether, grad_what, grad_where, None, None
