"""A generic dataset in one .npz file (the format `npdraw data import` writes):

* `images` uint8, (N, H, W), (N, H, W, C) or (N, C, H, W) with C = 1 or 3, square; `labels` optional, integers (N,)
* the test split: `test_path` (another such file) if set, else `test_images` / `test_labels` in the same file,
  else a seeded random `test_fraction` of `images` (the rest stay training images, in order).

valid = the last `valid_size` training images. Set `binary: true` for grey levels that are Bernoulli
probabilities (MNIST-like data, dynamically binarised), false for natural images.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from npdraw_core.config import path_field
from npdraw_plugins.datasets.common import (
    ArrayDataset,
    Arrays,
    DatasetError,
    SplitOptions,
    channels_first,
    check_labels,
    existing,
    load_npz,
)


@dataclass(kw_only=True)
class NpzConfig(SplitOptions):
    path: str = path_field()  # the .npz file with `images` (and optionally `labels`, `test_images`, `test_labels`)
    binary: bool = False
    test_path: str | None = path_field(None)  # a separate .npz with the test `images` (and `labels`)
    test_fraction: float | None = None  # else hold out this random fraction of `images` as the test split
    split_seed: int = 0  # seeds the test_fraction draw
    layout: Literal["auto", "NHW", "NHWC", "NCHW"] = "auto"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.test_fraction is not None and not 0.0 < self.test_fraction < 1.0:
            raise ValueError(f"test_fraction must be in (0, 1), got {self.test_fraction}")


def read_arrays(path: Path, layout: str, prefix: str = "") -> Arrays | None:
    """`{prefix}images` and `{prefix}labels` of the file; None when a prefixed (test) array is absent."""
    with load_npz(path, () if prefix else ("images",)) as archive:
        if f"{prefix}images" not in archive.files:
            return None
        images = channels_first(archive[f"{prefix}images"], f"{path} [{prefix}images]", layout)
        labels = None
        if f"{prefix}labels" in archive.files:
            labels = check_labels(archive[f"{prefix}labels"], len(images), f"{path} [{prefix}labels]")
    return Arrays(images, labels)


class NpzDataset(ArrayDataset):
    """Images (and labels) from a generic .npz file; see the module docstring for the keys and splits."""

    def __init__(self, config: NpzConfig):
        super().__init__(config)
        self.binary = config.binary
        self.path = existing(config.path, "an .npz file with an `images` array (uint8) and optional `labels`")
        self.test_path = None
        if config.test_path is not None:
            self.test_path = existing(
                config.test_path, "an .npz file with the test `images` and optional `labels`"
            )

    @cached_property
    def file_arrays(self) -> tuple[Arrays, Arrays | None]:
        """The file's training images and, when it has them, its test images."""
        return read_arrays(self.path, self.options.layout), read_arrays(
            self.path, self.options.layout, "test_"
        )

    @cached_property
    def test_index(self) -> np.ndarray | None:
        """Indices of `images` held out by test_fraction (None when the test images come from elsewhere)."""
        if (
            self.test_path is not None
            or self.file_arrays[1] is not None
            or self.options.test_fraction is None
        ):
            return None
        count = len(self.file_arrays[0])
        test_count = round(self.options.test_fraction * count)
        if not 0 < test_count < count:
            raise DatasetError(
                f"{self.path}: test_fraction={self.options.test_fraction} of {count} images leaves an empty split"
            )
        generator = torch.Generator().manual_seed(self.options.split_seed)
        return np.sort(torch.randperm(count, generator=generator)[:test_count].numpy())

    def read_train(self) -> Arrays:
        arrays = self.file_arrays[0]
        if self.test_index is None:
            return arrays
        return arrays.take(np.setdiff1d(np.arange(len(arrays)), self.test_index))

    def read_test(self) -> Arrays:
        if self.test_path is not None:
            test = read_arrays(self.test_path, self.options.layout)
        elif self.file_arrays[1] is not None:
            test = self.file_arrays[1]
        elif self.test_index is not None:
            test = self.file_arrays[0].take(self.test_index)
        else:
            raise DatasetError(
                f"{self.path} has no test_images and the config sets neither test_path nor test_fraction; "
                "set one of them to get a test split"
            )
        train = self.train_arrays.images
        if test.images.shape[1:] != train.shape[1:]:
            raise DatasetError(
                f"test images {test.images.shape[1:]} differ in shape from training images {train.shape[1:]}"
            )
        return test
