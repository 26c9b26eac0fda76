"""The cprs HTTP service: upstream QwenLong-CPRS's endpoint, richer ``/v1`` endpoints, and health probes.

Endpoints:
    ``POST /qwen_long_compress_server``: upstream's request and response JSON (see :mod:`.upstream`).
    ``POST /v1/compress``: a :class:`~.schemas.CompressBody` in, ``CompressionResult.to_dict()`` out.
    ``POST /v1/compress_batch``: ``{"requests": [...]}`` in, ``{"results": [{"result"|"error": ...}]}`` out.
    ``GET /health``: model, queue depth and batch-size statistics; ``GET /readiness``, ``GET /liveness``: probes.

Errors of the ``/v1`` endpoints are ``{"error": {"type": ..., "message": ...}}`` with a 4xx/5xx status.
"""

from __future__ import annotations

import secrets
from contextlib import asynccontextmanager
from typing import Any, AsyncIterator

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from cprs_core import CompressionRequest, Compressor, CPRSError

from . import upstream
from .batcher import DynamicBatcher, Outcome
from .body import read_json, validate
from .errors import ApiError, from_compression_error
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

_ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorEnvelope} for status in (400, 401, 413, 422, 500, 503, 504)
}


def create_app(compressor: Compressor, settings: ServerSettings | None = None) -> FastAPI:
    """A FastAPI app serving ``compressor``; its batching worker starts and stops with the app's lifespan.

    Args:
        compressor: any :class:`cprs_core.Compressor` (usually a loaded ``CPRSCompressor``); only the
            batcher's worker thread calls it, one batch at a time.
        settings: batching, queue, size and timeout limits; defaults to :class:`ServerSettings`.
    """
    settings = settings or ServerSettings()
    batcher = DynamicBatcher(compressor, settings.max_batch_requests, settings.max_wait_ms, settings.max_queue)

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
    )
    app.state.batcher = batcher
    app.state.settings = settings

    @app.exception_handler(ApiError)
    async def api_error(_: Request, error: ApiError) -> JSONResponse:
        return _error_response({"error": error.body()}, error)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, error: StarletteHTTPException) -> JSONResponse:
        return JSONResponse({"error": {"type": "HTTPError", "message": str(error.detail)}}, error.status_code)

    async def run(requests: list[CompressionRequest]) -> list[Outcome]:
        return await batcher.submit(requests, settings.request_timeout_s)

    def authorize(request: Request) -> None:
        if settings.api_key is None:
            return
        sent = request.headers.get("authorization", "")
        if not secrets.compare_digest(sent.encode(), f"Bearer {settings.api_key}".encode()):
            raise ApiError(401, "Unauthorized", "missing or wrong API key: send the header 'Authorization: Bearer <key>'")

    @app.post("/qwen_long_compress_server", responses=_ERRORS)
    async def qwen_long_compress_server(request: Request) -> JSONResponse:
        """Upstream QwenLong-CPRS's endpoint: same request and response JSON (errors also in the header)."""
        data: Any = None
        try:
            authorize(request)
            data = await read_json(request, settings.max_body_bytes)
            body = validate(UpstreamRequest, data)
            outcome = (await run([upstream.to_request(body)]))[0]
            if isinstance(outcome, CPRSError):
                raise from_compression_error(outcome)
            return JSONResponse(upstream.success(data, outcome, body.payload.parameters))
        except ApiError as error:
            return _error_response(upstream.failure(data, error), error)

    @app.post("/v1/compress", response_model=CompressOut, responses=_ERRORS)
    async def compress(request: Request) -> JSONResponse:
        """Compress one context; the body holds the arguments of ``CPRSCompressor.compress``."""
        authorize(request)
        body = validate(CompressBody, await read_json(request, settings.max_body_bytes))
        outcome = (await run(_requests([body])))[0]
        if isinstance(outcome, CPRSError):
            raise from_compression_error(outcome)
        return JSONResponse(outcome.to_dict())

    @app.post("/v1/compress_batch", response_model=BatchOut, responses=_ERRORS)
    async def compress_batch(request: Request) -> JSONResponse:
        """Compress several contexts; each slot of ``results`` holds ``result`` or its own ``error``."""
        authorize(request)
        body = validate(BatchBody, await read_json(request, settings.max_body_bytes))
        outcomes = await run(_requests(body.requests))
        return JSONResponse({"results": [_slot(outcome) for outcome in outcomes]})

    @app.get("/health", response_model=HealthOut)
    async def health() -> dict[str, Any]:
        """Liveness plus load: requests waiting and computing, and how many requests each batch held."""
        return {
            "status": "ok" if batcher.running else "stopped",
            "model": settings.model_name,
            "queue_depth": batcher.queue_depth,
            "in_flight": batcher.in_flight,
            "batches": sum(batcher.batch_sizes.values()),
            "requests": sum(size * count for size, count in batcher.batch_sizes.items()),
            "max_batch_size": max(batcher.batch_sizes, default=0),
            "batch_sizes": dict(sorted(batcher.batch_sizes.items())),
            "settings": settings.public(),
        }

    @app.get("/readiness")
    async def readiness() -> JSONResponse:
        """``"success"`` once the model worker runs (503 before), as upstream answers."""
        return JSONResponse("success" if batcher.running else "starting", 200 if batcher.running else 503)

    @app.get("/liveness")
    async def liveness() -> str:
        """``"success"`` while the process serves HTTP, as upstream answers."""
        return "success"

    return app


def _requests(bodies: list[CompressBody]) -> list[CompressionRequest]:
    """The bodies as requests; a ``keep_regex`` that does not compile is a 400 ``KeepError``."""
    try:
        return [body.to_request() for body in bodies]
    except CPRSError as error:
        raise from_compression_error(error) from error


def _slot(outcome: Outcome) -> dict[str, Any]:
    if isinstance(outcome, CPRSError):
        return {"result": None, "error": from_compression_error(outcome).body()}
    return {"result": outcome.to_dict(), "error": None}


def _error_response(content: dict[str, Any], error: ApiError) -> JSONResponse:
    headers = {"Retry-After": "1"} if error.status == 503 else None
    return JSONResponse(content, error.status, headers=headers)
