"""The shared stage cache: part banks, parses and priors stored content-addressed under the output root.

An artefact lives at `ROOT/<kind>/<key>.pt`, where the key hashes exactly what determines it, so every run
and every Tune trial that shares those settings computes it once. A process that computes an artefact
holds an exclusive lock on `<key>.lock` (fcntl, released by the kernel if the process dies); a process that
asks for the same artefact meanwhile waits on the lock, then re-checks and finds it done. Files are written
atomically, so a reader never sees half an artefact, and an unreadable entry is moved aside (never deleted)
and computed again.
"""

from __future__ import annotations

import fcntl
import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from npdraw_core.checkpoint import CheckpointError, load_checkpoint

log = logging.getLogger(__name__)

Payload = dict[str, Any]
Check = Callable[[Payload, Path], Any]


class StageCache:
    def __init__(self, root: str | Path):
        self.root = Path(root)

    def path(self, kind: str, key: str) -> Path:
        return self.root / kind / f"{key}.pt"

    def load(self, kind: str, key: str, check: Check | None = None) -> Payload | None:
        """The stored artefact, or None when there is none. A damaged one (unreadable, or failing
        `check(payload, path)`, which raises CheckpointError) is moved aside first, never deleted."""
        path = self.path(kind, key)
        if not path.exists():
            return None
        try:
            return load_checkpoint(path, check=check)
        except CheckpointError as error:
            damaged = path.with_name(f"{path.name}.damaged-{int(time.time())}")
            path.replace(damaged)
            log.warning("[cache] %s could not be read (%s); moved it to %s and computing it again", path, error, damaged)
            return None

    @contextmanager
    def lock(self, kind: str, key: str) -> Iterator[None]:
        """Exclusive lock on one artefact, across processes on this machine (and on shared file systems
        that honour flock)."""
        lock_path = self.path(kind, key).with_suffix(".lock")
        lock_path.parent.mkdir(parents=True, exist_ok=True)
        with open(lock_path, "a") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                log.info("[cache] waiting for another process computing %s", self.path(kind, key))
                fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def get_or_compute(
        self,
        kind: str,
        key: str,
        compute: Callable[[Path, Payload | None], Payload],
        *,
        done: Callable[[Payload], bool] = lambda payload: True,
        check: Check | None = None,
    ) -> tuple[Payload, bool]:
        """The artefact (kind, key) and whether this call computed it. `compute(path, partial)` writes the
        artefact to `path` (atomically) and returns it; `partial` is a stored entry that is not `done` yet
        (a checkpoint to resume), else None. Runs under the artefact's lock, after a re-check. `check`
        validates a stored entry (see `load`)."""
        payload = self.load(kind, key, check)
        if payload is not None and done(payload):
            return payload, False
        with self.lock(kind, key):
            payload = self.load(kind, key, check)  # another process may have finished it while we waited
            if payload is not None and done(payload):
                return payload, False
            return compute(self.path(kind, key), payload), True
