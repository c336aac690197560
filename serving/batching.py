"""Continuous batching: whenever the model is free, one call takes every waiting job that fits.

Ray Serve's `@serve.batch` (2.60, `_BatchQueue._process_batches`) forms the next batch as soon as its wait
timeout passes, also while the previous batch is still running, and only then queues it behind the running
one. With a model call that takes a quarter of a second and a 50 ms timeout, a replica under load runs a
chain of small batches (3-8 images from 32 waiting clients, measured), each request waiting for every
batch ahead of it. Here a batch is formed when the model becomes free, from everything that waited
meanwhile (up to `max_images` images), so the batch size follows the load: one request alone is served at
once (after at most `wait_timeout_s` for company), 32 waiting requests share one call.

Both backends use it: the Ray sampler replica and the single-process `npdraw serve --no-ray` sampler.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

Job = TypeVar("Job")
Result = TypeVar("Result")


class QueueFull(Exception):
    """More than `max_waiting` jobs wait already (the caller turns it into 429 Retry-After)."""


class Batcher(Generic[Job, Result]):
    """Jobs in arrival order → calls of `run(jobs)` (one result per job, same order), one call at a time.

    A batch holds at most `max_images` (as counted by `size`) and `max_jobs` jobs; a job larger than
    `max_images` runs alone. The oldest waiting job waits at most `wait_timeout_s` for others to join
    while the batch is not full. `max_waiting` (-1: unbounded) caps the jobs waiting while a call runs
    (like Serve's `max_queued_requests`: 0 still serves a job that finds the model free).
    """

    def __init__(
        self,
        run: Callable[[list[Job]], Awaitable[list[Result]]],
        *,
        size: Callable[[Job], int],
        max_images: int,
        wait_timeout_s: float,
        max_jobs: int | None = None,
        max_waiting: int = -1,
    ):
        if max_images < 1 or (max_jobs is not None and max_jobs < 1):
            raise ValueError(f"max_images ({max_images}) and max_jobs ({max_jobs}) must be at least 1")
        self.run, self.size = run, size
        self.max_images, self.max_jobs, self.wait_timeout_s = max_images, max_jobs, wait_timeout_s
        self.max_waiting = max_waiting
        self.waiting: deque[tuple[Job, asyncio.Future, float]] = deque()
        self.arrived = asyncio.Event()
        self.worker: asyncio.Task | None = None
        self.busy = False  # a call of `run` is in progress

    async def submit(self, job: Job) -> Result:
        if self.busy and 0 <= self.max_waiting <= len(self.waiting):
            raise QueueFull(f"{len(self.waiting)} requests are already waiting for the sampler")
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self.waiting.append((job, future, loop.time()))
        self.arrived.set()
        if self.worker is None or self.worker.done():
            self.worker = asyncio.create_task(self._work())
        return await future  # a cancelled caller cancels its future: the worker skips it

    async def _work(self) -> None:
        loop = asyncio.get_running_loop()
        while self.waiting:
            # Wait for company until the oldest job has waited `wait_timeout_s` or the batch is full.
            while not self._full() and (left := self.waiting[0][2] + self.wait_timeout_s - loop.time()) > 0:
                self.arrived.clear()
                try:
                    await asyncio.wait_for(self.arrived.wait(), left)
                except TimeoutError:
                    break
            batch = self._take()
            if not batch:
                continue
            self.busy = True
            try:
                results = await self.run([job for job, _ in batch])
            except Exception as error:  # every job of the batch gets the error; the worker goes on
                for _, future in batch:
                    if not future.done():
                        future.set_exception(error)
                continue
            finally:
                self.busy = False
            for (_, future), result in zip(batch, results, strict=True):
                if not future.done():
                    future.set_result(result)

    def _full(self) -> bool:
        images = 0
        for count, (job, future, _) in enumerate(self.waiting, start=1):
            images += 0 if future.done() else self.size(job)
            if images >= self.max_images or (self.max_jobs is not None and count >= self.max_jobs):
                return True
        return False

    def _take(self) -> list[tuple[Job, asyncio.Future]]:
        """The longest run of waiting jobs, in order, that fits a batch (at least one job)."""
        batch: list[tuple[Job, asyncio.Future]] = []
        images = 0
        while self.waiting:
            job, future, _ = self.waiting[0]
            if future.done():  # the caller went away
                self.waiting.popleft()
                continue
            if batch and (images + self.size(job) > self.max_images or len(batch) == self.max_jobs):
                break
            self.waiting.popleft()
            batch.append((job, future))
            images += self.size(job)
        return batch
