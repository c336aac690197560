"""Running the points of an experiment: each point is one run config (the base config with overrides),
run through the whole NP-DRAW pipeline and, when asked, beside the VAE baseline of the same config.

    EXPERIMENT_DIR/runs/POINT/                 the point's NP-DRAW run (config, metrics, model, figures)
    EXPERIMENT_DIR/runs/POINT/baseline-vae/    its VAE baseline (npdraw_baselines)
    EXPERIMENT_DIR/runs/POINT/point.json       the point's result rows, keyed by what determines them
    EXPERIMENT_DIR/runs/cache/, extractors/    stage cache and FID extractors, shared by the points
    EXPERIMENT_DIR/tune/                       Ray Tune's experiment state (the Ray path only)

Points run one after another in this process (`use_ray=False`) or as the trials of one Ray Tune grid
(one trial per point, `npdraw_tune`'s Ray start-up and resource checks). Either way a point whose
point.json matches its settings is not run again, so an interrupted experiment continues where it
stopped, and the rows are read back from the point.json files.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)
RESULT_FILE = "point.json"
BASELINE_DIR = "baseline-vae"
ALL_STAGES = ["bank", "parse", "prior", "train", "eval"]


@dataclass(frozen=True)
class Point:
    """One configuration of an experiment: a run name, config overrides and the values it stands for
    (e.g. {"fraction": 0.3, "seed": 0}), copied into its result rows."""

    name: str
    overrides: tuple[str, ...]
    values: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class BaselineBudget:
    """How long the VAE baseline of each point trains: process CPU minutes, or epochs (one of them)."""

    cpu_minutes: float | None = None
    epochs: int | None = None
    latent_dim: int = 32


@dataclass
class SweepOptions:
    use_ray: bool = True  # through Ray Tune when it is installed; False: one process, point after point
    cpus_per_trial: float = 1.0
    max_concurrent_trials: int | None = None
    max_failures: int = 1
    address: str | None = None  # a running Ray cluster; None: a local Ray on loopback
    threads: int = 1  # torch threads in each point


def point_config(base: dict, point: Point, experiment_dir: Path):
    from npdraw_core.config import load_config

    return load_config(base, [
        *point.overrides, f"name={point.name}", f"output_dir={experiment_dir / 'runs'}", f"stages={json.dumps(ALL_STAGES)}",
    ])  # fmt: skip


def point_key(config, baseline: BaselineBudget | None) -> str:
    """The settings a point's rows depend on: its whole config but `evaluation.nll_workers` (how many processes
    score the NLL, not its value; leaving it out also keeps the keys of points run before it existed)."""
    from npdraw_core.config import config_hash, to_plain

    plain = to_plain(config)
    plain["evaluation"] = {k: v for k, v in plain["evaluation"].items() if k != "nll_workers"}
    return config_hash("experiment-point", plain, asdict(baseline) if baseline else None)


def read_rows(config, baseline: BaselineBudget | None) -> list[dict] | None:
    """The point's rows if point.json holds them for exactly these settings."""
    path = config.run_dir / RESULT_FILE
    if not path.is_file():
        return None
    try:
        saved = json.loads(path.read_text())
    except json.JSONDecodeError:
        return None
    return saved["rows"] if saved.get("key") == point_key(config, baseline) else None


def run_point(base: dict, point: Point, experiment_dir: Path, baseline: BaselineBudget | None) -> list[dict]:
    """Run one point (NP-DRAW, then the baseline if asked) unless its point.json is current; its rows."""
    from npdraw_core.checkpoint import atomic_write_text, read_metrics
    from npdraw_core.pipeline import run_pipeline
    from npdraw_core.report import parse_metrics
    from npdraw_core.run import Run
    from npdraw_core.splits import describe

    config = point_config(base, point, experiment_dir)
    done = read_rows(config, baseline)
    if done is not None:
        log.info("[experiment] %s is done (%s); skipping", point.name, config.run_dir / RESULT_FILE)
        return done
    run = Run(config)
    started, cpu_started = time.perf_counter(), time.process_time()
    results = run_pipeline(run)
    common = {**point.values, "point": point.name, "train_images": len(run.dataset.load("train"))}
    split = describe(run.dataset)
    if split is not None and split["kept"] is not None:
        common["kept"] = " ".join(map(str, split["kept"]))
    records = read_metrics(run.path("metrics.jsonl"))
    rows = [{
        **common, "model": "NP-DRAW", **numbers(results), **training_terms(records),
        "parse_psnr": parse_metrics(run.dir).get("test", {}).get("psnr_mean"), "seconds": time.perf_counter() - started,
        "cpu_seconds": time.process_time() - cpu_started, "run_dir": str(run.dir),
    }]  # fmt: skip
    if baseline is not None:
        from npdraw_baselines import run_baseline

        started, cpu_started = time.perf_counter(), time.process_time()
        scores = run_baseline(
            config, run.path(BASELINE_DIR), cpu_minutes=baseline.cpu_minutes, epochs=baseline.epochs,
            latent_dim=baseline.latent_dim,
        )  # fmt: skip
        rows.append({
            **common, "model": "VAE", **numbers(scores), "seconds": time.perf_counter() - started,
            "cpu_seconds": time.process_time() - cpu_started, "run_dir": str(run.path(BASELINE_DIR)),
        })  # fmt: skip
    payload = {"key": point_key(config, baseline), "point": asdict(point), "rows": rows}
    atomic_write_text(run.path(RESULT_FILE), json.dumps(payload, indent=2, default=float) + "\n")
    return rows


def numbers(results: dict) -> dict[str, float]:
    """The scores of an evaluation: the test NLL bound and every FID (not the bookkeeping counts)."""
    kept = ("nll_nats", "bits_per_dim")
    return {key: float(value) for key, value in results.items() if key in kept or (key.startswith("fid_") and key != "fid_samples")}


def training_terms(records: list[dict]) -> dict[str, float]:
    """Validation reconstruction and KL (nats per image) of the VAE epoch whose weights model.pt holds
    (the lowest validation loss), as the paper's Table 2 reports them."""
    train = [r for r in records if r.get("stage") == "train" and "valid_loss" in r]
    if not train:
        return {}
    best = min(train, key=lambda r: r["valid_loss"])
    return {"reconstruction": best.get("valid_reconstruction"), "kl": best.get("valid_kl"),
            "valid_neg_elbo": best.get("valid_neg_elbo"), "best_epoch": best.get("epoch")}  # fmt: skip


# ---------------------------------------------------------------------------------------------------------
# Running all points


def ray_available() -> bool:
    try:
        import ray  # noqa: F401
        from ray import tune  # noqa: F401
    except ImportError:
        return False
    return True


def run_points(
    base: dict, points: list[Point], experiment_dir: str | Path, *, baseline: BaselineBudget | None,
    options: SweepOptions | None = None,
) -> list[dict]:  # fmt: skip
    """Run every point (see the module docstring) and return all their rows, in the order of `points`."""
    options = options or SweepOptions()
    experiment_dir = Path(experiment_dir).resolve()
    experiment_dir.mkdir(parents=True, exist_ok=True)
    names = [point.name for point in points]
    if len(set(names)) != len(names):
        raise ValueError(f"experiment points must have distinct names, got {names}")
    for point in points:  # every point's config is checked before anything runs
        point_config(base, point, experiment_dir)
    if options.use_ray and ray_available():
        run_with_ray(base, points, experiment_dir, baseline, options)
    else:
        if options.use_ray:
            log.info("[experiment] Ray Tune is not installed: running the points in this process")
        for number, point in enumerate(points, start=1):
            log.info("[experiment] point %d/%d: %s", number, len(points), point.name)
            try:
                run_point(base, point, experiment_dir, baseline)
            except Exception:  # the other points still run; the missing one is named below
                log.exception("[experiment] point %s failed", point.name)
    rows, missing = [], []
    for point in points:
        found = read_rows(point_config(base, point, experiment_dir), baseline)
        if found is None:
            missing.append(point.name)
        else:
            rows += found
    if missing:
        raise RuntimeError(
            f"{len(missing)} point(s) did not finish: {', '.join(missing)}; see their run directories under "
            f"{experiment_dir / 'runs'} and Ray's trial errors in {experiment_dir / 'tune'}; run the same "
            "command again to continue"
        )
    return rows


def point_trial(trial: dict, *, base: dict, points: list[dict], experiment_dir: str, baseline: dict | None, threads: int) -> None:
    """The Tune trainable: run point number `trial["point"]` and report its scores."""
    from ray import tune

    from npdraw_core.threads import configure_threads, nll_workers_within

    configure_threads(max(1, threads))  # the trial's CPUs, with the CLI's other CPU settings
    base = nll_workers_within(base, threads)
    point = Point(**{**points[trial["point"]], "overrides": tuple(points[trial["point"]]["overrides"])})
    rows = run_point(base, point, Path(experiment_dir), BaselineBudget(**baseline) if baseline else None)
    report = {"point_name": point.name}
    for row in rows:
        for key, value in row.items():
            if isinstance(value, int | float) and not isinstance(value, bool):
                report[f"{row['model']}/{key}"] = value
    tune.report(report)


def run_with_ray(base: dict, points: list[Point], experiment_dir: Path, baseline: BaselineBudget | None, options: SweepOptions) -> None:
    from ray import tune

    from npdraw_tune.experiment import Options, start_ray, trial_resources

    start_ray(options.address)
    resources = trial_resources(Options(storage=str(experiment_dir), name="tune", cpus_per_trial=options.cpus_per_trial,
                                        address=options.address))  # fmt: skip
    trainable = tune.with_parameters(
        point_trial, base=base, points=[asdict(point) for point in points], experiment_dir=str(experiment_dir),
        baseline=asdict(baseline) if baseline else None, threads=max(options.threads, int(resources["cpu"]) or 1),
    )  # fmt: skip
    tuner = tune.Tuner(
        tune.with_resources(trainable, resources),
        param_space={"point": tune.grid_search(list(range(len(points))))},
        tune_config=tune.TuneConfig(max_concurrent_trials=options.max_concurrent_trials),
        run_config=tune.RunConfig(
            name=f"points-{time.strftime('%Y%m%d-%H%M%S')}", storage_path=str(experiment_dir / "tune"),
            failure_config=tune.FailureConfig(max_failures=options.max_failures), verbose=1,
        ),
    )  # fmt: skip
    log.info("[experiment] %d points as Ray Tune trials (%g CPU each) in %s", len(points), resources["cpu"], experiment_dir / "tune")
    for result in tuner.fit():
        if result.error:
            log.error("[experiment] a trial failed: %s", str(result.error).splitlines()[0])
