"""What the dataset plugins share: the common config options, the train/valid/test split, the low-data
subsets of the paper's §4.2 and checks that name the file and the problem.

A dataset reads its files once (lazily, on the first `load`) into numpy arrays; `load(split)` then cuts the
split out and applies the subsets. Subsets (classes, a random fraction) apply to train and valid only: the
test split is always the full test set, as in the paper's low-data experiments.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np
import torch

from npdraw_core.checkpoint import atomic_write
from npdraw_core.config import check_at_least
from npdraw_core.interfaces import SPLITS, ImageSet

VALID_SIZE = 1000  # the last 1,000 training images form the validation split


class DatasetError(ValueError):
    """A dataset file exists but does not hold what it should; the message names the file and the problem."""


@dataclass(kw_only=True)
class SubsetOptions:
    train_fraction: float | None = None  # keep this random fraction of train and of valid (paper §4.2)
    subset_seed: int = 0  # seeds the random fraction

    def __post_init__(self) -> None:
        if self.train_fraction is not None and not 0.0 < self.train_fraction <= 1.0:
            raise ValueError(
                f"train_fraction must be in (0, 1], got {self.train_fraction}; use null for all images"
            )


@dataclass(kw_only=True)
class SplitOptions(SubsetOptions):
    classes: list[int] | None = None  # keep only these labels in train and valid, e.g. digits [0, 1, 2]
    valid_size: int = VALID_SIZE  # the last `valid_size` training images form the validation split

    def __post_init__(self) -> None:
        super().__post_init__()
        check_at_least(self, 1, "valid_size")


@dataclass
class Arrays:
    """Images uint8 (N, C, H, W), optional integer labels (N,), optional per-image metadata (N,) each."""

    images: np.ndarray
    labels: np.ndarray | None = None
    extras: dict[str, np.ndarray] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.images)

    def take(self, index: np.ndarray | slice) -> Arrays:
        return Arrays(
            self.images[index],
            None if self.labels is None else self.labels[index],
            {name: values[index] for name, values in self.extras.items()},
        )

    def to_image_set(self) -> ImageSet:
        def tensor(values: np.ndarray) -> torch.Tensor:
            return torch.from_numpy(np.ascontiguousarray(values, dtype=np.int64))

        return ImageSet(
            torch.from_numpy(np.ascontiguousarray(self.images)),
            None if self.labels is None else tensor(self.labels),
            {name: tensor(values) for name, values in self.extras.items()},
        )


class ArrayDataset:
    """Base of the built-in datasets. Subclasses set `binary` and implement `read_train()` and
    `read_test()` (checked `Arrays`); `channels` and `image_size` come from the data itself."""

    binary: bool = False

    def __init__(self, options: SubsetOptions):
        self.options = options

    def read_train(self) -> Arrays:
        raise NotImplementedError

    def read_test(self) -> Arrays:
        raise NotImplementedError

    @cached_property
    def train_arrays(self) -> Arrays:
        return self.read_train()

    @cached_property
    def test_arrays(self) -> Arrays:
        return self.read_test()

    @property
    def channels(self) -> int:
        return int(self.train_arrays.images.shape[1])

    @property
    def image_size(self) -> int:
        return int(self.train_arrays.images.shape[-1])

    def load(self, split: str) -> ImageSet:
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; splits are {', '.join(SPLITS)}")
        if split == "test":
            return self.test_arrays.to_image_set()
        return self.train_arrays.take(self.split_indices[split]).to_image_set()

    def held_out(self, selected: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Split the selected training indices into train and valid: valid = the last `valid_size`."""
        valid_size = self.options.valid_size
        if valid_size >= len(selected):
            raise DatasetError(
                f"{type(self).__name__}: {len(selected)} training images (after the classes/alphabets subset) are "
                f"too few to hold out valid_size={valid_size} for validation; lower valid_size in the dataset config"
            )
        return selected[: len(selected) - valid_size], selected[len(selected) - valid_size :]

    def keep_mask(self, arrays: Arrays) -> np.ndarray | None:
        """Which images a label-based subset keeps (None: all). Subclasses add their own criteria."""
        classes = getattr(self.options, "classes", None)
        if classes is None:
            return None
        if arrays.labels is None:
            raise DatasetError(
                f"classes={classes} was set but {type(self).__name__} has no labels to select by"
            )
        return np.isin(arrays.labels, np.asarray(classes))

    @cached_property
    def split_indices(self) -> dict[str, np.ndarray]:
        """Train and valid indices into the training arrays. The label subset comes first, so that valid
        is the last `valid_size` images of the selected classes (Omniglot is ordered by character: a valid
        split cut before selecting alphabets could be empty). The random fraction then thins train and
        valid; both draws come from one generator in a fixed order, so either split alone is reproducible."""
        mask = self.keep_mask(self.train_arrays)
        selected = np.arange(len(self.train_arrays)) if mask is None else np.flatnonzero(mask)
        if len(selected) == 0:
            raise DatasetError(
                f"{type(self).__name__}: the subset options select no training images ({self.options})"
            )
        generator = torch.Generator().manual_seed(self.options.subset_seed)
        indices = {}
        for split, index in zip(("train", "valid"), self.held_out(selected), strict=True):
            fraction = self.options.train_fraction
            if fraction is not None:
                count = max(1, round(fraction * len(index)))
                chosen = torch.randperm(len(index), generator=generator)[:count].sort().values.numpy()
                index = index[chosen]
            indices[split] = index
        return indices


# ---------------------------------------------------------------------------------------------------------
# Checks shared by the readers


def existing(path: str | Path, expected: str) -> Path:
    """`path` as a Path if it exists, else a FileNotFoundError saying what was expected there."""
    path = Path(path).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist (resolved: {path.absolute()}); expected {expected}")
    return path


def check_labels(labels: np.ndarray, count: int, source: str) -> np.ndarray:
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        raise DatasetError(
            f"{source}: labels must be integers of shape (N,), got {labels.dtype} {labels.shape}"
        )
    if len(labels) != count:
        raise DatasetError(f"{source}: {count} images but {len(labels)} labels; the counts must match")
    return labels.astype(np.int64)


def channels_first(images: np.ndarray, source: str, layout: str = "auto") -> np.ndarray:
    """uint8 (N, H, W), (N, H, W, C) or (N, C, H, W) with C in {1, 3} → (N, C, H, W) of square images."""
    if images.dtype != np.uint8:
        raise DatasetError(
            f"{source}: images must be uint8 (0..255), got {images.dtype}; convert them explicitly, e.g. "
            "(x * 255).round().astype(np.uint8) for floats in [0, 1]"
        )
    if layout == "auto":
        if images.ndim == 3:
            layout = "NHW"
        elif images.ndim == 4 and images.shape[1] in (1, 3) and images.shape[2] == images.shape[3]:
            layout = "NCHW"
        elif images.ndim == 4 and images.shape[3] in (1, 3) and images.shape[1] == images.shape[2]:
            layout = "NHWC"
        else:
            raise DatasetError(
                f"{source}: cannot tell the layout of images of shape {images.shape}; expected square images as "
                "(N, H, W), (N, H, W, C) or (N, C, H, W) with C = 1 or 3 (set layout to say which)"
            )
    expected_ndim = 3 if layout == "NHW" else 4
    if images.ndim != expected_ndim:
        raise DatasetError(
            f"{source}: layout {layout} needs {expected_ndim}-d images, got shape {images.shape}"
        )
    if layout == "NHW":
        images = images[:, None]
    elif layout == "NHWC":
        images = images.transpose(0, 3, 1, 2)
    if images.shape[2] != images.shape[3] or images.shape[1] not in (1, 3):
        raise DatasetError(
            f"{source}: expected square images with 1 or 3 channels, got (N, C, H, W) = {images.shape}"
        )
    return np.ascontiguousarray(images)


def load_npz(path: Path, required: tuple[str, ...]):
    """Open an npz without pickles and check that it holds the `required` keys."""
    try:
        archive = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as error:
        raise DatasetError(f"{path}: not a readable .npz file ({error})") from error
    if not hasattr(archive, "files"):
        raise DatasetError(
            f"{path}: holds a single array, expected an .npz archive with keys {', '.join(required)}"
        )
    missing = [key for key in required if key not in archive.files]
    if missing:
        raise DatasetError(
            f"{path}: missing key(s) {', '.join(missing)}; it holds {', '.join(archive.files) or 'nothing'}, "
            f"expected {', '.join(required)}"
        )
    return archive


def atomic_savez(path: Path, **arrays: np.ndarray) -> None:
    """np.savez written atomically: a killed process never leaves a half-written file."""
    atomic_write(path, lambda file: np.savez(file, **arrays))
