"""Reading a request body: size limit, UTF-8, JSON and schema, each failure with its own clear 4xx."""

from __future__ import annotations

import asyncio
import json
from typing import Any, NoReturn, TypeVar

from fastapi import Request
from pydantic import BaseModel, ValidationError
from starlette.requests import ClientDisconnect

from .._shared import pydantic_problems
from .errors import ApiError

Model = TypeVar("Model", bound=BaseModel)


async def read_json(request: Request, max_bytes: int, max_seconds: float, any_content_type: bool = False) -> Any:
    """The body parsed as JSON, refusing a non-JSON or missing content type (415), more than ``max_bytes``
    (413), a body that takes longer than ``max_seconds`` to arrive (408), non-UTF-8 (400) and bad JSON (400),
    ``NaN`` and ``Infinity`` included (they are not JSON). A client that disconnects while sending gets 499.

    A compressed body (``Content-Encoding: gzip``, ...) is a 415 too (read as it is, it would be reported as bytes
    that are not UTF-8). ``any_content_type`` reads the body as JSON whatever ``Content-Type`` is declared, or none,
    as upstream's endpoint does (its clients post JSON without one, ``curl -d`` declares a form).
    """
    _check_content_encoding(request.headers.get("content-encoding"))
    if not any_content_type:
        _check_content_type(request.headers.get("content-type"))
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > max_bytes:
        raise _too_large(int(declared), max_bytes)
    chunks: list[bytes] = []
    try:
        await asyncio.wait_for(_read_chunks(request, chunks, max_bytes), max_seconds)
    except asyncio.TimeoutError:  # not the built-in TimeoutError before Python 3.11
        raise ApiError(
            408, "RequestTimeout",
            f"the request body did not arrive within {max_seconds:g} s ({sum(map(len, chunks))} bytes came); send "
            "it at once, or start the server with a larger --body-timeout-s",
        ) from None
    except ClientDisconnect:
        raise ApiError(499, "ClientClosedRequest", "the client disconnected before its request body arrived") from None
    raw = b"".join(chunks)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as error:
        raise ApiError(
            400, "TextDecodingError",
            f"request body is not valid UTF-8: byte {error.start} ({raw[error.start:error.start + 1]!r}) "
            f"{error.reason}; send JSON encoded as UTF-8",
        ) from error
    if not text.strip():
        raise ApiError(400, "MalformedJSON", "request body is empty; send a JSON object")
    try:
        return json.loads(text, parse_constant=_refuse_constant)
    except json.JSONDecodeError as error:
        raise ApiError(
            400, "MalformedJSON",
            f"request body is not valid JSON: {error.msg} at line {error.lineno} column {error.colno}",
        ) from error
    except RecursionError as error:
        raise ApiError(400, "MalformedJSON", "request body is JSON nested too deeply to read") from error
    except ValueError as error:  # e.g. an integer of more digits than Python converts (sys.get_int_max_str_digits)
        raise ApiError(400, "MalformedJSON", f"request body is JSON this server cannot read: {error}") from error


async def _read_chunks(request: Request, chunks: list[bytes], max_bytes: int) -> None:
    """Append the body's chunks to ``chunks`` as they come; 413 once they pass ``max_bytes``."""
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > max_bytes:
            raise _too_large(size, max_bytes)
        chunks.append(chunk)


def _refuse_constant(name: str) -> NoReturn:
    """``NaN``, ``Infinity`` and ``-Infinity``: Python's extensions to JSON, which no JSON answer could echo back."""
    raise ApiError(
        400, "MalformedJSON",
        f"request body is not valid JSON: {name} is not a JSON number (JSON has no NaN or Infinity)",
    )


def validate(model: type[Model], data: Any) -> Model:
    """``data`` as ``model``, or a 422 naming every missing or wrong field."""
    try:
        return model.model_validate(data)
    except ValidationError as error:
        raise ApiError(422, "ValidationError", f"invalid request: {pydantic_problems(error, 'body')}") from error


def _check_content_encoding(declared: str | None) -> None:
    if (declared or "identity").strip().lower() != "identity":
        raise ApiError(
            415, "UnsupportedMediaType",
            f"this server does not decode 'Content-Encoding: {declared}': send the body uncompressed",
        )


def _check_content_type(declared: str | None) -> None:
    media_type = (declared or "").split(";")[0].strip().lower()
    if media_type != "application/json" and not media_type.endswith("+json"):
        raise ApiError(
            415, "UnsupportedMediaType",
            f"the body must be JSON sent with 'Content-Type: application/json', not {declared or 'no content type'}",
        )


def _too_large(size: int, max_bytes: int) -> ApiError:
    return ApiError(
        413, "RequestTooLarge",
        f"request body of {size} bytes or more is larger than the server's limit of {max_bytes} bytes; "
        "split the context or start the server with a larger --max-body-mb",
    )
