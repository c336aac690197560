"""Omniglot at 28×28: the npz of ../shared/data/omniglot (omniglot_28x28.npz), or torchvision's folder layout
`omniglot-py/images_{background,evaluation}/<alphabet>/<character>/<ID>_<drawer>.png` converted the way that
npz was made (ink = dark pixels of the official PNGs as 0..255 floats, box-filtered 105 → 28, rounded).

Both give all 1,623 characters × 20 drawers ordered by character ID then drawer; the test split is drawers
16..20 (8,115 images), the training images drawers 1..15 (24,345: train 23,345 + valid 1,000).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np
from PIL import Image

from npdraw_core.config import path_field
from npdraw_plugins.datasets.common import (
    ArrayDataset,
    Arrays,
    DatasetError,
    SplitOptions,
    existing,
    load_npz,
)

NPZ_NAME = "omniglot_28x28.npz"
NPZ_KEYS = ("images", "split", "char_id", "alphabet", "drawer")
SETS = ("images_background", "images_evaluation")
FILE_NAME = re.compile(r"(\d+)_(\d+)\.png")
IMAGE_SIZE = 28
TEST_DRAWERS_FROM = 16  # drawers 16..20 of every character form the test split
MAX_INK_FRACTION = 0.5  # official Omniglot has ~8% ink; far more means the polarity is reversed


@dataclass(kw_only=True)
class OmniglotConfig(SplitOptions):
    # omniglot_28x28.npz, a folder holding it, or torchvision's omniglot-py folder (or the folder above it)
    root: str = path_field("../shared/data/omniglot")
    alphabets: list[int] | None = None  # keep only these alphabet indices (0..49) in train and valid


def find_source(root: Path) -> Path:
    for candidate in (root, root / NPZ_NAME):
        if candidate.is_file():
            return candidate
    for candidate in (root, root / "omniglot-py"):
        if any((candidate / name).is_dir() for name in SETS):
            return candidate
    raise FileNotFoundError(
        f"{root} holds neither {NPZ_NAME} nor torchvision's omniglot-py/images_background|images_evaluation "
        "folders; point root at one of them (a copy of the npz is in ../shared/data/omniglot)"
    )


def read_npz(path: Path) -> tuple[Arrays, np.ndarray, list[str]]:
    with load_npz(path, NPZ_KEYS) as archive:
        images = archive["images"]
        columns = {key: archive[key] for key in NPZ_KEYS[1:]}
        names = [str(name) for name in archive["alphabet_names"]] if "alphabet_names" in archive.files else []
    if images.dtype != np.uint8 or images.ndim != 3 or images.shape[1:] != (IMAGE_SIZE, IMAGE_SIZE):
        raise DatasetError(f"{path}: images must be uint8 (N, 28, 28), got {images.dtype} {images.shape}")
    for key, values in columns.items():
        if values.shape != (len(images),):
            raise DatasetError(
                f"{path}: {key} must have shape ({len(images)},) like images, got {values.shape}"
            )
    return (
        make_arrays(images, columns["char_id"], columns["alphabet"], columns["drawer"]),
        columns["split"],
        names,
    )


def make_arrays(images: np.ndarray, char_id: np.ndarray, alphabet: np.ndarray, drawer: np.ndarray) -> Arrays:
    """labels = character index 0..1622 (official ID - 1); extras keep the alphabet, official ID and drawer."""
    char_id = char_id.astype(np.int64)
    extras = {"alphabet": alphabet.astype(np.int64), "character": char_id, "drawer": drawer.astype(np.int64)}
    return Arrays(images[:, None], char_id - 1, extras)


def png_to_28(path: Path) -> np.ndarray:
    """An official Omniglot PNG (dark strokes on white) → uint8 28×28 with bright ink, as the npz was made."""
    try:
        with Image.open(path) as image:
            pixels = np.asarray(image.convert("L"))
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
        raise DatasetError(f"{path}: cannot decode the image ({type(error).__name__}: {error})") from error
    # scaling to 0..255 before the box filter (float32) reproduces the npz exactly; scaling after it does not
    ink = Image.fromarray((pixels < 128).astype(np.float32) * 255.0, mode="F")
    return np.round(np.asarray(ink.resize((IMAGE_SIZE, IMAGE_SIZE), Image.Resampling.BOX))).astype(np.uint8)


def read_folder(root: Path) -> tuple[Arrays, np.ndarray, list[str]]:
    entries = []  # (character ID, drawer, alphabet folder name, path)
    for set_name in SETS:
        for path in sorted((root / set_name).glob("*/*/*.png")):
            match = FILE_NAME.fullmatch(path.name)
            if match is None:
                raise DatasetError(
                    f"{path}: expected Omniglot file names <character ID>_<drawer>.png, e.g. 0110_01.png"
                )
            entries.append((int(match[1]), int(match[2]), path.parent.parent.name, path))
    if not entries:
        raise FileNotFoundError(f"{root}: no PNGs under {' or '.join(SETS)}/<alphabet>/<character>/")
    entries.sort(key=lambda entry: entry[:2])
    names = list(dict.fromkeys(entry[2] for entry in entries))  # alphabets in order of first character ID
    images = np.stack([png_to_28(entry[3]) for entry in entries])
    ink = images.mean() / 255.0
    if ink > MAX_INK_FRACTION:
        raise DatasetError(
            f"{root}: {ink:.0%} of the pixels are ink after reading dark pixels as strokes; the official PNGs "
            "have dark strokes on white (about 8% ink), these look inverted"
        )
    char_id, drawer = (np.array([entry[i] for entry in entries]) for i in (0, 1))
    alphabet = np.array([names.index(entry[2]) for entry in entries])
    split = (drawer >= TEST_DRAWERS_FROM).astype(np.uint8)
    return make_arrays(images, char_id, alphabet, drawer), split, names


class Omniglot(ArrayDataset):
    """Omniglot 28×28, uint8 (N, 1, 28, 28) with bright ink; labels = character index (official ID - 1);
    extras `alphabet` (0..49), `character` (official ID 1..1623), `drawer` (1..20). Binary.
    `classes` selects characters, `alphabets` alphabets (the paper's low-data splits)."""

    binary = True

    def __init__(self, config: OmniglotConfig):
        super().__init__(config)
        root = existing(config.root, f"{NPZ_NAME} or torchvision's omniglot-py folder")
        self.source = find_source(root)
        self.alphabet_names: list[str] = []

    @cached_property
    def all_arrays(self) -> tuple[Arrays, np.ndarray]:
        """Every image with its split flag (0 train, 1 test), read once for both splits."""
        if self.source.is_file():
            arrays, split, self.alphabet_names = read_npz(self.source)
        else:
            arrays, split, self.alphabet_names = read_folder(self.source)
        if not np.isin(split, (0, 1)).all():
            raise DatasetError(
                f"{self.source}: split must be 0 (train) or 1 (test), found {np.unique(split)}"
            )
        return arrays, split

    def read_train(self) -> Arrays:
        arrays, split = self.all_arrays
        return arrays.take(split == 0)

    def read_test(self) -> Arrays:
        arrays, split = self.all_arrays
        return arrays.take(split == 1)

    def keep_mask(self, arrays: Arrays) -> np.ndarray | None:
        mask = super().keep_mask(arrays)
        if self.options.alphabets is not None:
            in_alphabets = np.isin(arrays.extras["alphabet"], np.asarray(self.options.alphabets))
            mask = in_alphabets if mask is None else mask & in_alphabets
        return mask
