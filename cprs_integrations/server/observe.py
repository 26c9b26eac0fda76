"""Every HTTP request's guard and record: header limits, a request id, a 500 for any unexpected failure, one
structured log line and its metrics.

A pure ASGI middleware (it does not buffer bodies, so client disconnects still reach the endpoints). The
log line is one JSON object on the ``cprs.server.requests`` logger, e.g.::

    {"event": "request", "id": "5f0c...", "method": "POST", "path": "/v1/compress", "status": 200,
     "errors": [], "requests": 1, "tokens": 512, "windows": 2, "queue_wait_s": 0.004, "compute_s": 0.081,
     "total_s": 0.093}

An unexpected exception is logged before that line, at ERROR, as one JSON object with its traceback
(``{"event": "error", "id": ..., "method": ..., "path": ..., "error": "ValueError: ...", "traceback": ...}``);
the client gets only a 500 ``InternalError`` naming its request id.
"""

from __future__ import annotations

import json
import logging
import re
import time
import traceback
import uuid
from dataclasses import asdict, dataclass, field
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .errors import ApiError
from .metrics import Metrics
from .responses import JSONAnswer
from .settings import ServerSettings

LOGGER = logging.getLogger("cprs.server.requests")
REQUEST_ID_HEADER = "x-request-id"
_CLIENT_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")


@dataclass
class RequestRecord:
    """What the log line reports about one HTTP request; endpoints fill in the compression figures."""

    id: str
    method: str
    path: str
    status: int = 0
    errors: list[str] = field(default_factory=list)
    requests: int = 0
    tokens: int = 0
    windows: int = 0
    queue_wait_s: float | None = None
    compute_s: float | None = None
    total_s: float = 0.0


class RequestGuard:
    """ASGI middleware: refuses oversized headers (431), echoes or assigns ``X-Request-ID``, answers an exception
    that escapes the app with a 500 ``InternalError`` (logged with its traceback), logs and counts."""

    def __init__(self, app: ASGIApp, settings: ServerSettings, metrics: Metrics) -> None:
        self.app = app
        self.settings = settings
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers: list[tuple[bytes, bytes]] = scope["headers"]
        sent_id = dict(headers).get(REQUEST_ID_HEADER.encode(), b"").decode("latin-1")
        record = RequestRecord(
            id=sent_id if _CLIENT_ID.fullmatch(sent_id) else uuid.uuid4().hex, method=scope["method"], path=scope["path"]
        )
        scope.setdefault("state", {})["record"] = record
        started = time.monotonic()

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                record.status = message["status"]
                message["headers"] = [*message.get("headers", []), (REQUEST_ID_HEADER.encode(), record.id.encode())]
            await send(message)

        try:
            problem = self._header_problem(headers)
            if problem is None:
                await self.app(scope, receive, send_with_id)
            else:
                record.errors.append("HeadersTooLarge")
                await JSONAnswer({"error": {"type": "HeadersTooLarge", "message": problem}}, 431)(
                    scope, receive, send_with_id
                )
        except Exception as error:
            failure = internal_failure(record, error)
            record.errors.append(failure.kind)
            if record.status:  # the answer has begun and cannot be replaced: the server closes the connection
                raise
            await JSONAnswer({"error": failure.body()}, failure.status)(scope, receive, send_with_id)
        finally:
            record.total_s = time.monotonic() - started
            self._report(record, _route_path(scope))

    def _header_problem(self, headers: list[tuple[bytes, bytes]]) -> str | None:
        size = sum(len(name) + len(value) for name, value in headers)
        if len(headers) > self.settings.max_headers:
            return f"{len(headers)} request headers are more than the server's limit of {self.settings.max_headers}"
        if size > self.settings.max_header_bytes:
            return (
                f"request headers of {size} bytes are larger than the server's limit of "
                f"{self.settings.max_header_bytes} bytes"
            )
        return None

    def _report(self, record: RequestRecord, endpoint: str) -> None:
        self.metrics.requests.labels(endpoint, str(record.status)).inc()
        self.metrics.latency.labels(endpoint).observe(record.total_s)
        for kind in record.errors:
            self.metrics.errors.labels(kind).inc()
        LOGGER.info(json.dumps({"event": "request", **_rounded(asdict(record))}))


def internal_failure(record: RequestRecord, error: BaseException) -> ApiError:
    """Log ``error`` with its traceback under the request's id; the 500 to answer, which names no internals."""
    LOGGER.error(json.dumps({
        "event": "error", "id": record.id, "method": record.method, "path": record.path,
        "error": f"{type(error).__name__}: {error}", "traceback": "".join(traceback.format_exception(error)),
    }))
    return ApiError(
        500, "InternalError",
        f"the server failed unexpectedly while answering this request; its log has the details under request id "
        f"{record.id}",
    )


def _route_path(scope: Scope) -> str:
    """The path of the app's route that answered, else ``"other"``: metrics are labelled by route, never by a
    client's own path (each would be a new time series, kept for ever)."""
    return getattr(scope.get("route"), "path", None) or "other"


def _rounded(values: dict[str, Any]) -> dict[str, Any]:
    return {key: round(value, 4) if isinstance(value, float) else value for key, value in values.items()}


def configure_request_log(level: str) -> None:
    """Print the request log lines on stderr at ``level`` (``cprs serve`` calls this; embedders may not)."""
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(message)s"))
    LOGGER.addHandler(handler)
    LOGGER.setLevel(level.upper())
    LOGGER.propagate = False
