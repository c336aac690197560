"""A run: one resolved config, its run directory, the shared stage cache and the components it builds.

Creating a `Run` writes nothing: the stages write what they make (`npdraw_core.pipeline`). Banks, parses
and priors live in the stage cache under the output root (shared by every run and trial that has the same
settings); the run directory holds the resolved config, metrics, figures, the model checkpoints and
`artefacts.json`, which names the cached artefacts the run used.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from functools import cached_property
from pathlib import Path
from typing import Any

import torch

from npdraw_core.checkpoint import (
    CheckpointError,
    append_metrics,
    archive,
    atomic_write_text,
    load_checkpoint,
)
from npdraw_core.config import (
    ComponentConfig,
    ConfigError,
    RunConfig,
    check_device_name,
    load_config,
    write_config,
)
from npdraw_core.geometry import Grid, ModelShape
from npdraw_core.interfaces import Dataset
from npdraw_core.registry import Registry, default_registry
from npdraw_core.splits import build_dataset
from npdraw_core.stage_cache import StageCache

log = logging.getLogger(__name__)
ARTEFACTS = "artefacts.json"
LOCK_FILE = ".lock"  # in the run directory; holds "process PID (command line), since TIME" while locked


class RunBusyError(RuntimeError):
    """Another process is working in the run directory; the message names it."""


def resolve_device(name: str | torch.device = "auto") -> torch.device:
    """The torch device for a device setting (`device:` or `--device`): auto, cpu, cuda, cuda:N, mps.
    A device this machine does not have is a ValueError that says what it has."""
    if str(name) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    check_device_name(str(name))
    device = torch.device(name)
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise ValueError(f"device {str(name)!r}: CUDA is not available on this machine; use auto or cpu")
        if device.index is not None and device.index >= count:
            raise ValueError(f"device {str(name)!r}: this machine has {count} CUDA device(s), cuda:0..cuda:{count - 1}")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"device {str(name)!r}: MPS is not available on this machine; use auto or cpu")
    return device


class Run:
    def __init__(
        self,
        config: RunConfig,
        *,
        registry: Registry | None = None,
        device: str | None = None,
        cache_dir: str | Path | None = None,
    ):
        self.config = config
        self.registry = registry or default_registry()
        self.device = resolve_device(device or config.device)
        self.dir = config.run_dir
        self.cache = StageCache(cache_dir or Path(config.output_dir) / "cache")
        self._lock_depth = 0

    @classmethod
    def from_file(cls, source: str | Path | dict | None, overrides: list[str] = (), **kwargs) -> Run:
        """A run from a YAML path or a config dict, with `key.path=value` overrides."""
        registry = kwargs.pop("registry", None) or default_registry()
        return cls(load_config(source, overrides, registry=registry), registry=registry, **kwargs)

    def path(self, name: str) -> Path:
        return self.dir / name

    def build(self, kind: str, chosen: ComponentConfig, **context) -> Any:
        """Instantiate the component a config section names (rebuildable in any process from the dict)."""
        return self.registry.get(kind, chosen.type).build(chosen.config, **context)

    @cached_property
    def dataset(self) -> Dataset:
        return build_dataset(self.config.data, self.registry)  # the plugin's, with data.split if set

    @property
    def grid(self) -> Grid:
        return Grid(self.config.model.canvas_size, self.config.model.patch_size)

    def model_shape(self, bank_size: int) -> ModelShape:
        """What the networks of this run are sized for, given the bank."""
        dataset, model = self.dataset, self.config.model
        return ModelShape(dataset.channels, dataset.image_size, model.canvas_size, model.patch_size, bank_size)

    def log(self, stage: str, **values: Any) -> None:
        """Append a metrics record (metrics.jsonl) and log it for the user."""
        record = {"stage": stage, "time": round(time.time(), 3), **values}
        append_metrics(self.path("metrics.jsonl"), record)
        shown = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in values.items())
        log.info("[%s] %s", stage, shown)

    def record_config(self) -> None:
        """Write the resolved config into the run directory (done by the stages, which write there). A
        different config recorded there before is moved to stale/ with its artefacts.json: they describe
        the artefacts the stages move there (or leave in the cache) when they are recomputed."""
        path = self.path("config.yaml")
        if path.is_file():
            try:
                same = load_config(path, registry=self.registry) == self.config
            except ConfigError:
                same = False
            if not same:
                tag = time.strftime("%Y%m%d-%H%M%S")
                if self.path(ARTEFACTS).is_file():
                    archive(self.path(ARTEFACTS), tag)
                log.info("[run] the config changed; moved the previous one to %s", archive(path, tag))
        write_config(self.config, path)

    def record_artefact(self, kind: str, key: str) -> None:
        """Name a shared artefact this run used in artefacts.json (kind → key and path in the cache)."""
        path = self.path(ARTEFACTS)
        try:
            used = json.loads(path.read_text()) if path.is_file() else {}
        except (json.JSONDecodeError, UnicodeDecodeError):
            used = None
        if not isinstance(used, dict):  # damaged: kept in stale/, and the record starts again
            target = archive(path, "damaged-" + time.strftime("%Y%m%d-%H%M%S"))
            log.warning("[run] %s is not a JSON record of artefacts; moved it to %s and writing it again", path, target)
            used = {}
        used[kind] = {"key": key, "path": str(self.cache.path(kind, key))}
        atomic_write_text(path, json.dumps(used, indent=2) + "\n")

    def current(self, name: str, config_hash: str, *, check=None) -> dict | None:
        """The run-directory artefact `name` if it exists and was made from `config_hash`; a mismatching
        one is moved to stale/ so that the stage can recompute it without losing the old result, and so is
        a damaged one (unreadable, or failing `check(payload, path)`), with a warning."""
        path = self.path(name)
        if not path.exists():
            return None
        try:
            payload = load_checkpoint(path, check=check)
        except CheckpointError as error:
            target = archive(path, "damaged-" + time.strftime("%Y%m%d-%H%M%S"))
            log.warning("[run] %s could not be used (%s); moved it to %s and computing it again", path, error, target)
            return None
        if payload.get("config_hash") == config_hash:
            return payload
        target = archive(path, payload.get("config_hash") or "unknown")
        log.info("[run] %s was made from another config; moved it to %s", name, target)
        return None

    @contextmanager
    def lock(self) -> Iterator[None]:
        """Exclusive use of the run directory by this process, for work that writes there (the stages).
        A second process stops at once with `RunBusyError` naming the holder (its pid and command line,
        written into the lock file); the kernel releases the lock when the holder exits, even by kill -9.
        Re-entrant within a process."""
        if self._lock_depth:
            self._lock_depth += 1
            try:
                yield
            finally:
                self._lock_depth -= 1
            return
        path = self.path(LOCK_FILE)
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a+") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                handle.seek(0)
                holder = handle.read().strip() or "another process"
                raise RunBusyError(
                    f"run directory {str(self.dir)!r} is in use by {holder}; wait for it to finish, or give "
                    "this run another name (--set name=...)"
                ) from None
            handle.seek(0)
            handle.truncate()
            handle.write(f"process {os.getpid()} ({' '.join([Path(sys.argv[0]).name, *sys.argv[1:]]) if sys.argv else 'python'}), since {time.strftime('%Y-%m-%d %H:%M:%S')}\n")
            handle.flush()
            self._lock_depth = 1
            try:
                yield
            finally:
                self._lock_depth = 0
                handle.seek(0)
                handle.truncate()  # the file stays (removing it would race with a waiting process)
                fcntl.flock(handle, fcntl.LOCK_UN)
