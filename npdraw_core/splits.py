"""Low-data splits (the paper's §4.2) for any dataset plugin: a wrapper around the plugin's ImageSets.

`data.split: {type, fraction, seed}` keeps part of the training images and never touches the test split:

    digits      the first round(fraction × C) labels in label order (MNIST: fraction 0.3 → digits {0, 1, 2})
    characters  a seeded random round(fraction × C) of the labels (Omniglot's labels are its characters)
    alphabets   a seeded random round(fraction × A) of the `alphabet` extra (Omniglot's 50 alphabets)
    samples     a seeded random round(fraction × N) of the images

C, A and N are counted over the plugin's train and valid splits together (the pool, in the plugin's order:
train then valid). Valid is then cut from the end of what is kept, in the plugin's proportion
(len(valid) / len(pool); MNIST: 1/60). Selecting before holding out keeps valid from the kept classes:
a valid split cut first holds only the last classes of an ordered dataset such as Omniglot.

Everything downstream (part bank, parses, prior, VAE) reads `Run.dataset`, which is this wrapper when a
split is set; `data.split` is part of the data section that the stage cache keys hash, so the bank and the
parses of a split are computed from its images only.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Any

import torch

from npdraw_core.config import DataConfig, SplitConfig
from npdraw_core.interfaces import Dataset, ImageSet
from npdraw_core.registry import Registry


class SplitError(ValueError):
    """A split cannot be applied to this dataset (no labels, no alphabets, too few images)."""


@dataclass(frozen=True)
class Selection:
    """What a split keeps: the units it selected by (labels or alphabets; None for samples) and the
    resulting train and valid ImageSets."""

    unit: str  # "label", "alphabet" or "image"
    kept: list[int] | None  # the labels / alphabets kept (sorted); None for samples
    available: int  # how many labels / alphabets / images the pool has
    pool_size: int  # images in the plugin's train + valid
    train: ImageSet
    valid: ImageSet


def kept_count(fraction: float, available: int) -> int:
    """round(fraction × available), at least 1: a split always keeps something."""
    return max(1, min(available, round(fraction * available)))


def concatenate(first: ImageSet, second: ImageSet) -> ImageSet:
    labels = None
    if first.labels is not None and second.labels is not None:
        labels = torch.cat([first.labels, second.labels])
    extras = {name: torch.cat([first.extras[name], second.extras[name]]) for name in first.extras if name in second.extras}
    return ImageSet(torch.cat([first.images, second.images]), labels, extras)


def select(pool: ImageSet, split: SplitConfig) -> tuple[str, list[int] | None, int, torch.Tensor]:
    """(unit, kept values, available count, kept image indices into `pool` in pool order)."""
    generator = torch.Generator().manual_seed(split.seed)
    if split.type == "samples":
        count = kept_count(split.fraction, len(pool))
        return "image", None, len(pool), torch.randperm(len(pool), generator=generator)[:count].sort().values
    if split.type == "alphabets":
        if "alphabet" not in pool.extras:
            raise SplitError(
                f"data.split.type=alphabets needs the dataset to give each image an 'alphabet' (Omniglot does); "
                f"this one gives {sorted(pool.extras) or 'no extras'}: use digits, characters or samples"
            )
        values, unit = pool.extras["alphabet"], "alphabet"
    else:
        if pool.labels is None:
            raise SplitError(
                f"data.split.type={split.type} selects by label, and this dataset has no labels: use samples"
            )
        values, unit = pool.labels, "label"
    available = torch.unique(values)  # sorted
    count = kept_count(split.fraction, len(available))
    if split.type == "digits":
        kept = available[:count]
    else:
        kept = available[torch.randperm(len(available), generator=generator)[:count]].sort().values
    return unit, kept.tolist(), len(available), torch.nonzero(torch.isin(values, kept)).flatten()


def apply_split(train: ImageSet, valid: ImageSet, split: SplitConfig) -> Selection:
    """The split of the plugin's train and valid ImageSets (see the module docstring)."""
    pool = concatenate(train, valid)
    unit, kept, available, index = select(pool, split)
    if len(index) < 2:
        raise SplitError(
            f"data.split {split.type} with fraction {split.fraction} keeps {len(index)} image(s); train and "
            "valid need at least one each: raise data.split.fraction"
        )
    valid_count = min(len(index) - 1, max(1, round(len(index) * len(valid) / len(pool))))
    cut = len(index) - valid_count
    return Selection(unit, kept, available, len(pool), pool.subset(index[:cut]), pool.subset(index[cut:]))


class SplitDataset:
    """A dataset plugin's dataset with a low-data split on its train and valid splits; test is the
    plugin's own. Everything else (binary, channels, image_size, names) is the plugin's."""

    def __init__(self, dataset: Dataset, split: SplitConfig):
        self.dataset = dataset
        self.split = split

    def __getattr__(self, name: str) -> Any:  # binary, channels, image_size, alphabet_names, ...
        if name in ("dataset", "split"):  # not set yet (e.g. while unpickling): no recursion
            raise AttributeError(name)
        return getattr(self.dataset, name)

    @cached_property
    def selection(self) -> Selection:
        return apply_split(self.dataset.load("train"), self.dataset.load("valid"), self.split)

    def load(self, split: str) -> ImageSet:
        if split == "train":
            return self.selection.train
        if split == "valid":
            return self.selection.valid
        return self.dataset.load(split)  # test, or the plugin's message for an unknown split


def build_dataset(data: DataConfig, registry: Registry) -> Dataset:
    """The dataset a `data:` section describes: the plugin's, wrapped in its split when one is set. The one
    place runs and commands build a run's dataset."""
    dataset = registry.get("dataset", data.type).build(data.config)
    return dataset if data.split is None else SplitDataset(dataset, data.split)


def describe(dataset: Dataset) -> dict[str, Any] | None:
    """What a split holds, for `npdraw data inspect` and the experiment tables (None without a split)."""
    if not isinstance(dataset, SplitDataset):
        return None
    selection, split = dataset.selection, dataset.split
    test = dataset.load("test")
    info: dict[str, Any] = {
        "type": split.type, "fraction": split.fraction, "seed": split.seed, "unit": selection.unit,
        "kept": selection.kept, "available": selection.available, "pool": selection.pool_size,
        "train": len(selection.train), "valid": len(selection.valid), "test": len(test),
    }  # fmt: skip
    names = getattr(dataset.dataset, "alphabet_names", None)
    if selection.unit == "alphabet" and names:
        info["kept_names"] = [names[value] for value in selection.kept if 0 <= value < len(names)]
    if selection.unit != "image":
        values = test.extras.get("alphabet") if selection.unit == "alphabet" else test.labels
        if values is not None:  # test is whole: how many of its images the training split has seen units of
            info["test_seen"] = int(torch.isin(values, torch.tensor(selection.kept)).sum())
    return info
