"""Built-in parsers: `heuristic` (NP-DRAW's Algorithm 1, spec §3) and `greedy` (importance order).

`heuristic`: for cell t (raster order) with zero-padded crop x_c: z_loc = t, z_id = argmin_m ‖x_c − x̃_m‖₂
and the step draws iff cost = ‖x_c − x̃_{z_id}‖₂ − ‖x_c‖₂ ≤ ε, i.e. iff pasting the best exemplar leaves the
cell no worse than leaving it blank (up to ε). One part per cell, at most.

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
from npdraw_core.geometry import ModelShape
from npdraw_core.hookspecs import hookimpl
from npdraw_core.interfaces import Parser
from npdraw_core.latents import Latents


@dataclass(kw_only=True)
class HeuristicParserConfig:
    parse_threshold: float = 0.01  # ε
    batch_size: int = 1024  # images per distance computation: bounds memory at batch·T·M floats

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
        cells = self.grid.cells(images.float()).reshape(batch * num_cells, -1)  # (B·T, D)
        # One distance computation for every cell of the chunk. The direct (non-matmul) mode is exact, so
        # a cell that equals an exemplar has distance 0 and parses back to it (render∘parse round trip).
        distances = torch.cdist(cells, bank_vectors, compute_mode="donot_use_mm_for_euclid_dist")  # (B·T, M)
        what = distances.argmin(dim=-1)  # the first exemplar on ties, on every device
        best_distance = distances.gather(1, what[:, None])[:, 0]
        cost = best_distance - torch.linalg.vector_norm(cells, dim=-1)
        whether = (cost <= self.config.parse_threshold).to(torch.uint8)
        return what.reshape(batch, num_cells), whether.reshape(batch, num_cells)


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
    batch_size: int = 1024  # images per call: memory is about batch·T·M floats, like the heuristic's

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
    thread): 3.8× the heuristic's CPU time (benchmarks/bench_parse_and_bank.py).
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
