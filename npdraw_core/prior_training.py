"""Pre-training the prior (spec §4, paper Eq. 5): maximum likelihood with teacher forcing on the parses of
the training images (the prior stage of `npdraw run`, `npdraw train-prior`).

Training runs in the shared loop (`npdraw_core.loop`): each epoch ends with the validation NLL of held-out
parses (nats per image), a metrics record and an atomic, resumable checkpoint. Where that checkpoint lives
(the shared stage cache, for the pipeline) is the caller's choice.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from tqdm import tqdm

from npdraw_core.build import prior_from_config
from npdraw_core.checkpoint import archive, load_checkpoint
from npdraw_core.config import config_hash
from npdraw_core.data import minibatch_indices
from npdraw_core.digests import tensor_digest
from npdraw_core.distributions import log_prob
from npdraw_core.geometry import Grid
from npdraw_core.interfaces import Prior
from npdraw_core.loop import EpochCallback, Schedule, fit
from npdraw_core.parsing import parse_latents
from npdraw_core.run import Run
from npdraw_core.sampling import prior_logits

log = logging.getLogger(__name__)
CHECKPOINT = "prior.pt"


def exemplars_of(bank: Any) -> Tensor:
    """A `PartBank` or its exemplar tensor (M, C, K, K)."""
    return bank if isinstance(bank, Tensor) else bank.exemplars


def prior_content_hash(run: Run, bank: Any, parses: dict) -> str:
    """Everything a prior trained on these exact bank and parses depends on (for library calls outside the
    pipeline, whose stage cache keys priors by config instead): its config, the training settings, the
    seed and the contents of the bank and of the train/valid parses. The epoch count and early-stopping
    patience are left out: raising them continues the same checkpoint."""
    config = run.config
    data = tensor_digest(
        exemplars_of(bank), *(parses[s][k] for s in ("train", "valid") for k in ("what", "where", "whether"))
    )
    return config_hash("prior", config.model.canvas_size, config.model.patch_size, config.model.prior,
                       config.prior_training.lineage(), config.seed, data)  # fmt: skip


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
    """The run's untrained prior on the run's device (seeded initial weights, see `npdraw_core.build`)."""
    shape = run.model_shape(len(exemplars_of(bank)))
    return prior_from_config(run.config, shape, run.registry).to(run.device)


def train_prior(
    run: Run,
    bank: Any,
    parses: dict,
    *,
    checkpoint: str | Path | None = None,
    stage_hash: str | None = None,
    resume_from: dict | None = None,
    on_epoch: EpochCallback | None = None,
) -> Prior:
    """Train the run's prior on `parses` ({"train": {"what", "where", "whether": (N, T) ints}, "valid": ...})
    and return it with its best validation weights, in eval mode. The checkpoint (default: the run
    directory's prior.pt) is resumed when it was made from the same settings (`stage_hash`, by default
    the content hash), finished ones are only loaded, and one from other settings is moved to stale/.
    `resume_from` (a checkpoint payload, e.g. of a shorter schedule) gives the state to continue from."""
    settings, device, grid = run.config.prior_training, run.device, run.grid
    checkpoint = Path(checkpoint or run.path(CHECKPOINT))
    stage_hash = stage_hash or prior_content_hash(run, bank, parses)
    if resume_from is None and checkpoint.exists():
        stored = load_checkpoint(checkpoint)
        if stored.get("config_hash") == stage_hash:
            resume_from = stored
        else:
            log.info("[prior] %s was made from other settings; moved it to %s", checkpoint, archive(checkpoint))
    exemplars, prior = exemplars_of(bank).to(device), build_prior(run, bank)
    optimizer = torch.optim.Adam(prior.parameters(), lr=settings.lr)
    data_generator = torch.Generator().manual_seed(run.config.seed * 1000 + 31)
    train, num_train = parses["train"], len(parses["train"]["what"])
    if settings.max_train_images is not None:
        num_train = min(num_train, settings.max_train_images)

    def train_epoch(epoch: int) -> dict[str, float]:
        nll = _train_epoch(prior, optimizer, exemplars, grid, train, num_train, settings, data_generator, epoch)
        return {"train_nll": nll, "train_images": num_train}

    def validate(epoch: int) -> dict[str, float]:
        batch_size = max(settings.batch_size, 500)
        return {"valid_nll": evaluate_nll(prior, exemplars, grid, parses["valid"], batch_size=batch_size)}

    fit(
        prior, optimizer, stage="prior", checkpoint=checkpoint, stage_hash=stage_hash,
        schedule=Schedule(settings.epochs, settings.early_stopping_patience, monitor="valid_nll"),
        train_epoch=train_epoch, validate=validate, generators={"data": data_generator},
        seed=run.config.seed * 1000 + 37, record=run.log, resume_from=resume_from, on_epoch=on_epoch,
    )  # fmt: skip
    return prior.eval()


def _train_epoch(prior, optimizer, exemplars, grid, train, num_train, settings, generator, epoch) -> float:
    """One pass over the training parses; returns the mean training NLL (nats per image, dropout on)."""
    prior.train()
    total, seen = 0.0, 0
    batches = list(minibatch_indices(num_train, settings.batch_size, generator=generator))
    progress = tqdm(batches, desc=f"prior epoch {epoch}", leave=False, mininterval=1.0)
    for step, index in enumerate(progress):
        for group in optimizer.param_groups:
            group["lr"] = settings.lr_at(epoch + step / len(batches))
        latents = parse_latents(
            train, index, bank_size=len(exemplars), num_cells=grid.num_cells, device=exemplars.device
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
