"""What each kind of component must provide. Small protocols, one concept each.

Networks (prior, encoder, decoder) map tensors to logits or parameters; the generative process that
connects them (rendering, sampling order, the ELBO) lives in `npdraw_core.model` and `npdraw_core.sampling`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import numpy as np
import torch
from torch import Tensor, nn

from npdraw_core.geometry import Grid
from npdraw_core.latents import Latents

if TYPE_CHECKING:  # the sampler imports this module
    from npdraw_core.sampling import StepCanvas

SPLITS = ("train", "valid", "test")


@dataclass(frozen=True)
class ImageSet:
    """A split of a dataset held in memory: uint8 images (N, C, H, W), optional int64 labels (N,), and
    optional per-image metadata such as Omniglot's alphabet/character ids (each an (N,) tensor)."""

    images: Tensor
    labels: Tensor | None = None
    extras: dict[str, Tensor] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.images.dtype != torch.uint8 or self.images.dim() != 4:
            raise ValueError(f"ImageSet.images must be uint8 (N, C, H, W), got {self.images.dtype} {tuple(self.images.shape)}")
        for name, values in {"labels": self.labels, **self.extras}.items():
            if values is not None and len(values) != len(self.images):
                raise ValueError(f"ImageSet.{name} has {len(values)} entries for {len(self.images)} images")

    def __len__(self) -> int:
        return len(self.images)

    def subset(self, index: Tensor) -> ImageSet:
        return ImageSet(
            self.images[index],
            None if self.labels is None else self.labels[index],
            {name: values[index] for name, values in self.extras.items()},
        )


@runtime_checkable
class Dataset(Protocol):
    binary: bool  # True: grey levels are Bernoulli probabilities (dynamic binarisation, Bernoulli output)
    channels: int
    image_size: int

    def load(self, split: str) -> ImageSet:
        """`split` is one of SPLITS; "valid" is the last 1,000 training images, "train" the rest."""


@runtime_checkable
class MedoidEngine(Protocol):
    def select(self, points: np.ndarray, bank_size: int, *, seed: int) -> np.ndarray:
        """points (N, D) float32 → indices (bank_size,) of the chosen medoids (Euclidean distance)."""


class Parser:
    """Images → hard latents. Subclasses implement `parse`; one that can give integer indices directly
    overrides `parse_indices` too (it skips the one-hot round trip, about 2× faster)."""

    batch_size: int = 1024  # images per call in `npdraw_core.parsing.parse_images`: bounds memory

    def parse(self, images: Tensor, bank: Tensor) -> Latents:
        """images (B, C, S, S) in [0, 1] at canvas size, bank (M, C, K, K) → hard latents."""
        raise NotImplementedError

    def parse_indices(self, images: Tensor, bank: Tensor) -> dict[str, Tensor]:
        """The same parse as integer tensors (B, T): {"what", "where", "whether"}."""
        return self.parse(images, bank).indices()


@dataclass(frozen=True)
class StepLogits:
    """Per-step categorical/Bernoulli logits of p(z^t | z^{<t}) or q(z^t | x): (B, T), (B, T, M), (B, T, T)."""

    whether: Tensor
    what: Tensor
    where: Tensor


class Prior(nn.Module):
    """An autoregressive prior over latent sequences. Subclasses implement `forward` (teacher forcing over
    the T input frames, causal) and `step` (one position at a time, for ancestral sampling)."""

    uses_frames: bool = True  # False for priors that ignore the canvas (the sampler then skips rendering)
    union_masks: bool = False  # location channel = union of all past masks (the authors' code) instead of step t's
    # True when the prior implements `logits_from_latents` (optional: teacher forcing without whole frames)
    embeds_latents: bool = False

    def forward(self, frames: Tensor) -> StepLogits:
        """frames (B, T, C+1, S, S) → StepLogits of z^1..z^T; position t may only see frames 0..t."""
        raise NotImplementedError

    def logits_from_latents(
        self, latents: Latents, bank: Tensor, grid: Grid, *, frames: Tensor | None = None
    ) -> StepLogits:
        """Optional (set `embeds_latents = True`): `forward(prior_frames(latents, bank, grid))` for latents
        whose every step draws into one cell, computed from each frame's local change. `frames`: the same
        latents' whole frames, given when gradients must reach them (relaxed latents, the prior frozen)."""
        raise NotImplementedError(f"{type(self).__name__} has no logits_from_latents (embeds_latents is False)")

    def start(self, batch_size: int, *, use_cache: bool = True) -> Any:
        """Fresh sampling state for `batch_size` sequences."""
        raise NotImplementedError

    def step(self, frame: Tensor, state: Any) -> tuple[StepLogits, Any]:
        """Feed frame t (B, C+1, S, S) → logits of z^{t+1} as StepLogits of shapes (B,), (B, M), (B, T)."""
        raise NotImplementedError

    def sample_steps(
        self, frame: Tensor, state: Any, noise: tuple[Tensor, Tensor, Tensor], canvas: StepCanvas
    ) -> tuple[Tensor, Tensor, Tensor] | None:
        """Optional: every step of ancestral sampling from a fresh `state` in one call (e.g. one compiled
        loop), with exactly the numbers of the sampler's own loop: per step t, `step` on the frame, then
        `npdraw_core.sampling.draw_step(logits…, noise[0][t], noise[1][t], noise[2][t], canvas)`, which
        draws and gives the next frame. Returns whether / what / where indices (B, T), or None (the
        default) to let the sampler run that loop in Python."""
        return None


class Encoder(nn.Module):
    def forward(self, images: Tensor) -> StepLogits:
        """images (B, C, H, W) in [0, 1] → posterior logits of q(z^t | x) for every step."""
        raise NotImplementedError


class Decoder(nn.Module):
    def forward(self, canvas: Tensor) -> Tensor:
        """canvas (B, C, S, S) → distribution parameters (B, out_channels, H, W)."""
        raise NotImplementedError


@runtime_checkable
class OutputDistribution(Protocol):
    def num_params(self) -> int:
        """Channels the decoder must output."""

    def log_prob(self, params: Tensor, images: Tensor) -> Tensor:
        """params (B, P, H, W), images (B, C, H, W) in [0, 1] → log p(x|z) per image (B,) in nats."""

    def sample(self, params: Tensor, *, generator: torch.Generator | None = None) -> Tensor:
        """A draw of images in [0, 1], (B, C, H, W)."""

    def mean(self, params: Tensor) -> Tensor:
        """The image shown to users: Bernoulli probabilities, or the mixture's mode/mean, (B, C, H, W)."""


@dataclass(frozen=True)
class ExtractorContext:
    """What a feature extractor's factory gets besides its config: `factory(config, *, context)`."""

    device: torch.device
    dataset: Dataset  # the reference dataset, without the run's train subsets (every regime, one extractor)
    dataset_key: str  # a short file-safe identity of that dataset, e.g. "mnist-1a2b3c4d"
    cache_dir: Path  # where extractors keep what they make (trained weights), shared by runs


class FeatureExtractor:
    """Images → features for Fréchet distances. Subclasses set `name` and implement `features`."""

    name: str  # scores are reported as f"fid_{name}"
    fingerprint: str = ""  # a digest of the weights: keys cached statistics ("" if nothing varies)
    trainable: bool = False  # True: `prepare` trains it (`npdraw train-extractor` can force that)
    path: Path | None = None  # its weights file, if it has one
    valid_accuracy: float | None = None  # trainable classifiers: accuracy on the validation split

    def prepare(self, *, force: bool = False) -> dict[str, Any] | None:
        """Create what `features` needs, e.g. train a classifier when its checkpoint is missing (or
        `force`). Returns a record of what it made (logged to the run's metrics), or None if nothing."""
        return None

    def features(self, images: Tensor) -> Tensor:
        """images (B, C, H, W) in [0, 1] → features (B, D) float64-compatible."""
        raise NotImplementedError
