"""Training encoder + decoder with the prior frozen (`npdraw train`, the VAE stage of `npdraw run`).

Each epoch ends with a validation pass, a metrics record, a sample grid and an atomic checkpoint holding
everything needed to continue the same run after `kill -9`: weights, optimizer state, epoch, the data-order
and sampling generators' states, and the best validation score so far.
"""

from __future__ import annotations

import dataclasses
import time

import torch
import torch.nn.functional as F
from torchvision.utils import save_image
from tqdm import tqdm

from npdraw_core.checkpoint import save_checkpoint
from npdraw_core.config import config_hash
from npdraw_core.data import dynamic_binarize, minibatch_indices, to_unit
from npdraw_core.latents import Latents
from npdraw_core.model import NPDraw
from npdraw_core.parsing import parse_latents
from npdraw_core.posterior import parse_forcing_probability, temperature_at
from npdraw_core.run import Run

LAST, BEST = "model_last.pt", "model.pt"


def build_model(run: Run, bank: torch.Tensor, prior: torch.nn.Module) -> NPDraw:
    """The untrained NPDraw of a run's config around a bank and a (trained) prior."""
    dataset, model_config = run.dataset, run.config.model
    shape = run.model_shape(len(bank))
    output = run.build("output_distribution", model_config.output, channels=dataset.channels)
    # Initial weights follow the run's seed, in any process, without touching the caller's global RNG.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(run.config.seed)
        encoder = run.build("encoder", model_config.encoder, shape=shape)
        decoder = run.build("decoder", model_config.decoder, shape=shape, out_channels=output.num_params())
    return NPDraw(bank=bank, grid=run.grid, prior=prior, encoder=encoder, decoder=decoder, output=output).to(run.device)


def model_hash(run: Run, prior_hash: str) -> str:
    """Everything the trained weights depend on, except the epoch count: raising `training.epochs`
    continues the same run instead of starting over."""
    config = run.config
    settings = dataclasses.replace(config.training, epochs=0)
    return config_hash("model", prior_hash, config.model.encoder, config.model.decoder, config.model.output, settings, config.seed)


def prepare(images: torch.Tensor, *, binary: bool, generator: torch.Generator | None) -> torch.Tensor:
    """uint8 batch → model input: [0, 1] floats, freshly binarised for binary datasets."""
    images = to_unit(images)
    return dynamic_binarize(images, generator) if binary else images


def parses_of(parses: dict, index: torch.Tensor, model: NPDraw) -> Latents:
    """The stored parses of images `index` as hard latents on the model's device."""
    return parse_latents(
        parses, index, bank_size=len(model.bank), num_cells=model.grid.num_cells, device=model.bank.device
    )


def ensure_model(run: Run, bank: torch.Tensor, parses: dict, prior: torch.nn.Module, prior_hash: str) -> NPDraw:
    """Train (or resume, or skip) the VAE stage; returns the best model by validation loss."""
    settings, device = run.config.training, run.device
    stage_hash = model_hash(run, prior_hash)
    model = build_model(run, bank, prior)
    optimizer = torch.optim.Adam([
        {"params": model.encoder.parameters(), "lr": settings.encoder_lr},
        {"params": [*model.decoder.parameters(), *getattr(model.output, "parameters", list)()], "lr": settings.lr},
    ])
    data_generator = torch.Generator().manual_seed(run.config.seed)
    sample_generator = torch.Generator(device=device).manual_seed(run.config.seed + 1)
    start_epoch, best = 0, float("inf")

    state = run.current(LAST, stage_hash)
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        data_generator.set_state(state["data_generator"])
        sample_generator.set_state(state["sample_generator"])
        start_epoch, best = state["epoch"] + 1, state["best"]
        if start_epoch >= settings.epochs:
            print(f"[train] {run.path(LAST)} finished all {settings.epochs} epochs for this config; skipping", flush=True)
            return load_best(run, model, stage_hash)
        print(f"[train] resuming after epoch {state['epoch']} from {run.path(LAST)}", flush=True)
    else:
        run.current(BEST, stage_hash)  # a best model from another config is moved to stale/, not overwritten

    train, valid = run.dataset.load("train"), run.dataset.load("valid")
    if settings.max_train_images is not None:
        train = train.subset(torch.arange(min(settings.max_train_images, len(train))))
    binary = run.dataset.binary
    for epoch in range(start_epoch, settings.epochs):
        temperature = temperature_at(epoch, min_temperature=settings.min_temperature, halflife=settings.temperature_halflife)
        forcing = parse_forcing_probability(epoch, settings.parse_forcing_rate)
        model.train()
        started, seen = time.perf_counter(), 0
        batches = list(minibatch_indices(len(train), settings.batch_size, generator=data_generator))
        for index in tqdm(batches, desc=f"train epoch {epoch}", leave=False):
            images = prepare(train.images[index], binary=binary, generator=data_generator).to(device)
            terms = model.loss(
                images, parses_of(parses["train"], index, model), reg_weight=settings.reg_weight,
                temperature=temperature, whether_estimator=settings.whether_estimator,
                parse_forcing=forcing, generator=sample_generator,
            )
            optimizer.zero_grad(set_to_none=True)
            terms.loss.backward()
            optimizer.step()
            seen += len(index)
        seconds = time.perf_counter() - started
        valid_metrics = validate(model, valid, parses["valid"], settings, binary=binary, temperature=temperature)
        improved = valid_metrics["loss"] < best
        best = min(best, valid_metrics["loss"])
        run.log("train", epoch=epoch, temperature=temperature, parse_forcing=forcing, images_per_second=seen / seconds,
                **{f"train_{k}": v for k, v in terms.summary().items()}, **{f"valid_{k}": v for k, v in valid_metrics.items()})
        if improved:
            save_checkpoint({"model": model.state_dict(), "epoch": epoch, "config_hash": stage_hash}, run.path(BEST))
        if settings.sample_grid_every and (epoch + 1) % settings.sample_grid_every == 0:
            save_sample_grid(model, run.path(f"samples/epoch_{epoch:03d}.png"), seed=run.config.seed)
        save_checkpoint({
            "model": model.state_dict(), "optimizer": optimizer.state_dict(), "epoch": epoch, "best": best,
            "data_generator": data_generator.get_state(), "sample_generator": sample_generator.get_state(),
            "config_hash": stage_hash,
        }, run.path(LAST))
    return load_best(run, model, stage_hash)


@torch.no_grad()
def validate(model: NPDraw, valid, parses: dict, settings, *, binary: bool, temperature: float) -> dict[str, float]:
    """Mean validation loss terms (fixed binarisation and posterior noise, so epochs compare fairly)."""
    model.eval()
    generator = torch.Generator(device=model.bank.device).manual_seed(0)
    binarize_generator = torch.Generator().manual_seed(0)
    totals: dict[str, float] = {}
    for index in minibatch_indices(len(valid), settings.batch_size, shuffle=False):
        images = prepare(valid.images[index], binary=binary, generator=binarize_generator)
        terms = model.loss(
            images.to(model.bank.device), parses_of(parses, index, model), reg_weight=settings.reg_weight,
            temperature=temperature, whether_estimator=settings.whether_estimator, generator=generator,
        )
        for name, value in terms.summary().items():
            totals[name] = totals.get(name, 0.0) + value * len(index)
    return {name: value / len(valid) for name, value in totals.items()}


def load_best(run: Run, model: NPDraw, stage_hash: str) -> NPDraw:
    state = run.current(BEST, stage_hash)
    if state is None:
        raise FileNotFoundError(f"{run.path(BEST)} is missing; re-run `npdraw train` to train the model")
    model.load_state_dict(state["model"])
    return model.eval()


def save_sample_grid(model: NPDraw, path, *, seed: int, num: int = 32) -> None:
    """Samples (top) above their canvases (bottom), like the paper's Fig. 5."""
    images, canvases = image_samples(model, num, seed=seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_image(torch.cat([images, canvases]), path, nrow=8, pad_value=0.5)


def image_samples(
    model: NPDraw, num: int, *, seed: int, temperature: float = 1.0, top_k: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Images (the output distribution's mean) and their canvases, upsampled to image size, on the CPU."""
    model.eval()
    generator = torch.Generator().manual_seed(seed)  # a CPU generator gives the same samples on every device
    images, canvases, _ = model.sample(num, generator=generator, temperature=temperature, top_k=top_k)
    canvases = F.interpolate(canvases, size=images.shape[-2:], mode="nearest")
    return images.cpu(), canvases.cpu()
