"""The sampling service on a real Ray Serve deployment, local Ray on 2 CPUs, HTTP on loopback only.

One application for the module (one Sampler replica serving HTTP and holding one model at a time, so
that the second model exercises multiplexing and LRU eviction). Bounded: the burst is 40 requests.
"""

from __future__ import annotations

import asyncio
import io
import os
import socket
import time

import numpy as np
import pytest

ray = pytest.importorskip("ray")
httpx = pytest.importorskip("httpx")

from test_serving import tiny_models  # noqa: E402, F401  (the session fixture: two tiny trained models)

pytestmark = pytest.mark.slow

MAX_QUEUED = 2


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def service(tiny_models):  # noqa: F811
    from ray import serve

    from npdraw_serving.app import build
    from npdraw_serving.deployments import APP_NAME
    from npdraw_serving.options import ServeOptions

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # no token file written for a throwaway cluster
    http_port, metrics_port = free_port(), free_port()
    ray.init(
        address="local", num_cpus=2, include_dashboard=False, log_to_driver=False, _node_ip_address="127.0.0.1",
        _metrics_export_port=metrics_port,
    )
    options = ServeOptions(
        models={name: str(path) for name, path in tiny_models.items()},
        max_samples=8,
        batching={"max_batch_images": 64, "batch_wait_timeout_s": 0.05},
        sampler={
            "num_replicas": 1, "num_cpus": 0.5, "max_ongoing_requests": 6, "max_queued_requests": MAX_QUEUED,
            "retry_after_s": 2, "max_models_per_replica": 1,
        },
    )
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": http_port})
        serve.run(build(options), name=APP_NAME, route_prefix="/")
        yield f"http://127.0.0.1:{http_port}", f"http://127.0.0.1:{metrics_port}/metrics"
    finally:
        serve.shutdown()
        ray.shutdown()


def sample(url: str, **body) -> httpx.Response:
    return httpx.post(f"{url}/v1/samples", json=body, timeout=120)


def images(response: httpx.Response) -> np.ndarray:
    with np.load(io.BytesIO(response.content)) as archive:
        return archive["images"]


def test_samples_over_http_match_the_in_process_app(service, tiny_models):  # noqa: F811
    from fastapi.testclient import TestClient

    from npdraw_serving.app import local_app

    url, _ = service
    response = sample(url, model="a", seed=21, num_samples=4, format="npz")
    assert response.status_code == 200, response.text
    assert response.headers["x-npdraw-seed"] == "21"
    app, _ = local_app({"models": {"a": str(tiny_models["a"])}, "max_samples": 8})
    local = TestClient(app).post("/v1/samples", json={"seed": 21, "num_samples": 4, "format": "npz"})
    np.testing.assert_array_equal(images(response), images(local))  # same seeds, same bits, any batch
    assert httpx.get(f"{url}/v1/models", timeout=30).json()["models"][0]["name"] == "a"
    assert sample(url, model="a", num_samples=0, format="json").status_code == 422
    assert sample(url, model="nope").status_code == 404


def test_the_studio_page_decode_and_encode_on_serve(service):
    url, _ = service
    page = httpx.get(f"{url}/", timeout=30)
    assert page.status_code == 200 and "npdraw studio" in page.text
    assert httpx.get(f"{url}/studio/studio.js", timeout=30).status_code == 200
    drawn = sample(url, model="a", seed=4, format="json", return_latents=True).json()["samples"][0]
    latents = {key: [part[key] for part in drawn["parts"]] for key in ("whether", "exemplar", "cell")}
    decoded = httpx.post(f"{url}/v1/decode", json={"model": "a", "latents": latents}, timeout=120)
    assert decoded.status_code == 200, decoded.text
    assert decoded.json()["parts"] == drawn["parts"]
    encoded = httpx.post(f"{url}/v1/encode", json={"model": "a", "image": drawn["image_png"]}, timeout=120)
    assert encoded.status_code == 200 and len(encoded.json()["latents"]["whether"]) == 36
    bad = httpx.post(f"{url}/v1/decode", json={"model": "a", "latents": {**latents, "cell": [99] * 36}}, timeout=30)
    assert bad.status_code == 422 and bad.json()["detail"][0]["field"] == "latents.cell.0"


def test_a_second_model_is_multiplexed(service):
    url, _ = service
    a = sample(url, model="a", seed=3, format="npz")
    # The header is Serve's multiplexed routing (to a replica holding b); the body names the model.
    b = httpx.post(
        f"{url}/v1/samples", json={"model": "b", "seed": 3, "format": "npz"},
        headers={"serve_multiplexed_model_id": "b"}, timeout=120,
    )  # one model per replica: evicts a
    assert a.status_code == b.status_code == 200
    assert not np.array_equal(images(a), images(b))
    again = sample(url, model="a", seed=3, format="npz")  # loaded again, same image
    np.testing.assert_array_equal(images(again), images(a))


def test_a_burst_beyond_the_queue_gets_only_200_and_429_is_batched_and_the_service_stays_healthy(service):
    url, _ = service

    async def burst(count: int) -> list[httpx.Response]:
        async with httpx.AsyncClient(timeout=120) as client:
            requests = [
                client.post(f"{url}/v1/samples", json={"model": "a", "seed": i, "format": "png"}) for i in range(count)
            ]
            return await asyncio.gather(*requests)

    responses = asyncio.run(burst(40))
    statuses = [r.status_code for r in responses]
    assert set(statuses) <= {200, 429}, statuses
    assert statuses.count(429) > 0 and statuses.count(200) >= MAX_QUEUED
    refused = next(r for r in responses if r.status_code == 429)
    assert refused.headers["retry-after"] == "2"
    # Requests that waited while the model ran shared its next call (the replica holds up to 6).
    assert max(int(r.headers["x-npdraw-batch-images"]) for r in responses if r.status_code == 200) > 1
    health = httpx.get(f"{url}/v1/health", timeout=60)
    assert health.status_code == 200 and health.json()["status"] == "ok"
    assert sample(url, model="a", seed=1).status_code == 200


def test_metrics_endpoint_shows_npdraw_metrics(service):
    url, metrics_url = service
    assert sample(url, model="a", seed=5, num_samples=2, format="json").status_code == 200
    wanted = (
        "ray_npdraw_images_generated_total",
        "ray_npdraw_requests_total",
        "ray_npdraw_request_latency_seconds_bucket",
        "ray_npdraw_batch_images_bucket",
        "ray_npdraw_model_load_seconds_bucket",
        'format="json"',  # this test's own request, not only earlier ones
    )
    deadline, text = time.monotonic() + 60, ""
    while time.monotonic() < deadline:  # Ray's agent exports every few seconds
        text = httpx.get(metrics_url, timeout=10).text
        if all(name in text for name in wanted):
            break
        time.sleep(2)
    missing = [name for name in wanted if name not in text]
    assert not missing, f"not exported after 60 s: {missing}"
    assert 'model="a"' in text
