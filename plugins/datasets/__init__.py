"""Built-in datasets, from local files only: `mnist`, `omniglot`, `cifar10`, `celeba` and a generic `npz`.

Each returns an `npdraw_core.interfaces.Dataset`: `load(split)` gives uint8 (N, C, H, W) images and int64
labels for split "train", "valid" (the last 1,000 training images; CelebA: the official partition) or
"test". Every config accepts the low-data options `train_fraction` / `subset_seed`, and the labelled ones
`classes` (plus `alphabets` for Omniglot); they thin train and valid, never test.
"""

from __future__ import annotations

from npdraw_core.hookspecs import hookimpl
from npdraw_plugins.datasets.celeba import Celeba, CelebaConfig
from npdraw_plugins.datasets.cifar10 import Cifar10, Cifar10Config
from npdraw_plugins.datasets.common import ArrayDataset, Arrays, DatasetError
from npdraw_plugins.datasets.mnist import Mnist, MnistConfig, read_idx
from npdraw_plugins.datasets.npz import NpzConfig, NpzDataset
from npdraw_plugins.datasets.omniglot import Omniglot, OmniglotConfig

__all__ = [
    "ArrayDataset",
    "Arrays",
    "Celeba",
    "CelebaConfig",
    "Cifar10",
    "Cifar10Config",
    "DatasetError",
    "Mnist",
    "MnistConfig",
    "NpzConfig",
    "NpzDataset",
    "Omniglot",
    "OmniglotConfig",
    "read_idx",
]


@hookimpl
def npdraw_register_datasets(register):
    register("mnist", Mnist, MnistConfig)
    register("omniglot", Omniglot, OmniglotConfig)
    register("cifar10", Cifar10, Cifar10Config)
    register("celeba", Celeba, CelebaConfig)
    register("npz", NpzDataset, NpzConfig)
