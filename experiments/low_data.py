"""`npdraw experiment low-data`: NP-DRAW and the VAE baseline trained on part of the data (the paper's
Fig. 3), scored on the whole test set, at each fraction × seed of a `data.split` (npdraw_core.splits):

    digits      fraction f → the first round(10·f) digits {0, …, round(10·f) − 1} (f = 0.3 → {0, 1, 2})
    characters  a seeded random fraction of the characters (Omniglot)
    alphabets   a seeded random fraction of the alphabets (Omniglot)
    samples     a seeded random fraction of the training images

Writes RESULTS.csv (one row per point and model), RESULTS.md (a table) and RESULTS.png (fid_lenet and
test NLL against the fraction, NP-DRAW beside the VAE; the mean over seeds with their range as bars).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from npdraw_core.config import SPLIT_TYPES
from npdraw_experiments.sweep import Point

MODELS = ("NP-DRAW", "VAE")
METRICS = {"fid_lenet": "FID (LeNet)", "nll_nats": "test NLL (nats)"}


def low_data_points(split: str, fractions: list[float], seeds: list[int]) -> list[Point]:
    """One point per fraction × seed: the split, and the seed of both the split and the run."""
    if split not in SPLIT_TYPES:
        raise ValueError(f"--split must be one of {', '.join(SPLIT_TYPES)}, got {split!r}")
    if not fractions or not seeds:
        raise ValueError("give at least one fraction (--fractions 0.1,0.2) and one seed (--seeds 0)")
    for fraction in fractions:
        if not (math.isfinite(fraction) and 0 < fraction <= 1):
            raise ValueError(f"--fractions: each fraction must be in (0, 1], got {fraction}")
    points = []
    for fraction in fractions:
        for seed in seeds:
            split_setting = json.dumps({"type": split, "fraction": fraction, "seed": seed})
            points.append(Point(
                name=f"{split}-f{fraction:g}-s{seed}", overrides=(f"data.split={split_setting}", f"seed={seed}"),
                values={"split": split, "fraction": fraction, "seed": seed},
            ))  # fmt: skip
    return points


def check_splits(base: dict, points: list[Point]) -> None:
    """Apply every point's split now (data only, seconds), so a split that keeps nothing fails before
    any training."""
    from npdraw_core.config import load_config
    from npdraw_core.registry import default_registry
    from npdraw_core.splits import build_dataset, describe

    registry = default_registry()
    for point in points:
        config = load_config(base, list(point.overrides), registry=registry)
        describe(build_dataset(config.data, registry))


def write_low_data_results(rows: list[dict], stem: str | Path, *, title: str, notes: list[str] = ()) -> dict[str, Path]:
    """STEM.csv, STEM.md (the table, then `notes`: command, budget) and STEM.png from `run_points`' rows."""
    import pandas as pd

    stem = Path(stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    paths = {"csv": stem.with_suffix(".csv"), "md": stem.with_suffix(".md"), "plot": stem.with_suffix(".png")}
    table = pd.DataFrame(rows)
    columns = [c for c in ("split", "fraction", "seed", "model", "kept", "train_images", "nll_nats", "bits_per_dim",
                           "fid_lenet", "parse_psnr", "cpu_seconds", "seconds", "run_dir") if c in table]  # fmt: skip
    table = table[columns + [c for c in table.columns if c not in columns]]
    table.sort_values(["fraction", "seed", "model"]).to_csv(paths["csv"], index=False)
    paths["md"].write_text("\n\n".join([markdown_table(table, title), *notes]) + "\n")
    plot_low_data(table, paths["plot"], title)
    return paths


def summarise(table):
    """Mean, min and max of each metric over seeds, per fraction and model."""
    metrics = [m for m in METRICS if m in table]
    return table.groupby(["fraction", "model"])[metrics].agg(["mean", "min", "max"])


def markdown_table(table, title: str) -> str:
    metrics = [m for m in METRICS if m in table]
    first = table.sort_values("seed").groupby("fraction").first()
    summary = summarise(table)
    seeds = sorted(table["seed"].unique().tolist())
    header = ["fraction", "kept", "train images"]
    for metric in metrics:
        header += [f"{model} {METRICS[metric]}" for model in MODELS if model in set(table["model"])]
    lines = [f"{title} (mean over seeds {', '.join(map(str, seeds))})", "", "| " + " | ".join(header) + " |",
             "|" + "---|" * len(header)]  # fmt: skip
    for fraction in sorted(table["fraction"].unique()):
        kept = first.loc[fraction].get("kept", "") if "kept" in first else ""
        cells = [f"{fraction:g}", "all" if kept is None or kept != kept else str(kept), f"{int(first.loc[fraction, 'train_images']):,}"]
        for metric in metrics:
            for model in MODELS:
                if (fraction, model) in summary.index:
                    cells.append(f"{summary.loc[(fraction, model), (metric, 'mean')]:.2f}")
                elif model in set(table["model"]):
                    cells.append("–")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot_low_data(table, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics = [m for m in METRICS if m in table]
    summary = summarise(table)
    figure, axes = plt.subplots(1, len(metrics), figsize=(5 * len(metrics), 3.8), squeeze=False)
    for axis, metric in zip(axes[0], metrics, strict=True):
        for model, marker in zip(MODELS, ("o", "s"), strict=True):
            if model not in set(table["model"]):
                continue
            part = summary.xs(model, level="model")[metric].sort_index()
            errors = [part["mean"] - part["min"], part["max"] - part["mean"]]
            axis.errorbar(part.index, part["mean"], yerr=errors, marker=marker, capsize=3, label=model)
        axis.set_xlabel("fraction of the training data")
        axis.set_ylabel(METRICS[metric])
        axis.grid(alpha=0.3)
        axis.legend()
    figure.suptitle(title)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
