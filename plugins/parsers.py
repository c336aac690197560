"""Built-in parser `heuristic`: NP-DRAW's Algorithm 1 (spec §3), batched over all cells of all images.

For cell t (raster order) with zero-padded crop x_c: z_loc = t, z_id = argmin_m ‖x_c − x̃_m‖₂ and the
step draws iff cost = ‖x_c − x̃_{z_id}‖₂ − ‖x_c‖₂ ≤ ε, i.e. iff pasting the best exemplar leaves the cell
no worse than leaving it blank (up to ε). Deterministic; colour cells are K·K·C vectors, blank is black.
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
        self._check(images, bank)
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

    def _check(self, images: Tensor, bank: Tensor) -> None:
        shape = self.shape
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


@hookimpl
def npdraw_register_parsers(register):
    register("heuristic", build_heuristic_parser, HeuristicParserConfig)
