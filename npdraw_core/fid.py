"""Fréchet distances (FID) between feature statistics of generated and reference images.

A score is named by the feature extractor that produced it (`fid_lenet`, `fid_inception`): numbers from
different extractors never compare. The distance itself is pytorch-fid's `calculate_frechet_distance`, so
with the `inception` extractor the scores compare with published ones. Binary datasets are compared as
Bernoulli samples on both sides (spec §7): generated probability maps and reference grey levels alike.
Reference statistics are cached in a .npz keyed by extractor and dataset identity, so the test set's
features (minutes with Inception on a CPU) are computed once.

The FID-Inception weights themselves are found or made offline by `npdraw_core.inception_weights`.
"""

from __future__ import annotations

import dataclasses
import io
import warnings
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from tqdm import tqdm

from npdraw_core.checkpoint import atomic_write_bytes
from npdraw_core.config import ComponentConfig, config_hash
from npdraw_core.data import dynamic_binarize, to_unit
from npdraw_core.digests import text_digest
from npdraw_core.interfaces import ExtractorContext, FeatureExtractor
from npdraw_core.registry import PluginError

Statistics = tuple[np.ndarray, np.ndarray]  # mean (D,) and covariance (D, D), float64


def score_name(extractor: FeatureExtractor) -> str:
    return f"fid_{extractor.name}"


def bernoulli_sample(images: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """One Bernoulli draw per pixel of images in [0, 1] (uint8 images are scaled first)."""
    if images.dtype == torch.uint8:
        images = to_unit(images)
    return dynamic_binarize(images, generator)


def iter_unit_batches(images_or_batches: Tensor | Iterable[Tensor], batch_size: int) -> Iterator[Tensor]:
    """A tensor (uint8, or float in [0, 1]) or an iterable of such batches → float batches in [0, 1].
    uint8 images are converted batch by batch, so a large reference set never exists as floats at once."""
    if isinstance(images_or_batches, Tensor):
        if images_or_batches.dim() != 4:
            raise ValueError(f"images must be (N, C, H, W), got shape {tuple(images_or_batches.shape)}")
        batches = (
            images_or_batches[i : i + batch_size] for i in range(0, len(images_or_batches), batch_size)
        )
    else:
        batches = iter(images_or_batches)
    for batch in batches:
        yield to_unit(batch) if batch.dtype == torch.uint8 else batch.float()


def feature_statistics(
    extractor: FeatureExtractor,
    images_or_batches: Tensor | Iterable[Tensor],
    *,
    batch_size: int = 250,
    progress: bool = False,
    generator: torch.Generator | None = None,
) -> Statistics:
    """Mean and covariance (float64, as pytorch-fid computes them) of the extractor's features. With a
    `generator`, every batch is Bernoulli-sampled first (binary datasets)."""
    total = len(images_or_batches) if isinstance(images_or_batches, Tensor) else None
    chunks = []
    with tqdm(total=total, desc=f"features ({extractor.name})", unit="img", disable=not progress) as bar:
        for batch in iter_unit_batches(images_or_batches, batch_size):
            if generator is not None:
                batch = bernoulli_sample(batch, generator)
            chunks.append(extractor.features(batch).detach().to("cpu", torch.float64).numpy())
            bar.update(len(batch))
    features = np.concatenate(chunks) if chunks else np.zeros((0, 0))
    if len(features) < 2:
        raise ValueError(f"feature statistics need at least 2 images, got {len(features)}")
    return features.mean(axis=0), np.cov(features, rowvar=False)


def frechet_distance(stats_a: Statistics, stats_b: Statistics) -> float:
    """d² = ‖μa − μb‖² + Tr(Σa + Σb − 2(ΣaΣb)^½), by pytorch-fid's implementation."""
    from pytorch_fid.fid_score import calculate_frechet_distance  # imports scipy: only when scoring

    (mu_a, sigma_a), (mu_b, sigma_b) = stats_a, stats_b
    if mu_a.shape != mu_b.shape:
        raise ValueError(
            f"feature statistics of different sizes ({mu_a.shape[0]} vs {mu_b.shape[0]}): same extractor?"
        )
    with warnings.catch_warnings():  # pytorch-fid passes scipy's deprecated `disp`; nothing a user can change
        warnings.filterwarnings("ignore", message=".*disp.*", category=DeprecationWarning)
        return float(calculate_frechet_distance(mu_a, sigma_a, mu_b, sigma_b))


def _cache_entry(extractor: FeatureExtractor, key: str) -> tuple[str, str]:
    """The readable key (extractor name + its weights' fingerprint + the caller's dataset identity) and a
    short file-safe name for it inside the .npz."""
    full_key = f"{extractor.name}|{extractor.fingerprint}|{key}"
    return full_key, "s" + text_digest([full_key])


def _read_cache(cache_path: Path) -> dict[str, np.ndarray]:
    if not cache_path.is_file():
        return {}
    with np.load(cache_path, allow_pickle=False) as archive:  # plain arrays only: loading runs no code
        return {name: archive[name] for name in archive.files}


def load_cached_statistics(
    extractor: FeatureExtractor, cache_path: str | Path, key: str
) -> Statistics | None:
    """The statistics stored under `key` for this extractor (name and fingerprint), or None."""
    full_key, entry = _cache_entry(extractor, key)
    stored = _read_cache(Path(cache_path))
    if f"{entry}.mu" in stored and str(stored[f"{entry}.key"]) == full_key:
        return stored[f"{entry}.mu"], stored[f"{entry}.sigma"]
    return None


def store_statistics(
    extractor: FeatureExtractor, cache_path: str | Path, key: str, stats: Statistics
) -> None:
    """Add (or replace) the statistics under `key` in the .npz, keeping the other entries; atomic."""
    full_key, entry = _cache_entry(extractor, key)
    stored = _read_cache(Path(cache_path))
    mu, sigma = stats
    stored.update({f"{entry}.mu": mu, f"{entry}.sigma": sigma, f"{entry}.key": np.array(full_key)})
    buffer = io.BytesIO()
    np.savez(buffer, **stored)
    atomic_write_bytes(cache_path, buffer.getvalue())


def cached_statistics(
    extractor: FeatureExtractor,
    images: Tensor | Iterable[Tensor],
    cache_path: str | Path,
    key: str,
    *,
    batch_size: int = 250,
    progress: bool = False,
    generator: torch.Generator | None = None,
) -> Statistics:
    """`feature_statistics`, stored in `cache_path` (.npz) under `key` + the extractor's name and
    fingerprint. `key` must identify the images (dataset, split, count, Bernoulli seed): it is trusted."""
    stats = load_cached_statistics(extractor, cache_path, key)
    if stats is None:
        stats = feature_statistics(
            extractor, images, batch_size=batch_size, progress=progress, generator=generator
        )
        store_statistics(extractor, cache_path, key, stats)
    return stats


def reference_cache_key(reference_key: str, *, binary: bool, reference_seed: int = 0) -> str:
    """The cache key of `fid`'s reference statistics: the images' identity plus how they were sampled."""
    return f"{reference_key}|bernoulli_seed={reference_seed}" if binary else f"{reference_key}|grey"


def fid(
    extractor: FeatureExtractor,
    generated: Tensor | Iterable[Tensor],
    reference: Tensor | Iterable[Tensor],
    *,
    binary: bool,
    generator: torch.Generator | None = None,
    reference_seed: int = 0,
    batch_size: int = 250,
    cache_path: str | Path | None = None,
    reference_key: str | None = None,
    progress: bool = False,
) -> float:
    """The Fréchet distance between `generated` (images, or Bernoulli probability maps when `binary`) and
    `reference` images, in the extractor's feature space. Binary: both sides are Bernoulli-sampled, the
    generated ones with `generator`, the reference with a generator seeded by `reference_seed` (so its
    cached statistics are reproducible). With `cache_path` and `reference_key`, the reference statistics
    are cached."""
    if binary and generator is None:
        raise ValueError(
            "fid(binary=True) Bernoulli-samples the generated images: pass generator=torch.Generator().manual_seed(...)"
        )
    reference_generator = torch.Generator().manual_seed(reference_seed) if binary else None
    options = dict(batch_size=batch_size, progress=progress)
    if cache_path is not None and reference_key is not None:
        key = reference_cache_key(reference_key, binary=binary, reference_seed=reference_seed)
        reference_stats = cached_statistics(
            extractor, reference, cache_path, key, generator=reference_generator, **options
        )
    else:
        reference_stats = feature_statistics(extractor, reference, generator=reference_generator, **options)
    generated_stats = feature_statistics(
        extractor, generated, generator=generator if binary else None, **options
    )
    return frechet_distance(generated_stats, reference_stats)


def fid_scores(
    extractors: Iterable[FeatureExtractor], generated: Tensor, reference: Tensor, **options: Any
) -> dict[str, float]:
    """`fid` for every extractor, named by extractor: {"fid_lenet": ..., "fid_inception": ...}. Each
    extractor sees the same Bernoulli draws of the generated images when a generator is given."""
    generator = options.pop("generator", None)
    state = generator.get_state() if generator is not None else None
    scores = {}
    for extractor in extractors:
        if generator is not None:
            generator.set_state(state)
        scores[score_name(extractor)] = fid(extractor, generated, reference, generator=generator, **options)
    return scores


def fid_floor(
    extractor: FeatureExtractor, reference: Tensor, *, binary: bool, seed: int = 0, **options: Any
) -> float:
    """The score of real data against real data: one random half of `reference` against the other
    (the noise level of a score from this many images). Random, not first/second half: MNIST's test set
    puts its cleaner writers first, and its index halves differ by far more than sampling noise."""
    order = torch.randperm(len(reference), generator=torch.Generator().manual_seed(seed))
    half_a, half_b = reference[order[: len(order) // 2]], reference[order[len(order) // 2 :]]
    if half_a.dtype == torch.uint8:
        half_a = to_unit(half_a)
    generator = torch.Generator().manual_seed(seed + 1) if binary else None
    return fid(extractor, half_a, half_b, binary=binary, generator=generator, reference_seed=seed, **options)


# ---------------------------------------------------------------------------------------------------------
# Building extractors for a run


# Dataset options that restrict the training images (the low-data regimes of spec §4.2). Extractors see the
# dataset without them, so every regime is scored by the same extractor (e.g. one FID-LeNet classifier).
SUBSET_OPTIONS = ("classes", "train_fraction", "subset_seed")


def full_data_config(data: ComponentConfig) -> ComponentConfig:
    """The run's dataset config with its subset options (if it has any) back at their defaults."""
    defaults = {
        f.name: f.default if f.default is not dataclasses.MISSING else f.default_factory()
        for f in dataclasses.fields(data.config)
        if f.name in SUBSET_OPTIONS
    }
    return ComponentConfig(data.type, dataclasses.replace(data.config, **defaults))


def extractor_context(run) -> ExtractorContext:
    """What a run offers its feature extractors: device, full dataset, and the shared extractors folder."""
    data = full_data_config(run.config.data)
    return ExtractorContext(
        device=run.device,
        dataset=run.build("dataset", data),
        dataset_key=f"{data.type}-{config_hash(data)[:8]}",
        cache_dir=Path(run.config.output_dir) / "extractors",
    )


def build_feature_extractor(
    run, name: str, *, prepare: bool = True, options: dict | None = None
) -> FeatureExtractor:
    """The registered extractor `name` for `run` (its device and dataset), with default options unless
    `options` are given. `prepare`: let the extractor create what it needs first, e.g. train FID-LeNet on
    the run's dataset when its checkpoint is missing; what it made is logged to the run's metrics."""
    from npdraw_core.config import parse_dataclass

    component = run.registry.get("feature_extractor", name)
    config = parse_dataclass(
        component.config_class, dict(options or {}), f"feature_extractor.{name}", run.registry
    )
    extractor = component.build(config, context=extractor_context(run))
    if not isinstance(extractor, FeatureExtractor):
        raise PluginError(
            f"feature extractor {name!r} (plugin {component.plugin!r}) built a {type(extractor).__name__}; "
            "its factory must return a subclass of npdraw_core.interfaces.FeatureExtractor"
        )
    if prepare:
        prepare_extractor(run, extractor)
    return extractor


def prepare_extractor(run, extractor: FeatureExtractor, *, force: bool = False) -> None:
    """`extractor.prepare`, with a record of what it made (e.g. a trained classifier) in the run's metrics."""
    made = extractor.prepare(force=force)
    if made:
        run.log("extractor", extractor=extractor.name, **made)


def reference_cache_path(run) -> Path:
    """Where a run's reference statistics are cached: shared by all runs of the same dataset config."""
    data = run.config.data
    return Path(run.config.output_dir) / "fid_cache" / f"{data.type}-{config_hash(data)[:8]}.npz"


def reference_identity(run, split: str, num_images: int) -> str:
    """The cache key of the first `num_images` images of `split` of the run's dataset (`fid`'s
    `reference_key`; the Bernoulli seed is added by `fid`)."""
    return f"{run.config.data.type}-{config_hash(run.config.data)}|{split}|first={num_images}"
