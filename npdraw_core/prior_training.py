"""Pre-training the prior (spec §4, paper Eq. 5): maximum likelihood with teacher forcing on the parses of
the training images (`npdraw train-prior`, the prior stage of `npdraw run`).

Each epoch ends with the validation NLL of held-out parses (nats per image), a metrics record and an atomic
checkpoint (`prior.pt`) holding everything needed to continue after `kill -9` with the same result as an
uninterrupted run: weights, optimizer, epoch, best weights so far, and the random states. Dropout layers
draw from torch's global generator (they take no `torch.Generator`), so training forks that generator,
seeds it from the run's seed, and checkpoints its state; the caller's global state is left untouched.
"""

from __future__ import annotations

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
from npdraw_core.geometry import Grid, ModelShape
from npdraw_core.interfaces import Prior
from npdraw_core.latents import Latents
from npdraw_core.run import Run
from npdraw_core.sampling import prior_logits

CHECKPOINT = "prior.pt"


def exemplars_of(bank: Any) -> Tensor:
    """A `PartBank` or its exemplar tensor (M, C, K, K)."""
    return getattr(bank, "exemplars", bank)


def model_shape(run: Run, bank: Any) -> ModelShape:
    exemplars, model = exemplars_of(bank), run.config.model
    return ModelShape(
        exemplars.shape[1], run.dataset.image_size, model.canvas_size, model.patch_size, exemplars.shape[0]
    )


def parse_latents(
    split: dict[str, Tensor], index: Tensor, *, bank_size: int, num_cells: int, device: torch.device
) -> Latents:
    """Stored integer parses (N, T) of the images `index` → hard latents on `device`."""
    return Latents.from_indices(
        what=split["what"][index],
        where=split["where"][index],
        whether=split["whether"][index],
        bank_size=bank_size,
        num_cells=num_cells,
    ).to(device)


def _digest(*tensors: Tensor) -> str:
    digest = hashlib.sha256()
    for tensor in tensors:
        digest.update(str(tuple(tensor.shape)).encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


def prior_config_hash(run: Run, bank: Any, parses: dict) -> str:
    """Everything the trained prior depends on: its config, the training settings, the seed, and the
    contents of the bank and of the train/valid parses it learns from (so a rebuilt bank retrains it)."""
    config = run.config
    data = _digest(
        exemplars_of(bank), *(parses[s][k] for s in ("train", "valid") for k in ("what", "where", "whether"))
    )
    return config_hash(
        "prior",
        config.model.canvas_size,
        config.model.patch_size,
        config.model.prior,
        config.prior_training,
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
        prior = run.build("prior", run.config.model.prior, shape=model_shape(run, bank))
    return prior.to(run.device)


def ensure_prior(run: Run, bank: Any, parses: dict) -> tuple[Prior, str]:
    """Pipeline stage 3: the trained prior (best validation weights, eval mode) and its artefact hash,
    which later stages fold into theirs. Training is skipped or resumed as `train_prior` says."""
    return train_prior(run, bank, parses), prior_config_hash(run, bank, parses)


def train_prior(run: Run, bank: Any, parses: dict) -> Prior:
    """Train the run's prior on `parses` ({"train": {"what", "where", "whether": (N, T) ints}, "valid": ...}).
    A complete `prior.pt` that matches the config is loaded instead; an incomplete one is resumed."""
    settings, device, grid = run.config.prior_training, run.device, run.grid
    shape = model_shape(run, bank)
    exemplars = exemplars_of(bank).to(device)
    prior = build_prior(run, bank)
    stage_hash = prior_config_hash(run, bank, parses)
    state = run.current(CHECKPOINT, stage_hash)
    if state is not None and state["complete"]:
        print(f"[prior] {run.path(CHECKPOINT)} matches the config; skipping", flush=True)
        prior.load_state_dict(state["best_state_dict"])
        return prior.eval()

    optimizer = torch.optim.Adam(prior.parameters(), lr=settings.lr)
    data_generator = torch.Generator().manual_seed(run.config.seed * 1000 + 31)
    train = parses["train"]
    num_train = (
        len(train["what"])
        if settings.max_train_images is None
        else min(settings.max_train_images, len(train["what"]))
    )
    cuda = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=cuda):
        torch.manual_seed(run.config.seed * 1000 + 37)  # dropout only; forked, so the caller's state is kept
        start_epoch, best, stale_epochs, best_weights = 0, float("inf"), 0, None
        if state is not None:
            prior.load_state_dict(state["state_dict"])
            optimizer.load_state_dict(state["optimizer"])
            data_generator.set_state(state["data_generator"])
            torch.set_rng_state(state["torch_rng"])
            if cuda and state.get("cuda_rng") is not None:
                torch.cuda.set_rng_state(state["cuda_rng"], device)
            start_epoch, best, stale_epochs = state["epoch"] + 1, state["best"], state["stale_epochs"]
            best_weights = state["best_state_dict"]
            print(f"[prior] resuming after epoch {state['epoch']} from {run.path(CHECKPOINT)}", flush=True)
        last_epoch, patience = start_epoch - 1, settings.early_stopping_patience
        for epoch in range(start_epoch, settings.epochs):
            if patience is not None and stale_epochs >= patience:
                print(
                    f"[prior] no validation improvement for {stale_epochs} epochs; stopping early", flush=True
                )
                break
            started = time.perf_counter()
            train_nll = _train_epoch(
                prior, optimizer, exemplars, grid, shape, train, num_train, settings, data_generator, epoch
            )
            valid_nll = evaluate_nll(
                prior, exemplars, grid, parses["valid"], batch_size=max(settings.batch_size, 500)
            )
            if valid_nll < best:
                best, stale_epochs = valid_nll, 0
                best_weights = {
                    name: value.detach().cpu().clone() for name, value in prior.state_dict().items()
                }
            else:
                stale_epochs += 1
            run.log(
                "prior",
                epoch=epoch,
                train_nll=train_nll,
                valid_nll=valid_nll,
                best_valid_nll=best,
                seconds=time.perf_counter() - started,
                train_images=num_train,
            )
            save_checkpoint(
                _checkpoint(
                    prior,
                    optimizer,
                    data_generator,
                    cuda,
                    epoch=epoch,
                    best=best,
                    stale_epochs=stale_epochs,
                    best_weights=best_weights,
                    stage_hash=stage_hash,
                    complete=False,
                ),
                run.path(CHECKPOINT),
            )
            last_epoch = epoch
        if best_weights is None:
            raise ValueError(f"prior_training.epochs is {settings.epochs}; train for at least one epoch")
        save_checkpoint(
            _checkpoint(
                prior,
                optimizer,
                data_generator,
                cuda,
                epoch=last_epoch,
                best=best,
                stale_epochs=stale_epochs,
                best_weights=best_weights,
                stage_hash=stage_hash,
                complete=True,
            ),
            run.path(CHECKPOINT),
        )
    prior.load_state_dict(best_weights)
    return prior.eval()


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


def _checkpoint(
    prior, optimizer, data_generator, cuda, *, epoch, best, stale_epochs, best_weights, stage_hash, complete
):
    return {
        "state_dict": prior.state_dict(),
        "optimizer": optimizer.state_dict(),
        "epoch": epoch,
        "best": best,
        "stale_epochs": stale_epochs,
        "best_state_dict": best_weights,
        "data_generator": data_generator.get_state(),
        "torch_rng": torch.get_rng_state(),
        "cuda_rng": torch.cuda.get_rng_state(cuda[0]) if cuda else None,
        "config_hash": stage_hash,
        "complete": complete,
    }
