"""The K/M/λ search on a local Ray with 2 CPUs, on a tiny slice of real MNIST: every trial reports, the
results files are written, banks/parses/priors are computed once per setting, a crashed trial is retried
from its checkpoint, an interrupted experiment resumes without re-running finished trials, and a request
no node can satisfy fails at once."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from npdraw_core.checkpoint import load_checkpoint, read_metrics
from npdraw_core.cli import main
from npdraw_core.config import load_config

ray = pytest.importorskip("ray")

from npdraw_tune.experiment import Options, run_search, write_results  # noqa: E402
from npdraw_tune.search import SearchError, load_search  # noqa: E402
from npdraw_tune.trial import run_trial  # noqa: E402

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "configs" / "tiny.yaml"
TRIAL_SIZE = [
    "data.train_fraction=0.03", "prior_training.max_train_images=300", "training.max_train_images=200",
    "training.epochs=2", "training.sample_grid_every=0", "evaluation.feature_extractors=[]",
]  # fmt: skip
GRID = {"space": {"model.patch_size": [4, 5], "training.reg_weight": [1, 50]}}


@pytest.fixture(scope="module")
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, _node_ip_address="127.0.0.1")
    yield
    ray.shutdown()


def trial_metrics(run_dir: Path) -> list[int]:
    return [r["epoch"] for r in read_metrics(run_dir / "metrics.jsonl") if r["stage"] == "train"]


def test_a_grid_reports_every_trial_and_computes_each_stage_once_per_setting(local_ray, tmp_path):
    config = load_config(TINY, TRIAL_SIZE)
    spec = load_search(GRID, config)
    options = Options(storage=str(tmp_path), name="grid")
    results = run_search(config, spec, options)
    assert len(results) == 4 and not results.errors
    for result in results:
        assert result.metrics["epoch"] == 1 and result.metrics["valid_neg_elbo"] > 0
    # two patch sizes: two banks, two parses, two priors, whatever λ is
    for kind in ("bank", "parses", "prior"):
        assert len(list((tmp_path / "cache" / kind).glob("*.pt"))) == 2, kind
    paths = write_results(results, spec, options, config.to_dict())
    table = paths["csv"].read_text().splitlines()
    assert len(table) == 5 and table[0].startswith("trial_id,status,model.patch_size,training.reg_weight,valid_neg_elbo")
    assert paths["plot"].stat().st_size > 5000
    best = load_config(paths["best"])
    best_row = min((r.metrics["valid_neg_elbo"], r.config) for r in results)[1]
    assert best.model.patch_size == best_row["model.patch_size"]
    assert best.training.reg_weight == best_row["training.reg_weight"]


def flaky_trial(config, **parameters):
    """run_trial, crashing once right after its first epoch's report (the checkpoint is then saved)."""
    from ray import tune

    marker = Path(parameters["cache_dir"]).parent / "crashed_once"
    if marker.exists():
        return run_trial(config, **parameters)
    real_report = tune.report

    def report_then_crash(*args, **kwargs):
        real_report(*args, **kwargs)
        marker.touch()
        raise RuntimeError("simulated crash after the first epoch")

    tune.report = report_then_crash
    try:
        run_trial(config, **parameters)
    finally:
        tune.report = real_report


def test_a_crashed_trial_is_retried_from_its_checkpoint(local_ray, tmp_path):
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    config = load_config(TINY, TRIAL_SIZE)
    spec = load_search({"space": {"training.reg_weight": [5]}}, config)
    options = Options(storage=str(tmp_path), name="flaky", max_failures=1)
    results = run_search(config, spec, options, function=flaky_trial)
    assert (tmp_path / "crashed_once").exists() and not results.errors
    (run_dir,) = (tmp_path / "flaky" / "runs").iterdir()
    assert trial_metrics(run_dir) == [0, 1]  # epoch 0 was not trained again after the crash
    assert results[0].metrics["epoch"] == 1


def test_an_impossible_resource_request_fails_at_once(local_ray, tmp_path, capsys):
    search = tmp_path / "search.yaml"
    search.write_text(yaml.safe_dump(GRID))
    started = time.monotonic()
    code = main(["tune", str(TINY), "--search", str(search), "--storage", str(tmp_path), "--gpus-per-trial", "1"])
    assert code == 2 and time.monotonic() - started < 60
    error = capsys.readouterr().err
    assert "no node of this Ray cluster can run a trial asking for 1 CPU and 1 GPU" in error
    assert "--gpus-per-trial 0" in error
    assert not list(tmp_path.glob("*/runs"))


def test_a_bad_search_key_fails_before_ray_starts(tmp_path):
    config = load_config(TINY)
    with pytest.raises(SearchError, match="space.model.patch_sise"):
        load_search({"space": {"model.patch_sise": [4]}}, config)
    with pytest.raises(SearchError, match="must be at least 1"):
        load_search({"space": {"model.part_bank.bank_size": [0, 10]}}, config)


def test_an_interrupted_experiment_resumes_without_rerunning_finished_trials(tmp_path):
    search = tmp_path / "search.yaml"
    search.write_text(yaml.safe_dump({"space": {"training.reg_weight": [1, 50]}}))
    command = [sys.executable, "-m", "npdraw_core", "tune", str(TINY), "--search", str(search), "--storage",
               str(tmp_path), "--name", "exp", "--max-concurrent-trials", "1",
               *[f"--set={o}" for o in [*TRIAL_SIZE, "training.epochs=3"]]]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen(command, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    runs = tmp_path / "exp" / "runs"
    try:
        deadline = time.monotonic() + 400
        while not any(p.is_file() and load_checkpoint(p).get("complete") for p in runs.glob("*/model_last.pt")):
            assert process.poll() is None, "the search ended before its first trial finished"
            assert time.monotonic() < deadline, "no finished trial after 400 s"
            time.sleep(0.5)
        process.send_signal(signal.SIGINT)  # Tune saves the experiment state and stops
        process.wait(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
    finished = [p.parent for p in runs.glob("*/model_last.pt") if load_checkpoint(p).get("complete")]
    before = {run_dir: (trial_metrics(run_dir), (run_dir / "model_last.pt").stat().st_mtime_ns) for run_dir in finished}

    resumed = subprocess.run([sys.executable, "-m", "npdraw_core", "tune", "--resume", str(tmp_path / "exp")],
                             cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)  # fmt: skip
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    for run_dir, (epochs, written) in before.items():
        assert trial_metrics(run_dir) == epochs == [0, 1, 2]  # not trained again
        assert (run_dir / "model_last.pt").stat().st_mtime_ns == written
    table = (tmp_path / "exp" / "results.csv").read_text().splitlines()
    assert len(table) == 3 and all(",TERMINATED," in row for row in table[1:])
