"""Artefact I/O: atomic writes and safe loads.

Checkpoints are plain dicts (state dicts, configs, versions) written to a temp file and renamed, so a
killed process never leaves a half-written file; they are read with `torch.load(weights_only=True)`, so
loading a checkpoint never executes code.
"""

from __future__ import annotations

import json
import os
import pickle
import tempfile
import time
from pathlib import Path
from typing import Any

import torch


class CheckpointError(RuntimeError):
    pass


def atomic_write(path: str | Path, write) -> None:
    """Call `write(file)` on a temp file beside `path`, then rename it into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as tmp:
            write(tmp)
            tmp.flush()
            os.fsync(tmp.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    atomic_write(path, lambda f: f.write(data))


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def save_checkpoint(payload: dict[str, Any], path: str | Path) -> None:
    atomic_write(path, lambda f: torch.save(payload, f))


def load_checkpoint(path: str | Path, *, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {str(path)!r} does not exist")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as error:
        raise CheckpointError(
            f"refusing to load {str(path)!r}: it holds objects other than tensors and plain data, and loading it "
            f"could execute code ({error}). Only load checkpoints written by npdraw or another trusted source."
        ) from error
    except (RuntimeError, EOFError, OSError, ValueError) as error:  # truncated, empty or not a torch file
        raise CheckpointError(
            f"cannot read {str(path)!r}: it is damaged or not a checkpoint ({type(error).__name__}: {error}). "
            "A truncated file usually means a full disk or a copy that stopped early"
        ) from error
    if not isinstance(payload, dict):
        raise CheckpointError(f"{str(path)!r} holds a {type(payload).__name__}, not an npdraw checkpoint (a dict)")
    return payload


def archive(path: str | Path, tag: str | None = None) -> Path:
    """Move a file that must not be overwritten to `stale/` beside it (never delete a result)."""
    path = Path(path)
    tag = tag or time.strftime("%Y%m%d-%H%M%S")
    target = path.parent / "stale" / f"{path.stem}-{tag}{path.suffix}"
    target.parent.mkdir(exist_ok=True)
    os.replace(path, target)
    return target


def append_metrics(path: str | Path, record: dict[str, Any]) -> None:
    """Append one JSON line (metrics files are append-only logs; a line is written whole or not at all)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        f.write(json.dumps(record, default=float) + "\n")


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    path = Path(path)
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
