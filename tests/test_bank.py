"""Part banks on real MNIST: patch sampling, both K-medoids engines, the artefact and the pipeline stage."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from npdraw_core.bank import PartBank, build_bank, kmedoids_objective, sample_patches
from npdraw_core.checkpoint import load_checkpoint, read_metrics
from npdraw_core.config import load_config
from npdraw_core.data import canvas_images
from npdraw_core.geometry import Grid
from npdraw_core.pipeline import bank_key, bank_stage
from npdraw_core.run import Run
from npdraw_plugins.part_banks import (
    FasterPAMConfig,
    FasterPAMEngine,
    SklearnExtraConfig,
    SklearnExtraEngine,
    _exact_levels,
    distance_matrix,
)

GRID = Grid(28, 5)


@pytest.fixture(scope="module")
def mnist_images(mnist_dataset):
    return canvas_images(mnist_dataset.load("train"), 28)[:2000]


@pytest.fixture(scope="module")
def mnist_points(mnist_images):
    patches = sample_patches(
        mnist_images, GRID, num_patches=800, min_patch_mass=0.05, generator=torch.Generator().manual_seed(0)
    )
    return patches.flatten(1).numpy()


def sample(images, seed, num=500, mass=0.05):
    return sample_patches(
        images, GRID, num_patches=num, min_patch_mass=mass, generator=torch.Generator().manual_seed(seed)
    )


def test_patches_are_non_empty_unit_range_and_seeded(mnist_images):
    patches = sample(mnist_images, 0)
    assert patches.shape == (500, 1, 5, 5) and patches.dtype == torch.float32
    assert patches.min() >= 0 and patches.max() <= 1
    assert torch.all(patches.mean(dim=(1, 2, 3)) > 0.05)
    assert torch.equal(patches, sample(mnist_images, 0))
    assert not torch.equal(patches, sample(mnist_images, 1))
    # random positions: not all patches centred on strokes the same way, many distinct contents
    assert len(torch.unique(patches.flatten(1), dim=0)) > 450


def test_sampling_is_without_replacement_over_every_valid_position():
    # One lit pixel in the middle: exactly the 25 windows that contain it are non-empty, and asking for
    # 25 patches must return each of them once (the pixel at each of the 25 offsets).
    image = torch.zeros(1, 1, 28, 28)
    image[0, 0, 14, 14] = 1.0
    patches = sample(image, 3, num=25, mass=0.0)
    offsets = {tuple(torch.nonzero(p[0]).flatten().tolist()) for p in patches}
    assert offsets == {(r, c) for r in range(5) for c in range(5)}
    # the padded border counts: a pixel in the corner is covered by the windows reaching into the padding
    corner = torch.zeros(1, 1, 28, 28)
    corner[0, 0, 0, 0] = 1.0
    assert len(sample(corner, 0, num=4, mass=0.0)) == 4
    with pytest.raises(ValueError, match="only 4 non-empty"):
        sample(corner, 0, num=5, mass=0.0)


def test_too_few_patches_is_an_error_that_says_what_to_change(mnist_images):
    with pytest.raises(ValueError, match="lower part_bank.num_patches or part_bank.min_patch_mass"):
        sample(mnist_images[:2], 0, num=2000)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        sample(mnist_images * 255, 0)


def test_objective_by_hand():
    points = np.array([[0.0, 0.0], [3.0, 4.0], [6.0, 8.0]], dtype=np.float32)
    assert kmedoids_objective(points, points[[0]]) == pytest.approx((0 + 5 + 10) / 3)
    assert kmedoids_objective(points, points[[0, 2]]) == pytest.approx(5 / 3)


def test_distance_matrix_is_exact_and_capped(mnist_points):
    points = mnist_points[:300]
    distances = distance_matrix(points, dtype=np.float64, max_mib=100)
    reference = np.sqrt(((points[:, None].astype(np.float64) - points[None]) ** 2).sum(-1))
    assert np.abs(distances - reference).max() < 1e-6 and np.all(np.diag(distances) == 0)
    with pytest.raises(MemoryError, match="lower part_bank.num_patches"):
        FasterPAMEngine(FasterPAMConfig(max_distance_matrix_mib=0.1)).select(points, 10, seed=0)


@pytest.mark.parametrize(
    "engine", [FasterPAMEngine(FasterPAMConfig()), SklearnExtraEngine(SklearnExtraConfig())]
)
def test_engines_return_distinct_medoids_deterministically(engine, mnist_points):
    chosen = engine.select(mnist_points, 20, seed=0)
    assert chosen.shape == (20,) and len(np.unique(chosen)) == 20
    assert chosen.min() >= 0 and chosen.max() < len(mnist_points)
    assert np.array_equal(chosen, engine.select(mnist_points, 20, seed=0))
    with pytest.raises(ValueError, match="lower part_bank.bank_size"):
        engine.select(mnist_points[:10], 20, seed=0)


def test_fasterpam_is_at_least_as_good_as_alternate(mnist_points):
    fasterpam = FasterPAMEngine(FasterPAMConfig()).select(mnist_points, 20, seed=0)
    alternate = SklearnExtraEngine(SklearnExtraConfig()).select(mnist_points, 20, seed=0)
    best = kmedoids_objective(mnist_points, mnist_points[fasterpam])
    assert best <= kmedoids_objective(mnist_points, mnist_points[alternate]) * 1.01
    # and clearly better than picking patches at random
    random_pick = np.random.default_rng(0).choice(len(mnist_points), 20, replace=False)
    assert best < 0.9 * kmedoids_objective(mnist_points, mnist_points[random_pick])


def test_build_bank_and_save_load_round_trip(mnist_images, tmp_path):
    config = FasterPAMConfig(bank_size=12, num_patches=400, seed=5)
    bank = build_bank(mnist_images, GRID, FasterPAMEngine(config), config)
    assert bank.exemplars.shape == (12, 1, 5, 5) and bank.exemplars.dtype == torch.float32
    assert 0 <= bank.exemplars.min() and bank.exemplars.max() <= 1
    meta = bank.metadata
    assert (meta["patch_size"], meta["bank_size"], meta["seed"], meta["num_patches"], meta["engine"]) == (
        5,
        12,
        5,
        400,
        "kmedoids",
    )
    assert meta["objective"] > 0 and meta["build_seconds"] > 0
    again = build_bank(mnist_images, GRID, FasterPAMEngine(config), config)
    assert torch.equal(bank.exemplars, again.exemplars)

    bank.save(tmp_path / "bank.pt", "abc123")
    loaded = PartBank.load(tmp_path / "bank.pt")
    assert torch.equal(loaded.exemplars, bank.exemplars) and loaded.metadata == bank.metadata
    assert load_checkpoint(tmp_path / "bank.pt")["config_hash"] == "abc123"


def make_run(tmp_path, bundled_mnist_root, *overrides) -> Run:
    config = load_config(
        None,
        [
            f"output_dir={tmp_path}",
            "name=bank_test",
            "data.type=mnist",
            f"data.root={bundled_mnist_root}",
            "data.train_fraction=0.03",
            "model.part_bank.type=kmedoids",
            "model.part_bank.bank_size=10",
            "model.part_bank.num_patches=300",
            *overrides,
        ],
    )
    return Run(config, device="cpu")


def test_bank_stage_builds_once_per_setting_in_the_shared_cache(tmp_path, bundled_mnist_root):
    run = make_run(tmp_path, bundled_mnist_root)
    bank = bank_stage(run)
    stored = run.cache.path("bank", bank_key(run.config))
    assert bank.bank_size == 10 and stored.is_file()
    first_write = stored.stat().st_mtime_ns
    again = bank_stage(make_run(tmp_path, bundled_mnist_root, "name=other_run"))
    assert torch.equal(again.exemplars, bank.exemplars)
    assert stored.stat().st_mtime_ns == first_write  # reused by another run, not rebuilt
    assert [r["bank_size"] for r in read_metrics(run.dir / "metrics.jsonl") if r["stage"] == "bank"] == [10]
    assert json.loads(run.path("artefacts.json").read_text())["bank"]["path"] == str(stored)

    changed = bank_stage(make_run(tmp_path, bundled_mnist_root, "model.part_bank.bank_size=15"))
    assert changed.bank_size == 15
    assert PartBank.load(stored).bank_size == 10  # the other setting's bank is kept beside it


def test_colour_patches_keep_their_channels_together():
    # channel 1 is half of channel 0 and channel 2 is blank in every image, so every patch must be too
    base = torch.rand(6, 1, 32, 32, generator=torch.Generator().manual_seed(0))
    images = torch.cat([base, base / 2, torch.zeros_like(base)], dim=1)
    patches = sample_patches(
        images, Grid(32, 4), num_patches=300, min_patch_mass=0.1, generator=torch.Generator().manual_seed(1)
    )
    assert patches.shape == (300, 3, 4, 4)
    assert torch.equal(patches[:, 1], patches[:, 0] / 2) and torch.all(patches[:, 2] == 0)
    # every patch is a crop of one of the images at some offset
    windows = base[:, 0].unfold(1, 4, 1).unfold(2, 4, 1).reshape(-1, 4, 4)
    assert all(bool((windows == patch[0]).flatten(1).all(1).any()) for patch in patches[:20])


def test_distance_matrix_tiles_are_exact_symmetric_and_match_the_direct_form(mnist_points):
    """Tiles of 64 over 300 points (ragged last tile): the mirrored half is exactly the computed one, and
    every value is the float64 distance rounded once (float64: to ~1e-12; float32: to half a step)."""
    points = mnist_points[:300]
    reference = np.sqrt(((points[:, None].astype(np.float64) - points[None]) ** 2).sum(-1))
    for dtype, tolerance in ((np.float64, 1e-12), (np.float32, 1e-6)):
        distances = distance_matrix(points, dtype=dtype, max_mib=100, block=64)
        assert distances.dtype == dtype and np.array_equal(distances, distances.T)
        assert np.all(np.diag(distances) == 0) and np.abs(distances - reference).max() < tolerance


def test_float32_distances_of_8bit_pixels_are_taken_on_exact_integers(mnist_points):
    """MNIST pixels are k/255: the float32 matrix comes from an exact integer product, so each value is the
    float32 root of the exact squared distance divided in float32 (one rounding); points off those levels (or too
    many dimensions) take float64."""
    points = mnist_points[:300]
    assert _exact_levels(points, np.float32)[1] == 255 and _exact_levels(points, np.float64)[1] == 1
    levels = np.rint(points.astype(np.float64) * 255)
    squared = ((levels[:, None] - levels[None]) ** 2).sum(-1).astype(np.float32) / np.float32(255**2)
    roots = torch.from_numpy(squared).sqrt().numpy()  # torch's float32 root (not always numpy's)
    assert np.array_equal(distance_matrix(points, dtype=np.float32, max_mib=100, block=64), roots)
    off_levels = points + np.float32(1e-3)
    assert _exact_levels(off_levels, np.float32)[1] == 1
    assert _exact_levels(np.tile(points, 6), np.float32)[1] == 1  # 150 dimensions: past float32's exact range
    reference = np.sqrt(((off_levels[:, None].astype(np.float64) - off_levels[None]) ** 2).sum(-1))
    assert np.abs(distance_matrix(off_levels, dtype=np.float32, max_mib=100) - reference).max() < 1e-6


def test_fasterpam_reads_the_transposed_matrix_to_the_same_medoids(mnist_points):
    """The engine hands FasterPAM the matrix's transpose (contiguous columns); on the symmetric matrix
    that is the same clustering as the C-order matrix it used to get."""
    import kmedoids

    config = FasterPAMConfig()
    chosen = FasterPAMEngine(config).select(mnist_points, 20, seed=3)
    distances = distance_matrix(mnist_points, dtype=np.float32, max_mib=100)
    direct = kmedoids.fasterpam(
        distances, 20, max_iter=config.max_iter, init="random", random_state=3, n_cpu=1
    )
    assert np.array_equal(chosen, np.asarray(direct.medoids, dtype=np.int64))


def reference_sample(images, grid, *, num_patches, min_patch_mass, seed, chunk_size):
    """The sampler by its definition: a float64 key for every window, drawn chunk by chunk from one
    generator; the `num_patches` smallest keys among windows of mean intensity (avg_pool2d) above
    `min_patch_mass`, in key order."""
    generator = torch.Generator().manual_seed(seed)
    masses, keys = [], []
    for start in range(0, len(images), chunk_size):
        padded = grid.pad(images[start : start + chunk_size])
        masses.append(torch.nn.functional.avg_pool2d(padded.mean(1, keepdim=True), grid.patch_size, stride=1))
        keys.append(torch.rand(masses[-1].numel(), generator=generator, dtype=torch.float64))
    masses, keys = torch.cat(masses).flatten(), torch.cat(keys)
    keys[masses <= min_patch_mass] = float("inf")
    chosen = keys.argsort()[:num_patches]
    assert torch.isfinite(keys[chosen]).all()
    # every K×K window of the padded images: (N, C, L, L, K, K)
    windows = grid.pad(images).unfold(2, grid.patch_size, 1).unfold(3, grid.patch_size, 1)
    return windows.permute(0, 2, 3, 1, 4, 5).flatten(0, 2)[chosen]


def test_sample_patches_is_the_sampler_by_its_definition(mnist_images):
    """Real MNIST, several chunks (so keys above the running cut are dropped early): the same patches in
    the same order as the definition, and the same count of non-empty windows."""
    options = {"num_patches": 3000, "min_patch_mass": 0.05, "seed": 4, "chunk_size": 300}
    expected = reference_sample(mnist_images, GRID, **options)
    sampled = sample_patches(
        mnist_images, GRID, num_patches=3000, min_patch_mass=0.05, generator=torch.Generator().manual_seed(4),
        chunk_size=300,
    )  # fmt: skip
    assert torch.equal(sampled, expected)
    masses = torch.nn.functional.avg_pool2d(GRID.pad(mnist_images[:50]), GRID.patch_size, stride=1)
    eligible = int((masses > 0.05).sum())
    with pytest.raises(ValueError, match=f"only {eligible} non-empty"):
        sample(mnist_images[:50], 0, num=eligible + 1)
