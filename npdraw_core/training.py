"""Training encoder + decoder with the prior frozen (the VAE stage of `npdraw run`, `npdraw train`).

Training runs in the shared loop (`npdraw_core.loop`): each epoch ends with a validation pass, a metrics
record and a resumable checkpoint (`model_last.pt`); each improvement of the validation loss writes the
self-describing model file (`model.pt`) that sampling, serving and evaluation load.
"""

from __future__ import annotations

import collections
import itertools
import logging
import time

import torch
from tqdm import tqdm

from npdraw_core.build import model_from_config
from npdraw_core.checkpoint import archive
from npdraw_core.config import TrainingConfig, config_hash
from npdraw_core.data import minibatch_indices, prepare_images
from npdraw_core.interfaces import ImageSet
from npdraw_core.latents import Latents
from npdraw_core.loop import EpochCallback, Schedule, check_training_checkpoint, fit
from npdraw_core.model import NPDraw
from npdraw_core.model_file import MODEL_FILE, check_model_file, save_model_file
from npdraw_core.parsing import parse_latents
from npdraw_core.posterior import parse_forcing_probability, temperature_at
from npdraw_core.run import Run

log = logging.getLogger(__name__)
LAST, BEST = "model_last.pt", MODEL_FILE


def build_model(run: Run, bank: torch.Tensor, prior: torch.nn.Module) -> NPDraw:
    """The run's untrained NPDraw around a bank and a (trained) prior, on the run's device."""
    return model_from_config(run.config, run.model_shape(len(bank)), bank, prior, run.registry).to(run.device)


def model_hash(run: Run, prior_key: str) -> str:
    """Everything the trained weights depend on, except the epoch count: raising `training.epochs`
    continues the same run instead of starting over."""
    config = run.config
    model = config.model
    return config_hash("model", prior_key, model.encoder, model.decoder, model.output, config.training.lineage(), config.seed)


def output_parameters(model: NPDraw) -> list[torch.nn.Parameter]:
    """Learnable parameters of the output distribution (none for a plain Bernoulli, which is no module)."""
    return list(model.output.parameters()) if isinstance(model.output, torch.nn.Module) else []


def parses_of(parses: dict, index: torch.Tensor, model: NPDraw) -> Latents:
    """The stored parses of images `index` as hard latents on the model's device."""
    return parse_latents(
        parses, index, bank_size=len(model.bank), num_cells=model.grid.num_cells, device=model.bank.device
    )


def train_model(
    run: Run, bank: torch.Tensor, parses: dict, prior: torch.nn.Module, prior_key: str, *,
    on_epoch: EpochCallback | None = None,
) -> NPDraw:  # fmt: skip
    """Train (or resume, or skip) the VAE stage in the run directory; returns the best model by validation
    loss, in eval mode. `on_epoch(metrics)` is called after every epoch (see `npdraw_core.loop`)."""
    settings, device = run.config.training, run.device
    stage_hash = model_hash(run, prior_key)
    shape = run.model_shape(len(bank))
    model = build_model(run, bank, prior)
    optimizer = torch.optim.Adam([
        {"params": model.encoder.parameters(), "lr": settings.encoder_lr},
        {"params": [*model.decoder.parameters(), *output_parameters(model)], "lr": settings.lr},
    ])  # fmt: skip
    generators = {
        "data": torch.Generator().manual_seed(run.config.seed),
        "sample": torch.Generator(device=device).manual_seed(run.config.seed + 1),
    }
    state = run.current(LAST, stage_hash, check=check_training_checkpoint)  # damaged: set aside, retrained
    if state is None and run.path(BEST).exists():  # training starts over: the model file is kept, not overwritten
        log.info("[train] training starts over; moved the previous %s to %s", BEST, archive(run.path(BEST)))
    dataset = run.dataset
    train, valid = dataset.load("train"), dataset.load("valid")
    if state is None and settings.decoder_warmup_images:  # a resumed run's checkpoint holds the warmed-up decoder
        warmup = warm_up_decoder(
            model, train, parses["train"], settings, binary=dataset.binary,
            generator=torch.Generator().manual_seed(run.config.seed + 2),
        )  # fmt: skip
        run.log("decoder_warmup", **warmup)
    if settings.max_train_images is not None:
        train = train.subset(torch.arange(min(settings.max_train_images, len(train))))

    def train_epoch(epoch: int) -> dict[str, float]:
        temperature = temperature_at(epoch, min_temperature=settings.min_temperature, halflife=settings.temperature_halflife)
        forcing = parse_forcing_probability(epoch, settings.parse_forcing_rate)
        model.train()
        totals: dict[str, float] = {}
        started = time.perf_counter()
        batches = list(minibatch_indices(len(train), settings.batch_size, generator=generators["data"]))
        for index in tqdm(batches, desc=f"train epoch {epoch}", leave=False, mininterval=1.0):
            images = prepare_images(train.images[index], binary=dataset.binary, generator=generators["data"])
            terms = model.loss(
                images.to(device), parses_of(parses["train"], index, model), reg_weight=settings.reg_weight,
                temperature=temperature, whether_estimator=settings.whether_estimator,
                parse_forcing=forcing, force_whether=settings.parse_forcing_whether, generator=generators["sample"],
            )
            optimizer.zero_grad(set_to_none=True)
            terms.loss.backward()
            optimizer.step()
            for name, value in terms.summary().items():
                totals[name] = totals.get(name, 0.0) + value * len(index)
        images_per_second = len(train) / (time.perf_counter() - started)
        return {"temperature": temperature, "parse_forcing": forcing, "images_per_second": images_per_second, **{f"train_{k}": v / len(train) for k, v in totals.items()}}

    def validate_epoch(epoch: int) -> dict[str, float]:
        temperature = temperature_at(epoch, min_temperature=settings.min_temperature, halflife=settings.temperature_halflife)
        metrics = validate(model, valid, parses["valid"], settings, binary=dataset.binary, temperature=temperature)
        return {f"valid_{k}": v for k, v in metrics.items()}

    def write_model_file(epoch: int, metrics: dict) -> None:
        save_model_file(run.path(BEST), model, run.config, shape, epoch=epoch, metrics=metrics, config_hash=stage_hash)

    def after_epoch(metrics: dict) -> None:
        epoch = metrics["epoch"]
        if settings.sample_grid_every and (epoch + 1) % settings.sample_grid_every == 0:
            from npdraw_core.sampling import save_sample_grid

            save_sample_grid(model, run.path(f"samples/epoch_{epoch:03d}.png"), seed=run.config.seed)
        if on_epoch is not None:
            on_epoch(metrics)

    final = fit(
        model, optimizer, stage="train", schedule=Schedule(settings.epochs, monitor="valid_loss"),
        checkpoint=run.path(LAST), stage_hash=stage_hash, train_epoch=train_epoch, validate=validate_epoch,
        generators=generators, seed=run.config.seed, record=run.log, resume_from=state,
        on_epoch=after_epoch, on_improved=write_model_file,
    )  # fmt: skip
    if run.current(BEST, stage_hash, check=check_model_file) is None:
        # missing (deleted), damaged (set aside by `current`) or from another config after training
        # finished: the best weights are in model_last, so the model file is written again from them
        log.info("[train] wrote %s again from the best weights in %s", run.path(BEST), run.path(LAST))
        write_model_file(final["best_epoch"], {"valid_loss": final["best"]})
    return model.eval()


def warm_up_decoder(
    model: NPDraw, train: ImageSet, parses: dict, settings: TrainingConfig, *, binary: bool, generator: torch.Generator
) -> dict[str, float]:
    """The decoder (and output distribution) alone fit p(x | the parse's canvas) on
    `settings.decoder_warmup_images` training images, in shuffled passes over `train`, with their own Adam
    at the decoder's rate. Returns the images, seconds and the mean reconstruction over the last 50 batches."""
    optimizer = torch.optim.Adam([*model.decoder.parameters(), *output_parameters(model)], lr=settings.lr)
    passes = itertools.chain.from_iterable(
        minibatch_indices(len(train), settings.batch_size, generator=generator) for _ in itertools.count()
    )  # fmt: skip
    model.train()
    seen, recent, started = 0, collections.deque(maxlen=50), time.perf_counter()
    with tqdm(total=settings.decoder_warmup_images, desc="decoder warm-up", leave=False, mininterval=1.0) as progress:
        for index in passes:
            index = index[: settings.decoder_warmup_images - seen]
            images = prepare_images(train.images[index], binary=binary, generator=generator)
            reconstruction = model.reconstruction(images.to(model.bank.device), parses_of(parses, index, model))
            optimizer.zero_grad(set_to_none=True)
            reconstruction.mean().backward()
            optimizer.step()
            seen += len(index)
            recent.append((reconstruction.sum().item(), len(index)))
            progress.update(len(index))
            if seen == settings.decoder_warmup_images:
                break
    seconds = time.perf_counter() - started
    return {"images": seen, "seconds": seconds, "reconstruction": sum(s for s, _ in recent) / sum(n for _, n in recent)}


@torch.no_grad()
def validate(
    model: NPDraw, valid: ImageSet, parses: dict, settings: TrainingConfig, *, binary: bool, temperature: float
) -> dict[str, float]:
    """Mean validation loss terms (fixed binarisation and posterior noise, so epochs compare fairly)."""
    model.eval()
    generator = torch.Generator(device=model.bank.device).manual_seed(0)
    binarize_generator = torch.Generator().manual_seed(0)
    totals: dict[str, float] = {}
    for index in minibatch_indices(len(valid), settings.batch_size, shuffle=False):
        images = prepare_images(valid.images[index], binary=binary, generator=binarize_generator)
        terms = model.loss(
            images.to(model.bank.device), parses_of(parses, index, model), reg_weight=settings.reg_weight,
            temperature=temperature, whether_estimator=settings.whether_estimator, generator=generator,
        )
        for name, value in terms.summary().items():
            totals[name] = totals.get(name, 0.0) + value * len(index)
    return {name: value / len(valid) for name, value in totals.items()}
