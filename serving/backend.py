"""The sampler behind the HTTP app: what a request asks of a model, what comes back, and the backend.

The FastAPI app (`npdraw_serving.api`) only sees the `SamplerBackend` interface. `LocalSampler` runs the
models in the serving process: in each Ray Serve replica (`npdraw_serving.deployments`, models from Serve's
multiplexed loader) and in `npdraw serve --no-ray` (models from a `ModelPool`). Sample requests are merged
into batches (`sample_batcher`) and run through `run_batch` / `run_jobs`, so a result never depends on the
mode or the batch that produced it. The studio's jobs (`DecodeJob`: given latents → canvas and image;
`EncodeJob`: images → their most likely latents) run through `run_decode` and `run_encode`, unbatched: one
render and one decoder pass.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from npdraw_serving.batching import Batcher, QueueFull

if TYPE_CHECKING:
    from npdraw_core.model import NPDraw
    from npdraw_serving.catalog import ModelCatalog
    from npdraw_serving.metrics import Metrics
    from npdraw_serving.options import BatchingOptions, ServeOptions


@dataclass(frozen=True)
class SampleJob:
    """One request's work: `num_samples` images of `model`, sample i from seed + i."""

    model: str
    seed: int
    num_samples: int
    temperature: float = 1.0
    top_k: int | None = None

    @property
    def seeds(self) -> list[int]:
        return list(range(self.seed, self.seed + self.num_samples))


@dataclass
class SampleResult:
    images: np.ndarray  # (N, C, H, W) float32 in [0, 1]
    canvases: np.ndarray  # (N, C, S, S) float32
    whether: np.ndarray  # (N, T) bool
    what: np.ndarray  # (N, T) int64, exemplar index per step
    where: np.ndarray  # (N, T) int64, cell index per step
    batch_images: int  # images in the model call that produced this (shows batching at work)


@dataclass(frozen=True)
class DecodeJob:
    """Given hard latents (N, T) of `model` → their canvases and decoded images (indices already checked
    against the model's bank and grid; a skipped step's exemplar and cell are ignored)."""

    model: str
    whether: np.ndarray  # (N, T) bool
    what: np.ndarray  # (N, T) int64
    where: np.ndarray  # (N, T) int64


@dataclass(frozen=True)
class EncodeJob:
    """Images (N, C, H, W) float32 in [0, 1] at the model's image size → their most likely latents."""

    model: str
    images: np.ndarray


class Overloaded(Exception):
    """The sampler's queue is full: the client should retry after `retry_after_s` (HTTP 429)."""

    def __init__(self, message: str, retry_after_s: float | None):
        super().__init__(message)
        self.retry_after_s = retry_after_s


class SamplerBackend(Protocol):
    async def sample(self, job: SampleJob) -> SampleResult: ...

    async def decode(self, job: DecodeJob) -> SampleResult: ...

    async def encode(self, job: EncodeJob) -> SampleResult: ...

    async def health(self) -> dict[str, Any]:
        """Details when the sampler can sample; raises when it cannot."""
        ...


def sample_batcher(
    run: Callable[[list[SampleJob]], Awaitable[list[SampleResult]]], batching: BatchingOptions, *, max_waiting: int = -1
) -> Batcher[SampleJob, SampleResult]:
    """The batcher of sample jobs, sized by images (not requests); batching off: one request per call."""
    return Batcher(
        run,
        size=lambda job: job.num_samples,
        max_images=batching.max_batch_images,
        wait_timeout_s=batching.batch_wait_timeout_s if batching.enabled else 0.0,
        max_jobs=None if batching.enabled else 1,
        max_waiting=max_waiting,
    )


def run_jobs(model: NPDraw, jobs: list[SampleJob]) -> list[SampleResult]:
    """Jobs for one model, merged into as few model calls as their sampling options allow.

    Per-sample generators (`generators_for`) make sample i of a job bit-identical whatever else shares its
    call; jobs with different temperature / top_k cannot share one, so they are grouped by those.
    """
    from npdraw_core.sampling import generators_for

    results: list[SampleResult | None] = [None] * len(jobs)
    groups: dict[tuple[float, int | None], list[int]] = {}
    for index, job in enumerate(jobs):
        groups.setdefault((job.temperature, job.top_k), []).append(index)
    for (temperature, top_k), members in groups.items():
        seeds = [seed for i in members for seed in jobs[i].seeds]
        images, canvases, latents = model.sample(
            len(seeds), generator=generators_for(seeds), temperature=temperature, top_k=top_k
        )
        indices = latents.indices()
        arrays = {
            "images": images.float().cpu().numpy(),
            "canvases": canvases.float().cpu().numpy(),
            "whether": indices["whether"].bool().cpu().numpy(),
            "what": indices["what"].cpu().numpy(),
            "where": indices["where"].cpu().numpy(),
        }
        start = 0
        for i in members:
            stop = start + jobs[i].num_samples
            results[i] = SampleResult(**{k: v[start:stop] for k, v in arrays.items()}, batch_images=len(seeds))
            start = stop
    return results  # type: ignore[return-value]


async def run_batch(
    jobs: list[SampleJob], get_model: Callable[[str], Awaitable[NPDraw]], metrics: Metrics | None
) -> list[SampleResult]:
    """A batch of jobs, possibly for several models: one `run_jobs` per model, in a worker thread so that
    the event loop keeps accepting requests for the next batch meanwhile."""
    by_model: dict[str, list[int]] = {}
    for index, job in enumerate(jobs):
        by_model.setdefault(job.model, []).append(index)
    results: list[SampleResult | None] = [None] * len(jobs)
    for name, members in by_model.items():
        model = await get_model(name)
        outputs = await asyncio.to_thread(run_jobs, model, [jobs[i] for i in members])
        for i, output in zip(members, outputs, strict=True):
            results[i] = output
        if metrics is not None:
            metrics.observe_batch(outputs[0].batch_images)
    return results  # type: ignore[return-value]


def run_decode(model: NPDraw, job: DecodeJob) -> SampleResult:
    """One render and one decoder pass: the canvas of the given latents and the image shown for it."""
    import torch

    from npdraw_core.latents import Latents

    latents = Latents.from_indices(
        what=torch.as_tensor(job.what), where=torch.as_tensor(job.where), whether=torch.as_tensor(job.whether),
        bank_size=model.bank.shape[0], num_cells=model.grid.num_cells,
    )
    return _decoded(model, latents.to(model.bank.device))


def run_encode(model: NPDraw, job: EncodeJob) -> SampleResult:
    """The posterior's most likely latents of each image (`posterior_mode`), rendered and decoded."""
    import torch

    from npdraw_core.posterior import posterior_mode

    with torch.no_grad():
        logits = model.encode(torch.as_tensor(job.images, dtype=torch.float32, device=model.bank.device))
    return _decoded(model, posterior_mode(logits))


def _decoded(model: NPDraw, latents) -> SampleResult:
    import torch

    with torch.no_grad():
        canvases = model.render(latents)
        images = model.output.mean(model.decode(canvases))
    indices = latents.indices()
    return SampleResult(
        images=images.float().cpu().numpy(),
        canvases=canvases.float().cpu().numpy(),
        whether=indices["whether"].bool().cpu().numpy(),
        what=indices["what"].cpu().numpy(),
        where=indices["where"].cpu().numpy(),
        batch_images=latents.batch_size,
    )


def check_can_sample(model: NPDraw) -> None:
    """Raise unless the model draws a finite image in [0, 1] (the health check; cheap: one bulk sample)."""
    import torch

    images, _, _ = model.sample(1, generator=torch.Generator().manual_seed(0))
    if not torch.isfinite(images).all() or images.min() < 0 or images.max() > 1:
        raise RuntimeError("the model sampled non-finite or out-of-range pixels")


def load_model(path: str, device: str, metrics: Metrics | None, name: str) -> NPDraw:
    from npdraw_core.model_file import load_trained

    start = time.perf_counter()
    model = load_trained(path, device=device)
    if metrics is not None:
        metrics.observe_model_load(name, time.perf_counter() - start)
    return model


class ModelPool:
    """Loaded models, least recently used evicted beyond `capacity` (the no-Ray twin of Serve's
    multiplexing). Not thread-safe: `LocalSampler` calls it from one worker at a time."""

    def __init__(self, catalog: ModelCatalog, *, capacity: int, device: str, metrics: Metrics | None = None):
        self.catalog, self.capacity, self.device, self.metrics = catalog, capacity, device, metrics
        self.models: OrderedDict[str, NPDraw] = OrderedDict()

    def get(self, name: str) -> NPDraw:
        if name in self.models:
            self.models.move_to_end(name)
            return self.models[name]
        model = load_model(str(self.catalog.entries[name].path), self.device, self.metrics, name)
        self.models[name] = model
        while len(self.models) > self.capacity:
            self.models.popitem(last=False)
        return model


class LocalSampler:
    """Runs model calls one at a time in a worker thread of this process (the event loop keeps serving
    other requests meanwhile). Sample jobs go through the continuous batcher; beyond `max_queued` waiting
    jobs (-1: no cap, as in a Serve replica, whose queue Serve bounds), new ones are refused with
    `Overloaded`, like Serve's `max_queued_requests`.

    `get_model(name)`: the loaded model (Serve's multiplexed loader, or a `ModelPool` off the event loop).
    """

    def __init__(
        self,
        get_model: Callable[[str], Awaitable[NPDraw]],
        catalog: ModelCatalog,
        options: ServeOptions,
        metrics: Metrics | None = None,
        *,
        max_queued: int,
    ):
        self.get_model, self.metrics = get_model, metrics
        self.last_model = catalog.names[0]  # what the health check tries: the most recently used model
        self.max_queued, self.retry_after_s = max_queued, options.sampler.retry_after_s
        self.batcher = sample_batcher(self._run, options.batching, max_waiting=max_queued)
        self.waiting = 0
        self.lock = asyncio.Lock()  # one model call at a time: samples, edits and health checks

    async def _model(self, name: str) -> NPDraw:
        self.last_model = name
        return await self.get_model(name)

    async def sample(self, job: SampleJob) -> SampleResult:
        try:
            return await self.batcher.submit(job)
        except QueueFull as error:
            raise Overloaded(str(error), self.retry_after_s) from error

    async def decode(self, job: DecodeJob) -> SampleResult:
        return await self._queued(run_decode, job)

    async def encode(self, job: EncodeJob) -> SampleResult:
        return await self._queued(run_encode, job)

    async def _queued(self, work, job):
        if self.lock.locked() and 0 <= self.max_queued <= self.waiting:
            raise Overloaded(f"{self.waiting} requests are already waiting for the sampler", self.retry_after_s)
        self.waiting += 1
        try:
            await self.lock.acquire()
        finally:
            self.waiting -= 1  # also when the client went away while waiting
        try:
            return await asyncio.to_thread(work, await self._model(job.model), job)
        finally:
            self.lock.release()

    async def _run(self, jobs: list[SampleJob]) -> list[SampleResult]:
        async with self.lock:
            return await run_batch(jobs, self._model, self.metrics)

    async def health(self) -> dict[str, Any]:
        """Serve's health check and GET /v1/health: the most recently used model draws a valid image."""
        async with self.lock:
            name = self.last_model
            await asyncio.to_thread(check_can_sample, await self.get_model(name))
        return {"checked_model": name}
