"""The self-describing model file (`model.pt`): everything needed to sample, and nothing that runs code.

A model file is a plain dict loaded with `weights_only=True`: a format name and version, the resolved
config, the model shape, the bank exemplars, every state dict (the prior's included) and the training
metrics of the epoch it was saved at. Copied alone to another machine, it is enough to sample:
`load_trained(path)` builds an eval-mode `NPDraw` from it and never trains, reads a dataset, or moves or
writes a file. Serving and the studio only ever use this.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from npdraw_core.build import model_from_config, prior_from_config
from npdraw_core.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from npdraw_core.config import ConfigError, RunConfig, load_config
from npdraw_core.geometry import ModelShape
from npdraw_core.model import NPDraw
from npdraw_core.registry import PluginError, Registry, UnknownComponentError, default_registry
from npdraw_core.run import resolve_device

FORMAT, FORMAT_VERSION = "npdraw-model", 1
MODEL_FILE = "model.pt"


REQUIRED = ("config", "shape", "bank", "state_dict")
RECOVERY = (
    "To recover: when {last} is intact, `npdraw train CONFIG` writes the model file again from it (the damaged "
    "file is moved to stale/); otherwise train again, or copy the model file from a backup"
)


def check_model_file(payload: dict, path: str | Path) -> None:
    """A loaded dict is a model file of this format version with every entry (else CheckpointError)."""
    if payload.get("format") != FORMAT:
        raise CheckpointError(f"{str(path)!r} is not an npdraw model file (no {FORMAT!r} format marker)")
    version = payload.get("format_version")
    if version != FORMAT_VERSION:
        raise CheckpointError(
            f"{str(path)!r} has model-file format version {version!r}; this npdraw reads version {FORMAT_VERSION}. "
            "Re-train with this version (`npdraw train`) or load it with the npdraw that wrote it"
        )
    missing = [key for key in REQUIRED if key not in payload]
    if missing:
        raise CheckpointError(f"{str(path)!r} is an incomplete model file: it lacks {', '.join(missing)}")
    if not isinstance(payload["config"], dict) or not isinstance(payload["shape"], dict):
        raise CheckpointError(f"{str(path)!r}: its config and shape must be mappings")
    if not isinstance(payload["bank"], torch.Tensor) or not isinstance(payload["state_dict"], dict):
        raise CheckpointError(f"{str(path)!r}: its bank must be a tensor and its state_dict a mapping")


def model_payload(model: NPDraw, config: RunConfig, shape: ModelShape, **info: Any) -> dict[str, Any]:
    """The plain dict a model file holds; `info` adds e.g. the epoch and its validation metrics."""
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "config": config.to_dict(),
        "shape": dataclasses.asdict(shape),
        "bank": model.bank.detach().cpu(),
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        **info,
    }


def save_model_file(path: str | Path, model: NPDraw, config: RunConfig, shape: ModelShape, **info: Any) -> None:
    save_checkpoint(model_payload(model, config, shape, **info), path)


@dataclass(frozen=True)
class ModelFile:
    """A model file's contents, checked: `build()` gives the model, the rest describes it."""

    path: Path
    config: RunConfig
    shape: ModelShape
    bank: torch.Tensor
    state_dict: dict[str, torch.Tensor]
    info: dict[str, Any]  # epoch, metrics and anything else stored beside the weights

    def build(self, device: str | torch.device = "auto", *, registry: Registry | None = None) -> NPDraw:
        registry = registry or default_registry()
        try:
            prior = prior_from_config(self.config, self.shape, registry)
            model = model_from_config(self.config, self.shape, self.bank, prior, registry)
            model.load_state_dict(self.state_dict)
        except (RuntimeError, KeyError, ValueError) as error:
            raise CheckpointError(
                f"{str(self.path)!r}: its weights do not fit the model its config describes ({error}); "
                "the file was edited or written by an incompatible version of a plugin"
            ) from error
        return model.to(resolve_device(str(device))).eval()


def read_model_file(path_or_run_dir: str | Path, *, registry: Registry | None = None) -> ModelFile:
    """Read and check a model file (or a run directory's `model.pt`); raises `CheckpointError` naming the
    path and what is wrong for a missing, truncated, foreign or older-format file."""
    path = Path(path_or_run_dir)
    if path.is_dir():
        path = path / MODEL_FILE
    if not path.is_file():
        raise CheckpointError(
            f"no model file at {str(path)!r}; train one with `npdraw run CONFIG` (or `npdraw train`), "
            "then pass the run directory or its model.pt"
        )
    try:
        payload = load_checkpoint(path, check=check_model_file)
    except CheckpointError as error:
        raise CheckpointError(f"{error}. {RECOVERY.format(last=path.with_name('model_last.pt'))}") from error
    try:
        config = load_config(payload["config"], registry=registry or default_registry())
        shape = ModelShape(**payload["shape"])
    except (ConfigError, PluginError, UnknownComponentError, TypeError) as error:
        raise CheckpointError(f"{str(path)!r}: its config or shape cannot be used here: {error}") from error
    info = {k: v for k, v in payload.items() if k not in REQUIRED}
    return ModelFile(path, config, shape, payload["bank"], payload["state_dict"], info)


def load_trained(
    path_or_run_dir: str | Path, *, device: str | torch.device = "auto", registry: Registry | None = None
) -> NPDraw:
    """An eval-mode `NPDraw` from a model file or a run directory, ready to sample. Never trains."""
    return read_model_file(path_or_run_dir, registry=registry).build(device, registry=registry)
