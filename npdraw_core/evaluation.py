"""`npdraw eval`: the importance-weighted NLL bound and Fréchet distances of samples (spec §7)."""

from __future__ import annotations

import math
import multiprocessing
import time
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from typing import Protocol

import numpy as np
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
from npdraw_core.threads import configure_threads, usable_cores


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
    model: ScoredModel,
    test: ImageSet,
    *,
    binary: bool,
    num_samples: int,
    batch_size: int,
    seed: int = 0,
    workers: int = 1,
) -> dict[str, float]:
    """Mean −log p(x) bound over `test` in nats per image (and bits/dim). Binary data sets are binarised
    once with a fixed seed, so every model is scored on the same binary test set.

    Each batch draws its posterior samples from its own generator (seeded by `seed` and the batch's
    index), so the bound is the same number whether the batches run here or spread over `workers`
    processes (a CPU model only; one torch thread each: on 2 cores, ~1.9x one process, where a second
    torch thread gives ~1.3x)."""
    model.eval()
    device = model_device(model)
    images = prepare_images(test.images, binary=binary, generator=torch.Generator().manual_seed(seed))
    batches = [images[index] for index in minibatch_indices(len(images), batch_size, shuffle=False)]
    workers = min(workers, len(batches)) if device.type == "cpu" else 1
    started = time.perf_counter()
    progress = tqdm(total=len(batches), desc="nll", leave=False)
    if workers == 1:
        sums = []
        for index, batch in enumerate(batches):
            sums.append(_negative_bound(model, batch, index, num_samples=num_samples, seed=seed))
            progress.update()
    else:
        sums = _bounds_in_workers(model, batches, workers, num_samples=num_samples, seed=seed, progress=progress)
    progress.close()
    nll = sum(sums) / len(test)
    dims = math.prod(test.images.shape[1:])
    return {
        "nll_nats": nll,
        "bits_per_dim": nll / (dims * math.log(2)),
        "nll_samples": num_samples,
        "nll_images": len(test),
        "nll_seconds": time.perf_counter() - started,
        "nll_workers": workers,
    }


def _bounds_in_workers(
    model: ScoredModel, batches: list[Tensor], workers: int, *, num_samples: int, seed: int, progress: tqdm
) -> list[float]:
    """`_negative_bound` of every batch in `workers` spawned processes (fork is unsafe once torch has started
    threads), in batch order. An interrupt (Ctrl-C) or error stops the workers at once instead of letting
    them finish the queue."""
    context = multiprocessing.get_context("spawn")
    pool = ProcessPoolExecutor(workers, mp_context=context, initializer=_start_worker, initargs=(model,))
    try:
        jobs = [pool.submit(_worker_bound, batch, index, num_samples, seed) for index, batch in enumerate(batches)]
        for _ in as_completed(jobs):
            progress.update()
        return [job.result() for job in jobs]  # added in batch order: the same float either way
    except BrokenProcessPool as error:
        raise RuntimeError(
            f"the NLL's {workers} worker processes stopped before finishing ({error}). A script that "
            "evaluates must start under `if __name__ == \"__main__\":` (each worker imports it again), "
            "and each worker needs memory for a copy of the model; or score in this process with "
            "evaluation.nll_workers=1 (`--set evaluation.nll_workers=1`)"
        ) from error
    except BaseException:
        for process in list(getattr(pool, "_processes", {}).values()):  # the executor has no public terminate
            process.terminate()
        raise
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _negative_bound(model: ScoredModel, images: Tensor, index: int, *, num_samples: int, seed: int) -> float:
    """−Σ log p(x) bound over one batch, its samples drawn from the batch's own generator."""
    device = model_device(model)
    batch_seed = int(np.random.SeedSequence((seed, index)).generate_state(1, np.uint64)[0])
    generator = torch.Generator(device=device).manual_seed(batch_seed)
    return -model.log_likelihood_bound(images.to(device), num_samples=num_samples, generator=generator).sum().item()


_worker_model: ScoredModel | None = None  # the model of an NLL worker process (set by `_start_worker`)


def _start_worker(model: ScoredModel) -> None:
    global _worker_model
    configure_threads(1)
    _worker_model = model


def _worker_bound(images: Tensor, index: int, num_samples: int, seed: int) -> float:
    assert _worker_model is not None, "_start_worker runs first in every worker"
    return _negative_bound(_worker_model, images, index, num_samples=num_samples, seed=seed)


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
            workers=usable_cores() if settings.nll_workers is None else settings.nll_workers,
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
