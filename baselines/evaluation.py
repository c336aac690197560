"""Scoring the VAE baseline exactly as `npdraw eval` scores NP-DRAW: `npdraw_core.evaluation.evaluate` on the
same test set, with the run config's evaluation settings (the importance-weighted NLL bound with
`nll_samples`, and the FID of `fid_samples` samples for each of `feature_extractors`), the same seeds,
and the same cached reference statistics and feature extractors (under the config's output_dir)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from npdraw_baselines.training import baseline_run, load_baseline, train_baseline, with_evaluation
from npdraw_core.checkpoint import atomic_write_text
from npdraw_core.evaluation import evaluate

METRICS_FILE = "metrics.json"
TRAINING_INFO = ("latent_dim", "cpu_seconds", "images_seen", "epochs", "best_epoch", "valid_loss")


def evaluate_baseline(
    output_dir: str | Path,
    *,
    nll_images: int | None = None,
    fid_samples: int | None = None,
    device: str | None = None,
) -> dict[str, float]:
    """Score the baseline in `output_dir` (None: the run config's evaluation settings; nll_images=0 skips
    the NLL). Appends an "eval" record to its metrics.jsonl and writes metrics.json: the scores and how
    the baseline was trained (latent_dim, cpu_seconds, images_seen, epochs, ...)."""
    for name, value in (("nll_images", nll_images), ("fid_samples", fid_samples)):
        if value is not None and (not isinstance(value, int) or value < 0):
            raise ValueError(f"{name} must be a whole number of 0 or more, got {value!r}")
    output_dir = Path(output_dir)
    loaded = load_baseline(output_dir, device=device or "cpu")
    config = with_evaluation(loaded.config, nll_images=nll_images, fid_samples=fid_samples)
    run = baseline_run(config, output_dir, device=device)
    with run.lock():
        results = evaluate(run, loaded.model.to(run.device))
        results.update({name: loaded.info[name] for name in TRAINING_INFO if name in loaded.info})
        atomic_write_text(output_dir / METRICS_FILE, json.dumps(results, indent=2, default=float) + "\n")
    return results


def run_baseline(
    run_config: Any, output_dir: str | Path, *, cpu_minutes: float | None = None, epochs: int | None = None,
    latent_dim: int = 32,
) -> dict[str, float]:  # fmt: skip
    """Train the VAE baseline of `run_config` (a RunConfig, YAML path or config dict) into `output_dir` for
    a budget (see `train_baseline`), score it with the config's evaluation settings, write metrics.json
    and return its scores."""
    train_baseline(run_config, output_dir, cpu_minutes=cpu_minutes, epochs=epochs, latent_dim=latent_dim)
    return evaluate_baseline(output_dir)
