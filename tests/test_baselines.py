"""The VAE baseline (npdraw_baselines) on real MNIST, at tiny widths and a few hundred images: its loss falls,
its importance-weighted bound is valid, samples have the data's shape and range, the CPU budget stops
training, baseline.pt round-trips and a damaged one is refused, and `npdraw baseline train|eval|sample` run
end to end."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
import torch

from npdraw_baselines.training import BASELINE_FILE, load_baseline, train_baseline, validate
from npdraw_baselines.vae import vae_from_config
from npdraw_core.checkpoint import CheckpointError, read_metrics
from npdraw_core.cli import main
from npdraw_core.config import load_config
from npdraw_core.data import prepare_images
from npdraw_core.registry import default_registry

REPO = Path(__file__).resolve().parents[1]
TINY = str(REPO / "configs" / "tiny.yaml")
SMALL = [
    "model.encoder.channels=8", "model.decoder.channels=8", "model.decoder.num_residual_blocks=1",
    "training.batch_size=25", "training.lr=3e-3", "training.encoder_lr=3e-3", "training.max_train_images=300",
    "evaluation.feature_extractors=[]",
]  # fmt: skip


def tiny_config(output_dir: Path, *extra: str):
    return load_config(TINY, [*SMALL, f"output_dir={output_dir}", "device=cpu", *extra])


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A baseline trained for 4 epochs of 300 images, with its config and folder."""
    root = tmp_path_factory.mktemp("baseline")
    config = tiny_config(root)
    model = train_baseline(config, root / "vae", epochs=4, latent_dim=8)
    return config, root / "vae", model


@pytest.fixture(scope="module")
def test_images(mnist_dataset):
    images = mnist_dataset.load("test").images[:100]
    return prepare_images(images, binary=True, generator=torch.Generator().manual_seed(0))


def test_loss_falls_with_training(trained, mnist_dataset):
    config, folder, model = trained
    untrained = vae_from_config(config, channels=1, image_size=28, latent_dim=8, registry=default_registry())
    valid = mnist_dataset.load("valid")
    before = validate(untrained, valid, binary=True, batch_size=25)["loss"]
    after = validate(model, valid, binary=True, batch_size=25)["loss"]
    records = [r for r in read_metrics(folder / "metrics.jsonl") if r["stage"] == "baseline"]
    assert [r["epoch"] for r in records] == [0, 1, 2, 3]
    assert records[-1]["train_neg_elbo"] < records[0]["train_neg_elbo"]
    assert after < before - 50, (before, after)  # nats per image on the 1,000 validation images
    assert after == pytest.approx(min(r["valid_loss"] for r in records))  # the best weights are kept


def test_importance_weighted_bound_is_valid(trained, test_images):
    _, _, model = trained
    generator = torch.Generator().manual_seed(1)
    one = torch.stack([model.log_likelihood_bound(test_images, num_samples=1, generator=generator) for _ in range(5)]).mean(0)
    fifty = model.log_likelihood_bound(test_images, num_samples=50, generator=generator)
    assert one.shape == fifty.shape == (100,)
    assert torch.isfinite(one).all() and torch.isfinite(fifty).all()
    assert fifty.mean() >= one.mean()  # tighter with more samples (Burda et al.), on average
    # the 1-sample bound is the ELBO: its mean is minus the mean loss, up to sampling noise
    elbo = -model.loss(test_images, torch.Generator().manual_seed(2)).mean()
    assert one.mean().item() == pytest.approx(elbo.item(), abs=5.0)


def test_samples_have_the_data_shape_and_range(trained):
    _, _, model = trained
    images, canvases, latents = model.sample(16, generator=torch.Generator().manual_seed(0))
    assert images.shape == (16, 1, 28, 28) and canvases.shape == (16, 1, 28, 28) and latents.shape == (16, 8)
    assert images.min() >= 0 and images.max() <= 1
    cooler, _, _ = model.sample(16, generator=torch.Generator().manual_seed(0), temperature=0.5)
    assert not torch.equal(images, cooler)


def test_file_round_trips_and_damage_is_refused(trained, tmp_path):
    _, folder, model = trained
    loaded = load_baseline(folder)
    assert loaded.info["epochs"] == 4 and loaded.info["images_seen"] == 4 * 300 and loaded.info["latent_dim"] == 8
    assert loaded.info["cpu_seconds"] > 0
    for seed in (0, 3):
        original = model.sample(8, generator=torch.Generator().manual_seed(seed))[0]
        again = loaded.model.sample(8, generator=torch.Generator().manual_seed(seed))[0]
        assert torch.equal(original, again)

    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes((folder / BASELINE_FILE).read_bytes()[:500])
    with pytest.raises(CheckpointError, match="truncated.pt.*damaged"):
        load_baseline(truncated)
    foreign = tmp_path / "foreign.pt"
    torch.save({"state_dict": {}}, foreign)
    with pytest.raises(CheckpointError, match="not a VAE baseline file"):
        load_baseline(foreign)
    with pytest.raises(CheckpointError, match="no VAE baseline at"):
        load_baseline(tmp_path / "nowhere")


def test_cpu_budget_stops_training(tmp_path):
    config = tiny_config(tmp_path, "training.max_train_images=5000")  # 200 batches an epoch
    budget_minutes = 0.02  # 1.2 s of process CPU time
    train_baseline(config, tmp_path / "vae", cpu_minutes=budget_minutes, latent_dim=8)
    info = load_baseline(tmp_path / "vae").info
    assert info["epochs"] == 1 and 0 < info["images_seen"] < 5000
    assert 60 * budget_minutes <= info["cpu_seconds"] < 60 * budget_minutes + 15  # + one batch and validation
    # a larger budget continues from baseline_last.pt instead of starting over
    # (beyond what the first call spent: its set-up counts too and can exceed the first budget on a fresh clone)
    larger = info["cpu_seconds"] / 60 + budget_minutes
    train_baseline(config, tmp_path / "vae", cpu_minutes=larger, latent_dim=8)
    more = load_baseline(tmp_path / "vae").info
    assert more["images_seen"] > info["images_seen"] and more["cpu_seconds"] >= 60 * larger


def test_cli_trains_scores_and_samples(tmp_path, capsys):
    from npdraw_core.fid import extractor_context
    from npdraw_plugins.feature_extractors.lenet import LeNetConfig, ensure_lenet

    sets = [f"--set={o}" for o in [*SMALL[:-1], f"output_dir={tmp_path}", "evaluation.fid_floor=false"]]
    assert main(["baseline", "train", TINY, *sets, "--epochs", "1", "--latent-dim", "4", "--device", "cpu"]) == 0
    folder = tmp_path / "tiny" / "baseline-vae"  # the default: beside the NP-DRAW run of the config
    assert (folder / BASELINE_FILE).is_file()
    assert f"npdraw baseline eval {folder}" in capsys.readouterr().out

    # a small FID-LeNet where `npdraw eval` looks for it (the default one trains on 59,000 images)
    from npdraw_baselines.training import baseline_run

    ensure_lenet(extractor_context(baseline_run(load_baseline(folder).config, folder)),
                 LeNetConfig(epochs=1, max_train_images=500), progress=False)  # fmt: skip
    assert main(["baseline", "eval", str(folder), "--nll-images", "20", "--fid-samples", "100"]) == 0
    scores = json.loads((folder / "metrics.json").read_text())
    assert scores["nll_images"] == 20 and scores["nll_samples"] == 5 and scores["fid_samples"] == 100
    assert math.isfinite(scores["nll_nats"]) and scores["nll_nats"] > 0
    assert math.isfinite(scores["fid_lenet"]) and scores["fid_lenet"] > 0
    assert scores["latent_dim"] == 4 and scores["epochs"] == 1
    assert [r["stage"] for r in read_metrics(folder / "metrics.jsonl")][-1] == "eval"

    grid = tmp_path / "grid.png"
    assert main(["baseline", "sample", str(folder), "--num", "8", "--out", str(grid), "--seed", "1"]) == 0
    assert grid.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    damaged = tmp_path / "damaged"
    shutil.copytree(folder, damaged)
    (damaged / BASELINE_FILE).write_bytes(b"not a checkpoint")
    capsys.readouterr()
    assert main(["baseline", "sample", str(damaged), "--out", str(grid)]) == 2
    assert "damaged" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["baseline", "train", TINY, "--cpu-minutes", "0"], "must be a finite number greater than 0"),
        (["baseline", "train", TINY, "--cpu-minutes", "1", "--epochs", "2"], "not allowed with"),
        (["baseline", "train", TINY, "--latent-dim", "0"], "must be at least 1"),
        (["baseline", "eval", "{tmp}/nowhere"], "no VAE baseline at"),
        (["baseline", "eval", "{tmp}", "--nll-images", "-1"], "must be 0 or more"),
        (["baseline", "sample", "{tmp}", "--out", "{tmp}/grid.jpg"], "give a .png path"),
        (["baseline", "sample", "{tmp}"], "--out"),
    ],
)
def test_bad_input_gets_a_clear_error(argv, message, capsys, tmp_path):
    assert main([word.format(tmp=tmp_path) for word in argv]) == 2
    assert message in capsys.readouterr().err
