"""The heuristic parser (Algorithm 1), the greedy parser, parse rendering, parse PSNR and the parse stage,
on real MNIST; the greedy parser swapped in through the whole pipeline. (Contracts over every registered
parser: tests/test_parser_contracts.py.)"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from npdraw_core.bank import build_bank
from npdraw_core.checkpoint import load_checkpoint, read_metrics
from npdraw_core.config import load_config, parse_component
from npdraw_core.data import canvas_images
from npdraw_core.geometry import Grid, ModelShape
from npdraw_core.latents import render
from npdraw_core.parsing import parse_images, parse_psnr, render_parses, save_parse_figure
from npdraw_core.pipeline import bank_stage, parse_stage, parses_key
from npdraw_core.registry import default_registry
from npdraw_core.run import Run
from npdraw_plugins.parsers import GreedyParser, GreedyParserConfig, HeuristicParser, HeuristicParserConfig
from npdraw_plugins.part_banks import FasterPAMConfig, FasterPAMEngine

GRID = Grid(28, 5)


def make_parser(grid=GRID, channels=1, bank_size=50, **options) -> HeuristicParser:
    shape = ModelShape(channels, grid.canvas_size, grid.canvas_size, grid.patch_size, bank_size)
    return HeuristicParser(HeuristicParserConfig(**options), shape=shape)


def make_greedy(grid=GRID, channels=1, bank_size=50, **options) -> GreedyParser:
    shape = ModelShape(channels, grid.canvas_size, grid.canvas_size, grid.patch_size, bank_size)
    return GreedyParser(GreedyParserConfig(**options), shape=shape)


@pytest.fixture(scope="module")
def mnist(mnist_dataset):
    train = canvas_images(mnist_dataset.load("train"), 28)[:2000]
    test = canvas_images(mnist_dataset.load("test"), 28)[:500]
    return train, test


@pytest.fixture(scope="module")
def mnist_bank(mnist):
    config = FasterPAMConfig(bank_size=20, num_patches=1500)
    return build_bank(mnist[0], GRID, FasterPAMEngine(config), config)


def test_registered_parser_builds_from_config():
    registry = default_registry()
    chosen = parse_component(
        "parser", {"type": "heuristic", "parse_threshold": 0.02}, "model.parser", registry
    )
    parser = registry.get("parser", "heuristic").build(chosen.config, shape=ModelShape(1, 28, 28, 5, 50))
    assert parser.config.parse_threshold == 0.02 and parser.grid == GRID


def test_blank_image_draws_nothing(mnist_bank):
    latents = make_parser().parse(torch.zeros(2, 1, 28, 28), mnist_bank.exemplars)
    assert latents.whether.sum() == 0
    assert torch.equal(latents.indices()["where"], torch.arange(36).expand(2, -1))


def test_image_made_of_exemplars_parses_back_to_them(mnist_bank):
    exemplars = mnist_bank.exemplars
    ids = torch.randint(len(exemplars), (36,), generator=torch.Generator().manual_seed(0))
    interior = torch.tensor(
        [0 < t // 6 < 5 and 0 < t % 6 < 5 for t in range(36)]
    )  # cells clear of the padding
    cells = exemplars[ids] * interior[:, None, None, None]
    image = GRID.assemble(cells)[None]
    parsed = make_parser(bank_size=len(exemplars)).parse(image, exemplars).indices()
    assert torch.equal(parsed["whether"][0].bool(), interior)
    assert torch.equal(parsed["what"][0][interior], ids[interior])
    assert torch.equal(render(make_parser().parse(image, exemplars), exemplars, GRID), image)


def test_cost_threshold_by_hand():
    # 1×1 patches on a 2×2 canvas; bank = {1.0}. A pixel of value a has cost |a − 1| − a = 1 − 2a:
    # a = 0.5 → cost 0 ≤ ε → draw; a = 0.49 → cost 0.02 > ε = 0.01 → skip; a = 0 → cost 1 → skip.
    grid = Grid(2, 1)
    image = torch.tensor([[[[0.5, 0.49], [0.0, 0.9]]]])
    parsed = make_parser(grid, bank_size=1).parse(image, torch.ones(1, 1, 1, 1)).indices()
    assert parsed["whether"].tolist() == [[1, 0, 0, 1]]
    parsed = (
        make_parser(grid, bank_size=1, parse_threshold=0.03).parse(image, torch.ones(1, 1, 1, 1)).indices()
    )
    assert parsed["whether"].tolist() == [[1, 1, 0, 1]]
    # nearest exemplar by Euclidean distance, colour cells as one vector over channels
    bank = torch.tensor([[0.2, 0.2, 0.2], [0.9, 0.0, 0.0]])[:, :, None, None]
    red = torch.tensor([0.7, 0.1, 0.0])[None, :, None, None].expand(1, 3, 2, 2)
    assert make_parser(grid, channels=3, bank_size=2).parse(red, bank).indices()["what"].tolist() == [[1] * 4]


def test_parser_rejects_mismatched_shapes(mnist_bank):
    with pytest.raises(ValueError, match="at_canvas_size"):
        make_parser().parse(torch.zeros(1, 1, 32, 32), mnist_bank.exemplars)
    with pytest.raises(ValueError, match="rebuild the bank"):
        make_parser().parse(torch.zeros(1, 1, 28, 28), torch.zeros(5, 1, 4, 4))


def test_parse_images_is_compact_and_chunk_independent(mnist, mnist_bank):
    images = mnist[1][:300]
    whole = parse_images(make_parser(batch_size=300), images, mnist_bank, progress=False)
    chunked = parse_images(make_parser(batch_size=7), images, mnist_bank.exemplars, progress=False)
    assert {k: v.dtype for k, v in whole.items()} == {
        "what": torch.int16,
        "where": torch.int16,
        "whether": torch.uint8,
    }
    assert all(v.shape == (300, 36) for v in whole.values())
    assert all(torch.equal(whole[k], chunked[k]) for k in whole)
    via_latents = make_parser().parse(images, mnist_bank.exemplars).indices()  # the protocol's path
    assert all(torch.equal(whole[k].long(), via_latents[k].long()) for k in whole)
    rendered = render_parses(whole, mnist_bank, GRID, batch_size=64)
    assert rendered.shape == images.shape and 0 < whole["whether"].float().mean() < 1


def test_psnr_by_hand():
    images = torch.zeros(3, 1, 2, 2)
    rendered = torch.stack([torch.full((1, 2, 2), 0.1), torch.full((1, 2, 2), 0.01), torch.zeros(1, 2, 2)])
    # per-image MSE 0.01 → 20 dB, 1e-4 → 40 dB, 0 → capped at 100 dB
    result = parse_psnr(images, rendered)
    assert result["psnr_mean"] == pytest.approx((20 + 40 + 100) / 3)
    assert result["psnr_of_mean_mse"] == pytest.approx(-10 * math.log10((0.01 + 1e-4) / 3))
    assert parse_psnr(images, images) == {
        "psnr_mean": pytest.approx(100),
        "psnr_of_mean_mse": pytest.approx(100),
    }


def test_psnr_rises_with_bank_size_on_real_mnist(mnist):
    train, test = mnist
    scores = []
    for bank_size in (5, 20, 80):
        config = FasterPAMConfig(bank_size=bank_size, num_patches=1500)
        bank = build_bank(train, GRID, FasterPAMEngine(config), config)
        indices = parse_images(make_parser(bank_size=bank_size), test, bank, progress=False)
        scores.append(parse_psnr(test, render_parses(indices, bank, GRID))["psnr_mean"])
    assert scores[0] < scores[1] < scores[2], scores
    assert 12 < scores[1] < 25  # a parse is a rough sketch of the digit, well above a blank canvas (~9 dB)


def test_parse_figure_shows_pairs(mnist, tmp_path):
    images = mnist[1][:40]
    save_parse_figure(images, images * 0.5, tmp_path / "parses.png", num=32)
    with Image.open(tmp_path / "parses.png") as png:
        assert png.size == (16 * 30 + 2, 4 * 30 + 2)  # 8 (image, parse) pairs per row, 4 rows


@pytest.fixture
def small_mnist_npz(mnist_dataset, tmp_path):
    """A real-MNIST npz small enough that the whole stage (all three splits) runs in a few seconds."""
    path = tmp_path / "mnist_small.npz"
    train, test = mnist_dataset.load("train"), mnist_dataset.load("test")
    np.savez(path, images=train.images[:700, 0].numpy(), test_images=test.images[:300, 0].numpy())
    return path


def test_parse_stage_saves_logs_and_skips(tmp_path, small_mnist_npz):
    overrides = [
        f"output_dir={tmp_path}",
        "name=parse_test",
        "data.type=npz",
        f"data.path={small_mnist_npz}",
        "data.binary=true",
        "data.valid_size=100",
        "model.part_bank.bank_size=10",
        "model.part_bank.num_patches=300",
    ]
    run = Run(load_config(None, overrides), device="cpu")
    bank = bank_stage(run)
    parses = parse_stage(run, bank)
    for split, size in {"train": 600, "valid": 100, "test": 300}.items():
        assert parses[split]["what"].shape == (size, 36) and parses[split]["whether"].dtype == torch.uint8
    stored = load_checkpoint(run.cache.path("parses", parses_key(run.config)))
    assert torch.equal(stored["test"]["what"], parses["test"]["what"])
    records = [r for r in read_metrics(run.path("metrics.jsonl")) if r["stage"] == "parse"]
    assert [r["split"] for r in records] == ["train", "valid", "test"]
    assert all(10 < r["psnr_mean"] < 30 and 0 < r["draw_fraction"] < 1 for r in records)
    assert records[2]["psnr_mean"] == pytest.approx(stored["metrics"]["test"]["psnr_mean"])
    assert run.path("parses.png").is_file()

    again = parse_stage(Run(load_config(None, overrides), device="cpu"), bank)
    assert torch.equal(again["train"]["what"], parses["train"]["what"])
    assert len([r for r in read_metrics(run.path("metrics.jsonl")) if r["stage"] == "parse"]) == 3  # skipped
    # another parser setting parses again, beside the first
    changed = Run(load_config(None, [*overrides, "model.parser.parse_threshold=0.5"]), device="cpu")
    parse_stage(changed, bank)
    assert len(list(run.cache.path("parses", "x").parent.glob("*.pt"))) == 2


# -- the greedy parser -------------------------------------------------------------------------------------
def brute_force_greedy(image: torch.Tensor, bank: torch.Tensor, grid: Grid, threshold: float) -> list:
    """The greedy parse by its definition, slowly: at every step render every (cell, part) candidate on
    the max-composed canvas and take the one that lowers the squared error most; stop at gain ≤ ε."""
    canvas, steps = torch.zeros_like(image), []
    cells = torch.arange(grid.num_cells).repeat_interleave(len(bank))
    parts = bank.repeat(grid.num_cells, 1, 1, 1)
    maps = grid.draw(parts[None], torch.nn.functional.one_hot(cells, grid.num_cells).float()[None])[0]
    for _ in range(grid.num_cells):
        candidates = torch.maximum(canvas, maps)  # (T·M, C, S, S)
        gains = (image - canvas).pow(2).sum() - (image - candidates).pow(2).flatten(1).sum(1)
        best = int(gains.argmax())
        if gains[best] <= threshold:
            break
        steps.append((int(cells[best]), best % len(bank)))
        canvas = candidates[best]
    return steps


@pytest.mark.parametrize("channels", [1, 3])
def test_greedy_matches_its_definition(channels):
    grid = Grid(10, 4)  # 3×3 cells, one pixel of padding on each side: parts stick out of the canvas
    generator = torch.Generator().manual_seed(channels)
    bank = torch.rand(7, channels, 4, 4, generator=generator)
    images = torch.rand(5, channels, 10, 10, generator=generator) * (
        torch.rand(5, 1, 10, 10, generator=generator) < 0.5
    )
    parsed = make_greedy(grid, channels, bank_size=7, parse_threshold=0.05).parse_indices(images, bank)
    for image, what, where, whether in zip(
        images, parsed["what"], parsed["where"], parsed["whether"], strict=True
    ):
        expected = brute_force_greedy(image, bank, grid, threshold=0.05)
        drawn = int(whether.sum())
        assert whether.tolist() == [1] * drawn + [0] * (grid.num_cells - drawn)  # drawn steps first
        assert list(zip(where[:drawn].tolist(), what[:drawn].tolist(), strict=True)) == expected


def test_greedy_gives_a_cell_a_second_part_when_that_helps_most():
    # A 2×2 cell whose image is an L: bank = {left column, bottom-right pixel}. Algorithm 1 has one part per
    # cell; the greedy parser max-composes both into the cell (steps 1 and 2), which reproduces the L.
    bank = torch.tensor([[[[1.0, 0.0], [1.0, 0.0]]], [[[0.0, 0.0], [0.0, 1.0]]]])
    grid, image = Grid(4, 2), torch.zeros(1, 1, 4, 4)  # 4 cells, so 4 steps
    image[0, 0, :2, :2] = torch.tensor([[1.0, 0.0], [1.0, 1.0]])
    parsed = make_greedy(grid, bank_size=2).parse_indices(image, bank)
    assert parsed["whether"][0].tolist() == [1, 1, 0, 0]
    assert parsed["where"][0, :2].tolist() == [0, 0] and parsed["what"][0, :2].tolist() == [0, 1]
    assert torch.equal(render_parses(parsed, bank, grid), image)
    heuristic = make_parser(grid, bank_size=2).parse_indices(image, bank)
    assert heuristic["whether"][0].tolist() == [1, 0, 0, 0] and heuristic["what"][0, 0] == 0  # half the L
    # Greedy order is by gain, not position: 1-pixel cells, bank {0.5, 0.8}, pixels wanting 0.5 and 1.0.
    grid, image = Grid(2, 1), torch.tensor([[[[0.5, 1.0], [0.0, 0.0]]]])
    parsed = make_greedy(grid, bank_size=2).parse_indices(
        image, torch.tensor([0.5, 0.8])[:, None, None, None]
    )
    # 0.8 in cell 1 lowers the error by 1 − 0.04 = 0.96, then 0.5 in cell 0 by 0.25; then nothing helps
    assert parsed["where"][0, :2].tolist() == [1, 0] and parsed["what"][0, :2].tolist() == [1, 0]
    assert parsed["whether"][0].tolist() == [1, 1, 0, 0]


def test_greedy_config_is_validated_with_a_reason():
    with pytest.raises(ValueError, match="parse_threshold must be at least 0 for the greedy parser"):
        GreedyParserConfig(parse_threshold=-0.1)
    with pytest.raises(ValueError, match="batch_size must be at least 1"):
        GreedyParserConfig(batch_size=0)
    with pytest.raises(ValueError, match="rebuild the bank"):
        make_greedy().parse(torch.zeros(1, 1, 28, 28), torch.zeros(5, 1, 4, 4))
    registry = default_registry()
    chosen = parse_component("parser", {"type": "greedy", "parse_threshold": 0.5}, "model.parser", registry)
    parser = registry.get("parser", "greedy").build(chosen.config, shape=ModelShape(1, 28, 28, 5, 50))
    assert isinstance(parser, GreedyParser) and parser.config.parse_threshold == 0.5


def test_greedy_on_real_mnist_beats_the_heuristic_with_fewer_parts(mnist, mnist_bank):
    """Importance order pays: at ε = 1 the greedy parse draws fewer parts than Algorithm 1 and still
    reconstructs the digits better; it is chunk independent like the heuristic."""
    images, bank = mnist[1][:300], mnist_bank
    heuristic = parse_images(make_parser(), images, bank, progress=False)
    greedy = parse_images(
        make_greedy(bank_size=20, parse_threshold=1.0, batch_size=300), images, bank, progress=False
    )
    chunked = parse_images(
        make_greedy(bank_size=20, parse_threshold=1.0, batch_size=7), images, bank, progress=False
    )
    assert all(torch.equal(greedy[k], chunked[k]) for k in greedy)
    psnr = {
        name: parse_psnr(images, render_parses(indices, bank, GRID))["psnr_mean"]
        for name, indices in {"heuristic": heuristic, "greedy": greedy}.items()
    }
    parts = {
        name: int(indices["whether"].sum())
        for name, indices in {"heuristic": heuristic, "greedy": greedy}.items()
    }
    assert parts["greedy"] < parts["heuristic"] and psnr["greedy"] > psnr["heuristic"], (parts, psnr)
    assert (greedy["whether"].long().sum(1) > 0).all() and (greedy["where"][:, 0] != 0).any()  # not raster


@pytest.mark.slow
def test_greedy_swaps_in_through_the_whole_pipeline(tmp_path):
    """`model.parser.type: greedy` is the only change: bank, parses, prior, VAE, model file, sampling."""
    from npdraw_core.model_file import load_trained
    from npdraw_core.pipeline import run_pipeline
    from npdraw_core.sampling import generators_for

    small = [
        f"output_dir={tmp_path}", "name=greedy", "data.train_fraction=0.03", "prior_training.max_train_images=300",
        "training.max_train_images=200", "training.epochs=1", "training.sample_grid_every=0",
        "evaluation.feature_extractors=[]",
    ]  # fmt: skip
    tiny = Path(__file__).resolve().parents[1] / "configs" / "tiny.yaml"
    run = Run.from_file(tiny, [*small, "model.parser.type=greedy"], device="cpu")
    assert type(run.config.model.parser.config).__name__ == "GreedyParserConfig"
    run_pipeline(run, ["train"])
    parses = load_checkpoint(run.cache.path("parses", parses_key(run.config)))
    whether = parses["train"]["whether"].long()
    assert torch.equal(whether, whether.cummin(dim=1).values)  # every greedy parse draws its steps first
    heuristic = Run.from_file(tiny, small, device="cpu")
    assert parses_key(heuristic.config) != parses_key(run.config)  # its own parses, beside the heuristic's
    model = load_trained(run.path("model.pt"), device="cpu")
    images, canvases, latents = model.sample(4, generator=generators_for([1, 2, 3, 4]))
    assert images.shape[0] == 4 and torch.isfinite(images).all()


# -- the heuristic parser's fast path: identical to Algorithm 1 by its definition --------------------------
def reference_heuristic(images: torch.Tensor, bank: torch.Tensor, grid: Grid, threshold: float) -> dict:
    """Algorithm 1 straight from its definition (the parser before its matmul-form fast path): the direct
    float32 distance of every cell to every exemplar, the first nearest one, and whether its cost
    ‖x − x̃‖ − ‖x‖ is at most ε."""
    cells = grid.cells(images.float()).flatten(2).flatten(0, 1)  # (B·T, D), pixels row by row
    distances = torch.cdist(cells, bank.flatten(1).float(), compute_mode="donot_use_mm_for_euclid_dist")
    what = distances.argmin(dim=1)
    cost = distances[torch.arange(len(cells)), what] - torch.linalg.vector_norm(cells, dim=1)
    whether = (cost <= threshold).to(torch.uint8)
    return {"what": what.view(len(images), -1), "whether": whether.view(len(images), -1), "cost": cost}


def assert_same_parse(images, bank, grid, threshold, channels=1):
    parsed = make_parser(grid, channels, bank_size=len(bank), parse_threshold=threshold).parse_indices(
        images, bank
    )
    expected = reference_heuristic(images, bank, grid, threshold)
    assert torch.equal(parsed["what"], expected["what"]), "exemplar choice differs from the definition"
    assert torch.equal(parsed["whether"], expected["whether"]), "skip decisions differ from the definition"
    return expected


@pytest.fixture(scope="module")
def more_mnist(mnist_dataset):
    return canvas_images(mnist_dataset.load("train"), 28)[2000:5000]  # not the images the banks came from


@pytest.fixture(scope="module")
def bank_of_50(mnist):
    config = FasterPAMConfig(bank_size=50, num_patches=1500)
    return build_bank(mnist[0], GRID, FasterPAMEngine(config), config).exemplars


@pytest.mark.parametrize("threshold", [0.01, 0.0, -0.3, 0.4])
def test_heuristic_parses_real_mnist_exactly_as_its_definition(more_mnist, bank_of_50, mnist_bank, threshold):
    """3,000 real MNIST images (108,000 cells), banks of 50 and 20 FasterPAM exemplars, several ε."""
    for bank in (bank_of_50, mnist_bank.exemplars):
        expected = assert_same_parse(more_mnist, bank, GRID, threshold)
        assert 0 < expected["whether"].float().mean() < 1 or threshold < 0


def test_heuristic_threshold_boundary_is_exact(more_mnist, bank_of_50):
    """ε set to a cell's exact float32 cost draws that cell, one float32 step below skips it: both sides
    of the boundary agree with the definition (the fast path must defer to the direct form there)."""
    images = more_mnist[:200]
    cost = reference_heuristic(images, bank_of_50, GRID, 0.01)["cost"]
    for cell in (int(torch.argmin((cost - 0.01).abs())), int(torch.nonzero(cost < 0)[0, 0])):
        at = float(cost[cell])
        below = float(np.nextafter(np.float32(at), np.float32(-np.inf)))
        image, step = divmod(cell, GRID.num_cells)
        assert assert_same_parse(images, bank_of_50, GRID, at)["whether"][image, step] == 1
        assert assert_same_parse(images, bank_of_50, GRID, below)["whether"][image, step] == 0


def test_heuristic_ties_and_empty_cells_follow_the_definition(bank_of_50):
    """Exact ties (a duplicated exemplar: the first wins), near ties (one float32 step apart, or a cell
    halfway between two exemplars), exemplars of equal norm (the blank cell's tie), all-blank images,
    cells whose pixels sum to 0 but are not blank, and NaN pixels."""
    bank = bank_of_50.clone()
    bank[7] = bank[3]  # exact duplicate
    bank[12] = bank[11]
    bank[12, 0, 2, 2] = float(np.nextafter(np.float32(bank[11, 0, 2, 2]), np.float32(2)))  # a step apart
    smallest = int(bank.flatten(1).norm(dim=1).argmin())
    bank[20] = bank[smallest].transpose(-1, -2)  # the same pixels (same norm, up to rounding), transposed
    bank[21] = bank[smallest]
    interior = [t for t in range(36) if 0 < t // 6 < 5 and 0 < t % 6 < 5]
    images = [torch.zeros(1, 28, 28)]  # blank
    for ids in ([7, 3, 11, 12, 20, 21, smallest], [12, 11, 21, 20, 3, 7, 0]):
        cells = torch.zeros(36, 1, 5, 5)
        for cell, exemplar in zip(interior, ids, strict=False):
            cells[cell] = bank[exemplar]
        images.append(GRID.assemble(cells))
    cells = torch.zeros(36, 1, 5, 5)
    cells[interior] = (bank[:16] + bank[16:32]) / 2  # equidistant from two exemplars, up to rounding
    images.append(GRID.assemble(cells))
    signed = torch.zeros(1, 28, 28)
    signed[0, 10, 10], signed[0, 10, 11] = 0.5, -0.5  # Σx = 0, yet not blank
    nan = torch.zeros(1, 28, 28)
    nan[0, 14, 14] = float("nan")
    images = torch.stack([*images, signed, nan])
    for threshold in (0.01, 0.0, 10.0):  # 10 > every exemplar's norm: blank cells draw too
        expected = assert_same_parse(images, bank, GRID, threshold)
    assert expected["whether"][0].all() and (expected["what"][1, interior[:2]] == 3).all()


@pytest.mark.parametrize(
    "canvas, patch, channels", [(10, 4, 1), (10, 4, 3), (28, 6, 1), (30, 7, 3), (28, 28, 1)]
)
def test_heuristic_matches_its_definition_on_any_grid(canvas, patch, channels):
    """Padding on one or both sides, colour cells (one vector over channels), one cell for the canvas."""
    generator = torch.Generator().manual_seed(canvas * patch + channels)
    grid = Grid(canvas, patch)
    bank = torch.rand(9, channels, patch, patch, generator=generator)
    images = torch.rand(40, channels, canvas, canvas, generator=generator)
    images *= torch.rand(40, 1, canvas, canvas, generator=generator) < 0.3  # sparse ink, blank cells
    for threshold in (0.01, -0.5, 0.5):
        assert_same_parse(images, bank, grid, threshold, channels)


def test_heuristic_is_exact_when_float32_matmuls_are_allowed_less_precision(more_mnist, bank_of_50):
    """With TF32/bf16 matmuls allowed, the fast path switches to float64 and still parses identically."""
    before = torch.get_float32_matmul_precision()
    try:
        torch.set_float32_matmul_precision("medium")
        assert_same_parse(more_mnist[:500], bank_of_50, GRID, 0.01)
    finally:
        torch.set_float32_matmul_precision(before)
