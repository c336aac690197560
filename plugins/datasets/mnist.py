"""MNIST from the LeCun IDX files (gzipped or raw), in torchvision's layout `root/MNIST/raw/` or directly in
`root`. The repository bundles a copy in data/mnist (see data/mnist/README.md)."""

from __future__ import annotations

import gzip
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

import npdraw_plugins
from npdraw_core.config import path_field
from npdraw_plugins.datasets.common import (
    ArrayDataset,
    Arrays,
    DatasetError,
    SplitOptions,
    check_labels,
    existing,
)

IMAGES_MAGIC, LABELS_MAGIC = 2051, 2049  # IDX magic numbers: uint8 data, 3 and 1 dimensions
FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
# the copy bundled with the repository (the package folder's parent holds data/), found from any directory
BUNDLED = Path(npdraw_plugins.__file__).resolve().parents[1] / "data" / "mnist"


@dataclass(kw_only=True)
class MnistConfig(SplitOptions):
    # holds MNIST/raw/<IDX files> (torchvision) or the IDX files themselves
    root: str = path_field(str(BUNDLED))


def read_idx(path: Path, magic: int) -> np.ndarray:
    """An IDX file of unsigned bytes → its array, checking the magic number and the size the header promises."""
    try:
        data = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    except (OSError, EOFError, zlib.error) as error:
        raise DatasetError(
            f"{path}: cannot decompress ({error}); the file is truncated or not gzip data"
        ) from error
    if len(data) < 4 or int.from_bytes(data[:4], "big") != magic:
        found = int.from_bytes(data[:4], "big") if len(data) >= 4 else None
        raise DatasetError(
            f"{path}: wrong IDX magic number {found} (expected {magic}: {'images' if magic == IMAGES_MAGIC else 'labels'} "
            "of unsigned bytes); is this the right file, and not compressed twice?"
        )
    ndim = magic & 0xFF
    header_size = 4 + 4 * ndim
    if len(data) < header_size:
        raise DatasetError(f"{path}: truncated IDX header ({len(data)} bytes)")
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    expected = int(np.prod(shape)) + header_size
    if len(data) != expected:
        raise DatasetError(
            f"{path}: the header promises shape {shape} ({expected} bytes) but the file has {len(data)} bytes; "
            "it is truncated or corrupt — restore it from the original"
        )
    # a writable copy: torch refuses to share memory with read-only buffers without a warning
    return np.frombuffer(bytearray(data), dtype=np.uint8, offset=header_size).reshape(shape)


def find_idx(root: Path, name: str) -> Path:
    candidates = [folder / file for folder in (root / "MNIST" / "raw", root) for file in (name, f"{name}.gz")]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(
        f"no {name}[.gz] in {root / 'MNIST' / 'raw'} (torchvision's layout) nor in {root}; expected the four MNIST "
        f"IDX files (train-/t10k- images/labels). A copy is bundled in {BUNDLED}"
    )


class Mnist(ArrayDataset):
    """MNIST: 60,000 training images (train = the first 59,000, valid = the last 1,000) and 10,000 test images,
    uint8 (N, 1, 28, 28), ink bright; labels are the digits. Binary (dynamically binarised)."""

    binary = True

    def __init__(self, config: MnistConfig):
        super().__init__(config)
        self.root = existing(
            config.root, f"the MNIST IDX files in <root>/MNIST/raw/ or <root>/ (bundled copy: {BUNDLED})"
        )

    def read(self, split: str) -> Arrays:
        image_path, label_path = (find_idx(self.root, name) for name in FILES[split])
        images = read_idx(image_path, IMAGES_MAGIC)
        labels = read_idx(label_path, LABELS_MAGIC)
        if images.shape[1] != images.shape[2]:
            raise DatasetError(f"{image_path}: expected square images, got {images.shape[1:]}")
        if len(labels) != len(images):
            raise DatasetError(
                f"{image_path} holds {len(images)} images but {label_path} holds {len(labels)} labels; "
                "the two files must come from the same split"
            )
        return Arrays(images[:, None], check_labels(labels, len(images), str(label_path)))

    def read_train(self) -> Arrays:
        return self.read("train")

    def read_test(self) -> Arrays:
        return self.read("test")
