"""Artefact I/O: atomic writes and safe loads.

Checkpoints are plain dicts (state dicts, configs, versions) written to a temp file and renamed, so a
killed process never leaves a half-written file; they are read with `torch.load(weights_only=True)`, so
loading a checkpoint never executes code. Every artefact is read through `load_checkpoint`, which turns
any damage (missing, truncated, empty, not a dict, missing keys, checked by the caller's `check`) into a
`CheckpointError` naming the file. Written files get the permissions of the user's umask, like any file
the user's programs create (a temp file alone would be private, 0600).
"""

from __future__ import annotations

import json
import logging
import os
import pickle
import tempfile
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

log = logging.getLogger(__name__)


class CheckpointError(RuntimeError):
    """An artefact is missing, damaged or not what it should be; the message names the file."""


def current_umask() -> int:
    """The process's umask (read from /proc where it exists: setting it to read it back is not thread-safe)."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write(path: str | Path, write) -> None:
    """Call `write(file)` on a temp file beside `path`, then rename it into place. The file ends with the
    mode a plain `open(path, "w")` would give it (0666 less the umask)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(handle, 0o666 & ~current_umask())
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


def load_checkpoint(
    path: str | Path,
    *,
    map_location: str | torch.device = "cpu",
    required: Sequence[str] = (),
    check: Callable[[dict[str, Any], Path], Any] | None = None,
) -> dict[str, Any]:
    """A checkpoint's dict. Raises `CheckpointError` naming the file when it is missing, unreadable
    (truncated, empty, not a torch file), unsafe, not a dict, lacks one of the `required` keys, or fails
    `check(payload, path)` (which raises CheckpointError itself, e.g. for a wrong format version)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {str(path)!r} does not exist")
    try:
        with warnings.catch_warnings():  # torch warns about a pickle protocol before it refuses the file
            warnings.filterwarnings("ignore", message="Detected pickle protocol", category=UserWarning)
            payload = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as error:  # torch cannot tell a damaged file from one holding code
        reason = one_line(str(error).partition("WeightsUnpickler error:")[2].partition("Check the documentation")[0])
        raise CheckpointError(
            f"refusing to load {str(path)!r}: it is damaged, or holds objects other than tensors and plain data "
            f"whose loading could execute code ({reason or one_line(str(error))}). Only load checkpoints written "
            "by npdraw or another trusted source"
        ) from error
    except Exception as error:  # truncated, empty or random bytes: the unpickler can fail in any way
        raise CheckpointError(
            f"cannot read {str(path)!r}: it is damaged or not a checkpoint ({type(error).__name__}: "
            f"{one_line(str(error))}). A truncated file usually means a full disk or a copy that stopped early"
        ) from error
    if not isinstance(payload, dict):
        raise CheckpointError(f"{str(path)!r} holds a {type(payload).__name__}, not an npdraw checkpoint (a dict)")
    missing = [key for key in required if key not in payload]
    if missing:
        raise CheckpointError(f"{str(path)!r} is incomplete: it lacks {', '.join(map(repr, missing))}")
    if check is not None:
        check(payload, path)
    return payload


def one_line(text: str, limit: int = 200) -> str:
    """A library's (often multi-line) error text as one short line, for a message that quotes it."""
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def archive(path: str | Path, tag: str | None = None) -> Path:
    """Move a file that must not be overwritten to `stale/` beside it (never delete a result). An earlier
    file archived under the same name is kept too: the new one gets a numbered name."""
    path = Path(path)
    tag = tag or time.strftime("%Y%m%d-%H%M%S")
    target = path.parent / "stale" / f"{path.stem}-{tag}{path.suffix}"
    target.parent.mkdir(exist_ok=True)
    number = 1
    while target.exists():
        number += 1
        target = target.with_name(f"{path.stem}-{tag}-{number}{path.suffix}")
    os.replace(path, target)
    return target


def append_metrics(path: str | Path, record: dict[str, Any]) -> None:
    """Append one JSON line (metrics files are append-only logs; a line is written whole or not at all)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        f.write(json.dumps(record, default=float) + "\n")


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """The records of a metrics file; a line that is not a JSON object (a write cut short by a full disk or
    an edit) is skipped with a warning, so one bad line never hides the others."""
    path = Path(path)
    if not path.is_file():
        return []
    records = []
    for number, line in enumerate(path.read_text(errors="replace").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            record = None
        if isinstance(record, dict):
            records.append(record)
        else:
            log.warning("%s line %d is not a metrics record (a JSON object); skipped it", path, number)
    return records
