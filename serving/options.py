"""Settings of the sampling service: one validated object, the `args` of `npdraw_serving.app:build`.

The same settings drive `npdraw serve` (Ray Serve or `--no-ray`) and `serve run` / `serve deploy` of
configs/serve.yaml, so a setting means one thing everywhere. Every model is strict (`extra="forbid"`): a
misspelt key is an error that names it, not a silently ignored default. Importing this module is cheap (no
torch, no ray): the CLI parses settings before deciding what to import.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

DEFAULT_AUTOSCALING: dict[str, Any] = {
    "min_replicas": 1,
    "max_replicas": 2,
    "target_ongoing_requests": 16,  # a replica batches many requests: scale when ~16 wait on it, not 2
    "upscale_delay_s": 5,
    "downscale_delay_s": 30,
    "look_back_period_s": 15,  # must exceed Serve's 10 s metrics push interval
}


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class BatchingOptions(Strict):
    enabled: bool = True  # off: every request is its own model call (for comparison)
    max_batch_images: int = Field(64, ge=1)  # a batch holds at most this many *images*, whatever the requests
    # How long the oldest request waits for company when the model is idle; a busy model's next batch takes
    # every request that arrived meanwhile (npdraw_serving.batching).
    batch_wait_timeout_s: float = Field(0.01, ge=0, le=10)


class SamplerOptions(Strict):
    """The Serve deployment: its replicas serve the HTTP API, hold the models and run the batches."""

    num_replicas: int | None = Field(None, ge=1)  # a fixed count; leave unset to autoscale
    autoscaling_config: dict[str, Any] | None = Field(default_factory=lambda: dict(DEFAULT_AUTOSCALING))
    max_ongoing_requests: int = Field(128, ge=1)  # 2 × max_batch_images: one batch runs while the next fills
    max_queued_requests: int = Field(64, ge=-1)  # per caller (each HTTP proxy); beyond it: 429
    retry_after_s: float = Field(1.0, ge=0)
    num_cpus: float = Field(1.0, ge=0)
    num_gpus: float | None = Field(None, ge=0)  # None: one GPU when the cluster has one, else none
    max_models_per_replica: int = Field(2, ge=1)  # multiplexed models kept loaded; LRU beyond
    torch_threads: int | None = Field(1, ge=1)  # replicas share the node's cores; 1 avoids oversubscribing
    health_check_period_s: float = Field(10.0, gt=0)
    health_check_timeout_s: float = Field(30.0, gt=0)

    @model_validator(mode="after")
    def _replicas_or_autoscaling(self) -> SamplerOptions:
        if self.num_replicas is not None:
            self.autoscaling_config = None  # a fixed count wins: Serve rejects both together
        return self


class ServeOptions(Strict):
    models: dict[str, str]  # name → a model.pt or a run directory
    max_samples: int = Field(64, ge=1)  # the most images one request may ask for
    device: str = "auto"
    batching: BatchingOptions = Field(default_factory=BatchingOptions)
    sampler: SamplerOptions = Field(default_factory=SamplerOptions)

    @model_validator(mode="before")
    @classmethod
    def _no_ingress(cls, data: Any) -> Any:
        if isinstance(data, dict) and "ingress" in data:
            raise ValueError(
                "`ingress` settings are gone: the service is one deployment, whose replicas serve the HTTP API "
                "and hold the models (npdraw_serving.deployments); remove the `ingress` section and set replicas, "
                "queues and CPUs under `sampler`"
            )
        return data

    @field_validator("models")
    @classmethod
    def _some_models(cls, models: dict[str, str]) -> dict[str, str]:
        if not models:
            raise ValueError("serve at least one model: models: {name: path/to/model.pt or run directory}")
        for name in models:
            check_model_name(name)
        return models

    @model_validator(mode="after")
    def _requests_fit_a_batch(self) -> ServeOptions:
        if self.batching.enabled and self.max_samples > self.batching.max_batch_images:
            raise ValueError(
                f"max_samples ({self.max_samples}) exceeds batching.max_batch_images "
                f"({self.batching.max_batch_images}): a request must fit in one batch; raise the batch size "
                "or lower max_samples"
            )
        return self


def check_model_name(name: str) -> str:
    # Names appear in URLs (/v1/bank/NAME.png) and as Serve multiplexed model ids.
    if not name or not all(c.isalnum() or c in "-_." for c in name) or name.startswith("."):
        raise ValueError(f"model name {name!r}: use letters, digits, '-', '_' and '.' (not first)")
    return name


def parse_model_specs(specs: list[str]) -> dict[str, str]:
    """`name=path` or `path` (named after its run directory) → {name: path}; duplicate names are errors."""
    models: dict[str, str] = {}
    for spec in specs:
        name, sep, path = spec.partition("=")
        if not sep:
            path = spec
            source = Path(spec)
            name = (source.parent if source.suffix == ".pt" else source).resolve().name
        check_model_name(name)
        if name in models:
            raise ValueError(
                f"two models are named {name!r} ({models[name]} and {path}); name them: NAME=PATH"
            )
        models[name] = path
    return models
