"""The Ray Serve application: one deployment whose replicas serve the HTTP API and hold the models.

    HTTP proxy ──► Sampler × autoscaled replicas, each running
                     the FastAPI app of npdraw_serving.api   validation, encoding, metrics
                     LocalSampler (npdraw_serving.backend)   continuous batching: whenever the model is free,
                                                             one call for the waiting requests, up to
                                                             `max_batch_images` images (npdraw_serving.batching
                                                             says why not `@serve.batch`)
                     @serve.multiplexed loader               models loaded lazily, `max_models_per_replica`
                                                             kept, least recently used evicted

Why no separate ingress deployment in front of the sampler: every hop between deployments costs CPU per
request (an actor call each way, ASGI messages relayed), and on a small machine that CPU, not the model,
bounds a batched service. Measured on 2 cores (demo model, 1-image requests, concurrency 32): ingress →
sampler 36 images/s with a p99 of 1.3 s, one deployment 43 images/s with a p99 of 0.9 s.

Several models share the deployment through multiplexing rather than one deployment per model: replicas and
autoscaling are shared, a rarely used model costs memory only while it is in use, and adding a model is a
config change. The request body names the model; a client that also sends the header
`serve_multiplexed_model_id: NAME` lets Serve's router prefer a replica that already holds it.

Backpressure: each replica runs at most `max_ongoing_requests`; beyond them Serve queues at most
`max_queued_requests` per proxy and the proxy answers the rest 429 + Retry-After (`BackpressureConfig`).
"""

from __future__ import annotations

import asyncio
from typing import Any

from ray import serve
from ray.serve.config import BackpressureConfig

from npdraw_serving.backend import LocalSampler, load_model
from npdraw_serving.metrics import Metrics, RayFactory
from npdraw_serving.options import ServeOptions

APP_NAME = "npdraw"


@serve.deployment(name="Sampler")
@serve.ingress()
class Sampler:
    async def __init__(self, options: dict[str, Any]):
        import torch

        from npdraw_serving.catalog import ModelCatalog

        self.options = ServeOptions.model_validate(options)
        sampler = self.options.sampler
        if sampler.torch_threads is not None:
            torch.set_num_threads(sampler.torch_threads)
        device = self.options.device  # `load_trained` resolves "auto"
        self.catalog = ModelCatalog.read(self.options.models)
        self.metrics = Metrics(RayFactory())

        # Multiplexing wired at init, because the LRU size is a setting (Serve detects it on the instance).
        # (A plain function: Serve stores its LRU cache on the decorated object, which a bound method refuses.)
        async def load(name: str):
            path = str(self.catalog.entries[name].path)  # the app resolved the name: it is in the catalog
            return await asyncio.to_thread(load_model, path, device, self.metrics, name)

        get_model = serve.multiplexed(max_num_models_per_replica=sampler.max_models_per_replica)(load)
        # Serve bounds the queue (max_queued_requests), so the replica's own cap is off.
        self.backend = LocalSampler(get_model, self.catalog, self.options, self.metrics, max_queued=-1)
        # Load and try the first model now: a model that cannot sample fails the deployment at start, and
        # the first request does not pay the load.
        await self.check_health()

    def __serve_build_asgi_app__(self):
        from npdraw_serving.api import create_app

        return create_app(self.catalog, self.backend, self.options, self.metrics)

    async def check_health(self) -> None:
        """Serve's health check: fails when the most recently used model (still loaded: LRU) cannot
        sample; Serve then replaces the replica."""
        await self.backend.health()


def application(options: ServeOptions, *, num_gpus: float = 0.0):
    """The bound Serve application for `options`: deployment settings from the options (a config file's
    `deployments:` section can still override them, as Serve intends)."""
    sampler = options.sampler
    settings: dict[str, Any] = dict(
        max_ongoing_requests=sampler.max_ongoing_requests,
        max_queued_requests=sampler.max_queued_requests,
        backpressure_config=BackpressureConfig(status_code=429, retry_after_s=sampler.retry_after_s),
        ray_actor_options={"num_cpus": sampler.num_cpus, "num_gpus": num_gpus},
        health_check_period_s=sampler.health_check_period_s,
        health_check_timeout_s=sampler.health_check_timeout_s,
    )
    if sampler.num_replicas is not None:
        settings["num_replicas"] = sampler.num_replicas
    else:
        settings["autoscaling_config"] = sampler.autoscaling_config
    return Sampler.options(**settings).bind(options.model_dump(mode="json"))
