"""Frame embeddings from local changes: teacher forcing of the transformer prior with hard-located latents.

When every step draws into one cell, frame t differs from frame t−1 only in the cell drawn at step t and
in the location masks of steps t−1 and t. The frame embedding is Linear ∘ ReLU ∘ Conv(3×3, stride 2), so
the embedding of frame t is that of frame t−1 plus the Linear's columns of the few conv outputs that such
a cell change reaches, times the change of their ReLU outputs, computed from (2·w+1)² pixel windows
(`WindowGeometry`) instead of whole canvases. In VAE training the frames' gradient comes from the same
local changes (`frame_activity`, `FramesEmbedding`). Used by `npdraw_plugins.priors.transformer`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from npdraw_core.geometry import Grid
from npdraw_core.latents import Latents


@dataclass(frozen=True)
class WindowGeometry:
    """Where one cell's change reaches in the frame embedding. The conv outputs whose 3×3 stride-2
    receptive field meets cell k lie in a `size`×`size` window of the conv's output grid (windows are
    clamped into the grid, so some also cover outputs the change does not reach: their delta is exactly
    zero). That window reads a `width`² (width = 2·size+1) patch of the conv-padded frame.

    Canvases are held flat, channels last, in a buffer of side nK+2 in grid coordinates shifted by one (every
    cell pastes at rows r·K+1 .. r·K+K); the conv-padded frame is the buffer's rows pad_before ..
    pad_before+S+1. Pixels outside the canvas stay zero (parts are cropped with `inside`)."""

    size: int
    width: int
    side: int  # buffer side nK + 2
    window_index: Tensor  # (T, width²) buffer pixels of each cell's input window, row-major
    cell_index: Tensor  # (T, K²) buffer pixels of each cell
    patch_index: Tensor  # (size² · 9,) window pixel read by each (output, 3×3 tap): im2col of the window
    feature_index: Tensor  # (T, size²) flat indices of each cell's output window in the O×O grid
    own_mask: Tensor  # (T, width²) 1 where the cell itself lies inside the canvas, in its own window
    inside: Tensor  # (T, K, K) 1 where the cell's pixels lie inside the canvas (cropped elsewhere)

    def to(self, device: torch.device) -> WindowGeometry:
        names = ("window_index", "cell_index", "patch_index", "feature_index", "own_mask", "inside")
        return WindowGeometry(self.size, self.width, self.side, *(getattr(self, name).to(device) for name in names))


def window_geometry(grid: Grid) -> WindowGeometry:
    side, k, n, pad = grid.canvas_size, grid.patch_size, grid.cells_per_side, grid.pad_before
    out_side = (side + 1) // 2
    ranges = []
    for index in range(n):
        first, last = max(index * k - pad, 0), min(index * k - pad + k - 1, side - 1)
        # output o reads canvas pixels 2o-1 .. 2o+1
        ranges.append((max(-(-(first - 1) // 2), 0), min((last + 1) // 2, out_side - 1)))
    size = max(hi - lo + 1 for lo, hi in ranges)
    starts = [min(lo, out_side - size) for lo, _ in ranges]
    width, buffer = 2 * size + 1, n * k + 2
    canvas = torch.zeros(buffer, buffer)  # buffer coordinates: canvas pixel (y, x) at (y+pad+1, x+pad+1)
    canvas[pad + 1 : pad + 1 + side, pad + 1 : pad + 1 + side] = 1
    pixels = torch.arange(buffer * buffer).view(buffer, buffer)
    outputs, span = torch.arange(size), torch.arange(3)
    taps = 2 * outputs[:, None] + span  # window row (or column) read by output o's tap
    patch_index = (taps[:, None, :, None] * width + taps[None, :, None, :]).flatten()  # (oy, ox, dy, dx)
    windows, cells, feature_index, own_mask, inside = [], [], [], [], []
    for row in range(n):
        for col in range(n):
            r0, c0 = starts[row], starts[col]
            top, left = 2 * r0 + pad, 2 * c0 + pad  # conv-padded row 2·r0 is canvas row 2·r0-1
            windows.append(pixels[top : top + width, left : left + width].flatten())
            cells.append(pixels[row * k + 1 : row * k + k + 1, col * k + 1 : col * k + k + 1].flatten())
            feature_index.append(((r0 + outputs)[:, None] * out_side + (c0 + outputs)[None, :]).flatten())
            cell = torch.zeros_like(canvas)
            cell[row * k + 1 : row * k + k + 1, col * k + 1 : col * k + k + 1] = 1
            cell *= canvas
            own_mask.append(cell[top : top + width, left : left + width].flatten())
            inside.append(cell[row * k + 1 : row * k + k + 1, col * k + 1 : col * k + k + 1])
    return WindowGeometry(
        size, width, buffer, torch.stack(windows), torch.stack(cells), patch_index, torch.stack(feature_index),
        torch.stack(own_mask), torch.stack(inside),
    )  # fmt: skip


def transition_windows(values: Tensor, cells: Tensor, geometry: WindowGeometry) -> Tensor:
    """The im2col patches of the input window around each step's cell, before and after the step:
    (2, T-1, B, size² · 9 · C'), transitions step-major, each row in (output, tap, channel) order.

    values (B, T-1, K², C'): what step i pastes (cropped to the canvas), the union mask as a last channel
    when there is one. One flat canvas per sequence, updated in place step by step (c^{i+1} = max(c^i,
    pasted part)), so memory stays at one canvas per sequence; constants (no gradient)."""
    batch, used, _, channels = values.shape
    canvas = values.new_zeros(batch * geometry.side**2 * channels)
    base = torch.arange(batch, device=values.device)[:, None] * geometry.side**2
    lanes = torch.arange(channels, device=values.device)

    def flat(pixels: Tensor) -> Tensor:  # (T, P) buffer pixels → (T-1 steps, B · P · C') flat canvas indices
        chosen = pixels[cells.T] + base  # (T-1, B, P)
        return (chosen[..., None] * channels + lanes).flatten(1)

    patch_pixels = flat(geometry.window_index[:, geometry.patch_index])
    cell_pixels = flat(geometry.cell_index)
    values = values.transpose(0, 1).reshape(used, -1)
    patches = values.new_empty(2, used, patch_pixels.shape[1])
    for step in range(used):
        torch.index_select(canvas, 0, patch_pixels[step], out=patches[0, step])
        own = cell_pixels[step]
        canvas.index_copy_(0, own, torch.maximum(canvas.index_select(0, own), values[step]))
        torch.index_select(canvas, 0, patch_pixels[step], out=patches[1, step])
    return patches


def im2col_weight(conv_weight: Tensor) -> Tensor:
    """(E, C', 3, 3) → (9 · C', E), rows in (dy, dx, channel) order like `patch_index` × channels last."""
    return conv_weight.permute(2, 3, 1, 0).reshape(-1, conv_weight.shape[0])


def per_cell_matmul(rows: Tensor, counts: list[int], weights: tuple[Tensor, ...]) -> Tensor:
    """rows (N, R, f), sorted by cell with counts[j] rows for cell j → (N, R, d): each cell's rows @ its
    weights[j] (f, d), one matmul per cell on a contiguous slice (no gathered weight matrices)."""
    pieces = rows.split(counts)
    out = [piece.reshape(-1, piece.shape[-1]) @ weight for piece, weight in zip(pieces, weights, strict=True) if len(piece)]
    return torch.cat(out).view(*rows.shape[:2], -1)


def frame_activity(
    bias: Tensor, outputs_per_channel: int, columns: Tensor, cells: Tensor, after: Tensor, with_mask: Tensor | None
) -> Tensor:
    """(T, E·O², B) ReLU' of every frame's conv outputs (1 where positive, else 0) in the bias's dtype (the
    backward multiplies by it; a product with a bool mask converts it on the fly, ~3x slower), rows in the
    Linear's column order (`columns`: (J, E·size²), each cell's window). Frame f+1's pre-activations are frame
    f's canvas ones with step f's window replaced by `after` (T-1, B, E·size²), plus, without union masks, its
    mask's contribution there (`with_mask`: that window's pre-activations with the mask). Frame 0 is blank:
    the conv bias."""
    batch, steps = cells.shape
    state = bias.repeat_interleave(outputs_per_channel)[:, None].repeat(1, batch)
    active = torch.empty(steps, len(state), batch, dtype=state.dtype, device=state.device)
    torch.gt(state, 0, out=active[0])
    windows = columns[cells[:, :-1].T].transpose(1, 2)  # (T-1, E·size², B)
    masked = None if with_mask is None else (with_mask > 0).to(state.dtype).transpose(1, 2)
    for step in range(steps - 1):
        state.scatter_(0, windows[step], after[step].T)
        torch.gt(state, 0, out=active[step + 1])
        if masked is not None:
            active[step + 1].scatter_(0, windows[step], masked[step])
    return active


class FramesEmbedding(torch.autograd.Function):
    """The frame embedding of `frames` (B, T, C+1, S, S), given as `embedded` (computed from the latents'
    local changes), with the gradient the frames get from Linear ∘ ReLU ∘ Conv (weights frozen):
    convT(relu'(pre) ⊙ W_Lᵀ dE) for every frame. Frames are the last (contiguous) dimension and are
    processed in chunks whose intermediates stay in the CPU's caches: one matmul through the Linear, one
    through the conv's 9 taps, 9 strided adds. `active`: (T, E·O², B), ReLU' (see `frame_activity`)."""

    chunk = 1024  # columns (frames · sequences) per chunk

    @staticmethod
    def forward(ctx, frames, embedded, active, linear_weight, conv_weight, canvas_size):
        ctx.save_for_backward(active, linear_weight, conv_weight)
        ctx.canvas_size = canvas_size
        return embedded.clone()

    @staticmethod
    def backward(ctx, grad):
        active, linear_weight, conv_weight = ctx.saved_tensors  # active: (T, E·O², B)
        batch, steps, width = grad.shape
        features, channels = conv_weight.shape[:2]
        out_side, rows = math.isqrt(active.shape[1] // features), active.shape[1]
        per_frame = grad.permute(2, 1, 0).reshape(width, steps * batch)  # (d, T·B), frame-major
        taps_weight = conv_weight.permute(1, 2, 3, 0).reshape(-1, features)  # (C'·9, E)
        side, span = 2 * out_side + 2, 2 * out_side  # the conv-padded frame (a row/column more when odd)
        padded = grad.new_zeros(channels, side, side, steps * batch)
        frames_per_chunk = max(1, FramesEmbedding.chunk // batch)
        for first in range(0, steps, frames_per_chunk):
            last = min(first + frames_per_chunk, steps)
            columns = slice(first * batch, last * batch)
            hidden = linear_weight.t() @ per_frame[:, columns]  # (E·O², frames · B)
            # ReLU' as a product (~10x faster than masked_fill_ with the negated mask)
            hidden.view(rows, last - first, batch).mul_(active[first:last].transpose(0, 1))
            taps = (taps_weight @ hidden.view(features, -1)).view(channels, 3, 3, out_side, out_side, -1)
            for row in range(3):
                for col in range(3):
                    padded[:, row : row + span : 2, col : col + span : 2, columns] += taps[:, row, col]
        size = ctx.canvas_size
        frames_grad = padded[:, 1 : size + 1, 1 : size + 1].unflatten(-1, (steps, batch)).permute(4, 3, 0, 1, 2)
        return frames_grad, None, None, None, None, None


def pasted(
    latents: Latents, bank: Tensor, geometry: WindowGeometry, cells: Tensor, marks: Tensor, *, union_masks: bool
) -> Tensor:
    """What steps 0..T-2 paste into their cells, (B, T-1, K², C or C+1), channels last: the same products
    as `prior_frames` (weight · part · whether), cropped to the canvas; with union masks, the step's mask
    value (`marks`) as a last channel."""
    used = latents.num_steps - 1  # frame T is never an input
    weight = latents.where.gather(-1, cells[..., None])[:, :used, 0]  # 1 for hard latents
    parts = torch.einsum("btm,mckl->btckl", latents.what[:, :used], bank)
    values = (weight[..., None, None, None] * parts) * latents.whether[:, :used, None, None, None]
    inside = geometry.inside[cells[:, :used]]
    pixels = (values * inside[:, :, None]).permute(0, 1, 3, 4, 2).flatten(2, 3)  # (B, T-1, K², C)
    if union_masks:
        pixels = torch.cat([pixels, (marks[:, :used, None, None] * inside).flatten(2)[..., None]], dim=-1)
    return pixels
