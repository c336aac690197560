"""One resumable training loop for every stage that trains (the prior, the VAE).

Each epoch trains, validates, logs one metrics record and writes one checkpoint atomically, holding
everything needed to continue after `kill -9` with the same result as an uninterrupted run: weights, the
best weights so far, optimizer, epoch, early-stopping progress and every random state (the stage's
generators and torch's global generator, which dropout draws from; it is forked and seeded, so the
caller's global state is left untouched). One checkpoint schema serves every stage.

`on_epoch(metrics)` is called after each epoch's checkpoint is written (Ray Tune reports from it); it may
raise `StopTraining` to end training there. The checkpoint then stays resumable: a later call continues.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from npdraw_core.checkpoint import CheckpointError, save_checkpoint

log = logging.getLogger(__name__)

FORMAT, FORMAT_VERSION = "npdraw-training", 1
EpochCallback = Callable[[dict[str, Any]], None]


class StopTraining(Exception):
    """Raised by an `on_epoch` callback to stop training after the current epoch."""


@dataclass(frozen=True)
class Schedule:
    epochs: int
    patience: int | None = None  # epochs without improvement of `monitor` before stopping early
    monitor: str = "valid_loss"  # the metric minimised: it picks the best weights and drives early stopping


@dataclass
class Progress:
    epoch: int = -1  # last finished epoch
    best: float = float("inf")
    best_epoch: int = -1
    stale_epochs: int = 0

    def finished(self, schedule: Schedule) -> bool:
        stalled = schedule.patience is not None and self.stale_epochs >= schedule.patience
        return self.epoch + 1 >= schedule.epochs or stalled


CHECKPOINT_KEYS = ("epoch", "best", "best_epoch", "stale_epochs", "complete", "state_dict", "best_state_dict",
                   "optimizer", "generators", "torch_rng")  # fmt: skip


def check_training_checkpoint(payload: dict, path: str | Path) -> dict:
    if payload.get("format") != FORMAT or payload.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(
            f"{str(path)!r} is not an npdraw training checkpoint of format version {FORMAT_VERSION} "
            f"(found format {payload.get('format')!r}, version {payload.get('format_version')!r}); "
            "move it away to train from scratch"
        )
    missing = [key for key in CHECKPOINT_KEYS if key not in payload]
    if missing:
        raise CheckpointError(f"{str(path)!r} is an incomplete training checkpoint: it lacks {', '.join(missing)}")
    return payload


def progress_of(payload: dict | None) -> Progress:
    if not payload:
        return Progress()
    return Progress(payload["epoch"], payload["best"], payload["best_epoch"], payload["stale_epochs"])


def fit(
    module: nn.Module,
    optimizer: torch.optim.Optimizer,
    *,
    stage: str,
    schedule: Schedule,
    checkpoint: str | Path,
    stage_hash: str,
    train_epoch: Callable[[int], dict[str, float]],
    validate: Callable[[int], dict[str, float]],
    generators: dict[str, torch.Generator],
    seed: int,
    record: Callable[..., None],
    resume_from: dict | None = None,
    on_epoch: EpochCallback | None = None,
    on_improved: Callable[[int, dict], None] | None = None,
) -> dict:
    """Train `module` epoch by epoch until the schedule is done, resuming from `resume_from` (a checkpoint
    payload of this loop) when given. Returns the last checkpoint payload; `module` ends with the best
    weights. `record(stage, **metrics)` logs each epoch's metrics."""
    state = check_training_checkpoint(resume_from, checkpoint) if resume_from else {}
    progress = progress_of(state)
    if state:
        module.load_state_dict(state["state_dict"])
        optimizer.load_state_dict(state["optimizer"])
        for name, generator in generators.items():
            generator.set_state(state["generators"][name])
    if state and progress.finished(schedule):
        log.info("[%s] %s finished %d epochs for this config; skipping", stage, checkpoint, progress.epoch + 1)
        module.load_state_dict(state["best_state_dict"])
        return state
    if state:
        log.info("[%s] resuming after epoch %d from %s", stage, progress.epoch, checkpoint)
    device = next(module.parameters()).device
    cuda = [device] if device.type == "cuda" else []
    best_state_dict = state.get("best_state_dict")
    with torch.random.fork_rng(devices=cuda):
        torch.manual_seed(seed)
        if state:
            torch.set_rng_state(state["torch_rng"])
            if cuda and state.get("cuda_rng") is not None:
                torch.cuda.set_rng_state(state["cuda_rng"], device)
        while not progress.finished(schedule):
            epoch, started = progress.epoch + 1, time.perf_counter()
            metrics = {"epoch": epoch, **train_epoch(epoch), **validate(epoch)}
            score = metrics[schedule.monitor]
            improved = score < progress.best
            progress.epoch, progress.stale_epochs = epoch, 0 if improved else progress.stale_epochs + 1
            if improved:
                progress.best, progress.best_epoch = score, epoch
                best_state_dict = {k: v.detach().cpu().clone() for k, v in module.state_dict().items()}
            metrics.update(best=progress.best, seconds=time.perf_counter() - started)
            record(stage, **metrics)
            state = {
                "format": FORMAT, "format_version": FORMAT_VERSION, "stage": stage, "config_hash": stage_hash,
                **vars(progress), "complete": progress.finished(schedule), "metrics": metrics,
                "state_dict": module.state_dict(), "best_state_dict": best_state_dict,
                "optimizer": optimizer.state_dict(),
                "generators": {name: g.get_state() for name, g in generators.items()},
                "torch_rng": torch.get_rng_state(), "cuda_rng": torch.cuda.get_rng_state(device) if cuda else None,
            }  # fmt: skip
            save_checkpoint(state, checkpoint)
            if improved and on_improved is not None:
                on_improved(epoch, metrics)
            if on_epoch is not None:
                try:
                    on_epoch(metrics)
                except StopTraining as stop:
                    log.info("[%s] stopped after epoch %d by a callback: %s", stage, epoch, stop)
                    break
    if progress.stale_epochs and progress.finished(schedule) and progress.epoch + 1 < schedule.epochs:
        log.info("[%s] no improvement of %s for %d epochs; stopped early", stage, schedule.monitor, progress.stale_epochs)
    module.load_state_dict(best_state_dict)
    return state
