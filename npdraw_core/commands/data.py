"""`npdraw data`: look at a dataset, or convert images into the generic npz dataset format.

    npdraw data inspect [CONFIG] [--set data.root=...]   per split: count, shape, dtype, pixel mean, labels;
                                                          with data.split: what the low-data split keeps
    npdraw data import SRC --to FILE.npz                  SRC: a folder of images, or a run config's dataset

The npz written holds `images` uint8 (N, C, H, W) and, when known, `labels` int64 (N,) and `class_names`;
a test split goes into `test_images` / `test_labels`. The `npz` dataset reads it: `{type: npz, path: FILE.npz}`.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # numpy, torch and PIL are imported where used: the CLI imports this module for --help
    import numpy as np
    from PIL import Image

    from npdraw_core.interfaces import Dataset

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")
MAX_LISTED_CLASSES = 20  # more classes than this are summarised by their count range


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "data", help="inspect a dataset, or import images into the generic npz format"
    )
    actions = parser.add_subparsers(dest="data_action", metavar="ACTION", required=True)

    inspect = actions.add_parser(
        "inspect", help="print count, shape, dtype, pixel mean and labels per split, and what data.split keeps"
    )
    inspect.add_argument(
        "config", nargs="?", help="YAML run config whose data: section is read (default: bundled MNIST)"
    )
    add_overrides(inspect)
    inspect.set_defaults(handler=lambda args: print(format_summary(*build_dataset(args))))

    imported = actions.add_parser(
        "import", help="convert a folder of images or a configured dataset to an npz"
    )
    imported.add_argument(
        "source", help="a folder of images (one sub-folder per class, or flat) or a YAML run config"
    )
    imported.add_argument("--to", dest="output", required=True, help="the .npz file to write")
    imported.add_argument(
        "--test", dest="test_source", help="a folder of test images (stored as test_images/test_labels)"
    )
    imported.add_argument(
        "--size", type=int, help="resize folder images to SIZE×SIZE with a box (area) filter"
    )
    imported.add_argument(
        "--channels", type=int, choices=(1, 3), help="1 (grey) or 3 (RGB); default: the first image's"
    )
    imported.add_argument(
        "--invert", action="store_true", help="store 255 - value: for dark ink on white paper"
    )
    add_overrides(imported)
    imported.set_defaults(handler=run_import)


def add_overrides(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
        help="override a config value, e.g. --set data.root=../shared/data/omniglot or "
        "--set 'data.split={type: digits, fraction: 0.3, seed: 0}' (repeatable)",
    )  # fmt: skip


def build_dataset(args: argparse.Namespace) -> tuple[Dataset, str]:
    from npdraw_core.config import load_config
    from npdraw_core.registry import default_registry
    from npdraw_core.splits import build_dataset as build_with_split

    registry = default_registry()
    chosen = load_config(args.config, args.overrides, registry=registry).data
    return build_with_split(chosen, registry), chosen.type


# ---------------------------------------------------------------------------------------------------------
# inspect


def summarize(dataset: Dataset) -> dict[str, dict]:
    """Per split: count, shape, dtype, per-channel pixel mean in [0, 1], label counts, extra fields."""
    import torch

    from npdraw_core.interfaces import SPLITS

    summary = {}
    for split in SPLITS:
        part = dataset.load(split)
        images = part.images
        pixels = images.shape[0] * images.shape[2] * images.shape[3]
        channel_sums = images.sum(dim=(0, 2, 3), dtype=torch.int64).double()  # exact, without a float copy
        labels = None
        if part.labels is not None:
            values, counts = torch.unique(part.labels, return_counts=True)
            labels = dict(zip(values.tolist(), counts.tolist(), strict=True))
        summary[split] = {
            "count": len(part),
            "shape": tuple(images.shape[1:]),
            "dtype": str(images.dtype).removeprefix("torch."),
            "mean": [round(v, 4) for v in (channel_sums / max(pixels, 1) / 255.0).tolist()],
            "labels": labels,
            "extras": sorted(part.extras),
        }
    return summary


def format_split(info: dict) -> list[str]:
    """What `npdraw_core.splits.describe` reports, as the lines `data inspect` prints above the splits."""
    lines = [f"split {info['type']}: fraction {info['fraction']}, seed {info['seed']}"]
    unit = {"label": "labels", "alphabet": "alphabets", "image": "images"}[info["unit"]]
    if info["kept"] is None:
        lines.append(f"       keeps {info['train'] + info['valid']:,} of the {info['pool']:,} train+valid images")
    else:
        kept = info["kept"]
        shown = ", ".join(map(str, kept[:MAX_LISTED_CLASSES])) + (f", … ({len(kept) - MAX_LISTED_CLASSES} more)" if len(kept) > MAX_LISTED_CLASSES else "")
        lines.append(f"       keeps {len(kept)} of {info['available']} {unit}: {shown}")
        if info.get("kept_names"):
            lines.append(f"       alphabets: {', '.join(info['kept_names'])}")
        if "test_seen" in info:
            lines.append(f"       test is whole: {info['test_seen']:,} of its {info['test']:,} images are of kept {unit}")
    lines.append(f"       train {info['train']:,} + valid {info['valid']:,} (valid: the last of the kept images); test {info['test']:,}")
    return lines


def format_summary(dataset: Dataset, name: str) -> str:
    from npdraw_core.splits import describe

    lines = [
        f"dataset {name}: channels={dataset.channels} image_size={dataset.image_size} binary={dataset.binary}",
    ]
    split = describe(dataset)
    if split is not None:
        lines += format_split(split)
    for split, info in summarize(dataset).items():
        mean = ", ".join(f"{v:.4f}" for v in info["mean"])
        lines.append(
            f"{split:>5}: {info['count']:>7,} images  {info['shape']} {info['dtype']}  pixel mean ({mean})"
        )
        labels = info["labels"]
        if labels is None:
            lines.append("       no labels")
        elif len(labels) <= MAX_LISTED_CLASSES:
            lines.append("       labels " + " ".join(f"{label}:{count}" for label, count in labels.items()))
        else:
            counts = labels.values()
            lines.append(f"       {len(labels)} labels, {min(counts)}..{max(counts)} images each")
        if info["extras"]:
            lines.append(f"       extras: {', '.join(info['extras'])}")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------------------
# import


def read_image_folder(
    folder: Path, *, size: int | None = None, channels: int | None = None, invert: bool = False
) -> tuple[np.ndarray, np.ndarray | None, list[str]]:
    """A folder of images → uint8 (N, C, H, W), labels and class names. Sub-folders are classes (labels in
    sorted folder-name order, like torchvision's ImageFolder); image files directly in `folder` get no labels."""
    import numpy as np
    from tqdm import tqdm

    if not folder.is_dir():
        raise FileNotFoundError(
            f"{folder} is not a folder; expected a folder of images (one sub-folder per class, or flat)"
        )
    is_image = lambda path: path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES  # noqa: E731
    flat = sorted(p for p in folder.iterdir() if is_image(p))
    class_dirs = sorted(p for p in folder.iterdir() if p.is_dir() and any(map(is_image, p.rglob("*"))))
    if flat and class_dirs:
        raise ValueError(f"{folder} holds both images and class sub-folders; use one layout or the other")
    if not flat and not class_dirs:
        raise FileNotFoundError(
            f"{folder} holds no images ({', '.join(IMAGE_SUFFIXES)}), directly or in sub-folders"
        )
    entries = [(path, None) for path in flat]
    for label, class_dir in enumerate(class_dirs):
        entries += [(path, label) for path in sorted(class_dir.rglob("*")) if is_image(path)]
    if channels is None:
        channels = 1 if decode_image(entries[0][0]).mode in ("1", "L") else 3
    images = [
        load_image(path, size, channels) for path, _ in tqdm(entries, desc=f"reading {folder}", unit="img")
    ]
    shapes = {image.shape for image in images}
    if len(shapes) > 1:
        other_path, other = next(
            (path, image) for (path, _), image in zip(entries, images, strict=True) if image.shape != images[0].shape
        )
        raise ValueError(
            f"{other_path} is {other.shape[2]}×{other.shape[1]} unlike {entries[0][0]} "
            f"({images[0].shape[2]}×{images[0].shape[1]}); pass --size to resize every image to one size"
        )
    stacked = np.stack(images)
    if invert:
        stacked = 255 - stacked
    labels = np.array([label for _, label in entries], dtype=np.int64) if class_dirs else None
    return stacked, labels, [p.name for p in class_dirs]


def decode_image(path: Path, mode: str | None = None) -> Image.Image:
    """The decoded image at `path` (converted to `mode`); a file PIL cannot decode (corrupt, truncated, not
    an image, too large) is a ValueError naming it."""
    from PIL import Image

    try:
        with Image.open(path) as image:
            image.load()  # decodes the whole file now: truncated data fails here, not later
            return image.convert(mode) if mode else image.copy()
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
        raise ValueError(
            f"{path}: cannot read this image ({type(error).__name__}: {error}); the file is damaged or not an "
            "image: replace it, or move it out of the folder"
        ) from None


def load_image(path: Path, size: int | None, channels: int) -> np.ndarray:
    import numpy as np
    from PIL import Image

    image = decode_image(path, "L" if channels == 1 else "RGB")
    if image.width != image.height:
        raise ValueError(
            f"{path} is {image.width}×{image.height}; npdraw needs square images (crop them first)"
        )
    if size is not None and image.size != (size, size):
        image = image.resize((size, size), Image.Resampling.BOX)
    pixels = np.asarray(image)
    return pixels[None] if channels == 1 else pixels.transpose(2, 0, 1)


def run_import(args: argparse.Namespace) -> None:
    import io

    import numpy as np
    import torch

    from npdraw_core.checkpoint import atomic_write_bytes

    source, output = Path(args.source), Path(args.output)
    if output.suffix != ".npz":
        raise ValueError(f"--to {output}: the output must be an .npz file")
    arrays: dict[str, np.ndarray] = {}
    binary = False
    if source.is_file() and source.suffix in (".yaml", ".yml"):
        if args.size or args.channels or args.invert or args.test_source:
            raise ValueError(
                "--size, --channels, --invert and --test apply to image folders, not to a config's dataset"
            )
        dataset = build_dataset(argparse.Namespace(config=source, overrides=args.overrides))[0]
        binary = dataset.binary
        for prefix, splits in (("", ("train", "valid")), ("test_", ("test",))):
            parts = [dataset.load(split) for split in splits]  # train then valid: valid stays the last images
            arrays[f"{prefix}images"] = torch.cat([p.images for p in parts]).numpy()
            if all(p.labels is not None for p in parts):
                arrays[f"{prefix}labels"] = torch.cat([p.labels for p in parts]).numpy()
    else:
        options = {"size": args.size, "channels": args.channels, "invert": args.invert}
        arrays["images"], labels, class_names = read_image_folder(source, **options)
        if labels is not None:
            arrays["labels"], arrays["class_names"] = labels, np.array(class_names)
        if args.test_source:
            options["channels"] = arrays["images"].shape[1]
            test_images, test_labels, test_names = read_image_folder(Path(args.test_source), **options)
            if test_names != class_names:
                raise ValueError(
                    f"the test classes {test_names} differ from the training classes {class_names}"
                )
            if test_images.shape[1:] != arrays["images"].shape[1:]:
                raise ValueError(
                    f"test images {test_images.shape[1:]} differ from training images {arrays['images'].shape[1:]}"
                )
            arrays["test_images"] = test_images
            if test_labels is not None:
                arrays["test_labels"] = test_labels
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **arrays)
    atomic_write_bytes(output, buffer.getvalue())
    shapes = ", ".join(f"{key} {value.shape}" for key, value in arrays.items())
    print(
        f"wrote {output}: {shapes}\nuse it with  data: {{type: npz, path: {output}, binary: {str(binary).lower()}}}"
    )
