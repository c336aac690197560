"""The core as a library other processes call: self-describing model files loaded without the dataset or
the run directory, a loader that never trains, the shared stage cache (once per setting, safe under
concurrent processes) and the training loop's per-epoch callback."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from npdraw_core.checkpoint import CheckpointError, load_checkpoint
from npdraw_core.loop import StopTraining
from npdraw_core.model_file import FORMAT_VERSION, load_trained, read_model_file
from npdraw_core.pipeline import (
    bank_key,
    bank_stage,
    parse_stage,
    parses_key,
    prior_key,
    prior_stage,
    run_pipeline,
)
from npdraw_core.run import Run
from npdraw_core.sampling import generators_for
from npdraw_core.training import train_model
from npdraw_plugins.datasets.common import ArrayDataset

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "configs" / "tiny.yaml"
SMALL = [
    "data.train_fraction=0.03", "prior_training.max_train_images=300", "training.max_train_images=200",
    "training.epochs=1", "training.sample_grid_every=0", "evaluation.feature_extractors=[]",
]  # fmt: skip


def tiny_run(output_dir: Path, name: str, *extra: str) -> Run:
    return Run.from_file(TINY, [*SMALL, f"output_dir={output_dir}", f"name={name}", *extra], device="cpu")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A run trained through every stage up to the VAE, and the model its training returned."""
    run = tiny_run(tmp_path_factory.mktemp("library"), "first")
    bank = bank_stage(run)
    parses = parse_stage(run, bank)
    prior, key = prior_stage(run, bank, parses)
    return run, train_model(run, bank.exemplars, parses, prior, key)


def snapshot(directory: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(directory)): (p.stat().st_size, p.stat().st_mtime_ns) for p in directory.rglob("*")}


def test_a_model_file_copied_alone_samples_what_the_run_samples(trained, tmp_path, monkeypatch):
    run, model = trained
    alone = tmp_path / "elsewhere"
    alone.mkdir()
    shutil.copy(run.path("model.pt"), alone / "model.pt")
    monkeypatch.chdir(alone)
    monkeypatch.setattr(ArrayDataset, "load", lambda *a, **k: pytest.fail("load_trained read the dataset"))
    before = snapshot(alone)

    loaded = load_trained(alone / "model.pt", device="cpu")
    assert not loaded.training
    seeds = [3, 14, 15, 92]
    expected = model.sample(len(seeds), generator=generators_for(seeds))
    actual = loaded.sample(len(seeds), generator=generators_for(seeds))
    for want, got in zip(expected[:2], actual[:2], strict=True):
        assert torch.equal(want, got)
    assert torch.equal(expected[2].what, actual[2].what) and torch.equal(expected[2].where, actual[2].where)
    assert snapshot(alone) == before  # nothing written, moved or removed

    described = read_model_file(alone)
    assert described.config == run.config and described.shape == run.model_shape(len(model.bank))
    assert described.info["epoch"] == 0 and "valid_loss" in described.info["metrics"]


def test_load_trained_on_a_run_without_a_model_raises_and_trains_nothing(tmp_path):
    run = tiny_run(tmp_path, "untrained")
    with pytest.raises(CheckpointError, match="no model file"):
        load_trained(run.dir)
    assert not tmp_path.exists() or list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "damaged or not a checkpoint"),
        ("truncated", "damaged or not a checkpoint"),
        ({"state_dict": {}}, "not an npdraw model file"),
        ([1, 2, 3], "not an npdraw checkpoint"),
        ("older", "format version 0"),
    ],
)
def test_damaged_foreign_or_older_model_files_raise_checkpoint_error(trained, tmp_path, content, message):
    run, _ = trained
    path = tmp_path / "model.pt"
    if content == "truncated":
        data = run.path("model.pt").read_bytes()
        path.write_bytes(data[: len(data) // 2])
    elif content == "older":
        payload = load_checkpoint(run.path("model.pt"))
        torch.save({**payload, "format_version": 0}, path)
    elif isinstance(content, bytes):
        path.write_bytes(content)
    else:
        torch.save(content, path)
    with pytest.raises(CheckpointError, match=message) as error:
        load_trained(path)
    assert str(path) in str(error.value)
    assert FORMAT_VERSION == 1


def test_runs_differing_only_in_reg_weight_share_bank_parses_and_prior(trained):
    run, _ = trained
    shared = [run.cache.path(kind, key(run.config)) for kind, key in
              [("bank", bank_key), ("parses", parses_key), ("prior", prior_key)]]  # fmt: skip
    written = {path: path.stat().st_mtime_ns for path in shared}
    other = tiny_run(Path(run.config.output_dir), "lambda_10", "training.reg_weight=10")
    assert [bank_key(other.config), parses_key(other.config), prior_key(other.config)] == [
        bank_key(run.config), parses_key(run.config), prior_key(run.config)]  # fmt: skip
    run_pipeline(other, ["train"])
    assert {path: path.stat().st_mtime_ns for path in shared} == written  # reused, none rebuilt
    assert sorted(p.name for p in shared[0].parent.glob("*.pt")) == [shared[0].name]  # one bank in the cache
    assert other.path("model.pt").is_file() and not other.path("bank.pt").exists()
    assert load_checkpoint(other.path("model.pt"))["config"]["training"]["reg_weight"] == 10.0


def test_two_processes_on_the_same_config_compute_each_artefact_once(tmp_path):
    settings = [f"--set={o}" for o in [*SMALL, f"output_dir={tmp_path}"]]
    command = [sys.executable, "-m", "npdraw_core.cli", "run", str(TINY), "--device", "cpu", "--threads", "1",
               "--stages", "prior", *settings]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    processes = [
        subprocess.Popen([*command, f"--set=name=p{i}"], cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, text=True)  # fmt: skip
        for i in range(2)
    ]
    outputs = [process.communicate(timeout=600)[0] for process in processes]
    assert [process.returncode for process in processes] == [0, 0], outputs
    for kind in ("bank", "parses", "prior"):
        stored = list((tmp_path / "cache" / kind).glob("*.pt"))
        assert len(stored) == 1, (kind, stored)
    computed = [line for out in outputs for line in out.splitlines() if line.startswith("[bank] engine=")]
    assert len(computed) == 1, outputs  # the second process waited and reused the first one's bank
    records = {p.name: (p / "artefacts.json").read_text() for p in tmp_path.iterdir() if p.name.startswith("p")}
    assert records["p0"] == records["p1"]  # both runs name the same cached artefacts


def test_on_epoch_sees_every_epoch_and_can_stop_training(trained, tmp_path):
    run, _ = trained
    other = tiny_run(Path(run.config.output_dir), "callback", "training.epochs=3", "training.reg_weight=5")
    seen = []

    def on_epoch(metrics):
        seen.append(metrics)
        if metrics["epoch"] == 1:
            raise StopTraining("enough")

    run_pipeline(other, ["train"], on_epoch=on_epoch)
    assert [m["epoch"] for m in seen] == [0, 1]
    assert all(m["valid_loss"] > 0 and "train_loss" in m for m in seen)
    last = load_checkpoint(other.path("model_last.pt"))
    assert last["epoch"] == 1 and not last["complete"]  # stopped by the callback, still resumable
