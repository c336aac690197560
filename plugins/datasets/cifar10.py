"""CIFAR-10 from an npz (`train_images`, `train_labels`, `test_images`, `test_labels`; images (N, 32, 32, 3)
uint8, as in ../shared/data/cifar10) or from torchvision's python batches `cifar-10-batches-py/data_batch_1..5`
and `test_batch`.

The python batches are pickles. Unpickling an untrusted file can execute code, so they are read with an
unpickler that only rebuilds plain numpy arrays, lists and bytes (what the official files hold) and refuses
anything else; still, read only files you trust (the official cifar-10-python.tar.gz).
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np

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

NPZ_KEYS = ("train_images", "train_labels", "test_images", "test_labels")
PICKLE_FOLDER = "cifar-10-batches-py"
TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_BATCH = "test_batch"
CLASS_NAMES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
# The globals a numpy-array pickle needs (numpy 1 wrote numpy.core, numpy 2 reads it from numpy._core;
# Python 3 writes bytes in protocol 2 as _codecs.encode(text, "latin1")).
ALLOWED_GLOBALS = {
    ("_codecs", "encode"),
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
}


@dataclass(kw_only=True)
class Cifar10Config(SplitOptions):
    # an npz with train_/test_ images and labels, a folder holding exactly one, or cifar-10-batches-py (or its parent)
    root: str = path_field("../shared/data/cifar10")


class NumpyOnlyUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        if (module, name) not in ALLOWED_GLOBALS:
            raise DatasetError(
                f"refusing to unpickle {module}.{name}: a CIFAR-10 batch holds only numpy arrays and lists"
            )
        return super().find_class(module.replace("numpy.core.", "numpy._core."), name)


def unpickle_batch(path: Path) -> Arrays:
    try:
        with path.open("rb") as file:
            batch = NumpyOnlyUnpickler(file, encoding="bytes").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError) as error:
        raise DatasetError(f"{path}: not a CIFAR-10 python batch ({error})") from error
    if not isinstance(batch, dict) or b"data" not in batch or b"labels" not in batch:
        raise DatasetError(f"{path}: expected a dict with b'data' and b'labels', got {type(batch).__name__}")
    data = np.asarray(batch[b"data"])
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise DatasetError(f"{path}: b'data' must be uint8 (N, 3072), got {data.dtype} {data.shape}")
    labels = check_labels(np.asarray(batch[b"labels"]), len(data), str(path))
    return Arrays(data.reshape(-1, 3, 32, 32), labels)  # rows are channel-major: R plane, G plane, B plane


def find_source(root: Path) -> Path:
    if root.is_file():
        return root
    for folder in (root / PICKLE_FOLDER, root):
        if (folder / TEST_BATCH).is_file() or (folder / TRAIN_BATCHES[0]).is_file():
            return folder
    archives = sorted(root.glob("*.npz"))
    if len(archives) == 1:
        return archives[0]
    found = f"several npz files ({', '.join(a.name for a in archives)})" if archives else "no npz file"
    raise FileNotFoundError(
        f"{root}: found {found} and no {PICKLE_FOLDER}/; expected one npz with keys {', '.join(NPZ_KEYS)} "
        f"or torchvision's {PICKLE_FOLDER}/ ({', '.join(TRAIN_BATCHES)}, {TEST_BATCH}); a copy of the npz is in "
        "../shared/data/cifar10"
    )


class Cifar10(ArrayDataset):
    """CIFAR-10: uint8 (N, 3, 32, 32) images and class labels 0..9 (`CLASS_NAMES`); valid = the last 1,000
    training images. Not binary (the output is a discretised logistic mixture)."""

    binary = False
    class_names = CLASS_NAMES

    def __init__(self, config: Cifar10Config):
        super().__init__(config)
        root = existing(config.root, f"a CIFAR-10 npz ({', '.join(NPZ_KEYS)}) or {PICKLE_FOLDER}/")
        self.source = find_source(root)

    def read(self, split: str) -> Arrays:
        if self.source.is_file():
            # np.load is lazy per key: reading the test split does not decompress the training images
            with load_npz(self.source, NPZ_KEYS) as archive:
                where = f"{self.source} [{split}_images]"
                images = channels_first(archive[f"{split}_images"], where)
                return Arrays(images, check_labels(archive[f"{split}_labels"], len(images), where))
        names = TRAIN_BATCHES if split == "train" else (TEST_BATCH,)
        missing = [name for name in names if not (self.source / name).is_file()]
        if missing:
            raise FileNotFoundError(
                f"{self.source}: missing {', '.join(missing)} of the CIFAR-10 python batches"
            )
        batches = [unpickle_batch(self.source / name) for name in names]
        return Arrays(
            np.concatenate([b.images for b in batches]), np.concatenate([b.labels for b in batches])
        )

    def read_train(self) -> Arrays:
        return self.read("train")

    def read_test(self) -> Arrays:
        return self.read("test")
