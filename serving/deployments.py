"""The Ray Serve application: an HTTP ingress and a sampler deployment.

    HTTP proxy ──► Ingress (FastAPI app of npdraw_serving.api: validation, encoding, metrics)
                     │  handle.options(multiplexed_model_id=MODEL).sample.remote(job)
                     ▼
                   Sampler × autoscaled replicas
                     @serve.multiplexed: loads models lazily, keeps `max_models_per_replica`, LRU;
                                         the router sends a model's requests to replicas holding it
                     Batcher:            whenever the model is free, one call for the waiting jobs, up to
                                         `max_batch_images` images (not requests); see npdraw_serving.batching
                                         for why not `@serve.batch`

Several models share one sampler deployment through multiplexing rather than one deployment per model:
replicas and autoscaling are shared, a rarely used model costs memory only while it is in use, and adding
a model is a config change. `run_batch` groups a batch's jobs by model and sampling options, and per-sample
seeds make every image independent of its batch.

Backpressure: each deployment queues at most `max_queued_requests` per caller; beyond it Serve rejects the
request. The proxy turns an ingress rejection into 429 + Retry-After (`BackpressureConfig`), and the
ingress turns a sampler rejection (`BackPressureError` from the handle) into the same 429.
"""

from __future__ import annotations

import asyncio
import logging
import os
from typing import Any

from ray import serve
from ray.serve.config import BackpressureConfig
from ray.serve.exceptions import BackPressureError
from ray.serve.handle import DeploymentHandle

from npdraw_serving.backend import (
    DecodeJob,
    EncodeJob,
    Overloaded,
    SampleJob,
    SampleResult,
    check_can_sample,
    load_model,
    run_batch,
    run_decode,
    run_encode,
    sample_batcher,
)
from npdraw_serving.metrics import Metrics, RayFactory
from npdraw_serving.options import ServeOptions

logger = logging.getLogger("ray.serve")

APP_NAME = "npdraw"


@serve.deployment(name="Sampler")
class Sampler:
    async def __init__(self, options: dict[str, Any]):
        import torch

        self.options = ServeOptions.model_validate(options)
        sampler = self.options.sampler
        if sampler.torch_threads is not None:
            torch.set_num_threads(sampler.torch_threads)
        self.device = self.options.device
        if self.device == "auto":
            self.device = "cuda" if torch.cuda.is_available() else "cpu"
        self.paths = {name: str(path) for name, path in self.options.models.items()}
        self.metrics = Metrics(RayFactory())
        # Serve's max_ongoing_requests bounds the jobs in a replica; its queue (max_queued_requests) the rest.
        self.batcher = sample_batcher(self._run, self.options.batching)
        # Multiplexing wired at init, because the LRU size is a setting (Serve detects it on the instance).
        # (A plain function: Serve stores its LRU cache on the decorated object, which a bound method refuses.)
        async def load(model_id: str):
            return await self._load(model_id)

        self.get_model = serve.multiplexed(max_num_models_per_replica=sampler.max_models_per_replica)(load)
        # Load and try the first model now: a model that cannot sample fails the deployment at start, and
        # the first request does not pay the load.
        self.last_model = next(iter(self.paths))
        await self.check_health()

    async def _load(self, name: str):
        if name not in self.paths:  # the ingress resolves names first; this guards direct handle calls
            raise KeyError(f"unknown model {name!r}")
        model = await asyncio.to_thread(load_model, self.paths[name], self.device, self.metrics, name)
        return model

    async def sample(self, job: SampleJob) -> SampleResult:
        return await self.batcher.submit(job)

    async def _run(self, jobs: list[SampleJob]) -> list[SampleResult]:
        return await run_batch(jobs, self._model, self.metrics)

    async def _model(self, name: str):
        self.last_model = name
        return await self.get_model(name)

    async def decode(self, job: DecodeJob) -> SampleResult:
        """The studio's edits: one render and one decoder pass, never batched (a person waits on it)."""
        model = await self.get_model(job.model)
        return await asyncio.to_thread(run_decode, model, job)

    async def encode(self, job: EncodeJob) -> SampleResult:
        model = await self.get_model(job.model)
        return await asyncio.to_thread(run_encode, model, job)

    async def health(self) -> dict[str, Any]:
        await self.check_health()
        return {"replica": serve.get_replica_context().replica_id.unique_id, "pid": os.getpid()}

    async def check_health(self) -> None:
        """Serve's health check: fails when the most recently used model (still loaded: LRU) cannot
        sample; Serve then replaces the replica."""
        model = await self.get_model(self.last_model)
        await asyncio.to_thread(check_can_sample, model)


class RayBackend:
    """The ingress's view of the sampler deployment (the `SamplerBackend` of the FastAPI app)."""

    def __init__(self, sampler: DeploymentHandle):
        self.sampler = sampler

    async def sample(self, job: SampleJob) -> SampleResult:
        try:
            return await self.sampler.options(multiplexed_model_id=job.model).sample.remote(job)
        except BackPressureError as error:
            raise Overloaded(str(error), error.retry_after_s) from error

    async def decode(self, job: DecodeJob) -> SampleResult:
        return await self._call("decode", job)

    async def encode(self, job: EncodeJob) -> SampleResult:
        return await self._call("encode", job)

    async def _call(self, method: str, job):
        try:
            handle = self.sampler.options(multiplexed_model_id=job.model)
            return await getattr(handle, method).remote(job)
        except BackPressureError as error:
            raise Overloaded(str(error), error.retry_after_s) from error

    async def health(self) -> dict[str, Any]:
        try:
            return await self.sampler.health.remote()
        except BackPressureError as error:
            raise Overloaded(str(error), error.retry_after_s) from error


@serve.deployment(name="Ingress")
@serve.ingress()
class Ingress:
    def __init__(self, sampler: DeploymentHandle, options: dict[str, Any]):
        from npdraw_serving.catalog import ModelCatalog

        self.options = ServeOptions.model_validate(options)
        self.catalog = ModelCatalog.read(self.options.models)
        self.backend = RayBackend(sampler)
        self.metrics = Metrics(RayFactory())

    def __serve_build_asgi_app__(self):
        from npdraw_serving.api import create_app

        return create_app(self.catalog, self.backend, self.options, self.metrics)


def application(options: ServeOptions, *, num_gpus: float = 0.0):
    """The bound Serve application for `options`: deployment settings from the options (a config file's
    `deployments:` section can still override them, as Serve intends)."""
    sampler, ingress = options.sampler, options.ingress
    payload = options.model_dump(mode="json")
    sampler_options: dict[str, Any] = dict(
        max_ongoing_requests=sampler.max_ongoing_requests,
        max_queued_requests=sampler.max_queued_requests,
        backpressure_config=BackpressureConfig(status_code=429, retry_after_s=sampler.retry_after_s),
        ray_actor_options={"num_cpus": sampler.num_cpus, "num_gpus": num_gpus},
        health_check_period_s=sampler.health_check_period_s,
        health_check_timeout_s=sampler.health_check_timeout_s,
    )
    if sampler.num_replicas is not None:
        sampler_options["num_replicas"] = sampler.num_replicas
    else:
        sampler_options["autoscaling_config"] = sampler.autoscaling_config
    bound_sampler = Sampler.options(**sampler_options).bind(payload)
    return Ingress.options(
        num_replicas=ingress.num_replicas,
        max_ongoing_requests=ingress.max_ongoing_requests,
        max_queued_requests=ingress.max_queued_requests,
        backpressure_config=BackpressureConfig(status_code=429, retry_after_s=ingress.retry_after_s),
        ray_actor_options={"num_cpus": ingress.num_cpus},
    ).bind(bound_sampler, payload)
