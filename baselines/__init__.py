"""Comparison models trained, scored and sampled like NP-DRAW (not NP-DRAW components): a plain
convolutional VAE with the same encoder/decoder widths as the run it is compared with.

    from npdraw_baselines import run_baseline
    scores = run_baseline("configs/demo.yaml", "runs/demo/baseline-vae", cpu_minutes=10)

The names below load on first use: the CLI imports this package for --help, which must not import torch.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "ConvVAE": "npdraw_baselines.vae",
    "vae_from_config": "npdraw_baselines.vae",
    "train_baseline": "npdraw_baselines.training",
    "load_baseline": "npdraw_baselines.training",
    "evaluate_baseline": "npdraw_baselines.evaluation",
    "run_baseline": "npdraw_baselines.evaluation",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
