"""What is served: each model's name, file and description, read once at start-up.

Reading every model file when the service starts makes a wrong path or a damaged file fail `npdraw serve`
at once, with the core's message naming the file, instead of failing the first request for it. The weights
are not kept here: the sampler loads a model (`load_trained`) when a request first needs it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from npdraw_serving.images import grid, png_bytes

BANK_PER_ROW, BANK_PAD = 10, 1  # the layout of GET /v1/bank/MODEL.png


@dataclass(frozen=True)
class ModelEntry:
    name: str
    path: Path  # the model.pt itself (a run directory given by the user is resolved to it)
    dataset: str
    channels: int
    image_size: int
    canvas_size: int
    patch_size: int
    bank_size: int
    num_steps: int
    cells_per_side: int
    pad_before: int  # canvas pixels of padding before the first cell (cells may overhang the canvas)
    epoch: int | None
    metrics: dict[str, Any]
    bank: np.ndarray = field(repr=False)  # (M, C, K, K) exemplars, for the bank image

    def describe(self) -> dict[str, Any]:
        """The JSON of GET /v1/models."""
        return {
            "name": self.name,
            "path": str(self.path),
            "dataset": self.dataset,
            "image_shape": [self.channels, self.image_size, self.image_size],
            "canvas_size": self.canvas_size,
            "patch_size": self.patch_size,
            "bank_size": self.bank_size,
            "num_steps": self.num_steps,
            "cells_per_side": self.cells_per_side,
            "pad_before": self.pad_before,
            "bank_image": {"per_row": BANK_PER_ROW, "pad": BANK_PAD, "scale": self.bank_scale},
            "epoch": self.epoch,
            "metrics": _finite(self.metrics),
        }

    @property
    def bank_scale(self) -> int:
        return max(1, 32 // self.patch_size)  # 5×5 patches are unreadable at their own size

    def bank_png(self) -> bytes:
        """The part bank as one PNG: exemplars in raster order (index i is row i // 10, column i % 10),
        `BANK_PAD` pixels apart, each pixel repeated `bank_scale` times. Exemplar i's top-left corner is
        at scale · (pad + (i // 10) · (K + pad)), scale · (pad + (i % 10) · (K + pad))."""
        return png_bytes(grid(self.bank, per_row=BANK_PER_ROW, pad=BANK_PAD), scale=self.bank_scale)

    def cell_box(self, cell: int) -> list[int]:
        """[top, left, size] of a cell in canvas pixels (top/left may be negative: padding)."""
        row, col = divmod(cell, self.cells_per_side)
        return [row * self.patch_size - self.pad_before, col * self.patch_size - self.pad_before, self.patch_size]


class ModelCatalog:
    def __init__(self, entries: dict[str, ModelEntry]):
        self.entries = entries

    @classmethod
    def read(cls, models: dict[str, str]) -> ModelCatalog:
        return cls({name: read_entry(name, path) for name, path in models.items()})

    @property
    def names(self) -> list[str]:
        return list(self.entries)

    def resolve(self, name: str | None) -> ModelEntry:
        """The entry for `name`; None means the only model. Raises UnknownModel / ModelRequired."""
        if name is None:
            if len(self.entries) == 1:
                return next(iter(self.entries.values()))
            raise ModelRequired(f"several models are served ({', '.join(self.entries)}): name one in 'model'")
        if name not in self.entries:
            raise UnknownModel(f"unknown model {name!r}; served: {', '.join(self.entries)} (GET /v1/models)")
        return self.entries[name]


class UnknownModel(LookupError):
    pass


class ModelRequired(ValueError):
    pass


def read_entry(name: str, path: str | Path) -> ModelEntry:
    from npdraw_core.model_file import MODEL_FILE, read_model_file  # imports torch

    source = Path(path)
    model_file = read_model_file(source)
    shape, grid_ = model_file.shape, model_file.shape.grid
    return ModelEntry(
        name=name,
        path=(source / MODEL_FILE if source.is_dir() else source).resolve(),
        dataset=model_file.config.data.type,
        channels=shape.channels,
        image_size=shape.image_size,
        canvas_size=shape.canvas_size,
        patch_size=shape.patch_size,
        bank_size=shape.bank_size,
        num_steps=shape.num_steps,
        cells_per_side=grid_.cells_per_side,
        pad_before=grid_.pad_before,
        epoch=model_file.info.get("epoch"),
        metrics=dict(model_file.info.get("metrics") or {}),
        bank=model_file.bank.float().cpu().numpy(),
    )


def _finite(values: dict[str, Any]) -> dict[str, Any]:
    # JSON has no NaN/inf: a diverged metric is reported as null rather than breaking GET /v1/models.
    return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in values.items()}
