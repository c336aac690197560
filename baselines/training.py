"""Training the VAE baseline under a budget, and its file (`baseline.pt`).

The baseline sees what NP-DRAW's VAE stage sees: the run config's dataset and splits, the same dynamic
binarisation (`npdraw_core.data.prepare_images`), `training.batch_size`, `training.max_train_images`, the
learning rates (encoder `training.encoder_lr`, decoder `training.lr`, as NP-DRAW's decoder) and the seed. It
trains in the shared resumable loop (`npdraw_core.loop.fit`: a validation −ELBO per epoch, the best weights
by it, a checkpoint per epoch) until `epochs` or a budget of PROCESS CPU time (`time.process_time()`, all
threads), checked after every batch, is spent. CPU time rather than wall time keeps the budget fair when
other processes share the cores. It counts everything the training call does (data, validation, writing).

Training again with the same settings in the same folder continues from `baseline_last.pt`: raising the
budget continues training, and a finished budget only writes `baseline.pt` again.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from npdraw_baselines.vae import ConvVAE, vae_from_config
from npdraw_core.checkpoint import CheckpointError, archive, load_checkpoint, save_checkpoint
from npdraw_core.config import ConfigError, RunConfig, config_hash, load_config
from npdraw_core.data import minibatch_indices, prepare_images
from npdraw_core.interfaces import ImageSet
from npdraw_core.loop import Schedule, StopTraining, check_training_checkpoint, fit
from npdraw_core.registry import PluginError, Registry, UnknownComponentError, default_registry
from npdraw_core.run import Run, resolve_device

logger = logging.getLogger(__name__)

FORMAT, FORMAT_VERSION = "npdraw-baseline-vae", 1
BASELINE_FILE, LAST = "baseline.pt", "baseline_last.pt"
DEFAULT_DIR = "baseline-vae"  # inside the NP-DRAW run's directory: the comparison sits beside what it compares
REQUIRED = ("config", "latent_dim", "channels", "image_size", "state_dict")
STAGE = "baseline"


def default_output_dir(config: RunConfig) -> Path:
    return config.run_dir / DEFAULT_DIR


def baseline_run(config: RunConfig, output_dir: str | Path, *, device: str | None = None) -> Run:
    """A Run of `config` whose directory is `output_dir`: its metrics, lock and evaluation records go there,
    while the shared caches (FID reference statistics, feature extractors) stay under the config's
    output_dir, shared with the NP-DRAW runs scored against the same test set."""
    run = Run(config, device=device)
    run.dir = Path(output_dir)
    return run


def check_budget(cpu_minutes: float | None, epochs: int | None, latent_dim: int) -> None:
    if cpu_minutes is not None and not (math.isfinite(cpu_minutes) and cpu_minutes > 0):
        raise ValueError(f"cpu_minutes must be a finite number greater than 0, got {cpu_minutes}")
    if epochs is not None and (not isinstance(epochs, int) or epochs < 1):
        raise ValueError(f"epochs must be a whole number of at least 1, got {epochs!r}")
    if not isinstance(latent_dim, int) or latent_dim < 1:
        raise ValueError(f"latent_dim must be a whole number of at least 1, got {latent_dim!r}")


def stage_hash(config: RunConfig, latent_dim: int) -> str:
    """Everything the trained weights depend on except the budget (so a larger budget continues)."""
    training = config.training
    settings = (training.batch_size, training.lr, training.encoder_lr, training.max_train_images)
    model = config.model
    return config_hash(
        "baseline-vae", config.data, model.canvas_size, model.encoder, model.decoder, model.output, settings,
        latent_dim, config.seed,
    )  # fmt: skip


def build_baseline(config: RunConfig, run: Run, latent_dim: int) -> ConvVAE:
    dataset = run.dataset
    return vae_from_config(
        config, channels=dataset.channels, image_size=dataset.image_size, latent_dim=latent_dim, registry=run.registry
    ).to(run.device)


def train_baseline(
    run_config: RunConfig | str | Path | dict,
    output_dir: str | Path,
    *,
    cpu_minutes: float | None = None,
    epochs: int | None = None,
    latent_dim: int = 32,
    log: Callable[[dict[str, Any]], None] | None = None,
) -> ConvVAE:
    """Train the VAE baseline of `run_config` (a RunConfig, a YAML path or a config dict) into
    `output_dir` until `epochs` or `cpu_minutes` of process CPU time is spent, whichever comes first
    (neither: the config's `training.epochs`). Writes `baseline.pt` (the best weights by validation
    −ELBO), `baseline_last.pt` (resumable) and `metrics.jsonl`; `log(record)` gets each epoch's record.
    Returns the model in eval mode."""
    cpu_started = time.process_time()
    check_budget(cpu_minutes, epochs, latent_dim)
    config = load_config(run_config)
    if cpu_minutes is None and epochs is None:
        epochs = config.training.epochs
        if epochs < 1:
            raise ValueError("training.epochs is 0 and no budget was given: give cpu_minutes or epochs")
    cpu_limit = math.inf if cpu_minutes is None else 60 * cpu_minutes
    run = baseline_run(config, output_dir)
    settings, device, hashed = config.training, run.device, stage_hash(config, latent_dim)
    with run.lock():
        dataset = run.dataset
        train, valid = dataset.load("train"), dataset.load("valid")
        if settings.max_train_images is not None:
            train = train.subset(torch.arange(min(settings.max_train_images, len(train))))
        model = build_baseline(config, run, latent_dim)
        optimizer = torch.optim.Adam([
            {"params": model.encoder.parameters(), "lr": settings.encoder_lr},
            {"params": [*model.to_canvas.parameters(), *model.decoder.parameters(), *output_parameters(model)],
             "lr": settings.lr},
        ])  # fmt: skip
        generators = {
            "data": torch.Generator().manual_seed(config.seed),
            "sample": torch.Generator(device=device).manual_seed(config.seed + 1),
        }
        state = run.current(LAST, hashed, check=check_training_checkpoint)  # damaged: set aside, retrained
        if state is None and run.path(BASELINE_FILE).exists():
            log_info("training starts over; moved the previous %s to %s", BASELINE_FILE, archive(run.path(BASELINE_FILE)))
        done = dict(state["metrics"]) if state else {}
        spent_before, seen = done.get("cpu_seconds", 0.0), done.get("images_seen", 0)

        def cpu_seconds() -> float:
            return spent_before + time.process_time() - cpu_started

        def train_epoch(epoch: int) -> dict[str, float]:
            nonlocal seen
            model.train()
            totals, count, started = {"neg_elbo": 0.0, "reconstruction": 0.0, "kl": 0.0}, 0, time.perf_counter()
            for index in minibatch_indices(len(train), settings.batch_size, generator=generators["data"]):
                images = prepare_images(train.images[index], binary=dataset.binary, generator=generators["data"])
                reconstruction, kl = model.loss_terms(images.to(device), generators["sample"])
                optimizer.zero_grad(set_to_none=True)
                (reconstruction + kl).mean().backward()
                optimizer.step()
                for name, values in (("neg_elbo", reconstruction + kl), ("reconstruction", reconstruction), ("kl", kl)):
                    totals[name] += values.sum().item()
                count, seen = count + len(index), seen + len(index)
                if cpu_seconds() >= cpu_limit:
                    break
            return {
                **{f"train_{name}": total / count for name, total in totals.items()},
                "epoch_images": count, "images_seen": seen,
                "images_per_second": count / (time.perf_counter() - started),
            }  # fmt: skip

        def validate_epoch(epoch: int) -> dict[str, float]:
            metrics = validate(model, valid, binary=dataset.binary, batch_size=settings.batch_size)
            return {**{f"valid_{name}": value for name, value in metrics.items()}, "cpu_seconds": cpu_seconds()}

        def after_epoch(metrics: dict) -> None:
            if log is not None:
                log(metrics)
            if metrics["cpu_seconds"] >= cpu_limit:
                raise StopTraining(f"the budget of {cpu_minutes:g} CPU-minutes is spent")

        if state and done.get("cpu_seconds", 0.0) >= cpu_limit:  # budget already spent here: no more training
            log_info("%s spent the budget of %g CPU-minutes already; not training further", run.path(LAST), cpu_minutes)
            model.load_state_dict(state["best_state_dict"])
            final = state
        else:
            final = fit(
                model, optimizer, stage=STAGE, schedule=Schedule(epochs or sys.maxsize, monitor="valid_loss"),
                checkpoint=run.path(LAST), stage_hash=hashed, train_epoch=train_epoch, validate=validate_epoch,
                generators=generators, seed=config.seed, record=run.log, resume_from=state, on_epoch=after_epoch,
            )  # fmt: skip
        last = final["metrics"]
        save_checkpoint({
            "format": FORMAT, "format_version": FORMAT_VERSION, "config": config.to_dict(),
            "latent_dim": latent_dim, "channels": dataset.channels, "image_size": dataset.image_size,
            "state_dict": {key: value.detach().cpu() for key, value in model.state_dict().items()},
            "cpu_seconds": last["cpu_seconds"], "images_seen": last["images_seen"], "epochs": final["epoch"] + 1,
            "best_epoch": final["best_epoch"], "valid_loss": final["best"], "config_hash": hashed,
            "budget": {"cpu_minutes": cpu_minutes, "epochs": epochs},
        }, run.path(BASELINE_FILE))  # fmt: skip
    return model.eval()


def output_parameters(model: ConvVAE) -> list[torch.nn.Parameter]:
    """Learnable parameters of the output distribution (none for the built-in ones, which may be no module)."""
    return list(model.output.parameters()) if isinstance(model.output, torch.nn.Module) else []


def log_info(message: str, *values: Any) -> None:
    logger.info("[%s] " + message, STAGE, *values)


@torch.no_grad()
def validate(model: ConvVAE, valid: ImageSet, *, binary: bool, batch_size: int) -> dict[str, float]:
    """Mean validation −ELBO and its terms, with fixed binarisation and posterior noise (epochs compare)."""
    model.eval()
    device = model.to_canvas.weight.device
    binarize_generator, generator = torch.Generator().manual_seed(0), torch.Generator(device=device).manual_seed(0)
    totals = {"loss": 0.0, "reconstruction": 0.0, "kl": 0.0}
    for index in minibatch_indices(len(valid), batch_size, shuffle=False):
        images = prepare_images(valid.images[index], binary=binary, generator=binarize_generator).to(device)
        reconstruction, kl = model.loss_terms(images, generator)
        for name, values in (("loss", reconstruction + kl), ("reconstruction", reconstruction), ("kl", kl)):
            totals[name] += values.sum().item()
    return {name: total / len(valid) for name, total in totals.items()}


# -- the baseline file --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class LoadedBaseline:
    path: Path
    config: RunConfig
    model: ConvVAE  # eval mode
    info: dict[str, Any]  # cpu_seconds, images_seen, epochs, budget, valid_loss, ...


def check_baseline_file(payload: dict, path: str | Path) -> None:
    if payload.get("format") != FORMAT:
        raise CheckpointError(
            f"{str(path)!r} is not a VAE baseline file (no {FORMAT!r} format marker); `npdraw baseline` reads the "
            f"{BASELINE_FILE} that `npdraw baseline train` writes"
        )
    if payload.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(
            f"{str(path)!r} has baseline format version {payload.get('format_version')!r}; this npdraw reads "
            f"version {FORMAT_VERSION}: train the baseline again"
        )
    missing = [key for key in REQUIRED if key not in payload]
    if missing:
        raise CheckpointError(f"{str(path)!r} is an incomplete baseline file: it lacks {', '.join(missing)}")


def baseline_path(path_or_dir: str | Path) -> Path:
    """The baseline file of a folder (or the file itself when given one)."""
    path = Path(path_or_dir)
    return path if path.is_file() or (path.suffix == ".pt" and not path.is_dir()) else path / BASELINE_FILE


def load_baseline(
    path_or_dir: str | Path, *, device: str | torch.device = "cpu", registry: Registry | None = None
) -> LoadedBaseline:
    """The trained baseline of a `baseline.pt` (or of the folder holding it), in eval mode. A missing,
    damaged, foreign or mismatched file is a CheckpointError naming it."""
    path = baseline_path(path_or_dir)
    if not path.exists():
        raise CheckpointError(
            f"no VAE baseline at {str(path)!r}; train one with `npdraw baseline train CONFIG --out {path.parent}`"
        )
    payload = load_checkpoint(path, check=check_baseline_file)
    registry = registry or default_registry()
    try:
        config = load_config(payload["config"], registry=registry)
        model = vae_from_config(
            config, channels=payload["channels"], image_size=payload["image_size"],
            latent_dim=payload["latent_dim"], registry=registry,
        )  # fmt: skip
        model.load_state_dict(payload["state_dict"])
    except (ConfigError, PluginError, UnknownComponentError, RuntimeError, KeyError, TypeError, ValueError) as error:
        raise CheckpointError(
            f"{str(path)!r}: its weights do not fit the VAE its config describes ({error}); the file was edited "
            "or written by an incompatible version"
        ) from error
    info = {key: value for key, value in payload.items() if key not in ("config", "state_dict")}
    return LoadedBaseline(path, config, model.to(resolve_device(str(device))).eval(), info)


def with_evaluation(config: RunConfig, **changes: Any) -> RunConfig:
    """`config` with some `evaluation` settings changed (None: keep the config's)."""
    changes = {key: value for key, value in changes.items() if value is not None}
    return dataclasses.replace(config, evaluation=dataclasses.replace(config.evaluation, **changes))
