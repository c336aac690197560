"""Parsing images into latent sequences and measuring parse quality (spec §3), plus the pipeline stage.

Parses are stored compactly as integer arrays per image and step: `what` (int16 exemplar index),
`where` (int16 cell index) and `whether` (uint8 draw flag), each (N, T).
"""

from __future__ import annotations

import io
import math
from pathlib import Path

import torch
from torch import Tensor
from tqdm.auto import tqdm

from npdraw_core.bank import PartBank
from npdraw_core.checkpoint import atomic_write_bytes
from npdraw_core.geometry import Grid
from npdraw_core.interfaces import SPLITS, Parser
from npdraw_core.latents import Latents, render

# PSNR of a perfect reconstruction is infinite; per-image MSE is floored here (a 100 dB cap) so that means
# over a dataset stay finite and comparable.
MIN_MSE = 1e-10


def _exemplars(bank: PartBank | Tensor) -> Tensor:
    return bank.exemplars if isinstance(bank, PartBank) else bank


def parse_images(
    parser: Parser,
    images: Tensor,
    bank: PartBank | Tensor,
    *,
    batch_size: int | None = None,
    progress: bool = True,
    device: torch.device | str | None = None,
    desc: str = "parse",
) -> dict[str, Tensor]:
    """Parse [0, 1] canvas-size images (N, C, S, S) in chunks → {"what": int16, "where": int16,
    "whether": uint8}, each (N, T), on the CPU. `batch_size` defaults to the parser's own."""
    if not isinstance(parser, Parser):
        raise TypeError(f"{type(parser).__name__} is not a parser: subclass npdraw_core.interfaces.Parser")
    if not len(images):
        raise ValueError("parse_images got no images; check the dataset split")
    exemplars = _exemplars(bank)
    if exemplars.shape[0] > torch.iinfo(torch.int16).max:
        raise ValueError(f"bank_size {exemplars.shape[0]} does not fit the int16 parse format (max 32767)")
    batch_size = batch_size or parser.batch_size
    device = torch.device(device) if device is not None else images.device
    exemplars = exemplars.to(device)
    chunks: dict[str, list[Tensor]] = {"what": [], "where": [], "whether": []}
    with tqdm(total=len(images), desc=desc, unit="img", disable=not progress, leave=False) as bar:
        for start in range(0, len(images), batch_size):
            chunk = images[start : start + batch_size].to(device)
            indices = parser.parse_indices(chunk, exemplars)
            for name in chunks:
                chunks[name].append(indices[name].cpu())
            bar.update(min(batch_size, len(images) - start))
    dtypes = {"what": torch.int16, "where": torch.int16, "whether": torch.uint8}
    return {name: torch.cat(values).to(dtypes[name]) for name, values in chunks.items()}


def render_parses(
    indices: dict[str, Tensor],
    bank: PartBank | Tensor,
    grid: Grid,
    *,
    batch_size: int = 1024,
    device: torch.device | str | None = None,
) -> Tensor:
    """Paste exemplar `what` into cell `where` for every drawn step on a blank canvas → (N, C, S, S) CPU."""
    exemplars = _exemplars(bank)
    device = torch.device(device) if device is not None else exemplars.device
    exemplars = exemplars.to(device, torch.float32)
    rendered = []
    for start in range(0, len(indices["what"]), batch_size):
        chunk = {name: values[start : start + batch_size].to(device) for name, values in indices.items()}
        latents = Latents.from_indices(**chunk, bank_size=len(exemplars), num_cells=grid.num_cells)
        rendered.append(render(latents, exemplars, grid).cpu())
    return torch.cat(rendered)


def per_image_mse(images: Tensor, rendered: Tensor) -> Tensor:
    """Mean squared error per image (N,) in float64, both in [0, 1]."""
    if images.shape != rendered.shape:
        raise ValueError(
            f"images {tuple(images.shape)} and renderings {tuple(rendered.shape)} differ in shape"
        )
    return (images.double() - rendered.double().to(images.device)).pow(2).flatten(1).mean(1)


def psnr_from_mse(mse: Tensor) -> dict[str, float]:
    """PSNR = 10·log10(1 / MSE) for [0, 1] images: the mean of per-image PSNRs and the PSNR of the
    dataset-mean MSE (the second is dominated by the worst images, the first by typical ones)."""
    floored = mse.double().clamp(min=MIN_MSE)
    return {
        "psnr_mean": float((-10.0 * torch.log10(floored)).mean()),
        "psnr_of_mean_mse": -10.0 * math.log10(max(float(mse.double().mean()), MIN_MSE)),
    }


def parse_psnr(images: Tensor, rendered: Tensor) -> dict[str, float]:
    return psnr_from_mse(per_image_mse(images, rendered))


def save_parse_figure(images: Tensor, rendered: Tensor, path: str | Path, num: int = 32) -> None:
    """A PNG of images beside their rendered parses: pairs (image, parse), 8 pairs per row."""
    from torchvision.utils import make_grid, save_image

    num = min(num, len(images))
    pairs = torch.stack([images[:num].cpu().float(), rendered[:num].cpu().float()], dim=1).flatten(0, 1)
    grid = make_grid(pairs, nrow=16, padding=2, pad_value=0.5)
    buffer = io.BytesIO()
    save_image(grid, buffer, format="png")
    atomic_write_bytes(path, buffer.getvalue())


def parse_splits(
    parser: Parser, dataset, bank: PartBank, grid: Grid, *, canvas_size: int, device: torch.device,
    figure_path: str | Path, record, render_batch: int = 10000,
) -> dict:  # fmt: skip
    """Parse train/valid/test of `dataset` with `parser`; returns {"bank_size", "num_steps", "metrics":
    {split: parse PSNR and draw fraction}, "train"|"valid"|"test": {"what", "where", "whether"}} and
    writes images beside their parses (test split) to `figure_path`. `record(stage, **metrics)` logs."""
    from npdraw_core.data import canvas_images

    payload = {"bank_size": bank.bank_size, "num_steps": grid.num_cells, "metrics": {}}
    for split in SPLITS:
        images = canvas_images(dataset.load(split), canvas_size)
        indices = parse_images(parser, images, bank, device=device, desc=f"parse {split}")
        mse = []
        for start in range(0, len(images), render_batch):  # bounded memory for large splits
            part = {name: values[start : start + render_batch] for name, values in indices.items()}
            rendered = render_parses(part, bank, grid, device=device)
            mse.append(per_image_mse(images[start : start + render_batch], rendered))
            if split == "test" and start == 0:
                save_parse_figure(images, rendered, figure_path)
        metrics = {**psnr_from_mse(torch.cat(mse)), "draw_fraction": float(indices["whether"].float().mean())}
        payload[split] = indices
        payload["metrics"][split] = metrics
        record("parse", split=split, **metrics)
    return payload


def parse_latents(
    split: dict[str, Tensor], index: Tensor, *, bank_size: int, num_cells: int, device: torch.device
) -> Latents:
    """Stored integer parses (N, T) of the images `index` → hard latents on `device`."""
    return Latents.from_indices(
        what=split["what"][index],
        where=split["where"][index],
        whether=split["whether"][index],
        bank_size=bank_size,
        num_cells=num_cells,
    ).to(device)
