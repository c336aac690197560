"""CelebA 64×64 from the aligned & cropped `img_align_celeba` JPEGs, in a zip (members
`img_align_celeba/NNNNNN.jpg`, as ../shared/data/celeba/img_align_celeba_subset6000.zip) or a folder.

Preprocessing (NP-DRAW / RealNVP): centre-crop 148×148 (box (15, 35, 163, 183) of the 178×218 originals, as
torchvision's CenterCrop), then resize to 64×64 with PIL's bilinear filter (antialiased when shrinking, as
torchvision's Resize on PIL images). Decoding is slow (~2 ms an image), so the decoded uint8 array is cached
as an .npz in `cache_dir`, keyed by the source's size and modification time and by the preprocessing.

Splits: the official CelebA partition (list_eval_partition.txt), which is defined by image number:
1..162,770 train, 162,771..182,637 valid, the rest test (for the shared 6,000-image subset: 4,560 / 780 / 660,
the `celeba_partition` column of its index.csv). Files not named by a number get a deterministic split instead:
sorted by name, the last 10% are test and the 10% before them valid.
"""

from __future__ import annotations

import io
import sys
import zipfile
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from npdraw_core.config import check_at_least, path_field
from npdraw_core.digests import text_digest
from npdraw_plugins.datasets.common import (
    ArrayDataset,
    Arrays,
    DatasetError,
    SubsetOptions,
    atomic_savez,
    existing,
)

SUFFIXES = (".jpg", ".jpeg", ".png")
LAST_TRAIN, LAST_VALID = 162770, 182637  # the official partition's last image numbers of train and valid
FALLBACK_FRACTION = 0.1  # valid and test fractions for files without official numbers


@dataclass(kw_only=True)
class CelebaConfig(SubsetOptions):
    # a zip of img_align_celeba JPEGs, a folder of them, or a folder holding either
    root: str = path_field("../shared/data/celeba")
    crop_size: int = 148
    image_size: int = 64
    cache_dir: str | None = path_field("~/.cache/npdraw/celeba")  # None: decode on every load

    def __post_init__(self) -> None:
        super().__post_init__()
        check_at_least(self, 1, "image_size")
        if self.crop_size < self.image_size:
            raise ValueError(f"crop_size ({self.crop_size}) must be at least image_size ({self.image_size})")


class Source:
    """The JPEGs of a zip or a folder: their names (sorted), bytes, and a key that changes when they do."""

    def __init__(self, root: Path):
        self.zip_path: Path | None = None
        self.folder: Path | None = None
        if root.is_dir():
            zips = sorted(root.glob("*.zip"))
            images = [p for p in sorted(root.rglob("*")) if p.suffix.lower() in SUFFIXES]
            if images:
                self.folder, self.names = root, [str(p.relative_to(root)) for p in images]
            elif len(zips) == 1:
                root = zips[0]
            else:
                found = f"{len(zips)} zip files" if zips else "no images and no zip"
                raise FileNotFoundError(
                    f"{root}: found {found}; expected img_align_celeba JPEGs in the folder or one zip of them "
                    "(a 6,000-image zip is in ../shared/data/celeba)"
                )
        if root.is_file():
            try:
                with zipfile.ZipFile(root) as archive:
                    members = archive.namelist()
            except zipfile.BadZipFile as error:
                raise DatasetError(f"{root}: not a readable zip file ({error})") from error
            self.zip_path, self.names = root, sorted(n for n in members if n.lower().endswith(SUFFIXES))
            if not self.names:
                raise DatasetError(
                    f"{root}: the zip holds no .jpg/.png members (expected img_align_celeba/NNNNNN.jpg)"
                )

    @cached_property
    def key(self) -> str:
        if self.zip_path is not None:
            stat = self.zip_path.stat()
            return f"{self.zip_path.stem}-{stat.st_size}-{stat.st_mtime_ns}"
        stats = ((name, (self.folder / name).stat()) for name in self.names)
        digest = text_digest(f"{name}:{stat.st_size}:{stat.st_mtime_ns}" for name, stat in stats)
        return f"{self.folder.name}-{len(self.names)}-{digest}"

    def describe(self) -> str:
        return str(self.zip_path or self.folder)

    def decode_all(self, crop_size: int, image_size: int) -> np.ndarray:
        images = np.empty((len(self.names), 3, image_size, image_size), dtype=np.uint8)
        archive = zipfile.ZipFile(self.zip_path) if self.zip_path is not None else None
        try:
            for i, name in enumerate(tqdm(self.names, desc="decoding CelebA", unit="img", file=sys.stderr)):
                data = archive.read(name) if archive is not None else (self.folder / name).read_bytes()
                images[i] = preprocess(data, crop_size, image_size, name).transpose(2, 0, 1)
        finally:
            if archive is not None:
                archive.close()
        return images


def preprocess(data: bytes, crop_size: int, image_size: int, name: str = "image") -> np.ndarray:
    """Encoded image bytes → uint8 (image_size, image_size, 3): centre crop, then bilinear resize."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            image = image.convert("RGB")
    except (OSError, SyntaxError, Image.DecompressionBombError) as error:
        raise DatasetError(f"{name}: cannot decode the image ({error})") from error
    width, height = image.size
    if width < crop_size or height < crop_size:
        raise DatasetError(f"{name}: {width}×{height} is smaller than crop_size {crop_size}")
    left, top = round((width - crop_size) / 2), round((height - crop_size) / 2)  # as torchvision CenterCrop
    cropped = image.crop((left, top, left + crop_size, top + crop_size))
    return np.asarray(cropped.resize((image_size, image_size), Image.Resampling.BILINEAR))


def partition(names: list[str]) -> np.ndarray:
    """0 train, 1 valid, 2 test for each file name (see the module docstring)."""
    stems = [Path(name).stem for name in names]
    if all(stem.isdigit() for stem in stems):
        numbers = np.array([int(stem) for stem in stems])
        return np.digitize(numbers, [LAST_TRAIN + 1, LAST_VALID + 1])
    count = len(names)
    held_out = round(FALLBACK_FRACTION * count)
    result = np.zeros(count, dtype=np.int64)
    result[count - 2 * held_out :] = 1
    result[count - held_out :] = 2
    return result  # names are sorted, so this is deterministic


class Celeba(ArrayDataset):
    """CelebA: uint8 (N, 3, 64, 64) images, no labels; extras `image_number` (official number, when the names
    are numbers). Splits follow the official partition, not the last-1,000 rule. Not binary."""

    binary = False

    def __init__(self, config: CelebaConfig):
        super().__init__(config)
        root = existing(config.root, "a zip or folder of img_align_celeba JPEGs")
        self.source = Source(root)

    @property
    def cache_path(self) -> Path | None:
        if self.options.cache_dir is None:
            return None
        name = f"{self.source.key}-crop{self.options.crop_size}-size{self.options.image_size}.npz"
        return Path(self.options.cache_dir).expanduser() / name

    def decoded(self) -> np.ndarray:
        """All images, from the cache when it matches the source, else decoded (and cached)."""
        path = self.cache_path
        if path is not None and path.is_file():
            try:
                with np.load(path, allow_pickle=False) as cached:
                    if list(cached["names"]) == self.source.names:
                        return cached["images"]
            except (OSError, ValueError, KeyError, zipfile.BadZipFile):
                pass  # an unreadable cache (e.g. disk full when written) is rebuilt from the source below
        images = self.source.decode_all(self.options.crop_size, self.options.image_size)
        if path is not None:
            atomic_savez(path, images=images, names=np.array(self.source.names))
        return images

    @cached_property
    def all_arrays(self) -> tuple[Arrays, np.ndarray]:
        images = self.decoded()
        stems = [Path(name).stem for name in self.source.names]
        extras = (
            {"image_number": np.array([int(s) for s in stems])} if all(s.isdigit() for s in stems) else {}
        )
        parts = partition(self.source.names)
        order = np.argsort(parts, kind="stable")  # train, then valid, then test, each in name order
        return Arrays(images, None, extras).take(order), parts[order]

    def read_train(self) -> Arrays:
        arrays, parts = self.all_arrays
        return arrays.take(parts <= 1)

    def read_test(self) -> Arrays:
        arrays, parts = self.all_arrays
        return arrays.take(parts == 2)

    def held_out(self, selected: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The official partition instead of the last-1,000 rule (the training arrays are train then valid)."""
        parts = self.all_arrays[1][selected]
        train, valid = selected[parts == 0], selected[parts == 1]
        if len(train) == 0 or len(valid) == 0:
            raise DatasetError(
                f"{self.source.describe()}: the partition leaves {len(train)} train / {len(valid)} valid images"
            )
        return train, valid
