"""A run: one resolved config, its run directory and the artefacts every stage reads and writes.

Each stage's artefact records the hash of the config fragments (and upstream artefacts) it was made from;
a stage whose artefact matches is skipped, so re-running is cheap and a killed run resumes. An artefact
that no longer matches is moved to `stale/`, never deleted.
"""

from __future__ import annotations

import shutil
import time
from functools import cached_property
from pathlib import Path
from typing import Any

import torch

from npdraw_core.checkpoint import append_metrics, load_checkpoint
from npdraw_core.config import ComponentConfig, RunConfig, load_config, write_config
from npdraw_core.geometry import Grid, ModelShape
from npdraw_core.interfaces import Dataset
from npdraw_core.registry import Registry, default_registry


def resolve_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device {name!r} was requested but CUDA is not available here; use device=auto or cpu")
    return device


class Run:
    def __init__(self, config: RunConfig, *, registry: Registry | None = None, device: str | None = None):
        self.config = config
        self.registry = registry or default_registry()
        self.device = resolve_device(device or config.device)
        self.dir = config.run_dir
        self.dir.mkdir(parents=True, exist_ok=True)
        write_config(config, self.dir / "config.yaml")

    @classmethod
    def from_file(cls, path: str | Path | None, overrides: list[str] = (), **kwargs) -> Run:
        registry = kwargs.pop("registry", None) or default_registry()
        return cls(load_config(path, overrides, registry=registry), registry=registry, **kwargs)

    def path(self, name: str) -> Path:
        return self.dir / name

    def build(self, kind: str, chosen: ComponentConfig, **context) -> Any:
        """Instantiate the component a config section names (rebuildable in any process from the dict)."""
        return self.registry.get(kind, chosen.type).build(chosen.config, **context)

    @cached_property
    def dataset(self) -> Dataset:
        return self.build("dataset", self.config.data)

    @property
    def grid(self) -> Grid:
        return Grid(self.config.model.canvas_size, self.config.model.patch_size)

    def model_shape(self, bank_size: int) -> ModelShape:
        """What the networks of this run are sized for, given the bank."""
        dataset, model = self.dataset, self.config.model
        return ModelShape(dataset.channels, dataset.image_size, model.canvas_size, model.patch_size, bank_size)

    def log(self, stage: str, **values: Any) -> None:
        """Append a metrics record (metrics.jsonl) and echo it for the user."""
        record = {"stage": stage, "time": round(time.time(), 3), **values}
        append_metrics(self.path("metrics.jsonl"), record)
        shown = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in values.items())
        print(f"[{stage}] {shown}", flush=True)

    def current(self, name: str, config_hash: str) -> dict | None:
        """The artefact `name` if it exists and was made from `config_hash`; a mismatching one is moved to
        stale/ so that the stage can recompute it without losing the old result."""
        path = self.path(name)
        if not path.exists():
            return None
        payload = load_checkpoint(path)
        if payload.get("config_hash") == config_hash:
            return payload
        self.archive(name, payload.get("config_hash", "unknown"))
        return None

    def archive(self, name: str, tag: str) -> Path:
        path = self.path(name)
        target = self.path("stale") / f"{path.stem}-{tag}{path.suffix}"
        target.parent.mkdir(exist_ok=True)
        shutil.move(str(path), target)
        print(f"[run] {name} was made from another config; moved it to {target}", flush=True)
        return target
