"""The cprs HTTP service: upstream QwenLong-CPRS's endpoint, richer ``/v1`` endpoints, and health probes.

Endpoints:
    ``POST /qwen_long_compress_server``: upstream's request and response JSON (see :mod:`.upstream`).
    ``POST /v1/compress``: a :class:`~.schemas.CompressBody` in, ``CompressionResult.to_dict()`` out.
    ``POST /v1/compress_batch``: ``{"requests": [...]}`` in, ``{"results": [{"result"|"error": ...}]}`` out.
    ``GET /health``: model, queue depth and batch-size statistics; ``GET /readiness``, ``GET /liveness``: probes.
    ``GET /metrics``: Prometheus metrics (see :mod:`.metrics`).

Errors of the ``/v1`` endpoints are ``{"error": {"type": ..., "message": ...}}`` with a 4xx/5xx status (an
unexpected failure too: a 500 ``InternalError``). Every answer carries an ``X-Request-ID`` header (the client's,
or a new one) and is logged (see :mod:`.observe`).
"""

from __future__ import annotations

import asyncio
import secrets
from contextlib import asynccontextmanager
from typing import Any, AsyncIterator

import torch
from fastapi import FastAPI, Request
from fastapi.responses import Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from cprs_core import BudgetTokenizerError, CompressionRequest, CompressionResult, CPRSCompressor, CPRSError

from . import upstream
from .batcher import DynamicBatcher, Job, Outcome
from .body import read_json, validate
from .errors import ApiError, from_budget_tokenizer_error, from_compression_error
from .metrics import Metrics
from .observe import RequestGuard, RequestRecord, internal_failure
from .responses import JSONAnswer
from .schemas import (
    BatchBody,
    BatchOut,
    CompressBody,
    CompressOut,
    ErrorEnvelope,
    HealthOut,
    UpstreamRequest,
)
from .settings import ServerSettings

DISCONNECT_POLL_S = 0.1
_ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorEnvelope} for status in (400, 401, 413, 415, 422, 431, 500, 503, 504)
}


def create_app(compressor: CPRSCompressor, settings: ServerSettings | None = None) -> FastAPI:
    """A FastAPI app serving ``compressor``; its batching worker starts and stops with the app's lifespan.

    Args:
        compressor: a loaded :class:`cprs_core.CPRSCompressor`; only the batcher's worker thread scores
            windows with it (see :mod:`.batcher`).
        settings: batching, queue, size and timeout limits; defaults to :class:`ServerSettings`.
    """
    settings = settings or ServerSettings()
    metrics = Metrics()
    batcher = DynamicBatcher(
        compressor, settings.max_batch_requests, settings.max_wait_ms, settings.max_queue,
        settings.windows_per_step(torch.device(getattr(compressor.critic, "device", "cpu")).type), metrics,
    )

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await batcher.start()
        try:
            yield
        finally:
            await batcher.stop()

    app = FastAPI(
        title="cprs",
        summary="QwenLong-CPRS query-aware context compression, dynamically batched across clients",
        lifespan=lifespan,
        default_response_class=JSONAnswer,
    )
    app.state.batcher = batcher
    app.state.settings = settings
    app.add_middleware(RequestGuard, settings=settings, metrics=metrics)

    @app.exception_handler(ApiError)
    async def api_error(request: Request, error: ApiError) -> JSONAnswer:
        return _error_response(request, {"error": error.body()}, error)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, error: StarletteHTTPException) -> JSONAnswer:
        _record(request).errors.append("HTTPError")
        return JSONAnswer(
            {"error": {"type": "HTTPError", "message": str(error.detail)}}, error.status_code, headers=error.headers
        )

    async def run(request: Request, bodies: list[tuple[CompressionRequest, float | None]]) -> list[Outcome]:
        """Each request's outcome; cancelled when the client disconnects or its deadline passes."""
        limit = settings.request_timeout_s
        jobs = await batcher.submit(
            [(item, limit if timeout_s is None else min(timeout_s, limit)) for item, timeout_s in bodies],
            disconnected=lambda: _disconnected(request),
        )
        record = _record(request)
        record.requests = len(jobs)
        record.tokens = sum(job.ticket.tokens for job in jobs if job.ticket)
        record.windows = sum(job.ticket.windows for job in jobs if job.ticket)
        record.queue_wait_s = max((job.queue_wait_s for job in jobs if job.queue_wait_s is not None), default=None)
        record.compute_s = max((job.compute_s for job in jobs if job.compute_s is not None), default=None)
        metrics.tokens.inc(record.tokens)
        for job in jobs:
            if job.queue_wait_s is not None:
                metrics.queue_wait.observe(job.queue_wait_s)
            if job.compute_s is not None:
                metrics.compute.observe(job.compute_s)
        return [_outcome(job) for job in jobs]

    def authorize(request: Request) -> None:
        if settings.api_key is None:
            return
        scheme, _, token = request.headers.get("authorization", "").strip().partition(" ")
        # the scheme is case-insensitive (RFC 9110); headers arrive decoded as latin-1, so compare their bytes
        if scheme.lower() != "bearer" or not secrets.compare_digest(
            token.strip().encode("latin-1"), settings.api_key.encode("utf-8")
        ):
            raise ApiError(401, "Unauthorized", "missing or wrong API key: send the header 'Authorization: Bearer <key>'")

    @app.post("/qwen_long_compress_server", responses=_ERRORS)
    async def qwen_long_compress_server(request: Request) -> JSONAnswer:
        """Upstream QwenLong-CPRS's endpoint: same request and response JSON (errors also in the header)."""
        data: Any = None
        try:
            authorize(request)
            data = await read_json(request, settings.max_body_bytes, settings.body_timeout_s, any_content_type=True)
            body = validate(UpstreamRequest, data)
            outcome = _raise_for((await run(request, [(upstream.to_request(body), None)]))[0])
            return JSONAnswer(upstream.success(data, outcome, body.payload.parameters))
        except RecursionError:  # read, but nested too deeply to write back: answer without the echo
            failure = ApiError(400, "MalformedJSON", "request body is JSON nested too deeply to echo back")
            return _error_response(request, upstream.failure(None, failure), failure)
        except ApiError as error:
            return _error_response(request, upstream.failure(data, error), error)
        except Exception as error:  # in upstream's envelope; the request guard answers the /v1 endpoints' (500)
            failure = internal_failure(_record(request), error)
            return _error_response(request, upstream.failure(data, failure), failure)

    @app.post("/v1/compress", response_model=CompressOut, responses=_ERRORS)
    async def compress(request: Request) -> JSONAnswer:
        """Compress one context; the body holds the arguments of ``CPRSCompressor.compress`` (and ``timeout_s``)."""
        authorize(request)
        data = await read_json(request, settings.max_body_bytes, settings.body_timeout_s)
        body = await asyncio.to_thread(validate, CompressBody, data)  # keep_regex sizes: off the event loop
        item = await asyncio.to_thread(_request, body)
        if isinstance(item, ApiError):
            raise item
        outcome = _raise_for((await run(request, [(item, body.timeout_s)]))[0])
        return JSONAnswer(outcome.to_dict())

    @app.post("/v1/compress_batch", response_model=BatchOut, responses=_ERRORS)
    async def compress_batch(request: Request) -> JSONAnswer:
        """Compress several contexts; each slot of ``results`` holds ``result`` or its own ``error``."""
        authorize(request)
        data = await read_json(request, settings.max_body_bytes, settings.body_timeout_s)
        body = await asyncio.to_thread(validate, BatchBody, data)
        items = await asyncio.to_thread(_requests, body.requests)
        sent = [(item, each.timeout_s) for item, each in zip(items, body.requests) if not isinstance(item, ApiError)]
        computed = iter(await run(request, sent))
        slots = [_slot(item if isinstance(item, ApiError) else next(computed)) for item in items]
        _record(request).errors += [slot["error"]["type"] for slot in slots if slot["error"]]
        return JSONAnswer({"results": slots})

    @app.get("/metrics")
    async def prometheus_metrics() -> Response:
        """Prometheus text format: queue depth, windows scored, latency histograms, errors by type."""
        return Response(metrics.render(), media_type=metrics.content_type)

    @app.get("/health", response_model=HealthOut)
    async def health() -> dict[str, Any]:
        """Liveness plus load: requests waiting and computing, and how many requests each batch held."""
        return {
            "status": "ok" if batcher.running else "stopped",
            "model": settings.model_name,
            "queue_depth": batcher.queue_depth,
            "in_flight": batcher.in_flight,
            "batches": sum(batcher.batch_sizes.values()),
            "requests": batcher.computed,
            "max_batch_size": max(batcher.batch_sizes, default=0),
            "batch_sizes": dict(sorted(batcher.batch_sizes.items())),
            "settings": settings.public(),
        }

    @app.get("/readiness")
    async def readiness() -> JSONAnswer:
        """``"success"`` once the model worker runs (503 before), as upstream answers."""
        return JSONAnswer("success" if batcher.running else "starting", 200 if batcher.running else 503)

    @app.get("/liveness")
    async def liveness() -> str:
        """``"success"`` while the process serves HTTP, as upstream answers."""
        return "success"

    return app


def _request(body: CompressBody) -> CompressionRequest | ApiError:
    """The body as a request, or its 400 ``KeepError`` (a ``keep_regex`` that does not compile), so that in a
    batch it fails only its own slot."""
    try:
        return body.to_request()
    except CPRSError as error:
        return from_compression_error(error)


def _requests(bodies: list[CompressBody]) -> list[CompressionRequest | ApiError]:
    """Each body as a request or its own error (see :func:`_request`). Compiling a body's ``keep_regex`` takes up
    to about a second, so endpoints call this (and validate, which sizes them) on a thread, never on the event loop,
    which every other client's request needs."""
    return [_request(body) for body in bodies]


def _outcome(job: Job) -> Outcome:
    """The job's outcome; a ``budget_tokenizer`` name the server cannot load is explained for a remote client
    (the core's message may suggest passing a tokenizer object, which cannot travel over HTTP)."""
    outcome = job.future.result()
    if isinstance(outcome, BudgetTokenizerError) and isinstance(job.request.budget_tokenizer, str):
        return from_budget_tokenizer_error(job.request.budget_tokenizer, outcome)
    return outcome


def _raise_for(outcome: Outcome) -> CompressionResult:
    """The result, or the outcome's error raised as an :class:`ApiError`."""
    if isinstance(outcome, ApiError):
        raise outcome
    if isinstance(outcome, CPRSError):
        raise from_compression_error(outcome)
    return outcome


def _slot(outcome: Outcome) -> dict[str, Any]:
    try:
        return {"result": _raise_for(outcome).to_dict(), "error": None}
    except ApiError as error:
        return {"result": None, "error": error.body()}


async def _disconnected(request: Request) -> None:
    """Returns when the client closes the connection (the body has been read, so little else can arrive)."""
    while (await request.receive())["type"] != "http.disconnect":
        await asyncio.sleep(DISCONNECT_POLL_S)  # a server that answers at once with empty bodies is polled


def _record(request: Request) -> RequestRecord:
    return request.state.record


def _error_response(request: Request, content: dict[str, Any], error: ApiError) -> JSONAnswer:
    _record(request).errors.append(error.kind)
    headers = {"Retry-After": "1"} if error.status == 503 else None
    return JSONAnswer(content, error.status, headers=headers)
