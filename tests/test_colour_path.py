"""The colour path end to end on real data: CIFAR-10 through `npdraw run` (3-channel bank and parses,
spatial encoder, 10-component discretised logistic mixture, bits/dim on test images), and CelebA's 64×64
images drawn on a 32×32 canvas. Small slices and small networks keep each test to seconds on two cores."""

from __future__ import annotations

import math
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from npdraw_core.bank import PartBank
from npdraw_core.checkpoint import load_checkpoint, read_metrics
from npdraw_core.data import canvas_images
from npdraw_core.evaluation import negative_log_likelihood
from npdraw_core.parsing import render_parses
from npdraw_core.pipeline import bank_key, parses_key, prior_stage, run_pipeline
from npdraw_core.run import Run
from npdraw_core.training import build_model

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
NUM_TEST_IMAGES = 20
# Small networks and a short schedule (a few optimiser steps; lr 1e-2 so that they show).
SMALL = [
    "model.part_bank.bank_size=32",
    "model.part_bank.num_patches=1000",
    "model.prior.d_model=32",
    "model.prior.depth=1",
    "model.prior.num_heads=2",
    "model.prior.head_dim=16",
    "model.prior.mlp_dim=64",
    "model.prior.dropout=0.0",
    "model.encoder.channels=16",
    "model.decoder.channels=16",
    "model.decoder.num_residual_blocks=1",
    "prior_training.epochs=1",
    "prior_training.batch_size=50",
    "prior_training.max_train_images=100",
    "training.epochs=2",
    "training.batch_size=25",
    "training.max_train_images=75",
    "training.lr=1e-2",
    "training.sample_grid_every=2",
    f"evaluation.nll_images={NUM_TEST_IMAGES}",
    "evaluation.nll_samples=2",
    "evaluation.feature_extractors=[]",
]


def channel_spread(images: torch.Tensor) -> float:
    """Mean over pixels of (max − min over the colour channels): 0 for grey images."""
    return float((images.amax(1) - images.amin(1)).mean())


def chroma_correlation(images: torch.Tensor, rendered: torch.Tensor) -> float:
    """Correlation of the colour parts (each channel minus the pixel's mean over channels)."""
    chroma = [(x - x.mean(1, keepdim=True)).flatten() for x in (images, rendered)]
    return float(torch.corrcoef(torch.stack(chroma))[0, 1])


@pytest.fixture(scope="module")
def cifar_run(tmp_path_factory) -> tuple[Run, dict]:
    run = Run.from_file(
        REPO / "configs" / "cifar10.yaml",
        [
            f"data.root={SHARED / 'cifar10'}",
            "data.train_fraction=0.01",
            *SMALL,
            f"output_dir={tmp_path_factory.mktemp('runs')}",
            "name=cifar10",
        ],
        device="cpu",
    )
    return run, run_pipeline(run)


@pytest.mark.shared_data
def test_cifar10_bank_and_parses_keep_the_colours(cifar_run):
    run, _ = cifar_run
    bank = PartBank.load(run.cache.path("bank", bank_key(run.config)))
    assert bank.exemplars.shape == (32, 3, 4, 4)
    assert channel_spread(bank.exemplars) > 0.05  # coloured parts, not grey ones
    parses = load_checkpoint(run.cache.path("parses", parses_key(run.config)))
    test = canvas_images(run.dataset.load("test"), 32)[:200]
    rendered = render_parses({k: v[:200] for k, v in parses["test"].items()}, bank, run.grid)
    # The parse is a colour copy: its colours (each pixel minus its grey level) follow the image's, and
    # not those of the same image with its channels rotated (a channel mix-up anywhere would swap these).
    matched, rotated = chroma_correlation(test, rendered), chroma_correlation(test[:, [2, 0, 1]], rendered)
    assert matched > 0.5 and rotated < 0.2, (matched, rotated)
    assert parses["metrics"]["test"]["psnr_mean"] > 18.0


@pytest.mark.shared_data
def test_cifar10_pipeline_reports_bits_per_dim_of_a_trained_mixture(cifar_run):
    run, results = cifar_run
    assert results["nll_images"] == NUM_TEST_IMAGES
    assert results["bits_per_dim"] == pytest.approx(results["nll_nats"] / (3 * 32 * 32 * math.log(2)))
    epochs = [r for r in read_metrics(run.path("metrics.jsonl")) if r["stage"] == "train"]
    assert [r["epoch"] for r in epochs] == [0, 1]
    assert epochs[1]["valid_neg_elbo"] < epochs[0]["valid_neg_elbo"]
    # The same model before training scores the same test images about 9 bits/dim (a logistic of scale 1
    # on [-1, 1]); a few steps of training must already fit the colours better.
    bank = PartBank.load(run.cache.path("bank", bank_key(run.config)))
    prior, _ = prior_stage(run, bank, load_checkpoint(run.cache.path("parses", parses_key(run.config))))
    untrained = build_model(run, bank.exemplars, prior)
    test = run.dataset.load("test").subset(torch.arange(NUM_TEST_IMAGES))
    before = negative_log_likelihood(untrained, test, binary=False, num_samples=2, batch_size=NUM_TEST_IMAGES)
    assert 3.0 < results["bits_per_dim"] < before["bits_per_dim"] - 0.1, (results, before)


@pytest.mark.shared_data
def test_cifar10_sample_grid_is_in_colour(cifar_run):
    run, _ = cifar_run
    grid = torch.from_numpy(np.array(Image.open(run.path("samples/epoch_001.png")).convert("RGB")))
    # 32 samples above their 32 canvases, 8 per row, 32-pixel tiles with 2-pixel padding
    assert grid.shape == (8 * 34 + 2, 8 * 34 + 2, 3)
    canvases = grid[4 * 34 + 2 :].permute(2, 0, 1).float() / 255
    assert channel_spread(canvases) > 0.05


@pytest.mark.shared_data
def test_celeba_64_pixel_images_on_a_32_pixel_canvas(tmp_path):
    """Real CelebA faces (centre crop 148 → 64) through the generic npz dataset: parse on the 32×32
    canvas, decoder upsampling to 64×64, bits/dim over 64·64·3 values."""
    from npdraw_plugins.datasets.celeba import preprocess

    with zipfile.ZipFile(SHARED / "celeba" / "img_align_celeba_subset6000.zip") as archive:
        names = sorted(n for n in archive.namelist() if n.endswith(".jpg"))[:360]
        faces = np.stack([preprocess(archive.read(n), 148, 64, n) for n in names])  # (N, 64, 64, 3)
    np.savez(tmp_path / "faces.npz", images=faces[:320], test_images=faces[320:])
    run = Run.from_file(
        REPO / "configs" / "celeba.yaml",
        [
            "data={type: npz, path: " + str(tmp_path / "faces.npz") + ", valid_size: 20}",
            *SMALL,
            "training.epochs=1",
            "training.sample_grid_every=1",
            "evaluation.nll_images=20",
            f"output_dir={tmp_path}",
            "name=celeba",
        ],
        device="cpu",
    )
    assert run.dataset.image_size == 64 and run.dataset.channels == 3
    results = run_pipeline(run)
    parses = load_checkpoint(run.cache.path("parses", parses_key(run.config)))
    assert parses["train"]["what"].shape == (300, 64)  # 8×8 cells of the 32×32 canvas
    assert parses["metrics"]["test"]["psnr_mean"] > 18.0
    assert results["bits_per_dim"] == pytest.approx(results["nll_nats"] / (3 * 64 * 64 * math.log(2)))
    assert math.isfinite(results["bits_per_dim"]) and 0 < results["bits_per_dim"] < 12.0
    grid = Image.open(run.path("samples/epoch_000.png"))
    assert grid.size == (8 * 66 + 2, 8 * 66 + 2)  # samples and canvases both shown at 64×64
