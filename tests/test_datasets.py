"""The dataset plugins on real data: bundled MNIST always, the ../shared/data copies where present."""

from __future__ import annotations

import argparse
import gzip
import io
import pickle
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from npdraw_core.commands import data as data_command
from npdraw_core.config import ConfigError, parse_component
from npdraw_core.interfaces import Dataset
from npdraw_core.registry import build_registry
from npdraw_plugins.datasets import (
    Celeba,
    CelebaConfig,
    Cifar10,
    Cifar10Config,
    DatasetError,
    Mnist,
    MnistConfig,
    NpzConfig,
    NpzDataset,
    Omniglot,
    OmniglotConfig,
)

# Official MNIST label histograms (shared/data/mnist/README.md).
MNIST_TRAIN_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
MNIST_TEST_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


def idx_bytes(array: np.ndarray) -> bytes:
    header = (0x0800 | array.ndim).to_bytes(4, "big") + b"".join(n.to_bytes(4, "big") for n in array.shape)
    return header + array.astype(np.uint8).tobytes()


def raw_idx(root: Path, name: str) -> np.ndarray:
    """Read an IDX file the way the MNIST README does, independently of the plugin."""
    data = gzip.decompress((root / "MNIST" / "raw" / f"{name}.gz").read_bytes())
    return np.frombuffer(data, np.uint8, offset=16 if "images" in name else 8)


@pytest.fixture(scope="module")
def mnist_test(mnist_dataset):
    return mnist_dataset.load("test")


def write_mnist(folder: Path, images: np.ndarray, labels: np.ndarray, *, gz: bool = True) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for split in ("train", "t10k"):
        for name, array in ((f"{split}-images-idx3-ubyte", images), (f"{split}-labels-idx1-ubyte", labels)):
            data = idx_bytes(array)
            (folder / (f"{name}.gz" if gz else name)).write_bytes(gzip.compress(data) if gz else data)
    return folder


# ---------------------------------------------------------------------------------------------------------
# registry and config


def test_datasets_register_through_the_real_registry(bundled_mnist_root):
    registry = build_registry()
    assert "datasets" not in registry.failed
    assert {"mnist", "omniglot", "cifar10", "celeba", "npz"} <= set(registry.names("dataset"))
    chosen = parse_component(
        "dataset", {"type": "mnist", "root": str(bundled_mnist_root), "classes": [0, 1]}, "data", registry
    )
    dataset = registry.get("dataset", chosen.type).build(chosen.config)
    assert isinstance(dataset, Dataset) and isinstance(dataset, Mnist)
    assert (dataset.binary, dataset.channels, dataset.image_size) == (True, 1, 28)
    with pytest.raises(ConfigError, match="Did you mean .root.. Valid keys"):
        parse_component("dataset", {"type": "mnist", "rot": "data/mnist"}, "data", registry)
    with pytest.raises(ValueError, match="train_fraction"):
        parse_component("dataset", {"type": "mnist", "train_fraction": 1.5}, "data", registry)


# ---------------------------------------------------------------------------------------------------------
# MNIST


def test_bundled_mnist_splits(mnist_dataset, mnist_test, bundled_mnist_root):
    train, valid = mnist_dataset.load("train"), mnist_dataset.load("valid")
    assert [len(train), len(valid), len(mnist_test)] == [59000, 1000, 10000]
    for part in (train, valid, mnist_test):
        assert part.images.dtype == torch.uint8 and part.images.shape[1:] == (1, 28, 28)
        assert part.labels.dtype == torch.int64
    raw_images = raw_idx(bundled_mnist_root, "train-images-idx3-ubyte").reshape(60000, 28, 28)
    raw_labels = raw_idx(bundled_mnist_root, "train-labels-idx1-ubyte")
    assert np.array_equal(valid.images[:, 0].numpy(), raw_images[-1000:])  # valid = the last 1,000
    assert np.array_equal(train.images[:, 0].numpy(), raw_images[:-1000])
    assert np.array_equal(valid.labels.numpy(), raw_labels[-1000:])
    both = torch.cat([train.labels, valid.labels])
    assert torch.bincount(both).tolist() == MNIST_TRAIN_COUNTS
    assert torch.bincount(mnist_test.labels).tolist() == MNIST_TEST_COUNTS
    mean = torch.cat([train.images, valid.images]).double().mean().item() / 255
    assert mean == pytest.approx(0.1306604763, abs=1e-9)


def test_mnist_default_root_is_the_bundled_copy_from_any_directory(tmp_path, monkeypatch, mnist_test):
    monkeypatch.chdir(tmp_path)
    config = MnistConfig(valid_size=100)
    assert Path(config.root).is_absolute()
    assert torch.equal(Mnist(config).load("test").images, mnist_test.images)


def test_celeba_folder_key_follows_the_files(tmp_path):
    """The decoded-image cache is keyed by the folder's file names, sizes and times (a text digest)."""
    from npdraw_plugins.datasets.celeba import Source

    for name in ("000001.jpg", "000002.jpg"):
        Image.new("RGB", (178, 218)).save(tmp_path / name)
    key = Source(tmp_path).key
    assert key.startswith(f"{tmp_path.name}-2-") and len(key.rsplit("-", 1)[1]) == 16
    assert Source(tmp_path).key == key
    Image.new("RGB", (178, 218), "white").save(tmp_path / "000002.jpg", quality=50)
    assert Source(tmp_path).key != key


def test_atomic_savez_writes_a_whole_file_and_no_temp_files(tmp_path):
    from npdraw_plugins.datasets.common import atomic_savez

    images = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    atomic_savez(tmp_path / "cache" / "a.npz", images=images, names=np.array(["x", "y"]))
    with np.load(tmp_path / "cache" / "a.npz", allow_pickle=False) as saved:
        assert np.array_equal(saved["images"], images) and saved["names"].tolist() == ["x", "y"]
    class Unwritable:
        def __array__(self, *args, **kwargs):
            raise ValueError("cannot convert")

    with pytest.raises(ValueError, match="cannot convert"):  # a failed write leaves no file, no temp file
        atomic_savez(tmp_path / "cache" / "b.npz", images=images, bad=Unwritable())
    assert [p.name for p in (tmp_path / "cache").iterdir()] == ["a.npz"]


def test_mnist_reads_raw_files_directly_in_root(tmp_path, mnist_test):
    images, labels = mnist_test.images[:300, 0].numpy(), mnist_test.labels[:300].numpy()
    for gz in (True, False):
        dataset = Mnist(
            MnistConfig(root=str(write_mnist(tmp_path / str(gz), images, labels, gz=gz)), valid_size=100)
        )
        test = dataset.load("test")
        assert np.array_equal(test.images[:, 0].numpy(), images) and np.array_equal(
            test.labels.numpy(), labels
        )
        assert len(dataset.load("train")) == 200


def test_mnist_missing_paths_say_what_was_expected(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"nowhere.*MNIST IDX files.*bundled"):
        Mnist(MnistConfig(root=str(tmp_path / "nowhere")))
    with pytest.raises(FileNotFoundError, match=r"train-images-idx3-ubyte.*MNIST/raw.*bundled"):
        Mnist(MnistConfig(root=str(tmp_path))).load("train")


def test_mnist_malformed_files_name_the_file_and_problem(tmp_path, mnist_test):
    images, labels = mnist_test.images[:20, 0].numpy(), mnist_test.labels[:20].numpy()
    bad_magic = write_mnist(tmp_path / "magic", images, labels, gz=False)
    (bad_magic / "t10k-images-idx3-ubyte").write_bytes(idx_bytes(labels))  # a labels file where images belong
    with pytest.raises(
        DatasetError, match=r"t10k-images-idx3-ubyte: wrong IDX magic number 2049 \(expected 2051"
    ):
        Mnist(MnistConfig(root=str(bad_magic))).load("test")

    truncated_gz = write_mnist(tmp_path / "gz", images, labels)
    path = truncated_gz / "t10k-images-idx3-ubyte.gz"
    path.write_bytes(path.read_bytes()[:-30])
    with pytest.raises(DatasetError, match=r"t10k-images-idx3-ubyte.gz: cannot decompress.*truncated"):
        Mnist(MnistConfig(root=str(truncated_gz))).load("test")

    truncated_raw = write_mnist(tmp_path / "raw", images, labels, gz=False)
    path = truncated_raw / "t10k-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:-28])
    with pytest.raises(DatasetError, match=r"promises shape \(20, 28, 28\).*truncated"):
        Mnist(MnistConfig(root=str(truncated_raw))).load("test")

    mismatch = write_mnist(tmp_path / "count", images, labels)
    (mismatch / "t10k-labels-idx1-ubyte.gz").write_bytes(gzip.compress(idx_bytes(labels[:19])))
    with pytest.raises(DatasetError, match=r"20 images but .*t10k-labels-idx1-ubyte.gz holds 19 labels"):
        Mnist(MnistConfig(root=str(mismatch))).load("test")


def test_class_subset_keeps_test_whole(bundled_mnist_root, mnist_test):
    dataset = Mnist(MnistConfig(root=str(bundled_mnist_root), classes=[0, 1, 2]))
    train, valid = dataset.load("train"), dataset.load("valid")
    assert set(train.labels.unique().tolist()) == set(valid.labels.unique().tolist()) == {0, 1, 2}
    assert len(train) + len(valid) == sum(MNIST_TRAIN_COUNTS[:3]) and len(valid) == 1000
    raw_labels = raw_idx(bundled_mnist_root, "train-labels-idx1-ubyte")
    last_selected = np.flatnonzero(np.isin(raw_labels, [0, 1, 2]))[-1000:]  # valid = the last 1,000 selected
    raw_images = raw_idx(bundled_mnist_root, "train-images-idx3-ubyte").reshape(60000, 28, 28)
    assert np.array_equal(valid.images[:, 0].numpy(), raw_images[last_selected])
    assert torch.equal(dataset.load("test").labels, mnist_test.labels)
    with pytest.raises(DatasetError, match="select no training images"):
        Mnist(MnistConfig(root=str(bundled_mnist_root), classes=[11])).load("train")


def test_train_fraction_is_a_seeded_subset(mnist_dataset, bundled_mnist_root):
    def subset(seed: int):
        dataset = Mnist(MnistConfig(root=str(bundled_mnist_root), train_fraction=0.1, subset_seed=seed))
        dataset.train_arrays = mnist_dataset.train_arrays  # reuse the decoded images (cached_property slot)
        return dataset

    first, again, other = subset(0), subset(0), subset(1)
    train = first.load("train")
    assert (len(train), len(first.load("valid")), len(first.load("test"))) == (5900, 100, 10000)
    assert torch.equal(train.images, again.load("train").images)
    assert not torch.equal(train.labels, other.load("train").labels)
    index = first.split_indices["train"]
    assert np.all(np.diff(index) > 0) and index.max() < 59000  # original order, drawn from train only
    assert np.array_equal(train.images.numpy(), mnist_dataset.train_arrays.images[index])
    assert np.all(first.split_indices["valid"] >= 59000)
    counts = torch.bincount(train.labels, minlength=10).double() / len(train)
    assert torch.allclose(counts, torch.tensor(MNIST_TRAIN_COUNTS).double() / 60000, atol=0.02)


# ---------------------------------------------------------------------------------------------------------
# generic npz


def test_npz_layouts_labels_and_test_split(tmp_path, mnist_test):
    images, labels = mnist_test.images[:1200].numpy(), mnist_test.labels[:1200].numpy()
    for name, stored in (("nhw", images[:, 0]), ("nhwc", images.transpose(0, 2, 3, 1)), ("nchw", images)):
        np.savez(tmp_path / f"{name}.npz", images=stored, labels=labels)
        dataset = NpzDataset(
            NpzConfig(path=str(tmp_path / f"{name}.npz"), test_fraction=0.25, valid_size=100)
        )
        train, valid, test = (dataset.load(split) for split in ("train", "valid", "test"))
        assert (len(train), len(valid), len(test)) == (800, 100, 300)
        assert not dataset.binary and dataset.channels == 1 and dataset.image_size == 28
        together = torch.cat([train.images, valid.images, test.images])
        assert sorted(together.flatten(1).sum(1).tolist()) == sorted(images.reshape(1200, -1).sum(1).tolist())
        assert torch.equal(
            valid.images, torch.from_numpy(images[np.setdiff1d(np.arange(1200), dataset.test_index)][-100:])
        )

    np.savez(
        tmp_path / "own_test.npz", images=images[:1100], test_images=images[1100:], test_labels=labels[1100:]
    )
    dataset = NpzDataset(NpzConfig(path=str(tmp_path / "own_test.npz"), binary=True, valid_size=100))
    assert dataset.binary and dataset.load("train").labels is None
    assert torch.equal(dataset.load("test").labels, torch.from_numpy(labels[1100:]))
    np.savez(tmp_path / "test_file.npz", images=images[:50], labels=labels[:50])
    dataset = NpzDataset(NpzConfig(path=str(tmp_path / "nhw.npz"), test_path=str(tmp_path / "test_file.npz")))
    assert len(dataset.load("test")) == 50 and len(dataset.load("train")) == 200


def test_npz_errors_name_the_file_and_problem(tmp_path, mnist_test):
    images, labels = mnist_test.images[:1200, 0].numpy(), mnist_test.labels[:1200].numpy()
    cases = {
        "no_images.npz": ({"pictures": images}, r"no_images.npz: missing key\(s\) images; it holds pictures"),
        "floats.npz": ({"images": images / 255.0}, r"floats.npz \[images\]: images must be uint8.*float64"),
        "labels.npz": ({"images": images, "labels": labels[:-1]}, r"1200 images but 1199 labels"),
        "shape.npz": ({"images": images.reshape(1200, 14, 56)}, r"expected square images"),
    }
    for name, (arrays, message) in cases.items():
        np.savez(tmp_path / name, **arrays)
        with pytest.raises(DatasetError, match=message):
            NpzDataset(NpzConfig(path=str(tmp_path / name))).load("train")
    np.savez(tmp_path / "fine.npz", images=images)
    with pytest.raises(DatasetError, match="neither test_path nor test_fraction"):
        NpzDataset(NpzConfig(path=str(tmp_path / "fine.npz"))).load("test")
    with pytest.raises(FileNotFoundError, match=r"absent.npz does not exist.*expected an .npz file"):
        NpzDataset(NpzConfig(path=str(tmp_path / "absent.npz")))
    with pytest.raises(DatasetError, match="too few to hold out valid_size=1000"):
        NpzDataset(NpzConfig(path=str(tmp_path / "fine.npz"), test_fraction=0.5)).load("valid")


# ---------------------------------------------------------------------------------------------------------
# Omniglot, CIFAR-10, CelebA (../shared/data)


@pytest.mark.shared_data
def test_omniglot_npz(shared_data_dir):
    dataset = Omniglot(OmniglotConfig(root=str(shared_data_dir / "omniglot")))
    train, valid, test = (dataset.load(split) for split in ("train", "valid", "test"))
    assert (len(train), len(valid), len(test)) == (23345, 1000, 8115)
    assert dataset.binary and (dataset.channels, dataset.image_size) == (1, 28)
    assert set(train.extras) == {"alphabet", "character", "drawer"}
    assert torch.equal(train.labels, train.extras["character"] - 1) and test.labels.unique().numel() == 1623
    assert train.extras["drawer"].max() == 15 and test.extras["drawer"].min() == 16
    ink = train.images.double().mean().item() / 255
    assert 0.05 < ink < 0.12  # bright ink on a dark background, like MNIST
    assert train.images[:, :, 0, :].double().mean() < 0.02 * 255  # the top row is background
    subset = Omniglot(
        OmniglotConfig(root=str(shared_data_dir / "omniglot"), alphabets=[0, 1], valid_size=100)
    )
    assert (
        set(subset.load("valid").extras["alphabet"].tolist()) <= {0, 1} and len(subset.load("test")) == 8115
    )
    assert dataset.alphabet_names[0] == "Arcadian" and len(dataset.alphabet_names) == 50


@pytest.mark.shared_data
def test_omniglot_folder_layout_matches_the_npz(shared_data_dir, tmp_path):
    with np.load(shared_data_dir / "omniglot" / "omniglot_28x28.npz") as archive:
        reference = {key: archive[key] for key in archive.files}
    with np.load(shared_data_dir / "omniglot" / "images_evaluation.npz") as originals:
        originals = originals["images"]  # bool (659, 20, 105, 105), True = white paper
    char_ids = [965, 966, 1000]
    for char_id in char_ids:
        alphabet = reference["alphabet_names"][reference["alphabet"][reference["char_id"] == char_id][0]]
        folder = tmp_path / "omniglot-py" / "images_evaluation" / alphabet / f"character{char_id}"
        folder.mkdir(parents=True)
        for drawer in range(1, 21):
            Image.fromarray(originals[char_id - 965, drawer - 1]).save(
                folder / f"{char_id:04d}_{drawer:02d}.png"
            )
    dataset = Omniglot(OmniglotConfig(root=str(tmp_path), valid_size=5))
    loaded = torch.cat(
        [dataset.load("train").images, dataset.load("valid").images, dataset.load("test").images]
    )
    rows = np.isin(reference["char_id"], char_ids)
    expected = reference["images"][rows][np.argsort(reference["split"][rows], kind="stable")]
    assert np.array_equal(loaded[:, 0].numpy(), expected)
    assert dataset.load("test").extras["character"].tolist() == [c for c in char_ids for _ in range(5)]

    inverted = tmp_path / "inverted" / "images_background" / "Latin" / "character01"
    inverted.mkdir(parents=True)
    for drawer in range(1, 21):
        Image.fromarray(~originals[0, drawer - 1]).save(inverted / f"0001_{drawer:02d}.png")
    with pytest.raises(DatasetError, match="look inverted"):
        Omniglot(OmniglotConfig(root=str(tmp_path / "inverted"))).load("test")


@pytest.mark.shared_data
def test_cifar10_npz_test_split(shared_data_dir):
    dataset = Cifar10(Cifar10Config(root=str(shared_data_dir / "cifar10")))
    test = dataset.load("test")  # the npz is read per key: the 40,000 training images stay compressed
    assert test.images.shape == (1000, 3, 32, 32) and test.labels[:10].tolist() == [
        3,
        8,
        8,
        0,
        6,
        6,
        1,
        6,
        3,
        1,
    ]
    with np.load(shared_data_dir / "cifar10" / "cifar10_subset.npz") as archive:
        assert np.array_equal(test.images.numpy(), archive["test_images"].transpose(0, 3, 1, 2))
    assert not dataset.binary


@pytest.mark.shared_data
def test_cifar10_python_batches(shared_data_dir, tmp_path):
    with np.load(shared_data_dir / "cifar10" / "cifar10_subset.npz") as archive:
        images, labels = archive["test_images"][:240].transpose(0, 3, 1, 2), archive["test_labels"][:240]
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for i, name in enumerate(names):  # the official layout: {b"data": (N, 3072) uint8, b"labels": list}
        part = slice(40 * i, 40 * (i + 1))
        batch = {
            b"data": images[part].reshape(40, -1),
            b"labels": labels[part].tolist(),
            b"batch_label": name.encode(),
        }
        (folder / name).write_bytes(pickle.dumps(batch, protocol=2))
    dataset = Cifar10(Cifar10Config(root=str(tmp_path), valid_size=50))
    train, valid, test = (dataset.load(split) for split in ("train", "valid", "test"))
    assert np.array_equal(torch.cat([train.images, valid.images]).numpy(), images[:200])
    assert np.array_equal(test.images.numpy(), images[200:]) and test.labels.tolist() == labels[200:].tolist()

    (folder / "test_batch").write_bytes(
        pickle.dumps({b"data": shutil.rmtree}, protocol=2)
    )  # not numpy: refused
    with pytest.raises(DatasetError, match=r"refusing to unpickle shutil.rmtree"):
        Cifar10(Cifar10Config(root=str(tmp_path))).load("test")
    (folder / "data_batch_3").unlink()
    with pytest.raises(FileNotFoundError, match="missing data_batch_3"):
        Cifar10(Cifar10Config(root=str(tmp_path))).load("train")


@pytest.fixture(scope="module")
def small_celeba_zip(tmp_path_factory, shared_data_dir):
    """Nine real members of the shared zip: three from each official partition."""
    source = shared_data_dir / "celeba" / "img_align_celeba_subset6000.zip"
    path = tmp_path_factory.mktemp("celeba") / "small.zip"
    with zipfile.ZipFile(source) as archive:
        names = archive.namelist()
        numbers = np.array([int(Path(n).stem) for n in names])
        chosen = [names[i] for part in (numbers <= 162770, (numbers > 162770) & (numbers <= 182637), numbers > 182637)
                  for i in np.flatnonzero(part)[:3]]  # fmt: skip
        with zipfile.ZipFile(path, "w") as small:
            for name in chosen:
                small.writestr(name, archive.read(name))
    return path, chosen


@pytest.mark.shared_data
def test_celeba_crop_resize_partition_and_cache(small_celeba_zip, tmp_path, monkeypatch):
    from torchvision import transforms

    path, names = small_celeba_zip
    dataset = Celeba(CelebaConfig(root=str(path), cache_dir=str(tmp_path / "cache")))
    train, valid, test = (dataset.load(split) for split in ("train", "valid", "test"))
    assert (len(train), len(valid), len(test)) == (3, 3, 3) and train.labels is None
    assert train.images.shape == (3, 3, 64, 64) and not dataset.binary and dataset.image_size == 64
    assert test.extras["image_number"].tolist() == [int(Path(n).stem) for n in names[6:]]
    reference = transforms.Compose(
        [transforms.CenterCrop(148), transforms.Resize(64)]
    )  # NP-DRAW's preprocessing
    with zipfile.ZipFile(path) as archive, Image.open(io.BytesIO(archive.read(names[4]))) as image:
        expected = np.asarray(reference(image.convert("RGB"))).transpose(2, 0, 1)
    assert np.array_equal(valid.images[1].numpy(), expected)

    assert len(list((tmp_path / "cache").glob("small-*-crop148-size64.npz"))) == 1
    monkeypatch.setattr(
        "npdraw_plugins.datasets.celeba.Source.decode_all", lambda *a: pytest.fail("cache not used")
    )
    again = Celeba(CelebaConfig(root=str(path), cache_dir=str(tmp_path / "cache")))
    assert torch.equal(again.load("valid").images, valid.images)
    monkeypatch.undo()

    folder = tmp_path / "folder"
    zipfile.ZipFile(path).extractall(folder)
    from_folder = Celeba(CelebaConfig(root=str(folder), cache_dir=None, train_fraction=0.5))
    assert len(from_folder.load("train")) == 2 and torch.equal(from_folder.load("test").images, test.images)


@pytest.mark.shared_data
def test_celeba_partition_agrees_with_the_index(shared_data_dir):
    import csv

    from npdraw_plugins.datasets.celeba import partition

    with open(shared_data_dir / "celeba" / "index.csv", newline="") as file:
        rows = list(csv.DictReader(file))
    computed = partition([f"img_align_celeba/{row['image_id']}" for row in rows])
    assert computed.tolist() == [int(row["celeba_partition"]) for row in rows]
    assert np.bincount(computed).tolist() == [4560, 780, 660]


# ---------------------------------------------------------------------------------------------------------
# npdraw data


def run_data(*argv: str) -> None:
    parser = argparse.ArgumentParser(prog="npdraw")
    data_command.register(parser.add_subparsers(required=True))
    args = parser.parse_args(["data", *argv])
    args.handler(args)


def test_data_inspect_prints_each_split(tmp_path, capsys, bundled_mnist_root):
    config = tmp_path / "run.yaml"
    config.write_text(f"data:\n  type: mnist\n  root: {bundled_mnist_root}\n")
    run_data("inspect", str(config), "--set", "data.classes=[3]", "--set", "data.valid_size=31")
    out = capsys.readouterr().out
    assert "dataset mnist: channels=1 image_size=28 binary=True" in out
    assert "train:   6,100 images  (1, 28, 28) uint8" in out and "labels 3:6100" in out
    assert "valid:      31 images" in out and "test:  10,000 images" in out and "labels 0:980 1:1135" in out


def test_data_import_folder_round_trips_through_npz(tmp_path, mnist_test, capsys):
    images, labels = mnist_test.images[:30, 0].numpy(), mnist_test.labels[:30].numpy()
    for i, (image, label) in enumerate(zip(images, labels, strict=True)):
        (tmp_path / "digits" / f"digit_{label}").mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(tmp_path / "digits" / f"digit_{label}" / f"{i:03d}.png")
    run_data("import", str(tmp_path / "digits"), "--to", str(tmp_path / "digits.npz"))
    assert "wrote" in capsys.readouterr().out
    dataset = NpzDataset(NpzConfig(path=str(tmp_path / "digits.npz"), valid_size=5, test_fraction=0.2))
    loaded = torch.cat(
        [dataset.load("train").images, dataset.load("valid").images, dataset.load("test").images]
    )
    assert sorted(loaded.flatten(1).sum(1).tolist()) == sorted(images.reshape(30, -1).sum(1).tolist())
    with np.load(tmp_path / "digits.npz") as archive:
        class_names = list(archive["class_names"])
        assert [class_names[k] for k in archive["labels"]] == [f"digit_{label}" for label in sorted(labels)]

    run_data(
        "import", str(tmp_path / "digits"), "--to", str(tmp_path / "small.npz"), "--size", "14", "--invert"
    )
    with np.load(tmp_path / "small.npz") as archive:
        assert (
            archive["images"].shape == (30, 1, 14, 14) and archive["images"].mean() > 200
        )  # inverted background
    (tmp_path / "digits" / "stray.png").write_bytes(
        (tmp_path / "digits" / f"digit_{labels[0]}" / "000.png").read_bytes()
    )
    with pytest.raises(ValueError, match="both images and class sub-folders"):
        run_data("import", str(tmp_path / "digits"), "--to", str(tmp_path / "bad.npz"))


def test_data_import_from_a_config_keeps_the_splits(tmp_path, mnist_test):
    np.savez(
        tmp_path / "source.npz",
        images=mnist_test.images[:400].numpy(),
        labels=mnist_test.labels[:400].numpy(),
    )
    config = tmp_path / "run.yaml"
    config.write_text(
        f"data:\n  type: npz\n  path: {tmp_path / 'source.npz'}\n  test_fraction: 0.25\n  valid_size: 20\n"
    )
    run_data("import", str(config), "--to", str(tmp_path / "copy.npz"), "--set", "data.classes=[1, 7]")
    source = NpzDataset(
        NpzConfig(path=str(tmp_path / "source.npz"), test_fraction=0.25, classes=[1, 7], valid_size=20)
    )
    copy = NpzDataset(NpzConfig(path=str(tmp_path / "copy.npz"), valid_size=20))
    for split in ("valid", "test"):  # valid is still the last images, test the whole held-out test split
        assert torch.equal(copy.load(split).images, source.load(split).images)
        assert torch.equal(copy.load(split).labels, source.load(split).labels)
    assert set(copy.load("train").labels.tolist()) == {1, 7} and len(copy.load("test")) == 100
