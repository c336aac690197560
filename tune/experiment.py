"""A search experiment: the Tuner over a run config and a search file, on a local Ray or a cluster.

Layout under the storage path (every node must see it on a cluster):

    STORAGE/cache/                 banks, parses and priors, shared by every trial and experiment
    STORAGE/NAME/                  Tune's experiment directory (trials, checkpoints; `--resume` this)
    STORAGE/NAME/runs/TRIAL_ID/    each trial's npdraw run directory (metrics, model.pt)
    STORAGE/NAME/npdraw_search.json  the base config, search and options, for `--resume`
    STORAGE/NAME/results.csv, best.yaml, results.png   written when the search ends
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from npdraw_core.config import RunConfig
from npdraw_tune.search import SearchSpec, param_space
from npdraw_tune.trial import run_trial

log = logging.getLogger(__name__)
STATE_FILE = "npdraw_search.json"


@dataclass
class Options:
    storage: str
    name: str
    cpus_per_trial: float = 1.0
    gpus_per_trial: float | None = None  # None: 0.5 when the cluster has GPUs, else 0
    max_concurrent_trials: int | None = None
    max_failures: int = 2
    address: str | None = None  # a running cluster ("auto", "ray://…", host:port); None: a local Ray

    @property
    def experiment_dir(self) -> Path:
        return Path(self.storage) / self.name


def start_ray(address: str | None) -> None:
    if not address:  # a local Ray on loopback only: Ray otherwise swaps 127.0.0.1 for the network address
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    import ray

    if ray.is_initialized():
        return
    if address:
        ray.init(address=address, log_to_driver=False)
    else:
        ray.init(include_dashboard=False, log_to_driver=False, _node_ip_address="127.0.0.1")


def trial_resources(options: Options) -> dict[str, float]:
    """What each trial asks for, checked against the cluster's nodes: a request no node can ever satisfy
    fails now, instead of leaving trials pending forever."""
    import ray

    nodes = [node["Resources"] for node in ray.nodes() if node.get("Alive")]
    has_gpus = any(node.get("GPU", 0) > 0 for node in nodes)
    gpus = options.gpus_per_trial if options.gpus_per_trial is not None else (0.5 if has_gpus else 0.0)
    cpus = options.cpus_per_trial
    if cpus < 0 or gpus < 0 or (gpus > 1 and gpus != int(gpus)):
        raise ValueError(f"--cpus-per-trial and --gpus-per-trial must be ≥ 0 (GPUs above 1 whole), got {cpus}, {gpus}")
    fits = [node for node in nodes if node.get("CPU", 0) >= cpus and node.get("GPU", 0) >= gpus]
    if not fits:
        seen = "; ".join(f"{node.get('CPU', 0):g} CPU, {node.get('GPU', 0):g} GPU" for node in nodes)
        hint = " use --gpus-per-trial 0 on a CPU-only cluster;" if gpus and not has_gpus else ""
        raise ValueError(
            f"no node of this Ray cluster can run a trial asking for {cpus:g} CPU and {gpus:g} GPU "
            f"(nodes: {seen}):{hint} lower --cpus-per-trial / --gpus-per-trial"
        )
    return {"cpu": cpus, "gpu": gpus}


def trial_base(config: dict, options: Options) -> dict:
    """The config every trial starts from: runs under the experiment; eval only when the search asks."""
    stages = [stage for stage in config["stages"] if stage != "eval"]
    return {**config, "output_dir": str(options.experiment_dir / "runs"), "stages": stages}


def make_trainable(config: dict, spec: SearchSpec, options: Options, resources: dict, function=run_trial):
    from ray import tune

    trainable = tune.with_parameters(
        function, base=trial_base(config, options), spec=spec, cache_dir=str(Path(options.storage) / "cache"),
        threads=max(1, int(resources["cpu"])),
    )  # fmt: skip
    return tune.with_resources(trainable, resources)


def run_search(config: RunConfig, spec: SearchSpec, options: Options, *, function=run_trial):
    """Run the search to the end; returns Tune's ResultGrid (files are written by `write_results`)."""
    from ray import tune

    from npdraw_core.config import load_config

    config = load_config(config.to_dict(), spec.overrides({}))  # the search's fixed keys, e.g. a budget
    start_ray(options.address)
    resources = trial_resources(options)
    options.experiment_dir.mkdir(parents=True, exist_ok=True)
    state = {"config": config.to_dict(), "spec": spec.to_dict(), "options": vars(options)}
    (options.experiment_dir / STATE_FILE).write_text(json.dumps(state, indent=2))
    scheduler = None
    if spec.scheduler:
        settings = {k: v for k, v in spec.scheduler.items() if k != "type"}
        scheduler = tune.schedulers.ASHAScheduler(max_t=config.training.epochs, **settings)
    tuner = tune.Tuner(
        make_trainable(config.to_dict(), spec, options, resources, function),
        param_space=param_space(spec),
        tune_config=tune.TuneConfig(
            metric=spec.metric, mode=spec.mode, num_samples=spec.num_samples, scheduler=scheduler,
            max_concurrent_trials=options.max_concurrent_trials,
        ),
        run_config=tune.RunConfig(
            name=options.name, storage_path=str(Path(options.storage).resolve()),
            failure_config=tune.FailureConfig(max_failures=options.max_failures),
            checkpoint_config=tune.CheckpointConfig(num_to_keep=2), verbose=1,
        ),
    )  # fmt: skip
    log.info("[tune] %s: %d CPU / %g GPU per trial; experiment in %s", options.name, resources["cpu"],
             resources["gpu"], options.experiment_dir)  # fmt: skip
    return tuner.fit()


def resume_search(experiment_dir: str | Path, *, address: str | None = None, function=run_trial):
    """Continue an interrupted experiment: finished trials keep their results, the others resume from
    their last checkpoints."""
    from ray import tune

    experiment_dir = Path(experiment_dir).resolve()
    state_path = experiment_dir / STATE_FILE
    if not state_path.is_file() or not tune.Tuner.can_restore(str(experiment_dir)):
        raise ValueError(
            f"{str(experiment_dir)!r} is not an npdraw tune experiment that can be resumed (no {STATE_FILE} or "
            "no Tune state); pass the experiment directory STORAGE/NAME that `npdraw tune` printed"
        )
    state = json.loads(state_path.read_text())
    options = Options(**{**state["options"], "address": address or state["options"]["address"]})
    spec = SearchSpec(**state["spec"])
    start_ray(options.address)
    trainable = make_trainable(state["config"], spec, options, trial_resources(options), function)
    tuner = tune.Tuner.restore(str(experiment_dir), trainable, resume_unfinished=True, resume_errored=True)
    return tuner.fit(), spec, options, state["config"]


def write_results(result_grid, spec: SearchSpec, options: Options, config: dict) -> dict[str, Path]:
    """results.csv (every trial), best.yaml (ready for `npdraw run`) and results.png; returns their paths."""
    import pandas as pd

    from npdraw_core.config import load_config, write_config

    rows = []
    for result in result_grid:
        metrics = result.metrics or {}
        rows.append({
            "trial_id": metrics.get("trial_id", Path(result.path).name),
            "status": "ERROR" if result.error else "TERMINATED" if spec.metric in metrics else "NO RESULT",
            **{key: result.config.get(key) for key in spec.space},
            spec.metric: metrics.get(spec.metric), "epoch": metrics.get("epoch"),
            "parse_psnr": metrics.get("parse_psnr"), "time_total_s": metrics.get("time_total_s"),
            "stage_seconds": metrics.get("stage_seconds"), "training_seconds": metrics.get("training_seconds"),
            "node_id": metrics.get("node_id"), "device": metrics.get("device"),
            "error": str(result.error).splitlines()[0] if result.error else "",
        })  # fmt: skip
    table = pd.DataFrame(rows)
    directory = options.experiment_dir
    paths = {"csv": directory / "results.csv", "best": directory / "best.yaml", "plot": directory / "results.png"}
    table.to_csv(paths["csv"], index=False)
    finished = table[(table.status == "TERMINATED") & table[spec.metric].notna()]
    if finished.empty:
        raise RuntimeError(f"no trial of {options.name} finished; see {paths['csv']} and the trials' errors")
    best = finished.sort_values(spec.metric, ascending=spec.mode == "min").iloc[0]
    values = {key: _plain(best[key]) for key in spec.space}
    best_config = load_config(config, [*spec.overrides(values), f"name={options.name}-best"])
    write_config(best_config, paths["best"])
    plot_results(finished, spec, paths["plot"])
    return paths


def plot_results(table, spec: SearchSpec, path: Path) -> None:
    """The metric against each searched key (one panel each), one line per value of the regulariser
    weight (or of the last key), the best over the other keys."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = list(spec.space)
    group = "training.reg_weight" if "training.reg_weight" in keys else (keys[-1] if len(keys) > 1 else None)
    axes_keys = [k for k in keys if k != group] or keys
    figure, axes = plt.subplots(1, len(axes_keys), figsize=(4.5 * len(axes_keys), 3.6), squeeze=False)
    best = min if spec.mode == "min" else max
    for axis, key in zip(axes[0], axes_keys, strict=True):
        for label, rows in table.groupby(group) if group else [(None, table)]:
            points = rows.groupby(key)[spec.metric].agg(best).sort_index()
            axis.plot(points.index, points.values, marker="o", label=f"{group.split('.')[-1]}={label}" if group else None)
        axis.set_xlabel(key)
        axis.set_ylabel(spec.metric)
        axis.grid(alpha=0.3)
        if group:
            axis.legend(fontsize=8)
    figure.suptitle(f"{spec.metric} ({spec.mode}; best over the other keys)")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def summary_table(paths: dict[str, Path], spec: SearchSpec) -> str:
    import pandas as pd

    table = pd.read_csv(paths["csv"])
    shown = ["trial_id", "status", *spec.space, spec.metric, "epoch", "time_total_s"]
    table = table.sort_values(spec.metric, ascending=spec.mode == "min", na_position="last")
    return table[shown].to_string(index=False, float_format=lambda v: f"{v:.4g}")


def _plain(value: Any) -> Any:
    """A pandas cell → a plain Python value (numpy scalars do not survive JSON)."""
    import numpy as np

    return value.item() if isinstance(value, np.generic) else value


def default_name(config: RunConfig, search_path: str | Path | None) -> str:
    stem = Path(search_path).stem if search_path else "search"
    return f"{config.name}-{stem}-{time.strftime('%Y%m%d-%H%M%S')}"
