"""`npdraw eval`: the importance-weighted NLL bound and Fréchet distances of samples (spec §7)."""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from typing import Protocol

import torch
from torch import Tensor, nn
from tqdm import tqdm

from npdraw_core.data import minibatch_indices, prepare_images, to_unit
from npdraw_core.fid import (
    build_feature_extractor,
    fid_floor,
    fid_scores,
    reference_cache_path,
    reference_identity,
    score_name,
)
from npdraw_core.interfaces import ImageSet
from npdraw_core.run import Run


class ScoredModel(Protocol):
    """What evaluation needs of a model: NPDraw, or a comparison model such as the VAE baseline
    (`npdraw_baselines.vae.ConvVAE`), is scored by the same code."""

    def log_likelihood_bound(self, images: Tensor, *, num_samples: int, generator: torch.Generator | None) -> Tensor:
        """Importance-weighted lower bound on log p(x), per image (B,), in nats."""

    def sample(self, num_samples: int, *, generator: torch.Generator, temperature: float = 1.0) -> tuple:
        """A tuple whose first element is the images shown to users (B, C, H, W) in [0, 1]."""

    def parameters(self) -> Iterator[nn.Parameter]: ...

    def eval(self) -> nn.Module: ...


def model_device(model: ScoredModel) -> torch.device:
    """Where the model's weights are (and so where its generators must live)."""
    return next(model.parameters()).device


def negative_log_likelihood(
    model: ScoredModel, test: ImageSet, *, binary: bool, num_samples: int, batch_size: int, seed: int = 0
) -> dict[str, float]:
    """Mean −log p(x) bound over `test` in nats per image (and bits/dim). Binary data sets are binarised
    once with a fixed seed, so every model is scored on the same binary test set."""
    model.eval()
    device = model_device(model)
    binarize_generator = torch.Generator().manual_seed(seed)
    sample_generator = torch.Generator(device=device).manual_seed(seed + 1)
    total, started = 0.0, time.perf_counter()
    for index in tqdm(list(minibatch_indices(len(test), batch_size, shuffle=False)), desc="nll", leave=False):
        images = prepare_images(test.images[index], binary=binary, generator=binarize_generator).to(device)
        bound = model.log_likelihood_bound(images, num_samples=num_samples, generator=sample_generator)
        total -= bound.sum().item()
    nll = total / len(test)
    dims = math.prod(test.images.shape[1:])
    return {
        "nll_nats": nll,
        "bits_per_dim": nll / (dims * math.log(2)),
        "nll_samples": num_samples,
        "nll_images": len(test),
        "nll_seconds": time.perf_counter() - started,
    }


@torch.no_grad()
def generate(model: ScoredModel, num_samples: int, *, batch_size: int, seed: int, temperature: float = 1.0) -> torch.Tensor:
    """`num_samples` images in [0, 1] on the CPU (the output distribution's mean), in batches."""
    model.eval()
    generator = torch.Generator(device=model_device(model)).manual_seed(seed)
    chunks = []
    for start in tqdm(range(0, num_samples, batch_size), desc="sample", leave=False):
        images, _, _ = model.sample(min(batch_size, num_samples - start), generator=generator, temperature=temperature)
        chunks.append(images.cpu())
    return torch.cat(chunks)


def evaluate(run: Run, model: ScoredModel) -> dict[str, float]:
    """The `eval` stage: NLL bound on the test set and FID of samples against it, logged (to the run
    directory's metrics) and returned."""
    settings, dataset = run.config.evaluation, run.dataset
    test = run.dataset.load("test")
    results: dict[str, float] = {}
    if settings.nll_images != 0:  # 0 skips the NLL (e.g. to add a slow FID to an evaluated run)
        nll_test = test if settings.nll_images is None else test.subset(torch.arange(min(settings.nll_images, len(test))))
        results.update(negative_log_likelihood(
            model, nll_test, binary=dataset.binary, num_samples=settings.nll_samples,
            batch_size=settings.batch_size, seed=run.config.seed,
        ))
    if settings.feature_extractors:
        extractors = [build_feature_extractor(run, name) for name in settings.feature_extractors]
        generated = generate(model, settings.fid_samples, batch_size=settings.batch_size, seed=run.config.seed,
                             temperature=settings.temperature)  # fmt: skip
        reference = to_unit(test.images)
        results.update(fid_scores(
            extractors, generated, reference, binary=dataset.binary, batch_size=settings.batch_size,
            generator=torch.Generator().manual_seed(run.config.seed),
            cache_path=reference_cache_path(run), reference_key=reference_identity(run, "test", len(test)),
        ))
        results["fid_samples"] = settings.fid_samples
        if settings.fid_floor:  # the best score a perfect model could get with this many test images
            for extractor in extractors:
                results[f"{score_name(extractor)}_floor"] = fid_floor(
                    extractor, reference, binary=dataset.binary, seed=run.config.seed, batch_size=settings.batch_size
                )
    run.log("eval", **results)
    return results
