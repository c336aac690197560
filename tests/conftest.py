"""Shared fixtures.

* `bundled_mnist_root`: Path of the MNIST copy bundled in data/mnist (torchvision layout).
* `mnist_dataset` (session): the `mnist` dataset on that copy, built through the registry; 59,000 / 1,000 /
  10,000 images. Read-only: load splits from it, never mutate what they return.
* `shared_data_dir` (session): Path of ../shared/data; skips the test when it is absent.
* tests marked `@pytest.mark.shared_data` are skipped where ../shared/data is absent.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# Ray on one machine: every node, worker and driver on loopback only (Ray otherwise swaps 127.0.0.1 for
# the machine's network address), and no token files. Set before any test module imports ray.
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")

REPO_ROOT = Path(__file__).resolve().parents[1]
BUNDLED_MNIST = REPO_ROOT / "data" / "mnist"
SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
SHARED_DATA_MISSING = (
    f"needs the real datasets in {SHARED_DATA} (../shared/data next to the repo), which is absent here"
)


def pytest_runtest_setup(item: pytest.Item) -> None:
    if item.get_closest_marker("shared_data") is not None and not SHARED_DATA.is_dir():
        pytest.skip(SHARED_DATA_MISSING)


@pytest.fixture(scope="session")
def shared_data_dir() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(SHARED_DATA_MISSING)
    return SHARED_DATA


@pytest.fixture(scope="session")
def bundled_mnist_root() -> Path:
    return BUNDLED_MNIST


@pytest.fixture(scope="session")
def mnist_dataset():
    from npdraw_core.config import parse_component
    from npdraw_core.registry import default_registry

    registry = default_registry()
    chosen = parse_component("dataset", {"type": "mnist", "root": str(BUNDLED_MNIST)}, "data", registry)
    return registry.get("dataset", "mnist").build(chosen.config)


def _parsed_mnist(run, num_images: int, num_train: int):
    """A part bank and parses of the first `num_images` real MNIST training images of `run`'s dataset,
    split into "train" (the first `num_train`) and "valid" (the rest): seconds of work instead of the
    full parse stage."""
    import dataclasses

    import torch

    from npdraw_core.bank import build_bank
    from npdraw_core.data import canvas_images
    from npdraw_core.parsing import parse_images

    images = canvas_images(run.dataset.load("train").subset(torch.arange(num_images)), run.config.model.canvas_size)
    chosen = run.config.model.part_bank
    engine = run.build("part_bank", chosen)
    bank = build_bank(images, run.grid, engine, dataclasses.replace(chosen.config, num_patches=300))
    parser = run.build("parser", run.config.model.parser, shape=run.model_shape(bank.bank_size))
    indices = parse_images(parser, images, bank, progress=False)
    split = {"train": slice(0, num_train), "valid": slice(num_train, num_images)}
    return bank, {name: {k: v[rows] for k, v in indices.items()} for name, rows in split.items()}


@pytest.fixture(scope="session")
def parsed_mnist():
    """`parsed_mnist(run, num_images, num_train) -> (bank, {"train": ..., "valid": ...})`."""
    return _parsed_mnist
