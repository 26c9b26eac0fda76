"""Continuous batching: the windows of every client's request share forward batches on one worker thread.

A request is validated and tokenized on one of ``PREPARE_THREADS`` preparation threads (its own error comes
back at once; a short request is not stuck behind a huge one's tokenizing), then waits in
a bounded queue until fewer than ``max_batch_requests`` requests are being computed. The worker thread runs a
:class:`cprs_core.WindowScheduler`: each step scores at most ``step_windows`` windows, taken in turn from the
requests being computed, so a short request is answered after a step or two even while a 500K-token one runs.
A request whose deadline passes (504) or whose client disconnects is cancelled: its remaining windows are
never scored.
"""

from __future__ import annotations

import asyncio
import queue
import threading
import time
from collections import Counter, deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Awaitable, Callable, Sequence

from cprs_core import CompressionRequest, CompressionResult, CPRSCompressor, CPRSError, Ticket, WindowScheduler

from .errors import ApiError
from .metrics import Metrics

Outcome = CompressionResult | CPRSError | ApiError
"""A request's answer: its result, its compression error (400) or the server's refusal (503, 504, ...)."""
PREPARE_THREADS = 2
"""Requests tokenized at once (fast tokenizers release the GIL; their settings are never changed after loading)."""
IDLE_POLL_S = 0.05
"""How often an idle worker checks whether it should stop."""


@dataclass(eq=False)
class Job:
    """One request's way through the server, with the timings of the per-request log line."""

    request: CompressionRequest
    timeout_s: float
    future: asyncio.Future[Outcome]
    arrived: float = field(default_factory=time.monotonic)
    ticket: Ticket | None = None
    finished: float | None = None
    queued: bool = True

    @property
    def queue_wait_s(self) -> float | None:
        started = self.ticket.started_at if self.ticket else None
        return None if started is None else started - self.arrived

    @property
    def compute_s(self) -> float | None:
        started = self.ticket.started_at if self.ticket else None
        return None if started is None or self.finished is None else self.finished - started


class DynamicBatcher:
    """Computes requests from many clients together, window by window, on one worker thread.

    Call :meth:`start`, :meth:`submit` and :meth:`stop` from one event loop.

    Args:
        compressor: the model; only the worker thread scores, only the preparation threads tokenize.
        max_batch_requests: most requests computed at once (their windows interleaved); the rest wait.
        max_wait_ms: how long an idle worker waits for company before its first step.
        max_queue: most requests waiting; :meth:`submit` refuses more with a 503.
        step_windows: most windows per forward batch (smaller: fairer and quicker to cancel; larger: more
            throughput on a GPU).
        metrics: where queue depth, windows scored and cancellations are counted.
    """

    def __init__(
        self,
        compressor: CPRSCompressor,
        max_batch_requests: int,
        max_wait_ms: float,
        max_queue: int,
        step_windows: int,
        metrics: Metrics,
    ) -> None:
        self.scheduler = WindowScheduler(compressor.engine, step_windows)
        self.max_batch_requests = max_batch_requests
        self.max_wait_s = max_wait_ms / 1000.0
        self.max_queue = max_queue
        self.metrics = metrics
        self.batch_sizes: Counter[int] = Counter()
        self.waiting = 0
        self.computed = 0
        self._open: set[Job] = set()
        self._incoming: queue.Queue[Job] = queue.Queue()
        self._stop = threading.Event()
        self._worker: threading.Thread | None = None
        self._prepare: ThreadPoolExecutor | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def running(self) -> bool:
        return self._worker is not None and self._worker.is_alive()

    @property
    def queue_depth(self) -> int:
        """Requests waiting to be computed (being tokenized or waiting for a place)."""
        return self.waiting

    @property
    def in_flight(self) -> int:
        """Requests whose windows are being scored."""
        return self.scheduler.active

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop.clear()
        self._prepare = ThreadPoolExecutor(max_workers=PREPARE_THREADS, thread_name_prefix="cprs-prepare")
        self.scheduler.assembler = ThreadPoolExecutor(max_workers=1, thread_name_prefix="cprs-assemble")
        self._worker = threading.Thread(target=self._run, name="cprs-windows", daemon=True)
        self._worker.start()

    async def stop(self) -> None:
        """Stop computing, answer unfinished requests with 503, and wait for the step on the model."""
        self._stop.set()
        if self._worker is not None:
            await asyncio.to_thread(self._worker.join)
        if self._prepare is not None:
            await asyncio.to_thread(self._prepare.shutdown, wait=True)
        if self.scheduler.assembler is not None:
            await asyncio.to_thread(self.scheduler.assembler.shutdown, wait=True)
        for job in list(self._open):
            self._settle(job, ApiError(503, "ServerBusy", "the server is shutting down"))

    async def submit(
        self,
        requests: Sequence[tuple[CompressionRequest, float]],
        disconnected: Callable[[], Awaitable[None]] | None = None,
    ) -> list[Job]:
        """Compute ``(request, timeout_s)`` pairs; every returned job's future holds its outcome, in order.

        A request not answered within its ``timeout_s`` (queue wait included) is cancelled and answered 504.
        When ``disconnected`` returns first (the client went away), every unfinished request is cancelled.

        Raises:
            ApiError: 503 when the queue has no room for all of them (or the server is stopping), 413 when
                they could never fit in it, 499 when the client disconnected.
        """
        if not self.running:
            raise ApiError(503, "ServerBusy", "the server is not ready (model worker not running)")
        if len(requests) > self.max_queue:
            raise ApiError(
                413, "RequestTooLarge",
                f"{len(requests)} requests in one call is more than the server's queue holds ({self.max_queue})",
            )
        if self.waiting + len(requests) > self.max_queue:
            raise ApiError(
                503, "ServerBusy",
                f"the server is busy: {self.waiting} requests already wait (max_queue={self.max_queue}); retry later",
            )
        loop = asyncio.get_running_loop()
        jobs = [Job(request, timeout_s, loop.create_future()) for request, timeout_s in requests]
        self._open.update(jobs)
        self._set_waiting(len(jobs))
        answered = asyncio.gather(*(self._answer(job) for job in jobs))
        if disconnected is None:
            await answered
            return jobs
        gone = asyncio.ensure_future(disconnected())
        await asyncio.wait({answered, gone}, return_when=asyncio.FIRST_COMPLETED)
        if answered.done():
            gone.cancel()
            return jobs
        answered.cancel()
        await asyncio.gather(answered, return_exceptions=True)
        for job in jobs:
            self._cancel(job, "disconnect")
        raise ApiError(499, "ClientClosedRequest", "the client disconnected before the answer was ready")

    async def _answer(self, job: Job) -> None:
        """Prepare ``job``, hand it to the worker and wait for its outcome or its deadline."""
        deadline = job.arrived + job.timeout_s
        try:
            await asyncio.wait_for(self._enqueue(job), max(deadline - time.monotonic(), 0.0))
            await asyncio.wait_for(asyncio.shield(job.future), max(deadline - time.monotonic(), 0.0))
        except asyncio.TimeoutError:
            self._cancel(job, "timeout")
            self._settle(job, ApiError(
                504, "Timeout",
                f"no answer within the request timeout of {job.timeout_s} s (queue wait included); its remaining "
                "windows were cancelled. Retry, send a shorter context, or allow more time (timeout_s, or the "
                "server's --request-timeout-s)",
            ))
        except asyncio.CancelledError:
            self._cancel(job, "disconnect")
            raise
        job.finished = job.finished or time.monotonic()

    async def _enqueue(self, job: Job) -> None:
        """Validate and tokenize on the preparation thread; the job's own error settles it at once."""
        loop = asyncio.get_running_loop()
        try:
            job.ticket = await loop.run_in_executor(
                self._prepare, self.scheduler.ticket, job.request, lambda outcome: self._done(job, outcome)
            )
        except CPRSError as error:
            self._leave_queue(job)
            self._settle(job, error)
            return
        if job.future.done():  # answered (the server is stopping) while tokenizing
            self._leave_queue(job)
            return
        self._incoming.put(job)

    def _done(self, job: Job, outcome: CompressionResult | CPRSError) -> None:
        """Called on the assembling thread when the scheduler finished ``job``."""
        job.finished = time.monotonic()
        self.computed += 1
        assert self._loop is not None
        self._loop.call_soon_threadsafe(self._settle, job, outcome)

    def _cancel(self, job: Job, reason: str) -> None:
        if job.ticket is not None and not job.future.done() and not job.ticket.cancelled:
            job.ticket.cancel()
            self.metrics.cancelled.labels(reason).inc()
        if job.ticket is None:
            self._leave_queue(job)  # never reached the worker

    def _leave_queue(self, job: Job) -> None:
        if job.queued:
            job.queued = False
            self._set_waiting(-1)

    def _set_waiting(self, change: int) -> None:
        self.waiting += change
        self.metrics.queue_depth.set(self.waiting)

    def _settle(self, job: Job, outcome: Outcome) -> None:
        self._open.discard(job)
        if not job.future.done():
            job.future.set_result(outcome)

    def _run(self) -> None:
        """The worker thread: admit waiting jobs up to ``max_batch_requests``, then score one step; repeat."""
        admitted: deque[Job] = deque()
        while not self._stop.is_set():
            idle = self.scheduler.active == 0 and not admitted
            try:
                admitted.append(self._incoming.get(timeout=IDLE_POLL_S) if idle else self._incoming.get_nowait())
                if idle:
                    self._stop.wait(self.max_wait_s)  # let company arrive for the first step
                while True:
                    admitted.append(self._incoming.get_nowait())
            except queue.Empty:
                pass
            while admitted and self.scheduler.active < self.max_batch_requests:
                job = admitted.popleft()
                assert self._loop is not None and job.ticket is not None
                self._loop.call_soon_threadsafe(self._leave_queue, job)
                if not job.ticket.cancelled:
                    self.scheduler.add(job.ticket)
            shares = self.scheduler.step()
            self.metrics.in_flight.set(self.scheduler.active)
            if shares:
                self.metrics.windows.inc(sum(shares.values()))
                self.metrics.forward_batches.inc()
                self.batch_sizes[len(shares)] += 1
