"""`npdraw experiment low-data` and `npdraw experiment ablation` end to end, one process (--no-ray), on a
small real dataset: the first 1,100 MNIST training images and 200 test images as an npz (the `npz` plugin),
with seconds-scale networks and schedules."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import yaml

from npdraw_core.cli import main

NUM_TRAIN, NUM_TEST = 1100, 200


@pytest.fixture(scope="module")
def small_config(tmp_path_factory, mnist_dataset):
    folder = tmp_path_factory.mktemp("small_mnist")
    train, test = mnist_dataset.load("train"), mnist_dataset.load("test")
    np.savez(
        folder / "mnist_small.npz",
        images=train.images[:NUM_TRAIN].numpy(), labels=train.labels[:NUM_TRAIN].numpy(),
        test_images=test.images[:NUM_TEST].numpy(), test_labels=test.labels[:NUM_TEST].numpy(),
    )  # fmt: skip
    with open("configs/tiny.yaml") as handle:
        config = yaml.safe_load(handle)
    config.update(name="small", output_dir=str(folder / "runs"))
    config["data"] = {"type": "npz", "path": str(folder / "mnist_small.npz"), "binary": True, "valid_size": 100}
    config["model"]["part_bank"].update(bank_size=10, num_patches=300)
    config["prior_training"].update(epochs=1, max_train_images=300)
    config["training"].update(epochs=1, max_train_images=100, sample_grid_every=0)
    config["evaluation"].update(nll_samples=2, nll_images=40, fid_samples=60, fid_floor=False)
    path = folder / "small.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_low_data_digits_sweep_with_the_baseline(small_config, tmp_path, capsys):
    labels = np.load(yaml.safe_load(small_config.read_text())["data"]["path"])["labels"]
    arguments = [
        "experiment", "low-data", str(small_config), "--split", "digits", "--fractions", "0.2,0.5", "--seeds", "0",
        "--no-ray", "--baseline-epochs", "1", "--dir", str(tmp_path), "--name", "digits", "--results",
        str(tmp_path / "out" / "low_data"),
    ]  # fmt: skip
    assert main(arguments) == 0
    table = pd.read_csv(tmp_path / "out" / "low_data.csv")
    assert len(table) == 4 and sorted(set(table["model"])) == ["NP-DRAW", "VAE"]
    for fraction, digits in ((0.2, [0, 1]), (0.5, [0, 1, 2, 3, 4])):
        rows = table[table["fraction"] == fraction]
        assert set(rows["kept"]) == {" ".join(map(str, digits))}
        # train = the kept digits' images less the valid share (the npz plugin holds out 100 of 1,100)
        kept = int(np.isin(labels, digits).sum())
        assert set(rows["train_images"]) == {kept - max(1, round(kept * 100 / NUM_TRAIN))}
        assert rows["nll_nats"].notna().all() and (rows["nll_nats"] > 0).all() and rows["fid_lenet"].notna().all()
    np_draw = table[table["model"] == "NP-DRAW"]
    assert np_draw["parse_psnr"].notna().all()
    experiment = tmp_path / "digits" / "runs"
    banks = {json.loads((experiment / name / "artefacts.json").read_text())["bank"]["key"] for name in ("digits-f0.2-s0", "digits-f0.5-s0")}
    assert len(banks) == 2  # each fraction's bank is built from its own digits
    assert (experiment / "digits-f0.2-s0" / "baseline-vae" / "metrics.json").is_file()
    assert (tmp_path / "out" / "low_data.png").stat().st_size > 10_000
    markdown = (tmp_path / "out" / "low_data.md").read_text()
    assert "| 0.2 | 0 1 |" in markdown and "NP-DRAW FID (LeNet)" in markdown and "VAE test NLL (nats)" in markdown
    # a second call finds every point done and rewrites the same table without training
    capsys.readouterr()
    assert main(arguments) == 0
    assert pd.read_csv(tmp_path / "out" / "low_data.csv").equals(table)


def test_low_data_refuses_a_split_the_dataset_cannot_make(small_config, tmp_path, capsys):
    code = main(["experiment", "low-data", str(small_config), "--split", "alphabets", "--fractions", "0.5",
                 "--no-ray", "--dir", str(tmp_path)])  # fmt: skip
    assert code == 2 and "alphabet" in capsys.readouterr().err
    assert not list(tmp_path.glob("*/runs/*/model.pt"))  # refused before any training


def test_ablation_table_and_trends(small_config, tmp_path):
    arguments = [
        "experiment", "ablation", str(small_config), "--patch-sizes", "5", "--bank-sizes", "6,10",
        "--reg-weights", "0,50", "--no-ray", "--dir", str(tmp_path), "--name", "ablation",
        "--results", str(tmp_path / "ablation"),
    ]  # fmt: skip
    assert main(arguments) == 0
    table = pd.read_csv(tmp_path / "ablation.csv")
    # the centre K=5, M=10, λ=50 sits on every axis and runs once: 3 points
    assert sorted(table["point"]) == ["K5-M10-lambda0", "K5-M10-lambda50", "K5-M6-lambda50"]
    for column in ("parse_psnr", "fid_lenet", "nll_nats", "reconstruction", "kl"):
        assert table[column].notna().all()
    markdown = (tmp_path / "ablation.md").read_text()
    assert "| PSNR (dB) ↑ | FID ↓ | NLL (nats) ↓ | reconstruction ↓ | KL |" in markdown
    assert "Budget of every point" in markdown and "VAE 1 epoch(s) on at most 100 images" in markdown
    centre = table[table["point"] == "K5-M10-lambda50"].iloc[0]
    assert f"| bank size M (K = 5) | 5 | 10 | 50 | {centre['parse_psnr']:.2f} |" in markdown
    smaller = table[table["point"] == "K5-M6-lambda50"].iloc[0]["parse_psnr"]
    verdict = "holds" if smaller < centre["parse_psnr"] else "does not hold"
    assert f"PSNR rises with M ({smaller:.2f} → {centre['parse_psnr']:.2f} dB for M = 6, 10): {verdict}" in markdown
    assert "λ = 0 gives a worse FID than every λ ≥ 1" in markdown


@pytest.mark.slow
def test_low_data_points_run_as_ray_tune_trials(small_config, tmp_path):
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, _node_ip_address="127.0.0.1")
    try:
        arguments = [
            "experiment", "low-data", str(small_config), "--split", "samples", "--fractions", "0.5", "--seeds", "3",
            "--no-baseline", "--dir", str(tmp_path), "--name", "ray", "--results", str(tmp_path / "samples"),
        ]  # fmt: skip
        assert main(arguments) == 0
    finally:
        ray.shutdown()
    assert list((tmp_path / "ray" / "tune").glob("points-*"))  # Tune's experiment state: the points were trials
    table = pd.read_csv(tmp_path / "samples.csv")
    assert list(table["fraction"]) == [0.5] and list(table["model"]) == ["NP-DRAW"]
    assert list(table["train_images"]) == [550 - 50]  # a seeded half of the 1,100 images, less the valid share
    assert table["nll_nats"].notna().all() and table["fid_lenet"].notna().all()


def test_a_point_key_ignores_how_many_processes_score_the_nll(small_config, tmp_path):
    """The trials set evaluation.nll_workers to their CPUs; the driver reads their rows back with the key of
    the config it was given, so the key must not depend on it (the NLL is the same number either way)."""
    from npdraw_core.config import load_config
    from npdraw_experiments.sweep import point_key

    one, three = (load_config(small_config, [f"evaluation.nll_workers={n}"]) for n in (1, 3))
    assert point_key(one, None) == point_key(three, None) == point_key(load_config(small_config), None)
    assert point_key(load_config(small_config, ["evaluation.nll_samples=3"]), None) != point_key(one, None)
