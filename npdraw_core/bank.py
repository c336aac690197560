"""The non-parametric part bank (spec §1): random K×K patches of the training images, near-empty ones
dropped, K-medoids → M exemplars (M, C, K, K) float32 in [0, 1].

The medoid search itself is a plugin (`npdraw_register_part_banks`, a `MedoidEngine`); this module owns
what every engine shares: seeded patch sampling, the objective, the artefact and the pipeline stage.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from npdraw_core.checkpoint import load_checkpoint, save_checkpoint
from npdraw_core.config import check_at_least
from npdraw_core.geometry import Grid
from npdraw_core.interfaces import MedoidEngine


@dataclass(kw_only=True)
class PartBankConfig:
    """Options every part-bank engine shares; an engine's own config subclasses this one."""

    bank_size: int = 50  # M, number of exemplars
    num_patches: int = 10000  # patches sampled for K-medoids (O(num_patches²) distance matrix)
    # A patch is kept only if its mean intensity (ink per pixel, in [0, 1], averaged over pixels and
    # channels) is strictly above this. Mean intensity does not depend on patch size or channel count,
    # and a kept patch has ‖x‖₂ ≥ √(K²C)·min_patch_mass, so with the default no exemplar is close enough
    # to blank for an empty cell to parse as "draw" (cost ‖x̃‖ ≤ ε, spec §1 and §3). It also drops the
    # faint stroke-edge slivers that would otherwise spend medoids on near-blank parts.
    min_patch_mass: float = 0.05
    seed: int = 0

    def __post_init__(self) -> None:
        # messages start with the field name: loading a config prefixes the section's key path
        check_at_least(self, 1, "bank_size")
        if self.num_patches < self.bank_size:
            raise ValueError(
                f"num_patches ({self.num_patches}) must be at least bank_size ({self.bank_size}): "
                "the medoids are chosen among the sampled patches"
            )
        if not 0.0 <= self.min_patch_mass < 1.0:
            raise ValueError(f"min_patch_mass must be in [0, 1), got {self.min_patch_mass}")


def sample_patches(
    images: Tensor,
    grid: Grid,
    *,
    num_patches: int,
    min_patch_mass: float,
    generator: torch.Generator,
    chunk_size: int = 4096,
) -> Tensor:
    """`num_patches` distinct random K×K patches (num_patches, C, K, K) of the zero-padded [0, 1] images
    (N, C, S, S), uniform over every non-empty position (mean intensity > `min_patch_mass`).

    Every valid position of every image gets a uniform random key and the `num_patches` smallest keys win:
    an exact sample without replacement, in one pass over chunks of images (memory O(chunk + num_patches)),
    with no retry loop. The result is in random order and depends only on the images and the generator.
    """
    if images.dim() != 4 or not images.is_floating_point():
        raise ValueError(
            f"expected float images (N, C, S, S) in [0, 1], got {images.dtype} {tuple(images.shape)}"
        )
    if len(images) and (images.min() < 0 or images.max() > 1):
        raise ValueError("images must be in [0, 1]; convert uint8 images with npdraw_core.data.to_unit first")
    padded_positions = grid.padded_size - grid.patch_size + 1  # top-left corners per axis
    window = grid.patch_size
    best_keys = torch.empty(0, dtype=torch.float64)
    best_index = torch.empty(0, dtype=torch.long)
    eligible = 0
    for start in range(0, len(images), chunk_size):
        # the channel mean of the padded images (B, S', S')
        padded = grid.pad(images[start : start + chunk_size].float().cpu()).mean(1)
        # mean intensity of every K×K window (B, L, L): K-sums along rows, then along columns, over
        # unfolded views (2K adds a pixel; avg_pool2d's K² taps were 20× slower on a CPU)
        mass = padded.unfold(2, window, 1).sum(-1).unfold(1, window, 1).sum(-1) / window**2
        keep = (mass > min_patch_mass).flatten()
        eligible += int(keep.sum())
        # a key for every position (valid or not) keeps the draw uniform; float64 makes ties negligible
        keys = torch.rand(keep.shape, generator=generator, dtype=torch.float64)
        if len(best_keys) == num_patches:  # only a key under the current num_patches-th smallest can win
            keep &= keys < best_keys.max()
        flat = torch.nonzero(keep).squeeze(1)
        best_keys = torch.cat([best_keys, keys[flat]])
        best_index = torch.cat([best_index, flat + start * padded_positions**2])
        if len(best_keys) > num_patches:
            best_keys, order = torch.topk(best_keys, num_patches, largest=False, sorted=False)
            best_index = best_index[order]
    if eligible < num_patches:
        raise ValueError(
            f"only {eligible} non-empty {grid.patch_size}×{grid.patch_size} patch positions (mean intensity > "
            f"{min_patch_mass}) exist in {len(images)} images, but num_patches={num_patches} were requested; "
            "lower part_bank.num_patches or part_bank.min_patch_mass, or build the bank from more images"
        )
    best_index = best_index[torch.argsort(best_keys, stable=True)]
    image, position = best_index // padded_positions**2, best_index % padded_positions**2
    top, left = position // padded_positions, position % padded_positions
    return _gather_patches(images, grid, image, top, left)


def _gather_patches(images: Tensor, grid: Grid, image: Tensor, top: Tensor, left: Tensor) -> Tensor:
    """Patches at the given top-left corners of the padded images, gathered in one indexing operation."""
    offsets = torch.arange(grid.patch_size)
    rows = (top[:, None] + offsets)[:, :, None]  # (P, K, 1)
    cols = (left[:, None] + offsets)[:, None, :]  # (P, 1, K)
    picked = images[image.to(images.device)].float().cpu()  # only the chosen images are padded
    padded = grid.pad(picked).permute(0, 2, 3, 1)  # (P, S', S', C)
    patches = padded[torch.arange(len(image))[:, None, None], rows, cols]  # (P, K, K, C)
    return patches.permute(0, 3, 1, 2).contiguous()


def kmedoids_objective(
    points: Tensor | np.ndarray, medoids: Tensor | np.ndarray, *, chunk_size: int = 8192
) -> float:
    """Mean Euclidean distance of every point (N, D) to its nearest medoid (M, D), in float64."""
    points = torch.as_tensor(points).flatten(1).double()
    medoids = torch.as_tensor(medoids).flatten(1).double()
    total = 0.0
    for start in range(0, len(points), chunk_size):
        distances = torch.cdist(
            points[start : start + chunk_size], medoids, compute_mode="donot_use_mm_for_euclid_dist"
        )
        total += float(distances.min(dim=1).values.sum())
    return total / len(points)


@dataclass
class PartBank:
    exemplars: Tensor  # (M, C, K, K) float32 in [0, 1]
    metadata: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.exemplars.dim() != 4 or self.exemplars.shape[-1] != self.exemplars.shape[-2]:
            raise ValueError(f"exemplars must be (M, C, K, K), got {tuple(self.exemplars.shape)}")
        self.exemplars = self.exemplars.float()

    @property
    def bank_size(self) -> int:
        return self.exemplars.shape[0]

    @property
    def patch_size(self) -> int:
        return self.exemplars.shape[-1]

    @property
    def channels(self) -> int:
        return self.exemplars.shape[1]

    def to_dict(self, config_hash: str | None = None) -> dict[str, Any]:
        return {
            "exemplars": self.exemplars.cpu(),
            "metadata": dict(self.metadata),
            "config_hash": config_hash,
        }

    @classmethod
    def from_dict(cls, payload: dict[str, Any]) -> PartBank:
        if "exemplars" not in payload:
            raise ValueError(f"not a part bank: expected an 'exemplars' entry, found keys {sorted(payload)}")
        return cls(payload["exemplars"], dict(payload.get("metadata", {})))

    def save(self, path: str | Path, config_hash: str | None = None) -> None:
        save_checkpoint(self.to_dict(config_hash), path)

    @classmethod
    def load(cls, path: str | Path) -> PartBank:
        return cls.from_dict(load_checkpoint(path))


def build_bank(images: Tensor, grid: Grid, engine: MedoidEngine, config: PartBankConfig) -> PartBank:
    """Sample patches from [0, 1] canvas-size images (N, C, S, S) and pick `bank_size` medoids among them."""
    started = time.perf_counter()
    generator = torch.Generator().manual_seed(config.seed)
    patches = sample_patches(
        images,
        grid,
        num_patches=config.num_patches,
        min_patch_mass=config.min_patch_mass,
        generator=generator,
    )
    points = patches.flatten(1).numpy()
    chosen = np.asarray(engine.select(points, config.bank_size, seed=config.seed), dtype=np.int64)
    if chosen.shape != (config.bank_size,) or len(np.unique(chosen)) != config.bank_size:
        raise RuntimeError(
            f"part-bank engine {type(engine).__name__} returned {chosen.shape} indices, not {config.bank_size} "
            "distinct ones; it breaks the MedoidEngine contract"
        )
    exemplars = patches[torch.from_numpy(chosen)]
    metadata = {
        "patch_size": grid.patch_size,
        "bank_size": config.bank_size,
        "seed": config.seed,
        "num_patches": config.num_patches,
        "min_patch_mass": config.min_patch_mass,
        "engine": getattr(engine, "name", type(engine).__name__),
        "objective": kmedoids_objective(points, exemplars),
        "build_seconds": time.perf_counter() - started,
    }
    return PartBank(exemplars, metadata)
