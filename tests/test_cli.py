"""The CLI end to end on real MNIST: `npdraw run` writes the run directory, re-running skips every stage,
`sample` and `edit` write their figures, and bad input gets a teaching error (exit code 2)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from npdraw_core.checkpoint import read_metrics
from npdraw_core.cli import main

REPO = Path(__file__).resolve().parents[1]
TINY = str(REPO / "configs" / "tiny.yaml")
SMALL = ["data.train_fraction=0.05", "evaluation.nll_images=50", "evaluation.feature_extractors=[]"]


def overrides(run_dir: Path) -> list[str]:
    return [f"--set={o}" for o in [*SMALL, f"output_dir={run_dir.parent}", f"name={run_dir.name}"]]


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("cli") / "tiny"
    assert main(["run", TINY, "--device", "cpu", *overrides(run_dir)]) == 0
    return run_dir


@pytest.mark.slow
def test_run_writes_every_artefact(finished_run):
    for name in ["config.yaml", "artefacts.json", "parses.png", "model.pt", "model_last.pt"]:
        assert (finished_run / name).is_file(), name
    # bank, parses and prior live in the stage cache shared by runs; the run records which it used
    used = json.loads((finished_run / "artefacts.json").read_text())
    assert sorted(used) == ["bank", "parses", "prior"]
    assert all(Path(artefact["path"]).is_file() for artefact in used.values())
    assert sorted(p.name for p in (finished_run / "samples").glob("*.png")) == ["epoch_000.png", "epoch_001.png"]
    stages = [record["stage"] for record in read_metrics(finished_run / "metrics.jsonl")]
    assert {"bank", "parse", "prior", "train", "eval", "run"} <= set(stages)
    evaluation = [r for r in read_metrics(finished_run / "metrics.jsonl") if r["stage"] == "eval"][-1]
    assert 0 < evaluation["nll_nats"] < 543.6  # better than independent pixels at p = 0.5 (784 · ln 2)
    # the CPU time of every stage, the budget a comparison with another model grants
    cpu = [r for r in read_metrics(finished_run / "metrics.jsonl") if r["stage"] == "run"][-1]["cpu_seconds"]
    assert sorted(cpu) == sorted(["bank", "parse", "prior", "train", "eval"]) and cpu["train"] > 0


@pytest.mark.slow
def test_rerun_skips_every_stage(finished_run, capsys):
    before = [r["stage"] for r in read_metrics(finished_run / "metrics.jsonl")]
    assert main(["run", TINY, "--device", "cpu", "--stages", "train", *overrides(finished_run)]) == 0
    after = [r["stage"] for r in read_metrics(finished_run / "metrics.jsonl")]
    assert after[len(before) :] == ["run"]  # nothing was recomputed, only the run record was added
    out = capsys.readouterr().out
    assert "skipping" in out


@pytest.mark.slow
def test_sample_and_edit_write_their_figures(finished_run, tmp_path):
    samples, prior_samples, edited = tmp_path / "s.png", tmp_path / "p.png", tmp_path / "e.png"
    common = [TINY, "--device", "cpu", *overrides(finished_run)]
    assert main(["sample", *common, "--num", "8", "--out", str(samples)]) == 0
    assert main(["sample", *common, "--num", "8", "--prior-only", "--out", str(prior_samples)]) == 0
    assert main(["edit", *common, "--a", "0", "--b", "1", "--out", str(edited)]) == 0
    for path in (samples, prior_samples, edited):
        assert path.stat().st_size > 200


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["run", "configs/nope.yaml"], "does not exist"),
        (["run", TINY, "--set", "model.prior.type=transfomer"], "Did you mean 'transformer'"),
        (["run", TINY, "--stages", "fly"], "invalid choice: 'fly'"),
        (["bank", TINY, "--set", "model.part_bank.bank_size=lots"], "must be an integer"),
    ],
)
def test_bad_input_gets_a_teaching_error(argv, message, capsys, tmp_path):
    assert main([*argv, f"--set=output_dir={tmp_path}"]) == 2
    assert message in capsys.readouterr().err
