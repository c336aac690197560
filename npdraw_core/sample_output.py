"""Samples out of a model, in batches: as arrays in an .npz written batch by batch, in bounded memory, and
atomically, or as PNG grids.

An .npz is a zip of .npy files, and a zip member can only be written while no other is open, so each array
is streamed into its own temporary .npy (header with the final shape first, then the rows as they come),
and the finished files are zipped (stored, like `np.savez`) into a temporary file that is renamed into
place. A crash leaves no half-written .npz behind; disk use peaks at about twice the arrays' size.

    with NpzStream(path, {"images": ((N, 1, 28, 28), np.float32)}) as out:
        for batch in batches:
            out.write(images=batch)
        out.add("metadata", metadata_array({"temperature": 1.0}))
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from npdraw_core.latents import Latents
from npdraw_core.model import NPDraw
from npdraw_core.sampling import generators_for, prior_canvases


class NpzStream:
    def __init__(self, path: str | Path, arrays: dict[str, tuple[tuple[int, ...], Any]]):
        """`arrays`: name → (final shape, dtype); rows (the first dimension) arrive through `write`."""
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._dir = Path(tempfile.mkdtemp(dir=self.path.parent, prefix=f".{self.path.name}."))
        self._shapes = {name: tuple(shape) for name, (shape, _) in arrays.items()}
        self._dtypes = {name: np.dtype(dtype) for name, (_, dtype) in arrays.items()}
        self._rows = dict.fromkeys(arrays, 0)
        self._files = {}
        self._added: list[str] = []
        for name in arrays:
            file = open(self._dir / f"{name}.npy", "wb")  # closed by close() or abort()
            header = {
                "descr": np.lib.format.dtype_to_descr(self._dtypes[name]),
                "fortran_order": False,
                "shape": self._shapes[name],
            }
            np.lib.format.write_array_header_1_0(file, header)
            self._files[name] = file

    def write(self, **batches: np.ndarray) -> None:
        """Append rows to each named array (C order, so appended rows are the array's next rows)."""
        for name, batch in batches.items():
            if name not in self._files:
                raise KeyError(f"{name!r} is not one of the arrays of {self.path} ({', '.join(self._files)})")
            batch = np.asarray(batch)
            shape = self._shapes[name]
            if batch.shape[1:] != shape[1:] or batch.dtype != self._dtypes[name]:
                raise ValueError(
                    f"{name}: expected rows of shape {shape[1:]} and dtype {self._dtypes[name]}, "
                    f"got {batch.shape[1:]} {batch.dtype}"
                )
            if self._rows[name] + len(batch) > shape[0]:
                raise ValueError(f"{name}: more than the {shape[0]} rows announced")
            self._files[name].write(np.ascontiguousarray(batch).tobytes())
            self._rows[name] += len(batch)

    def add(self, name: str, array: np.ndarray) -> None:
        """A small array written whole (seeds, metadata)."""
        if name in self._files or name in self._added:
            raise KeyError(f"{name!r} is already an array of {self.path}")
        self._added.append(name)
        np.save(self._dir / f"{name}.npy", np.asarray(array), allow_pickle=False)

    def close(self) -> None:
        """Check every streamed array is complete, zip them and rename the .npz into place."""
        for file in self._files.values():
            file.close()
        short = {name: (rows, self._shapes[name][0]) for name, rows in self._rows.items() if rows != self._shapes[name][0]}
        if short:
            self.abort()
            raise ValueError(f"incomplete arrays for {self.path} (rows written, announced): {short}")
        archive_path = self._dir / f"{self.path.name}.zip"  # beside the arrays: same filesystem as `path`
        try:
            with zipfile.ZipFile(archive_path, "w", zipfile.ZIP_STORED, allowZip64=True) as archive:
                for name in sorted(self._dtypes) + sorted(self._added):
                    archive.write(self._dir / f"{name}.npy", arcname=f"{name}.npy")
            os.replace(archive_path, self.path)
        finally:
            shutil.rmtree(self._dir, ignore_errors=True)

    def abort(self) -> None:
        for file in self._files.values():
            file.close()
        shutil.rmtree(self._dir, ignore_errors=True)

    def __enter__(self) -> NpzStream:
        return self

    def __exit__(self, kind, error, traceback) -> None:
        if kind is None:
            self.close()
        else:
            self.abort()


def metadata_array(metadata: dict[str, Any]) -> np.ndarray:
    """A JSON string as a 0-d unicode array, which np.load reads without pickle: read it back with
    `read_metadata(npz)`."""
    return np.array(json.dumps(metadata, sort_keys=True))


def read_metadata(npz: Any) -> dict[str, Any]:
    return json.loads(str(npz["metadata"]))


def sample_batches(
    model: NPDraw,
    num: int,
    *,
    seed: int,
    seeds: list[int] | None,
    batch_size: int,
    temperature: float,
    top_k: int | None,
    prior_only: bool = False,
) -> Iterator[tuple[torch.Tensor | None, torch.Tensor, Latents]]:
    """(images or None with `prior_only`, canvases, latents) of `num` samples, `batch_size` at a time, on
    the CPU. Without per-sample `seeds` one generator seeded with `seed` runs through all batches."""
    bulk = torch.Generator().manual_seed(seed)  # a CPU generator gives the same samples on every device
    for start in range(0, num, batch_size):
        count = min(batch_size, num - start)
        generator = bulk if seeds is None else generators_for(seeds[start : start + count])
        options = dict(generator=generator, temperature=temperature, top_k=top_k)
        if prior_only:
            canvases, latents = prior_canvases(model.prior, model.bank, model.grid, count, **options)
            yield None, canvases, latents
        else:
            images, canvases, latents = model.sample(count, **options)
            yield images.cpu(), canvases.cpu(), latents.to("cpu")


def write_npz(
    path: Path,
    num: int,
    batches: Iterator[tuple[torch.Tensor | None, torch.Tensor, Latents]],
    *,
    seeds: list[int] | None,
    metadata: dict,
) -> None:
    """Stream the batches into `path`: images (N, C, H, W) float32 (unless prior-only), canvases
    (N, C, S, S) float32, whether (N, T) bool, what and where (N, T) int64, seeds (N,) int64 if given, and
    metadata (a JSON string: `npdraw_core.sample_output.read_metadata`)."""
    stream = None
    try:
        for images, canvases, latents in batches:
            indices = latents.indices()
            arrays = {
                "images": None if images is None else images.float().numpy(),
                "canvases": canvases.float().numpy(),
                "whether": indices["whether"].bool().numpy(),
                "what": indices["what"].numpy(),
                "where": indices["where"].numpy(),
            }
            arrays = {name: values for name, values in arrays.items() if values is not None}
            if stream is None:  # the first batch tells the per-sample shapes
                stream = NpzStream(path, {name: ((num, *v.shape[1:]), v.dtype) for name, v in arrays.items()})
            stream.write(**arrays)
        if seeds is not None:
            stream.add("seeds", np.asarray(seeds, dtype=np.int64))
        stream.add("metadata", metadata_array(metadata))
    except BaseException:
        if stream is not None:
            stream.abort()
        raise
    stream.close()


def write_png(
    path: Path, batches: Iterator[tuple[torch.Tensor | None, torch.Tensor, Latents]], *, prior_only: bool = False
) -> None:
    """A grid of the samples beside their canvases (upsampled to image size), or of the canvases alone."""
    images, canvases = [], []
    for batch_images, batch_canvases, _ in batches:
        images.append(batch_images)
        canvases.append(batch_canvases)
    if prior_only:
        write_grid(torch.cat(canvases), path)
        return
    images = torch.cat(images)
    write_pairs(images, F.interpolate(torch.cat(canvases), size=images.shape[-2:], mode="nearest"), path)


def write_pairs(images: torch.Tensor, canvases: torch.Tensor, path: Path, *, pairs_per_row: int = 8) -> None:
    """Each sample beside its canvas, like the paper's Fig. 5: rows of (canvas, image) pairs."""
    from torchvision.utils import save_image  # slow to import; only grids need it

    interleaved = torch.stack([canvases, images], dim=1).flatten(0, 1)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_image(interleaved, path, nrow=2 * pairs_per_row, padding=2, pad_value=0.5)


def write_grid(images: torch.Tensor, path: Path) -> None:
    from torchvision.utils import save_image

    path.parent.mkdir(parents=True, exist_ok=True)
    save_image(images, path, nrow=math.ceil(math.sqrt(len(images))), padding=2, pad_value=0.5)
