"""Built-in parsers: `heuristic` (NP-DRAW's Algorithm 1, spec §3) and `greedy` (importance order).

`heuristic`: for cell t (raster order) with zero-padded crop x_c: z_loc = t, z_id = argmin_m ‖x_c − x̃_m‖₂
and the step draws iff cost = ‖x_c − x̃_{z_id}‖₂ − ‖x_c‖₂ ≤ ε, i.e. iff pasting the best exemplar leaves the
cell no worse than leaving it blank (up to ε). One part per cell, at most. It computes the distances in
matmul form and falls back on the direct ones wherever rounding could matter, so its parses are exactly
those of the definition (`exact_nearest`), several times faster.

`greedy`: step t draws, over all cells, the (cell, part) pair that lowers the image's squared error most
given the max-composed canvas so far (so a cell may get a second part), until no pair lowers it by more
than ε. The parse is ordered by importance, not position: its drawn steps come first, the main strokes
before the details.

Both are deterministic and batched over images; colour cells are K·K·C vectors, blank is black.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from npdraw_core.config import check_at_least, check_finite
from npdraw_core.geometry import Grid, ModelShape
from npdraw_core.hookspecs import hookimpl
from npdraw_core.interfaces import Parser
from npdraw_core.latents import Latents


@dataclass(kw_only=True)
class HeuristicParserConfig:
    parse_threshold: float = 0.01  # ε
    batch_size: int = 1024  # images per chunk: bounds memory at about batch·T·D floats (the cells)

    def __post_init__(self) -> None:
        check_finite(self, "parse_threshold")
        check_at_least(self, 1, "batch_size")


class HeuristicParser(Parser):
    def __init__(self, config: HeuristicParserConfig, *, shape: ModelShape):
        self.config = config
        self.shape = shape
        self.grid = shape.grid
        self.batch_size = config.batch_size

    def parse(self, images: Tensor, bank: Tensor) -> Latents:
        """images (B, C, S, S) in [0, 1], bank (M, C, K, K) → hard (one-hot) latents with T = num cells."""
        indices = self.parse_indices(images, bank)
        return Latents.from_indices(**indices, bank_size=len(bank), num_cells=self.grid.num_cells)

    def parse_indices(self, images: Tensor, bank: Tensor) -> dict[str, Tensor]:
        """The same parse as integer arrays (B, T): what and where (int64), whether (uint8)."""
        check_inputs(self.shape, images, bank)
        bank_vectors = bank.to(images.device, torch.float32).flatten(1)  # (M, D)
        whats, whethers = [], []
        for start in range(0, len(images), self.batch_size):
            what, whether = self._parse_chunk(images[start : start + self.batch_size], bank_vectors)
            whats.append(what)
            whethers.append(whether)
        what = torch.cat(whats) if whats else images.new_zeros((0, self.grid.num_cells), dtype=torch.long)
        whether = torch.cat(whethers) if whethers else what.to(torch.uint8)
        where = torch.arange(self.grid.num_cells, device=images.device).expand(len(images), -1)
        return {"what": what, "where": where.contiguous(), "whether": whether}

    def _parse_chunk(self, images: Tensor, bank_vectors: Tensor) -> tuple[Tensor, Tensor]:
        batch, num_cells = len(images), self.grid.num_cells
        cells, order = column_major_cells(self.grid, images.float())
        what, whether = nearest_exemplars(
            cells, bank_vectors[:, order], self.config.parse_threshold, reference_order=order.argsort()
        )
        return what.reshape(batch, num_cells), whether.reshape(batch, num_cells)


def column_major_cells(grid: Grid, images: Tensor) -> tuple[Tensor, Tensor]:
    """Every cell of the padded images (B, C, S, S) as one row (B·T, D), cells in raster order, each cell's
    pixels listed column by column, and `order` (D,): row = grid.cells(images).flatten(2)[..., order].

    Distances do not depend on the order of a vector's entries, and this copy (whole K-pixel columns
    stay contiguous in the source rows) takes about half the time of `Grid.cells`'s row-by-row one.
    """
    padded = grid.pad(images)
    batch, channels = padded.shape[:2]
    n, k = grid.cells_per_side, grid.patch_size
    blocks = padded.view(batch, channels, n, k, n, k).permute(0, 2, 4, 1, 5, 3)  # (B, n, n, C, col, row)
    order = torch.arange(channels * k * k, device=images.device).view(channels, k, k).transpose(1, 2)
    return blocks.reshape(batch * n * n, channels * k * k), order.flatten()


def exact_nearest(cells: Tensor, exemplars: Tensor, threshold: float) -> tuple[Tensor, Tensor]:
    """Algorithm 1's choice for each cell (N, D) by its definition: the nearest exemplar (M, D) by the
    directly computed float32 Euclidean distance (the first on ties) and whether its cost
    ‖x − x̃‖ − ‖x‖ ≤ threshold → what (N,) int64, whether (N,) uint8.

    The parse's reference: `nearest_exemplars` gives exactly its answers, and asks it whenever rounding
    could make the fast form disagree. The direct (non-matmul) distance is exact for a cell equal to an
    exemplar (distance 0), so such a cell parses back to it (render∘parse round trip).
    """
    distances = torch.cdist(cells, exemplars, compute_mode="donot_use_mm_for_euclid_dist")  # (N, M)
    what = distances.argmin(dim=-1)  # the first exemplar on ties, on every device
    cost = distances.gather(1, what[:, None])[:, 0] - torch.linalg.vector_norm(cells, dim=-1)
    return what, (cost <= threshold).to(torch.uint8)


# Cells scored per matmul: the (M, block) scores stay in a 1 MiB L2 cache for M ≤ 60.
NEAREST_BLOCK_ROWS = 4096


def nearest_exemplars(
    cells: Tensor,
    exemplars: Tensor,
    threshold: float,
    *,
    reference_order: Tensor | None = None,
    block_rows: int = NEAREST_BLOCK_ROWS,
) -> tuple[Tensor, Tensor]:
    """`exact_nearest(cells, exemplars, threshold)`'s answers, bit for bit, several times faster.

    cells (N, D) and exemplars (M, D) may list their entries in any one order; `reference_order` (D,)
    puts them back in the order `exact_nearest` sees in the reference parse (a float sum depends on it).

    - An all-zero cell (62% of the cells of MNIST digits on their padded canvas) gets the answer of one
      zero cell, asked of `exact_nearest` once.
    - Every other cell is scored in matmul form, ‖x̃‖² − 2x·x̃ (+ ‖x‖²), in cache-sized blocks. Each of its
      squared distances is within (2D + 16)·u·(‖x‖ + max‖x̃‖)² of the true one (u = the unit roundoff; a
      D-term dot product errs by at most D·u·Σ|x_i x̃_i| ≤ D·u·‖x‖‖x̃‖). A cell whose runner-up exemplar
      is within twice that bound (plus the direct form's own relative error) of the best, or whose cost
      is that close to the threshold, is decided by `exact_nearest`: on 60,000 MNIST images with M = 50,
      a few hundred of 2.16 million cells.
    """
    num_cells, dims = cells.shape
    if reference_order is None:
        reference_order = torch.arange(dims, device=cells.device)
    reference_exemplars = exemplars[:, reference_order]
    blank_what, blank_whether = exact_nearest(cells.new_zeros(1, dims), reference_exemplars, threshold)
    what = blank_what.expand(num_cells).clone()
    whether = blank_whether.expand(num_cells).clone()
    # Σ|x| is 0 only for an all-zero cell (Σx² can underflow); a NaN cell counts as inked.
    inked = cells.abs().sum(1).nonzero()[:, 0]
    if not len(inked):
        return what, whether
    inked_what, inked_whether, unsure = _nearest_in_matmul_form(
        cells.index_select(0, inked), exemplars, threshold, block_rows
    )
    if len(unsure):
        exact = cells[inked[unsure]][:, reference_order]
        inked_what[unsure], inked_whether[unsure] = exact_nearest(exact, reference_exemplars, threshold)
    what.index_copy_(0, inked, inked_what)
    whether.index_copy_(0, inked, inked_whether)
    return what, whether


def _nearest_in_matmul_form(
    cells: Tensor, exemplars: Tensor, threshold: float, block_rows: int
) -> tuple[Tensor, Tensor, Tensor]:
    """The nearest exemplar and the draw decision of every cell from ‖x̃‖² − 2x·x̃ → what (N,) int64,
    whether (N,) uint8 and the (sorted) indices of the cells for which rounding could change either."""
    dtype = torch.float32
    if cells.device.type != "cpu" or torch.get_float32_matmul_precision() != "highest":
        # TF32 / bf16 matmuls (allowed on GPUs, or when a user lowers the precision) would break the
        # error bound; float64 keeps it with room to spare.
        dtype = torch.float64
    cells, exemplars = cells.to(dtype), exemplars.to(dtype)
    num_cells, dims = cells.shape
    sq_norms = exemplars.square().sum(1, keepdim=True)  # (M, 1)
    cell_sq_norms = cells.square().sum(1)
    norm = cell_sq_norms.sqrt()
    error = (2 * dims + 16) * (torch.finfo(dtype).eps / 2) * (norm + float(sq_norms.max().sqrt())) ** 2
    # Another exemplar within `tolerance` of the best could be the direct form's nearest. Its own error is
    # about (D/2 + 2)·u relative per distance, far under 1e-5 of a squared distance, which is at most
    # (‖x‖ + min‖x̃‖)² for the best one.
    tolerance = 2 * error + 1e-5 * (norm + float(sq_norms.min().sqrt())) ** 2
    best = torch.empty_like(cell_sq_norms)
    # Scores are laid out (M, cells): reductions over the exemplars then run along rows, vectorised
    # across cells. How many exemplars are that near, and which one when there is just one, come from
    # one small matmul: [1; m] · [score_m ≤ best + tolerance].
    counts = torch.empty(2, num_cells, dtype=dtype, device=cells.device)
    weights = torch.stack([torch.ones(len(exemplars)), torch.arange(len(exemplars))]).to(cells)
    near = torch.empty(len(exemplars), min(block_rows, num_cells), dtype=dtype, device=cells.device)
    for start in range(0, num_cells, block_rows):
        stop = min(start + block_rows, num_cells)
        scores = torch.addmm(sq_norms, exemplars, cells[start:stop].T, alpha=-2)  # squared distance − ‖x‖²
        torch.amin(scores, 0, out=best[start:stop])
        torch.le(scores, best[start:stop] + tolerance[start:stop], out=near[:, : stop - start])
        torch.mm(weights, near[:, : stop - start], out=counts[:, start:stop])
    what = counts[1].long()  # meaningful where the count is 1; the other cells are decided again
    sq_distance = best + cell_sq_norms
    # The true cost lies in [low, high]; the direct form's own cost is within `slack` of the true one.
    low = (sq_distance - error).clamp_(min=0).sqrt_() - norm
    high = (sq_distance + error).clamp_(min=0).sqrt_() - norm
    slack = 1e-5 * (norm + high.abs()) + 1e-6
    borderline = (low - slack <= threshold) & (high + slack > threshold)
    whether = (sq_distance.clamp(min=0).sqrt_() - norm <= threshold).to(torch.uint8)
    unsure = (counts[0] != 1) | borderline | ~torch.isfinite(sq_distance)
    return what, whether, unsure.nonzero()[:, 0]


def check_inputs(shape: ModelShape, images: Tensor, bank: Tensor) -> None:
    """Canvas-size images and a bank of this model's patch size and channels, or a ValueError saying how."""
    if images.dim() != 4 or images.shape[1:] != (shape.channels, shape.canvas_size, shape.canvas_size):
        raise ValueError(
            f"the parser expects canvas-size images (B, {shape.channels}, {shape.canvas_size}, "
            f"{shape.canvas_size}), got {tuple(images.shape)}; resize with npdraw_core.data.at_canvas_size"
        )
    if bank.dim() != 4 or bank.shape[1:] != (shape.channels, shape.patch_size, shape.patch_size):
        raise ValueError(
            f"the bank must be (M, {shape.channels}, {shape.patch_size}, {shape.patch_size}) for this model, "
            f"got {tuple(bank.shape)}; rebuild the bank with the run's patch_size"
        )


def build_heuristic_parser(config: HeuristicParserConfig, *, shape: ModelShape) -> HeuristicParser:
    return HeuristicParser(config, shape=shape)


# -- greedy --------------------------------------------------------------------------------------------------
@dataclass(kw_only=True)
class GreedyParserConfig:
    parse_threshold: float = 0.01  # ε: a step draws only if its part lowers the squared error by more than ε
    batch_size: int = 1024  # images per call: memory is about batch·T·M floats (every cell's gains)

    def __post_init__(self) -> None:
        check_finite(self, "parse_threshold")
        check_at_least(self, 1, "batch_size")
        if self.parse_threshold < 0:
            raise ValueError(
                f"parse_threshold must be at least 0 for the greedy parser, got {self.parse_threshold!r}: it is "
                "the least drop in squared error worth a part, and a negative one would draw parts that make "
                "the parse worse"
            )


def part_gains(target: Tensor, canvas: Tensor, weight: Tensor, parts_by_pixel: Tensor) -> Tensor:
    """How much max-composing each part into a cell lowers its squared error: ‖x − c‖² − ‖x − max(c, p)‖².

    target, canvas, weight (N, D) (weight 0 on padding pixels, which the rendering crops), parts_by_pixel
    (D, M) → (N, M). Written per pixel as δ·(2(x − c) − δ) with δ = max(c, p) − c, so pixels a part does
    not raise contribute exactly 0: a part already under the canvas gains exactly 0, never a rounding
    error above ε = 0. Pixels run along dim 1 and parts along the last dim, which vectorises far better
    than D = K·K·C (25) innermost.
    """
    added = torch.sub(parts_by_pixel, canvas[:, :, None]).clamp_(min=0).mul_(weight[:, :, None])  # (N, D, M)
    twice_residual = (2 * (target - canvas))[:, :, None]
    return added.mul_(twice_residual - added).sum(1)


class GreedyParser(Parser):
    """Best (cell, part) first, on the max-composed canvas; see the module docstring.

    Cost: scoring every (cell, part) once is the heuristic's work (B·T·M·D); after that only the drawn
    cell's candidates change, so each step re-scores one cell per image (B·M·D) and takes an argmax over
    the T per-cell best gains. Measured on MNIST's 60,000 training images (K=5, M=50, ε=0.01, one
    thread): about 6,000 images per CPU second, 4× the heuristic's CPU time before the heuristic's
    matmul-form fast path and about 17× after it (benchmarks/bench_parse_and_bank.py). Its time is in
    these per-step re-scorings of drawn cells, not in the blank-canvas scoring the two could share.
    """

    def __init__(self, config: GreedyParserConfig, *, shape: ModelShape):
        self.config = config
        self.shape = shape
        self.grid = shape.grid
        self.batch_size = config.batch_size
        blank = torch.ones(1, shape.channels, shape.canvas_size, shape.canvas_size)
        self.weight = self.grid.cells(blank).flatten(2)[0]  # (T, D): 1 on the image, 0 on the padding

    def parse(self, images: Tensor, bank: Tensor) -> Latents:
        """images (B, C, S, S) in [0, 1], bank (M, C, K, K) → hard (one-hot) latents with T = num cells."""
        indices = self.parse_indices(images, bank)
        return Latents.from_indices(**indices, bank_size=len(bank), num_cells=self.grid.num_cells)

    def parse_indices(self, images: Tensor, bank: Tensor) -> dict[str, Tensor]:
        """(B, T) integer arrays: what and where (int64), whether (uint8); the drawn steps come first."""
        check_inputs(self.shape, images, bank)
        parts = bank.to(images.device, torch.float32).flatten(1)  # (M, D)
        chunks = [
            self._parse_chunk(images[start : start + self.batch_size], parts)
            for start in range(0, len(images), self.batch_size)
        ]
        if not chunks:
            empty = images.new_zeros((0, self.grid.num_cells), dtype=torch.long)
            return {"what": empty, "where": empty.clone(), "whether": empty.to(torch.uint8)}
        return {name: torch.cat([chunk[name] for chunk in chunks]) for name in ("what", "where", "whether")}

    def _parse_chunk(self, images: Tensor, parts: Tensor) -> dict[str, Tensor]:
        batch, steps = len(images), self.grid.num_cells
        target = self.grid.cells(images.float()).flatten(2)  # (B, T, D)
        weight = self.weight.to(images.device)
        canvas = torch.zeros_like(target)
        # On the blank canvas the gain of part p in a cell is 2·x·p − ‖p‖² (p clamped at 0, its padding
        # pixels masked; x is 0 there): one matmul for every cell of the chunk, like the heuristic's scoring.
        # An all-zero image scores exactly −‖p‖² ≤ 0, so it draws nothing.
        blank_parts = parts.clamp(min=0)[None] * weight[:, None]  # (T, M, D)
        gains = 2 * target @ parts.clamp(min=0).T - blank_parts.square().sum(-1)  # (B, T, M)
        best_part = gains.argmax(dim=-1)  # the first exemplar on ties
        best_gain = gains.gather(-1, best_part[..., None])[..., 0]  # (B, T): each cell's best candidate
        parts_by_pixel = parts.T.contiguous()  # (D, M), for part_gains
        rows = torch.arange(batch, device=images.device)
        what, where = (torch.zeros(batch, steps, dtype=torch.long, device=images.device) for _ in range(2))
        whether = torch.zeros(batch, steps, dtype=torch.uint8, device=images.device)
        for step in range(steps):
            cell = best_gain.argmax(dim=1)  # the first cell on ties (and the first part within a cell)
            part, draw = best_part[rows, cell], best_gain[rows, cell] > self.config.parse_threshold
            what[:, step], where[:, step], whether[:, step] = part, cell, draw
            if not draw.any():
                # No canvas changes any more, so every later step would make this same (skipped) choice.
                what[:, step:], where[:, step:] = part[:, None], cell[:, None]
                break
            # Only the drawn cell's candidates change: max-compose the part there and re-score that one
            # cell (M parts) of each drawing image. An image that skips has stopped for good: its canvas
            # and scores stay as they are, so it would skip again.
            image, at = rows[draw], cell[draw]
            canvas[image, at] = torch.maximum(canvas[image, at], parts[part[draw]])
            cell_gains = part_gains(
                target[image, at], canvas[image, at], weight[at], parts_by_pixel
            )  # (N, M)
            best_part[image, at] = cell_gains.argmax(dim=1)
            best_gain[image, at] = cell_gains.gather(1, best_part[image, at][:, None])[:, 0]
        return {"what": what, "where": where, "whether": whether}


def build_greedy_parser(config: GreedyParserConfig, *, shape: ModelShape) -> GreedyParser:
    return GreedyParser(config, shape=shape)


@hookimpl
def npdraw_register_parsers(register):
    register("heuristic", build_heuristic_parser, HeuristicParserConfig)
    register("greedy", build_greedy_parser, GreedyParserConfig)
