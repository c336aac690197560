"""Pre-training the prior (spec §4, paper Eq. 5): maximum likelihood with teacher forcing on the parses of
the training images (`npdraw train-prior`, the prior stage of `npdraw run`).

Each epoch ends with the validation NLL of held-out parses (nats per image), a metrics record and an atomic
checkpoint (`prior.pt`) holding everything needed to continue after `kill -9` with the same result as an
uninterrupted run: weights, optimizer, epoch, best weights so far, and the random states. Dropout layers
draw from torch's global generator (they take no `torch.Generator`), so training forks that generator,
seeds it from the run's seed, and checkpoints its state; the caller's global state is left untouched.
"""

from __future__ import annotations

import dataclasses
import hashlib
import time
from typing import Any

import torch
from torch import Tensor
from tqdm import tqdm

from npdraw_core.checkpoint import save_checkpoint
from npdraw_core.config import config_hash
from npdraw_core.data import minibatch_indices
from npdraw_core.distributions import log_prob
from npdraw_core.geometry import Grid
from npdraw_core.interfaces import Prior
from npdraw_core.parsing import parse_latents
from npdraw_core.run import Run
from npdraw_core.sampling import prior_logits

CHECKPOINT = "prior.pt"


def exemplars_of(bank: Any) -> Tensor:
    """A `PartBank` or its exemplar tensor (M, C, K, K)."""
    return getattr(bank, "exemplars", bank)


def _digest(*tensors: Tensor) -> str:
    digest = hashlib.sha256()
    for tensor in tensors:
        digest.update(str(tuple(tensor.shape)).encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


def prior_config_hash(run: Run, bank: Any, parses: dict) -> str:
    """Everything the trained prior depends on: its config, the training settings, the seed, and the
    contents of the bank and of the train/valid parses it learns from (so a rebuilt bank retrains it).
    The epoch count and early-stopping patience are left out: raising them continues the same run."""
    config = run.config
    settings = dataclasses.replace(config.prior_training, epochs=0, early_stopping_patience=None)
    data = _digest(
        exemplars_of(bank), *(parses[s][k] for s in ("train", "valid") for k in ("what", "where", "whether"))
    )
    return config_hash(
        "prior",
        config.model.canvas_size,
        config.model.patch_size,
        config.model.prior,
        settings,
        config.seed,
        data,
    )


@torch.no_grad()
def evaluate_nll(
    prior: Prior, bank: Any, grid: Grid, split: dict[str, Tensor], *, batch_size: int = 500
) -> float:
    """Mean −log p(z) of the parses of a split under the prior, in nats per image (eval mode)."""
    was_training = prior.training
    prior.eval()
    exemplars = exemplars_of(bank)
    total, count = 0.0, len(split["what"])
    for index in minibatch_indices(count, batch_size, shuffle=False):
        latents = parse_latents(
            split, index, bank_size=len(exemplars), num_cells=grid.num_cells, device=exemplars.device
        )
        total -= log_prob(prior_logits(prior, latents, exemplars, grid), latents).sum().item()
    prior.train(was_training)
    return total / max(count, 1)


def build_prior(run: Run, bank: Any) -> Prior:
    """The run's untrained prior on the run's device. Its initial weights depend only on the run's seed:
    nn.Module initialisers take no generator, so they run under a forked, seeded global RNG (built on the
    CPU, so every device starts from the same weights)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(run.config.seed * 1000 + 29)
        prior = run.build("prior", run.config.model.prior, shape=run.model_shape(len(exemplars_of(bank))))
    return prior.to(run.device)


def ensure_prior(run: Run, bank: Any, parses: dict) -> tuple[Prior, str]:
    """Pipeline stage 3: the trained prior (best validation weights, eval mode) and its artefact hash,
    which later stages fold into theirs. Training is skipped or resumed as `train_prior` says."""
    return train_prior(run, bank, parses), prior_config_hash(run, bank, parses)


def train_prior(run: Run, bank: Any, parses: dict) -> Prior:
    """Train the run's prior on `parses` ({"train": {"what", "where", "whether": (N, T) ints}, "valid": ...}).
    A finished `prior.pt` that matches the config is loaded instead; an unfinished one is resumed (also
    after raising `prior_training.epochs`, which the artefact's hash leaves out for that reason)."""
    settings, device, grid = run.config.prior_training, run.device, run.grid
    if settings.epochs < 1 or settings.batch_size < 1:
        raise ValueError(
            f"prior_training.epochs and batch_size must be ≥ 1, got {settings.epochs}, {settings.batch_size}"
        )
    exemplars, prior = exemplars_of(bank).to(device), build_prior(run, bank)
    shape = run.model_shape(len(exemplars))
    stage_hash = prior_config_hash(run, bank, parses)
    state = run.current(CHECKPOINT, stage_hash)
    if state is not None and _finished(state, settings):
        print(f"[prior] {run.path(CHECKPOINT)} matches the config and is finished; skipping", flush=True)
        prior.load_state_dict(state["best_state_dict"])
        return prior.eval()

    optimizer = torch.optim.Adam(prior.parameters(), lr=settings.lr)
    data_generator = torch.Generator().manual_seed(run.config.seed * 1000 + 31)
    train, num_train = parses["train"], len(parses["train"]["what"])
    if settings.max_train_images is not None:
        num_train = min(num_train, settings.max_train_images)
    cuda = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=cuda):
        torch.manual_seed(run.config.seed * 1000 + 37)  # dropout only; forked, so the caller's state is kept
        progress = {"epoch": -1, "best": float("inf"), "stale_epochs": 0, "best_state_dict": None}
        if state is not None:
            prior.load_state_dict(state["state_dict"])
            optimizer.load_state_dict(state["optimizer"])
            data_generator.set_state(state["data_generator"])
            torch.set_rng_state(state["torch_rng"])
            if cuda and state.get("cuda_rng") is not None:
                torch.cuda.set_rng_state(state["cuda_rng"], device)
            progress = {name: state[name] for name in progress}
            print(f"[prior] resuming after epoch {state['epoch']} from {run.path(CHECKPOINT)}", flush=True)
        while not _finished(progress, settings):
            epoch, started = progress["epoch"] + 1, time.perf_counter()
            train_nll = _train_epoch(
                prior, optimizer, exemplars, grid, shape, train, num_train, settings, data_generator, epoch
            )
            valid_nll = evaluate_nll(
                prior, exemplars, grid, parses["valid"], batch_size=max(settings.batch_size, 500)
            )
            improved = valid_nll < progress["best"]
            progress["epoch"], progress["stale_epochs"] = (
                epoch,
                0 if improved else progress["stale_epochs"] + 1,
            )
            if improved:
                progress["best"] = valid_nll
                progress["best_state_dict"] = {
                    k: v.detach().cpu().clone() for k, v in prior.state_dict().items()
                }
            run.log(
                "prior",
                epoch=epoch,
                train_nll=train_nll,
                valid_nll=valid_nll,
                best_valid_nll=progress["best"],
                seconds=time.perf_counter() - started,
                train_images=num_train,
            )
            save_checkpoint({
                **progress, "state_dict": prior.state_dict(), "optimizer": optimizer.state_dict(),
                "data_generator": data_generator.get_state(), "torch_rng": torch.get_rng_state(),
                "cuda_rng": torch.cuda.get_rng_state(device) if cuda else None,
                "config_hash": stage_hash, "complete": _finished(progress, settings),
            }, run.path(CHECKPOINT))  # fmt: skip
        if progress["stale_epochs"] and progress["epoch"] + 1 < settings.epochs:
            print(
                f"[prior] no validation improvement for {progress['stale_epochs']} epochs; stopped early",
                flush=True,
            )
    prior.load_state_dict(progress["best_state_dict"])
    return prior.eval()


def _finished(progress: dict, settings) -> bool:
    patience = settings.early_stopping_patience
    stalled = patience is not None and progress["stale_epochs"] >= patience
    return progress["epoch"] + 1 >= settings.epochs or stalled


def _train_epoch(
    prior, optimizer, exemplars, grid, shape, train, num_train, settings, generator, epoch
) -> float:
    """One pass over the training parses; returns the mean training NLL (nats per image, dropout on)."""
    prior.train()
    total, seen = 0.0, 0
    batches = list(minibatch_indices(num_train, settings.batch_size, generator=generator))
    progress = tqdm(batches, desc=f"prior epoch {epoch}", leave=False, mininterval=1.0)
    for index in progress:
        latents = parse_latents(
            train, index, bank_size=shape.bank_size, num_cells=shape.num_steps, device=exemplars.device
        )
        nll = -log_prob(prior_logits(prior, latents, exemplars, grid), latents)
        optimizer.zero_grad(set_to_none=True)
        nll.mean().backward()
        if settings.grad_clip:
            torch.nn.utils.clip_grad_norm_(prior.parameters(), settings.grad_clip)
        optimizer.step()
        total, seen = total + nll.sum().item(), seen + len(index)
        progress.set_postfix(nll=f"{total / seen:.2f}", refresh=False)
    return total / max(seen, 1)
