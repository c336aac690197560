"""Continuous batching (npdraw_serving.batching): batches form when the model is free, from everything that
waited meanwhile, sized by images; and through the no-Ray app, concurrent requests share model calls
while every image stays the bytes its seed gives alone."""

from __future__ import annotations

import asyncio
import base64

import pytest

pytest.importorskip("fastapi")

from test_serving import tiny_models  # noqa: E402, F401  (the session fixture: two tiny trained models)

from npdraw_serving.batching import Batcher, QueueFull  # noqa: E402


class Model:
    """Records the image counts of its calls; a call takes `seconds`; a job "fail" raises."""

    def __init__(self, seconds: float = 0.05):
        self.seconds, self.calls = seconds, []

    async def run(self, jobs: list) -> list:
        self.calls.append([size for size, _ in jobs])
        await asyncio.sleep(self.seconds)
        if any(tag == "fail" for _, tag in jobs):
            raise RuntimeError("the model broke")
        return [f"{tag}:{size}" for size, tag in jobs]


def batcher(model: Model, **settings) -> Batcher:
    settings = {"max_images": 64, "wait_timeout_s": 0.01, **settings}
    return Batcher(model.run, size=lambda job: job[0], **settings)


async def submit_while_busy(batch: Batcher, jobs: list, *, first=(1, "first")) -> list:
    """The first job starts a model call; the others arrive while it runs."""
    first_task = asyncio.create_task(batch.submit(first))
    await asyncio.sleep(0.02)  # past the wait timeout: the first call is running
    results = await asyncio.gather(*(batch.submit(job) for job in jobs), return_exceptions=True)
    return [await first_task, *results]


def test_requests_that_wait_while_the_model_runs_share_the_next_call():
    model = Model()
    results = asyncio.run(submit_while_busy(batcher(model), [(1, i) for i in range(20)]))
    assert model.calls == [[1], [1] * 20]  # one call for all twenty, not one per wait timeout
    assert results == ["first:1", *(f"{i}:1" for i in range(20))]  # each caller gets its own result


def test_a_lone_request_waits_at_most_the_timeout_and_others_arriving_meanwhile_join_it():
    async def scenario(model):
        batch = batcher(model, wait_timeout_s=0.2)
        first = asyncio.create_task(batch.submit((1, "a")))
        await asyncio.sleep(0.05)  # within the timeout: joins
        return await asyncio.gather(first, batch.submit((2, "b")))

    model = Model()
    assert asyncio.run(scenario(model)) == ["a:1", "b:2"] and model.calls == [[1, 2]]


def test_batches_are_capped_by_images_in_arrival_order():
    model = Model()
    jobs = [(2, "a"), (2, "b"), (2, "c"), (7, "d"), (1, "e")]
    asyncio.run(submit_while_busy(batcher(model, max_images=6), jobs))
    # 2+2+2 fill a batch; the 7-image job is larger than a batch and runs alone; order is kept
    assert model.calls == [[1], [2, 2, 2], [7], [1]]


def test_batching_off_is_one_request_per_call():
    model = Model(seconds=0.01)
    asyncio.run(submit_while_busy(batcher(model, max_jobs=1, wait_timeout_s=0), [(1, i) for i in range(4)]))
    assert model.calls == [[1]] * 5


def test_a_full_queue_refuses_new_jobs_and_serves_the_waiting_ones():
    model = Model()
    results = asyncio.run(submit_while_busy(batcher(model, max_waiting=3), [(1, i) for i in range(5)]))
    assert results[:4] == ["first:1", "0:1", "1:1", "2:1"]
    assert all(isinstance(r, QueueFull) and "3 requests are already waiting" in str(r) for r in results[4:])
    assert model.calls == [[1], [1, 1, 1]]


def test_no_queue_still_serves_a_job_that_finds_the_model_free():
    model = Model()
    results = asyncio.run(submit_while_busy(batcher(model, max_waiting=0), [(1, "queued")]))
    assert results[0] == "first:1" and isinstance(results[1], QueueFull)
    assert model.calls == [[1]]


def test_a_failing_call_fails_its_jobs_only():
    async def scenario(model):
        batch = batcher(model)
        broken = await submit_while_busy(batch, [(1, "x"), (1, "fail")])
        return broken, await batch.submit((1, "later"))

    model = Model()
    broken, later = asyncio.run(scenario(model))
    assert broken[0] == "first:1" and all(isinstance(r, RuntimeError) for r in broken[1:])
    assert later == "later:1"  # the worker goes on


def test_a_caller_that_goes_away_is_skipped():
    async def scenario(model):
        batch = batcher(model)
        first = asyncio.create_task(batch.submit((1, "first")))
        await asyncio.sleep(0.02)
        gone = asyncio.create_task(batch.submit((5, "gone")))
        stays = asyncio.create_task(batch.submit((1, "stays")))
        await asyncio.sleep(0)
        gone.cancel()
        return await asyncio.gather(first, stays)

    model = Model()
    assert asyncio.run(scenario(model)) == ["first:1", "stays:1"]
    assert model.calls == [[1], [1]]


def test_settings_are_checked():
    with pytest.raises(ValueError, match="at least 1"):
        batcher(Model(), max_images=0)


def test_concurrent_requests_to_the_local_app_share_model_calls_with_the_same_bytes(tiny_models):  # noqa: F811
    import httpx

    from npdraw_serving.app import local_app

    app, registry = local_app({"models": {"a": str(tiny_models["a"])}, "max_samples": 8})
    transport = httpx.ASGITransport(app=app)

    async def requests():
        async with httpx.AsyncClient(transport=transport, base_url="http://local") as http:
            bodies = [{"seed": 100 + i, "num_samples": 1, "format": "json"} for i in range(12)]
            together = await asyncio.gather(*(http.post("/v1/samples", json=b) for b in bodies))
            alone = await http.post("/v1/samples", json={"seed": 105, "num_samples": 1, "format": "json"})
            return together, alone

    together, alone = asyncio.run(requests())
    assert all(r.status_code == 200 for r in together)
    calls = registry.get_sample_value("npdraw_batch_images_count")
    images = registry.get_sample_value("npdraw_batch_images_sum")
    assert images == 13 and calls < 13  # 13 images in fewer model calls than requests
    sample = lambda response: base64.b64decode(response.json()["samples"][0]["image_png"])  # noqa: E731
    assert sample(together[5]) == sample(alone)  # drawn inside a batch = drawn alone
