"""Low-data splits (`data.split`, npdraw_core.splits) on the real MNIST and Omniglot: what each split keeps,
its sizes, seeded reproducibility, disjointness from the whole test split, `npdraw data inspect`, and the
part bank computed from the split's images only (the parses' and prior's cache keys follow the bank's)."""

from __future__ import annotations

import dataclasses
import hashlib

import pytest
import torch

from npdraw_core.cli import main
from npdraw_core.config import ConfigError, SplitConfig, config_hash, load_config
from npdraw_core.data import canvas_images
from npdraw_core.pipeline import bank_key, bank_stage, parses_key, prior_key
from npdraw_core.registry import default_registry
from npdraw_core.run import Run
from npdraw_core.splits import SplitDataset, SplitError, apply_split, build_dataset, describe

TINY = "configs/tiny.yaml"


def digests(image_set) -> set[str]:
    return {hashlib.sha1(image.numpy().tobytes()).hexdigest() for image in image_set.images}


def drawings(image_set) -> set[tuple[int, int]]:
    """Omniglot's identity of an image: (character, drawer). Pixels cannot tell: a few small characters
    drawn alike give identical 28×28 images in train and test."""
    return set(zip(image_set.extras["character"].tolist(), image_set.extras["drawer"].tolist(), strict=True))


@pytest.fixture(scope="module")
def mnist_parts(mnist_dataset):
    return {split: mnist_dataset.load(split) for split in ("train", "valid", "test")}


@pytest.fixture(scope="module")
def omniglot(shared_data_dir):
    data = load_config({"data": {"type": "omniglot", "root": str(shared_data_dir / "omniglot")}}).data
    dataset = build_dataset(data, default_registry())
    return dataset, {split: dataset.load(split) for split in ("train", "valid", "test")}


def split_of(parts, **options) -> object:
    return apply_split(parts["train"], parts["valid"], SplitConfig(**options))


@pytest.mark.parametrize("fraction", [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8])
def test_digits_keep_the_first_round_10f_digits_and_all_their_images(mnist_parts, fraction):
    selection = split_of(mnist_parts, type="digits", fraction=fraction)
    digits = list(range(round(10 * fraction)))
    assert selection.kept == digits and selection.available == 10
    pool_labels = torch.cat([mnist_parts["train"].labels, mnist_parts["valid"].labels])
    expected = int(torch.isin(pool_labels, torch.tensor(digits)).sum())
    assert len(selection.train) + len(selection.valid) == expected  # every image of the kept digits
    assert len(selection.valid) == round(expected / 60)  # the plugin's share: 1,000 of 60,000
    for part in (selection.train, selection.valid):
        assert sorted(torch.unique(part.labels).tolist()) == digits


def test_digits_split_through_the_config_tests_on_all_ten_disjoint_from_train(mnist_parts):
    config = load_config(TINY, ["data.split={type: digits, fraction: 0.3, seed: 5}"])
    dataset = build_dataset(config.data, default_registry())
    assert isinstance(dataset, SplitDataset) and dataset.binary and dataset.image_size == 28
    test = dataset.load("test")
    assert torch.equal(test.images, mnist_parts["test"].images)  # test is the plugin's, whole
    assert sorted(torch.unique(test.labels).tolist()) == list(range(10))
    train, valid = dataset.load("train"), dataset.load("valid")
    assert set(torch.unique(train.labels).tolist()) == {0, 1, 2}
    assert not digests(train) & digests(test) and not digests(valid) & digests(test)
    assert not digests(train) & digests(valid)
    info = describe(dataset)
    assert info["kept"] == [0, 1, 2] and info["test"] == 10000 and info["seed"] == 5
    assert info["test_seen"] == int(torch.isin(test.labels, torch.tensor([0, 1, 2])).sum())
    assert describe(build_dataset(load_config(TINY).data, default_registry())) is None


def test_samples_are_a_seeded_fraction_of_the_images(mnist_parts):
    first = split_of(mnist_parts, type="samples", fraction=0.05, seed=1)
    again = split_of(mnist_parts, type="samples", fraction=0.05, seed=1)
    other = split_of(mnist_parts, type="samples", fraction=0.05, seed=2)
    assert len(first.train) + len(first.valid) == round(0.05 * 60000) and len(first.valid) == 50
    assert torch.equal(first.train.images, again.train.images) and torch.equal(first.valid.images, again.valid.images)
    assert not torch.equal(first.train.images, other.train.images)
    pool = digests(mnist_parts["train"]) | digests(mnist_parts["valid"])
    kept = digests(first.train) | digests(first.valid)
    assert len(kept) == 3000 and kept <= pool and not kept & digests(mnist_parts["test"])
    assert len(torch.unique(first.train.labels)) == 10  # a random fraction keeps every digit


def test_omniglot_characters_split(omniglot):
    dataset, parts = omniglot
    selection = split_of(parts, type="characters", fraction=0.1, seed=0)
    assert selection.available == 1623 and len(selection.kept) == 162  # round(0.1 × 1623)
    train, valid = selection.train, selection.valid
    assert len(train) + len(valid) == 162 * 15  # drawers 1..15 of every kept character
    kept = torch.tensor(selection.kept)
    for part in (train, valid):
        assert torch.isin(part.labels, kept).all()
        assert torch.equal(part.extras["character"], part.labels + 1)
        assert int(part.extras["drawer"].max()) <= 15
    assert int(parts["test"].extras["drawer"].min()) >= 16 and len(parts["test"]) == 8115
    assert not drawings(train) & drawings(parts["test"]) and not drawings(train) & drawings(valid)
    assert split_of(parts, type="characters", fraction=0.1, seed=0).kept == selection.kept
    other = split_of(parts, type="characters", fraction=0.1, seed=1).kept
    assert other != selection.kept and len(other) == 162


def test_omniglot_alphabets_split(omniglot):
    dataset, parts = omniglot
    selection = split_of(parts, type="alphabets", fraction=0.2, seed=3)
    assert selection.unit == "alphabet" and selection.available == 50 and len(selection.kept) == 10
    pool_alphabets = torch.cat([parts["train"].extras["alphabet"], parts["valid"].extras["alphabet"]])
    expected = int(torch.isin(pool_alphabets, torch.tensor(selection.kept)).sum())
    assert len(selection.train) + len(selection.valid) == expected
    for part in (selection.train, selection.valid):
        assert set(torch.unique(part.extras["alphabet"]).tolist()) <= set(selection.kept)
    assert set(torch.unique(selection.train.extras["alphabet"]).tolist()) == set(selection.kept)
    assert split_of(parts, type="alphabets", fraction=0.2, seed=3).kept == selection.kept
    assert split_of(parts, type="alphabets", fraction=0.2, seed=4).kept != selection.kept
    assert not drawings(selection.train) & drawings(parts["test"])


def test_splits_that_cannot_apply_say_why(mnist_parts):
    with pytest.raises(SplitError, match="alphabet"):
        split_of(mnist_parts, type="alphabets", fraction=0.5)
    no_labels = {name: type(part)(part.images[:50]) for name, part in mnist_parts.items()}
    with pytest.raises(SplitError, match="no labels: use samples"):
        split_of(no_labels, type="digits", fraction=0.5)
    with pytest.raises(SplitError, match="raise data.split.fraction"):
        split_of(no_labels, type="samples", fraction=0.01)  # 1 of 100 images
    for override, message in [
        ("data.split={type: digit, fraction: 0.2}", "'data.split.type' must be one of"),
        ("data.split={type: digits, fraction: 1.5}", r"data.split.fraction must be in \(0, 1\]"),
        ("data.split={type: digits}", "missing required key 'data.split.fraction'"),
    ]:
        with pytest.raises(ConfigError, match=message):
            load_config(TINY, [override])


def test_split_in_cache_keys_and_kept_across_a_dataset_type_override():
    plain = load_config(TINY)
    split = load_config(TINY, ["data.split={type: digits, fraction: 0.2}"])
    # without a split the data section hashes as the plain component did: earlier runs keep their cache
    assert config_hash(plain.data) == config_hash({"type": plain.data.type, **dataclasses.asdict(plain.data.config)})
    assert "split" not in plain.to_dict()["data"] and split.to_dict()["data"]["split"]["type"] == "digits"
    for key in (bank_key, parses_key, prior_key):
        assert key(plain) != key(split)
    assert load_config(split.to_dict()) == split  # the resolved config round-trips
    swapped = load_config(TINY, ["data.split={type: alphabets, fraction: 0.2}", "data.type=omniglot"])
    assert swapped.data.type == "omniglot" and swapped.data.split.type == "alphabets"


def test_bank_of_digits_0_and_1_comes_from_those_images_only(tmp_path):
    overrides = ["data.split={type: digits, fraction: 0.2}", f"output_dir={tmp_path}"]
    run = Run(load_config(TINY, overrides), device="cpu")
    bank = bank_stage(run)
    train = run.dataset.load("train")
    assert set(torch.unique(train.labels).tolist()) == {0, 1}
    # the bank is the engine's choice among patches of the digit-0/1 images: rebuilding it from them matches
    from npdraw_core.bank import build_bank

    chosen = run.config.model.part_bank
    images = canvas_images(train, run.config.model.canvas_size)
    rebuilt = build_bank(images, run.grid, run.build("part_bank", chosen), chosen.config)
    assert torch.equal(bank.exemplars, rebuilt.exemplars)
    # and every exemplar is a K×K window of one of those images (zero-padded, as the bank samples them)
    exemplars = bank.exemplars.flatten(1)
    found = torch.zeros(len(exemplars), dtype=torch.bool)
    for chunk in images.split(2000):
        windows = torch.nn.functional.unfold(run.grid.pad(chunk), run.config.model.patch_size)
        windows = windows.transpose(1, 2).flatten(0, 1)
        sums = windows.sum(1)
        for i, exemplar in enumerate(exemplars):  # equal sums first: few windows to compare whole
            candidates = windows[(sums - exemplar.sum()).abs() < 1e-4]
            found[i] |= bool((candidates == exemplar).all(1).any())
    assert found.all()
    assert bank_key(load_config(TINY)) != bank_key(run.config)


def test_data_inspect_shows_what_the_split_holds(capsys):
    assert main(["data", "inspect", TINY, "--set", "data.split={type: digits, fraction: 0.3, seed: 0}"]) == 0
    out = capsys.readouterr().out
    assert "split digits: fraction 0.3, seed 0" in out and "keeps 3 of 10 labels: 0, 1, 2" in out
    # 5,923 + 6,742 + 5,958 training images of 0, 1 and 2, valid in the plugin's share (1/60)
    assert "train 18,313 + valid 310" in out and "test 10,000" in out
    assert "labels 0:980 1:1135 2:1032 3:1010" in out  # test: all ten digits
