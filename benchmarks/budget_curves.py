"""Issue 13: NP-DRAW against the VAE baseline at the same CPU budgets (MNIST: 10, 20, 40 CPU-minutes; Omniglot:
one point). Prints ONE JSON line and writes OUT/budget_DATASET.csv and .png (copy them to docs/).

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/budget_curves.py --out runs/budget
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/budget_curves.py --dataset omniglot --out runs/budget_omniglot
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/budget_curves.py --budgets 40 --keep-from docs/budget_mnist.csv

Each budget point is an NP-DRAW config (below); `npdraw run --stages train` trains it in OUT (bank and
parses are shared by the points and computed once: their CPU time is counted in every point). A point's
budget is its measured process CPU time (bank + parse + prior + VAE, 1 thread), which is fair when other
processes share the cores. The baseline (`npdraw_baselines`, the same encoder/decoder widths and data
pipeline, every training image) then trains for that CPU time: one run continued from point to point (its
schedule does not depend on the budget, so this equals separate runs up to the epoch cut). The label is what
a point aims at; the CPU time it takes depends on the hour (this machine's speed drifts by up to 1.6x), so
both models of a point are compared at the time NP-DRAW measured, in the same hour.
Both models are scored the same way: FID-LeNet of `--fid-samples` samples for each of `--seeds` (one set's
FID moves by about 2) and the 50-sample NLL bound on the first `--nll-images` test images; `--temperatures`
adds the first set's FID at other sampling temperatures (the VAE's samples gain from a temperature above 1).
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# dataset → budget label (CPU-minutes aimed at) → run name, NP-DRAW config and overrides. The baseline takes
# the data, widths and optimiser settings of a dataset's largest point.
POINTS = {
    "mnist": {
        10: ("demo", "configs/demo.yaml", []),
        # the recipe's networks with the prior settings it had when this point was measured
        20: ("mnist_cpu_20", "configs/mnist_cpu.yaml", ["prior_training.epochs=2", "training.epochs=3",
                                                        "training.max_train_images=25000", "model.prior.dropout=0.1",
                                                        "prior_training.lr=1e-3", "prior_training.lr_decay=1"]),
        40: ("mnist_cpu", "configs/mnist_cpu.yaml", []),
    },
    "omniglot": {15: ("omniglot_cpu", "configs/omniglot_cpu.yaml", [])},
}
COMPUTED_ONCE = ("bank", "parse")


def cpu_seconds_by_stage(run_dir: Path) -> dict[str, float]:
    """CPU seconds of each stage over every `npdraw run` in `run_dir` (a resumed run adds each attempt's)."""
    spent: dict[str, float] = {}
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        record = json.loads(line)
        if record["stage"] == "run":
            for stage, seconds in record.get("cpu_seconds", {}).items():
                spent[stage] = spent.get(stage, 0.0) + seconds
    return spent


def npdraw_run(out: Path, point: tuple[str, str, list[str]]) -> tuple[Path, dict[str, float]]:
    """Train the NP-DRAW point (skipped when done) and return its run dir and CPU seconds by stage."""
    name, config, overrides = point
    sets = [f"output_dir={out}", f"name={name}", *overrides]
    command = [sys.executable, "-m", "npdraw_core", "run", str(REPO / config), "--stages", "train", "--threads", "1"]
    subprocess.run([*command, *(arg for s in sets for arg in ("--set", s))], check=True, cwd=REPO)
    return out / name, cpu_seconds_by_stage(out / name)


def evaluate(model, config, run_dir: Path, *, seeds: list[int], nll_images: int, fid_samples: int) -> dict:
    """Scores of `model` (kept in RUN_DIR/scores.json: a rerun with the same settings reuses them)."""
    from npdraw_baselines.training import baseline_run, with_evaluation
    from npdraw_core.evaluation import evaluate as score

    settings = {"seeds": seeds, "nll_images": nll_images, "fid_samples": fid_samples}
    saved = run_dir / "scores.json"
    if saved.exists() and json.loads(saved.read_text())["settings"] == settings:
        return json.loads(saved.read_text())["scores"]
    results: dict = {}
    for index, seed in enumerate(seeds):
        scored = with_evaluation(dataclasses.replace(config, seed=seed), fid_samples=fid_samples,
                                 nll_images=nll_images if index == 0 else 0, nll_samples=50)  # fmt: skip
        metrics = score(baseline_run(scored, run_dir), model)
        results.setdefault("fid_lenet", []).append(round(metrics["fid_lenet"], 3))
        if index == 0:
            results["nll_nats"] = round(metrics["nll_nats"], 2)
    saved.write_text(json.dumps({"settings": settings, "scores": results}))
    return results


def fid_at_temperatures(model, config, run_dir: Path, *, seed: int, fid_samples: int, temperatures: list[float]) -> dict:
    """FID-LeNet of one sample set (`seed`) at each sampling temperature (`evaluation.temperature`), kept in
    RUN_DIR/temperatures.json and extended when more temperatures are asked for."""
    from npdraw_baselines.training import baseline_run, with_evaluation
    from npdraw_core.evaluation import evaluate as score

    saved = run_dir / "temperatures.json"
    known = json.loads(saved.read_text()) if saved.exists() else {}
    for temperature in temperatures:
        key = f"{temperature:g}@{fid_samples}@{seed}"
        if key not in known:
            scored = with_evaluation(dataclasses.replace(config, seed=seed), fid_samples=fid_samples, nll_images=0,
                                     temperature=temperature, fid_floor=False)  # fmt: skip
            known[key] = round(score(baseline_run(scored, run_dir), model)["fid_lenet"], 3)
            saved.write_text(json.dumps(known))
    return {temperature: known[f"{temperature:g}@{fid_samples}@{seed}"] for temperature in temperatures}


def kept_rows(path: Path, *, exclude: set[int]) -> list[dict]:
    """The rows of an earlier CSV of this script (numbers as numbers) whose budget is not in `exclude`."""

    def value(text: str):
        try:
            return int(text) if text.isdigit() else float(text)
        except ValueError:
            return text

    with open(path, newline="") as handle:
        rows = [{key: value(text) for key, text in row.items()} for row in csv.DictReader(handle)]
    return [row for row in rows if row["budget"] not in exclude]


def plot(rows: list[dict], path: Path, dataset: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, 2, figsize=(9, 3.4))
    for model, marker, colour in (("NP-DRAW", "o", "C0"), ("VAE", "s", "C1")):
        mine = [r for r in rows if r["model"] == model]
        minutes = [r["cpu_minutes"] for r in mine]
        axes[0].errorbar(minutes, [r["fid_lenet_mean"] for r in mine], yerr=[r["fid_lenet_spread"] for r in mine],
                         marker=marker, color=colour, label=f"{model}, temperature 1", capsize=3)  # fmt: skip
        axes[0].plot(minutes, [r["fid_lenet_best_temperature"] for r in mine], marker=marker, color=colour,
                     linestyle="--", alpha=0.6, label=f"{model}, best temperature")  # fmt: skip
        axes[1].plot(minutes, [r["nll_nats"] for r in mine], marker=marker, color=colour, label=model)
    axes[0].set(xlabel="CPU-minutes (1 thread)", ylabel="FID-LeNet (lower is better)", yscale="log")
    axes[1].set(xlabel="CPU-minutes (1 thread)", ylabel="test NLL, nats (lower is better)")
    for axis in axes:
        axis.grid(alpha=0.3)
        axis.legend(fontsize=8)
    figure.suptitle(f"{dataset}: NP-DRAW vs a plain VAE at the same CPU budget")
    figure.tight_layout()
    figure.savefig(path, dpi=120)


def main() -> None:
    options = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    options.add_argument("--dataset", choices=sorted(POINTS), default="mnist")
    options.add_argument("--out", type=Path, default=REPO / "runs" / "budget")
    options.add_argument("--budgets", type=int, nargs="+", help="labels of the points to run (default: all)")
    options.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    options.add_argument("--nll-images", type=int, default=1000)
    options.add_argument("--fid-samples", type=int, default=10000)
    options.add_argument("--temperatures", type=float, nargs="*", default=[],
                         help="also score the first sample set at these sampling temperatures (both models)")  # fmt: skip
    options.add_argument("--keep-from", type=Path, metavar="CSV",
                         help="an earlier CSV (e.g. docs/budget_mnist.csv) whose rows of the other budgets go into this "
                              "run's CSV and plot, so that one point can be measured again")  # fmt: skip
    args = options.parse_args()
    os.environ.setdefault("NPDRAW_THREADS", "1")
    import torch

    torch.set_num_threads(1)
    from npdraw_baselines.training import load_baseline, train_baseline
    from npdraw_core.config import load_config
    from npdraw_core.model_file import load_trained

    known = POINTS[args.dataset]
    budgets = args.budgets or sorted(known)
    if unknown := sorted(set(budgets) - set(known)):
        options.error(f"no {args.dataset} point labelled {unknown}; choose among {sorted(known)}")
    out = args.out.resolve()
    # longest first: a shorter prior schedule of the same lineage would otherwise be continued by the longer
    # one, whose run would then record only the extra epochs' CPU time
    points = {budget: npdraw_run(out, known[budget]) for budget in sorted(budgets, reverse=True)}
    # bank and parses: computed by whichever point ran first in OUT (the same for every point)
    every_run = [cpu_seconds_by_stage(out / name) for name, _, _ in known.values() if (out / name).is_dir()]
    once = {stage: max(spent.get(stage, 0.0) for spent in every_run) for stage in COMPUTED_ONCE}
    rows = []
    largest = known[max(known)][1]
    baseline_config = load_config(REPO / largest, [f"output_dir={out}", "training.max_train_images=null"])
    for budget, (run_dir, spent) in sorted(points.items()):
        cpu = sum(spent.get(stage, 0.0) for stage in ("prior", "train")) + sum(once.values())
        model = load_trained(run_dir)
        config = load_config(run_dir / "config.yaml")
        scores = evaluate(model, config, out / f"eval_npdraw_{budget}", seeds=args.seeds,
                          nll_images=args.nll_images, fid_samples=args.fid_samples)  # fmt: skip
        scores["by_temperature"] = fid_at_temperatures(model, config, out / f"eval_npdraw_{budget}", seed=args.seeds[0],
                                                       fid_samples=args.fid_samples, temperatures=args.temperatures)  # fmt: skip
        rows.append({"model": "NP-DRAW", "budget": budget, "cpu_minutes": round(cpu / 60, 2), **scores})
        # the baseline gets NP-DRAW's CPU time of the point: it continues to there and a copy of it is scored
        # (a copy made earlier, e.g. by a run in the background, is used as it is)
        scored_dir = out / f"baseline_{budget}"
        if not (scored_dir / "baseline.pt").exists():
            train_baseline(baseline_config, out / "baseline", cpu_minutes=cpu / 60)
            scored_dir.mkdir(exist_ok=True)
            shutil.copyfile(out / "baseline" / "baseline.pt", scored_dir / "baseline.pt")
        loaded = load_baseline(scored_dir)
        scores = evaluate(loaded.model, baseline_config, scored_dir, seeds=args.seeds, nll_images=args.nll_images,
                          fid_samples=args.fid_samples)  # fmt: skip
        scores["by_temperature"] = fid_at_temperatures(loaded.model, baseline_config, scored_dir, seed=args.seeds[0],
                                                       fid_samples=args.fid_samples, temperatures=args.temperatures)  # fmt: skip
        rows.append({"model": "VAE", "budget": budget, "cpu_minutes": round(loaded.info["cpu_seconds"] / 60, 2), **scores})
    for row in rows:
        fids = row.pop("fid_lenet")
        row.update(fid_lenet_mean=round(sum(fids) / len(fids), 3), fid_lenet_spread=round((max(fids) - min(fids)) / 2, 3),
                   fid_lenet_sets=" ".join(map(str, fids)))  # fmt: skip
        # the best sampling temperature, on the first sample set (temperature 1 included)
        by_temperature = {1.0: fids[0], **row.pop("by_temperature")}
        best = min(by_temperature, key=by_temperature.get)
        row.update(best_temperature=best, fid_lenet_best_temperature=by_temperature[best],
                   fid_lenet_by_temperature=" ".join(f"{t:g}:{fid}" for t, fid in sorted(by_temperature.items())))  # fmt: skip
    if args.keep_from:  # the other points' rows as measured before
        rows = sorted([*kept_rows(args.keep_from, exclude=set(budgets)), *rows], key=lambda r: (r["budget"], r["model"] != "NP-DRAW"))
    with open(out / f"budget_{args.dataset}.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    plot(rows, out / f"budget_{args.dataset}.png", "MNIST" if args.dataset == "mnist" else "Omniglot")
    print(json.dumps({"benchmark": "budget_curves", "out": str(out), "bank_parse_cpu_seconds": once, "rows": rows}), flush=True)


if __name__ == "__main__":
    main()
