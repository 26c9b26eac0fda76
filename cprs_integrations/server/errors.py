"""Errors a cprs server answers with: an HTTP status, an error type and a message meant for people."""

from __future__ import annotations

from typing import Any

from cprs_core import CompressionFailedError, CPRSError


class ApiError(Exception):
    """A request the server refuses or cannot answer.

    ``kind`` is the error type sent to clients: a :class:`~cprs_core.CPRSError` subclass name for compression
    errors (so :class:`cprs_core.remote.RemoteCompressor` raises the same class), else one of ``MalformedJSON``,
    ``ValidationError``, ``RequestTooLarge``, ``UnsupportedMediaType``, ``HeadersTooLarge``, ``Unauthorized``,
    ``ServerBusy``, ``Timeout``, ``ClientClosedRequest``, ``InternalError``.
    """

    def __init__(self, status: int, kind: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.kind = kind
        self.message = message

    def body(self) -> dict[str, Any]:
        """The ``{"type": ..., "message": ...}`` description sent to clients."""
        return {"type": self.kind, "message": self.message}


def from_compression_error(error: CPRSError) -> ApiError:
    """A 400 carrying the compression error's class name and message (500 when the model itself failed)."""
    return ApiError(500 if isinstance(error, CompressionFailedError) else 400, type(error).__name__, str(error))


def from_unexpected(error: BaseException) -> ApiError:
    """A 500 for a failure outside any one request's compression; the server keeps serving."""
    return ApiError(500, "InternalError", f"the server failed: {type(error).__name__}: {error}")
