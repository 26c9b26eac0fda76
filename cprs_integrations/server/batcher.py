"""Dynamic batching: requests from many clients share one ``compress_batch`` call on one worker thread.

A request waits in a bounded queue. The worker takes the oldest, waits up to ``max_wait_ms`` for more (up to
``max_batch_requests``), and hands them to ``compressor.compress_batch`` in one call, so requests with the same
query and instruction share forward batches on the GPU. While the model runs, new requests pile up and form
the next batch at once. The queue is bounded (a full queue answers 503) and every request has a deadline
(504 when it passes; a batch already on the model still finishes, its answer is dropped).
"""

from __future__ import annotations

import asyncio
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Sequence

from cprs_core import CompressionRequest, CompressionResult, Compressor, CPRSError

from .errors import ApiError, from_unexpected

Outcome = CompressionResult | CPRSError


@dataclass(frozen=True)
class _Job:
    request: CompressionRequest
    future: asyncio.Future[Outcome]


class DynamicBatcher:
    """Queues requests and runs them through ``compressor.compress_batch`` in batches, one batch at a time.

    Call :meth:`start` and :meth:`stop` from the event loop that calls :meth:`submit`.

    Args:
        compressor: the model; only the batcher's one worker thread calls it.
        max_batch_requests: most requests per ``compress_batch`` call.
        max_wait_ms: how long a batch's first request waits for company.
        max_queue: most requests waiting; :meth:`submit` refuses more with a 503.
    """

    def __init__(self, compressor: Compressor, max_batch_requests: int, max_wait_ms: float, max_queue: int) -> None:
        self.compressor = compressor
        self.max_batch_requests = max_batch_requests
        self.max_wait_s = max_wait_ms / 1000.0
        self.max_queue = max_queue
        self.in_flight = 0
        self.batch_sizes: Counter[int] = Counter()
        self._queue: asyncio.Queue[_Job] | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._worker: asyncio.Task[None] | None = None

    @property
    def running(self) -> bool:
        return self._worker is not None and not self._worker.done()

    @property
    def queue_depth(self) -> int:
        """Requests waiting for the model (not counting the batch being computed)."""
        return self._queue.qsize() if self._queue is not None else 0

    async def start(self) -> None:
        self._queue = asyncio.Queue()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="cprs-batch")
        self._worker = asyncio.create_task(self._run(), name="cprs-batcher")

    async def stop(self) -> None:
        """Stop taking batches, answer waiting requests with 503, and wait for the batch on the model."""
        if self._worker is not None:
            self._worker.cancel()
            await asyncio.gather(self._worker, return_exceptions=True)
        if self._queue is not None:
            while not self._queue.empty():
                job = self._queue.get_nowait()
                if not job.future.done():
                    job.future.set_exception(ApiError(503, "ServerBusy", "the server is shutting down"))
        if self._executor is not None:
            await asyncio.to_thread(self._executor.shutdown, wait=True)

    async def submit(self, requests: Sequence[CompressionRequest], timeout_s: float) -> list[Outcome]:
        """Queue ``requests`` and wait for their outcomes (a result or that request's ``CPRSError``, in order).

        Raises:
            ApiError: 503 when the queue has no room for all of them, 504 when ``timeout_s`` passes first,
                500 when the model itself failed on their batch.
        """
        if self._queue is None or not self.running:
            raise ApiError(503, "ServerBusy", "the server is not ready (model worker not running)")
        if len(requests) > self.max_queue:
            raise ApiError(
                413, "RequestTooLarge",
                f"{len(requests)} requests in one call is more than the server's queue holds ({self.max_queue})",
            )
        if self._queue.qsize() + len(requests) > self.max_queue:
            raise ApiError(
                503, "ServerBusy",
                f"the server is busy: {self._queue.qsize()} requests already wait (max_queue={self.max_queue}); "
                "retry later",
            )
        loop = asyncio.get_running_loop()
        jobs = [_Job(request, loop.create_future()) for request in requests]
        for job in jobs:
            self._queue.put_nowait(job)
        try:
            outcomes = await asyncio.wait_for(asyncio.gather(*(job.future for job in jobs), return_exceptions=True), timeout_s)
        except asyncio.TimeoutError:
            raise ApiError(
                504, "Timeout",
                f"no answer within the server's request timeout of {timeout_s} s (queue wait included); "
                "retry, send a shorter context, or start the server with a larger --request-timeout-s",
            ) from None
        for outcome in outcomes:
            if isinstance(outcome, ApiError):
                raise outcome
        return outcomes

    async def _run(self) -> None:
        assert self._queue is not None
        loop = asyncio.get_running_loop()
        while True:
            jobs = await self._collect(loop)
            if not jobs:
                continue
            self.in_flight = len(jobs)
            try:
                outcomes = await loop.run_in_executor(
                    self._executor, self.compressor.compress_batch, [job.request for job in jobs]
                )
            except asyncio.CancelledError:
                raise
            except Exception as error:  # the model failed (e.g. out of memory): fail this batch, keep serving
                failure = from_unexpected(error)
                for job in jobs:
                    if not job.future.done():
                        job.future.set_exception(failure)
            else:
                for job, outcome in zip(jobs, outcomes):
                    if not job.future.done():
                        job.future.set_result(outcome)
            finally:
                self.in_flight = 0
            self.batch_sizes[len(jobs)] += 1

    async def _collect(self, loop: asyncio.AbstractEventLoop) -> list[_Job]:
        """The next batch: the oldest waiting job plus those arriving within ``max_wait_s``; timed-out ones dropped."""
        assert self._queue is not None
        jobs = [await self._queue.get()]
        deadline = loop.time() + self.max_wait_s
        while len(jobs) < self.max_batch_requests:
            if self._queue.empty():
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                try:
                    jobs.append(await asyncio.wait_for(self._queue.get(), remaining))
                except asyncio.TimeoutError:
                    break
            else:
                jobs.append(self._queue.get_nowait())
        return [job for job in jobs if not job.future.done()]
