"""Property tests of the core geometry (spec §2) and of the parse ∘ render round trip (spec §3)."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from npdraw_core.geometry import Grid, ModelShape, cumulative_canvases
from npdraw_core.latents import Latents, canvases, render, step_maps
from npdraw_plugins.parsers import HeuristicParser, HeuristicParserConfig

FAST = settings(max_examples=40, deadline=None)


@pytest.mark.parametrize(
    ("canvas_size", "patch_size", "cells_per_side", "pad_before", "pad_after"),
    [(28, 5, 6, 1, 1), (28, 6, 5, 1, 1), (28, 8, 4, 2, 2), (32, 4, 8, 0, 0)],
)
def test_spec_grids(canvas_size, patch_size, cells_per_side, pad_before, pad_after):
    grid = Grid(canvas_size, patch_size)
    assert grid.cells_per_side == cells_per_side
    assert grid.num_cells == cells_per_side**2
    assert (grid.pad_before, grid.pad_after) == (pad_before, pad_after)
    assert grid.pad(torch.zeros(1, 1, canvas_size, canvas_size)).shape[-1] == cells_per_side * patch_size


@st.composite
def grids(draw, max_canvas: int = 20):
    canvas_size = draw(st.integers(2, max_canvas))
    return Grid(canvas_size, draw(st.integers(1, canvas_size)))


def seeded(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@FAST
@given(grid=grids(40))
def test_grid_covers_the_canvas_with_floor_half_padding(grid):
    n, k, s = grid.cells_per_side, grid.patch_size, grid.canvas_size
    assert n == math.ceil(s / k) and (n - 1) * k < s <= n * k
    assert grid.pad_before == (n * k - s) // 2 and grid.pad_before + grid.pad_after == n * k - s


@FAST
@given(grid=grids(), channels=st.integers(1, 3), batch=st.integers(1, 3), seed=st.integers(0, 2**31))
def test_cells_are_raster_order_crops_and_assemble_inverts_them(grid, channels, batch, seed):
    images = torch.rand(batch, channels, grid.canvas_size, grid.canvas_size, generator=seeded(seed))
    cells = grid.cells(images)
    n, k = grid.cells_per_side, grid.patch_size
    assert cells.shape == (batch, n * n, channels, k, k)
    padded = grid.pad(images)
    for t in {0, n * n - 1, (n * n) // 2}:
        row, col = divmod(t, n)
        assert torch.equal(cells[:, t], padded[:, :, row * k : (row + 1) * k, col * k : (col + 1) * k])
    assert torch.equal(grid.assemble(cells), images)


def random_latents(grid: Grid, batch: int, bank_size: int, seed: int, *, soft: bool) -> Latents:
    generator = seeded(seed)
    steps = grid.num_cells
    whether = (torch.rand(batch, steps, generator=generator) < 0.6).float()
    if soft:
        what = torch.rand(batch, steps, bank_size, generator=generator).softmax(-1)
        where = torch.rand(batch, steps, steps, generator=generator).mul(5).softmax(-1)
        return Latents(whether, what, where)
    what = torch.randint(bank_size, (batch, steps), generator=generator)
    where = torch.randint(steps, (batch, steps), generator=generator)
    return Latents.from_indices(what=what, where=where, whether=whether, bank_size=bank_size, num_cells=steps)


@FAST
@given(grid=grids(12), seed=st.integers(0, 2**31), soft=st.booleans(), channels=st.integers(1, 3))
def test_canvases_grow_monotonically_and_end_at_the_max_of_drawn_steps(grid, seed, soft, channels):
    bank = torch.rand(4, channels, grid.patch_size, grid.patch_size, generator=seeded(seed + 1))
    latents = random_latents(grid, 2, len(bank), seed, soft=soft)
    all_canvases = canvases(latents, bank, grid)
    assert torch.all(all_canvases[:, 1:] >= all_canvases[:, :-1])
    assert torch.all(all_canvases[:, 0] >= 0)
    maps = step_maps(latents, bank, grid)
    for b in range(latents.batch_size):  # reference: the max over the drawn steps only, one by one
        expected = torch.zeros_like(maps[b, 0])
        for t in torch.nonzero(latents.whether[b]).flatten().tolist():
            expected = torch.maximum(expected, maps[b, t])
        assert torch.allclose(all_canvases[b, -1], expected)
    assert torch.equal(render(latents, bank, grid), all_canvases[:, -1])
    assert torch.equal(cumulative_canvases(maps, latents.whether), all_canvases)


def parser_for(grid: Grid, channels: int, bank_size: int) -> HeuristicParser:
    shape = ModelShape(channels, grid.canvas_size, grid.canvas_size, grid.patch_size, bank_size)
    return HeuristicParser(HeuristicParserConfig(batch_size=3), shape=shape)


@st.composite
def parse_cases(draw, padded: bool):
    patch_size = draw(st.integers(1, 5))
    cells = draw(st.integers(2 if padded else 1, 5))
    canvas_size = cells * patch_size - (
        draw(st.integers(1, patch_size - 1)) if padded and patch_size > 1 else 0
    )
    return (
        Grid(canvas_size, patch_size),
        draw(st.integers(1, 3)),
        draw(st.integers(1, 12)),
        draw(st.integers(0, 2**31)),
    )


def parse_render_parse(grid: Grid, channels: int, bank_size: int, seed: int):
    generator = seeded(seed)
    # norms above ε: a blank cell never parses as "draw", as with a bank of non-empty patches
    bank = 0.05 + 0.95 * torch.rand(
        bank_size, channels, grid.patch_size, grid.patch_size, generator=generator
    )
    bank[: bank_size // 3] = bank[bank_size // 3 : 2 * (bank_size // 3)]  # duplicate exemplars: ties
    images = torch.rand(4, channels, grid.canvas_size, grid.canvas_size, generator=generator)
    images *= torch.rand(4, 1, 1, 1, generator=generator) < 0.75  # some blank images
    parser = parser_for(grid, channels, bank_size)
    first = parser.parse(images, bank)
    second = parser.parse(render(first, bank, grid), bank)
    return first.indices(), second.indices()


@FAST
@given(case=parse_cases(padded=False))
def test_parsing_the_rendering_of_a_parse_gives_the_same_parse(case):
    first, second = parse_render_parse(*case)
    drawn = first["whether"].bool()
    assert torch.equal(first["whether"], second["whether"])
    assert torch.equal(first["where"], second["where"])
    assert torch.equal(first["what"][drawn], second["what"][drawn])  # skipped steps carry no `what`


@FAST
@given(case=parse_cases(padded=True))
def test_round_trip_holds_on_interior_cells_when_the_canvas_is_padded(case):
    # Border cells lose the part of their exemplar that falls in the padding, so only the cells that lie
    # wholly inside the canvas must parse back exactly.
    grid = case[0]
    first, second = parse_render_parse(*case)
    n = grid.cells_per_side
    row, col = torch.arange(n * n) // n, torch.arange(n * n) % n
    lo, hi = (1 if grid.pad_before else 0), (n - 2 if grid.pad_after else n - 1)
    interior = (row >= lo) & (row <= hi) & (col >= lo) & (col <= hi)
    drawn = first["whether"].bool() & interior
    assert torch.equal(first["whether"][:, interior], second["whether"][:, interior])
    assert torch.equal(first["what"][drawn], second["what"][drawn])
