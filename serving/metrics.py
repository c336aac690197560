"""npdraw's service metrics behind one small facade, with two exporters.

Inside Ray Serve replicas the metrics are `ray.serve.metrics` objects: Ray's per-node metrics agent
exports them in Prometheus format, prefixed `ray_` and tagged with deployment / replica / application
(a `prometheus_client` registry inside a replica would be scraped by nobody). Without Ray
(`npdraw serve --no-ray`, tests) they live in a `prometheus_client` registry that the app serves at
/metrics. The names are the same apart from Ray's `ray_` prefix:

    npdraw_images_generated_total{model, format}     images returned to clients
    npdraw_requests_total{route, status}             HTTP requests by route template and status code
    npdraw_request_latency_seconds{route}            histogram
    npdraw_batch_images                              histogram: images per model call (the batch size)
    npdraw_model_load_seconds{model}                 histogram: time to load a model file
"""

from __future__ import annotations

from typing import Any

LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
LOAD_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class Metrics:
    def __init__(self, factory: Any):
        """`factory`: `PrometheusFactory(registry)` or `RayFactory()`."""
        self._images = factory.counter("npdraw_images_generated", "Images sampled and returned", ("model", "format"))
        self._requests = factory.counter("npdraw_requests", "HTTP requests by route and status", ("route", "status"))
        self._latency = factory.histogram(
            "npdraw_request_latency_seconds", "HTTP request latency", LATENCY_BUCKETS, ("route",)
        )
        self._batch = factory.histogram("npdraw_batch_images", "Images per model call", BATCH_BUCKETS, ())
        self._load = factory.histogram("npdraw_model_load_seconds", "Model file load time", LOAD_BUCKETS, ("model",))

    def count_images(self, model: str, fmt: str, count: int) -> None:
        self._images.inc(count, model=model, format=fmt)

    def observe_request(self, route: str, status: int, seconds: float) -> None:
        self._requests.inc(1, route=route, status=str(status))
        self._latency.observe(seconds, route=route)

    def observe_batch(self, images: int) -> None:
        self._batch.observe(images)

    def observe_model_load(self, model: str, seconds: float) -> None:
        self._load.observe(seconds, model=model)


class _Prometheus:
    def __init__(self, metric, labels: tuple[str, ...]):
        self.metric, self.labels = metric, labels

    def _child(self, tags: dict[str, str]):
        return self.metric.labels(**tags) if self.labels else self.metric

    def inc(self, value: float, **tags: str) -> None:
        self._child(tags).inc(value)

    def observe(self, value: float, **tags: str) -> None:
        self._child(tags).observe(value)


class PrometheusFactory:
    """Metrics in a `prometheus_client` registry (a private one per app, so tests do not collide)."""

    def __init__(self, registry=None):
        from prometheus_client import CollectorRegistry

        self.registry = registry if registry is not None else CollectorRegistry()

    def counter(self, name: str, doc: str, labels: tuple[str, ...]) -> _Prometheus:
        from prometheus_client import Counter

        return _Prometheus(Counter(name, doc, labels, registry=self.registry), labels)

    def histogram(self, name: str, doc: str, buckets: tuple[float, ...], labels: tuple[str, ...]) -> _Prometheus:
        from prometheus_client import Histogram

        return _Prometheus(Histogram(name, doc, labels, buckets=buckets, registry=self.registry), labels)


class _Ray:
    def __init__(self, metric):
        self.metric = metric

    def inc(self, value: float, **tags: str) -> None:
        self.metric.inc(value, tags=tags or None)

    def observe(self, value: float, **tags: str) -> None:
        self.metric.observe(value, tags=tags or None)


class RayFactory:
    """Metrics through `ray.serve.metrics` (only inside a Serve replica)."""

    def counter(self, name: str, doc: str, labels: tuple[str, ...]) -> _Ray:
        from ray.serve.metrics import Counter

        return _Ray(Counter(name, description=doc, tag_keys=labels))

    def histogram(self, name: str, doc: str, buckets: tuple[float, ...], labels: tuple[str, ...]) -> _Ray:
        from ray.serve.metrics import Histogram

        return _Ray(Histogram(name, description=doc, boundaries=list(map(float, buckets)), tag_keys=labels))
