"""A :class:`~cprs_core.Compressor` that calls a running cprs server (``cprs serve``) over HTTP.

Only the standard library is used, so ``cprs_core`` stays free of web frameworks. The server's richer endpoints
carry :class:`CompressionRequest` fields as JSON and answer with :meth:`CompressionResult.to_dict`; errors come
back as ``{"error": {"type": ..., "message": ...}}`` and are raised here as the same :class:`CPRSError`
subclass the server raised (``EmptyContextError``, ``BudgetError``, ...), or as :class:`RemoteError` for
everything that is not a compression error (server unreachable, busy, timed out, request too large).
"""

from __future__ import annotations

import http.client
import json
import random
import socket
import time
import urllib.error
import urllib.request
from dataclasses import fields as dataclass_fields
from typing import Any, Sequence

from . import errors
from .engine import CompressionRequest, Granularity, decode_text
from .errors import BudgetTokenizerError, CPRSError, OptionError, quoted
from .keep import KeepPattern, check_keep, split_patterns
from .result import CompressionResult, Span
from .validation import (
    DEFAULT_GRANULARITY,
    check_int,
    check_request,
    check_request_type,
    check_server_url,
    check_timeout,
)

API_KEY_ENV = "CPRS_API_KEY"
"""Environment variable holding a cprs server's API key (read by the CLI and the framework adapters)."""
COMPRESS_PATH = "/v1/compress"
BATCH_PATH = "/v1/compress_batch"
HEALTH_PATH = "/health"
RETRIED_KINDS = frozenset({"ServerBusy", "ConnectionError"})
"""Failures worth another attempt: a full queue (503) or no connection; compressing is idempotent."""
MAX_BACKOFF_S = 10.0
MAX_RETRY_AFTER_S = 60.0
"""The longest wait a server's ``Retry-After`` header can ask for (a larger one is waited this long)."""
ANSWER_BYTES_PER_BODY_BYTE = 128
"""An answer may be this many times the request body, plus :data:`MIN_ANSWER_LIMIT` (a result with a span for
every few characters writes about 40 bytes per context character); a larger one is refused, not read to the end."""
MIN_ANSWER_LIMIT = 1 << 20
ERROR_BODY_LIMIT = 64 * 1024
"""Bytes of an HTTP error's body read for its error description."""
READ_CHUNK = 1 << 16
MESSAGE_CHARACTERS = 2000
"""A server's error message or type longer than this is cut (quoted, with its length said)."""
RESULT_FIELDS: dict[str, type | tuple[type, ...]] = {
    "text": str, "spans": list, "original_tokens": int, "compressed_tokens": int, "windows": int,
    "granularity": str, "metadata": dict,
}
SPAN_FIELDS: dict[str, type | tuple[type, ...]] = {
    "start": int, "end": int, "text": str, "score": (int, float), "tag": str,
}

ERROR_TYPES: dict[str, type[CPRSError]] = {
    name: value
    for name, value in vars(errors).items()
    if isinstance(value, type) and issubclass(value, CPRSError)
}
"""Error type names the server may send, mapped to the classes raised by the client."""


class RemoteError(CPRSError):
    """The cprs server could not be reached, or refused a request for a reason other than a compression error.

    Attributes:
        kind: the server's error type (``"ServerBusy"``, ``"Timeout"``, ``"RequestTooLarge"``, ...), or
            ``"ConnectionError"`` / ``"ClientTimeout"`` when no answer came, ``"NotFound"`` for a URL with no cprs
            endpoint (HTTP 404).
        status: the HTTP status, ``None`` when no answer came.
        retry_after: the seconds of the server's ``Retry-After`` header, if it sent one.
    """

    def __init__(self, message: str, kind: str, status: int | None = None, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.kind = kind
        self.status = status
        self.retry_after = retry_after


class RemoteCompressor:
    """Compress on a cprs server; a drop-in :class:`~cprs_core.Compressor` for :class:`~cprs_core.CPRSCompressor`.

    Safe to call from many threads at once: every call is its own HTTP request, and the server batches
    concurrent requests together on its GPU.

    Args:
        base_url: the server's address, e.g. ``"http://gpu-box:8091"``.
        timeout: seconds to wait for one attempt's answer (the server has its own per-request timeout too).
        api_key: sent as ``Authorization: Bearer <api_key>`` when the server was started with ``--api-key``.
        retries: further attempts after a 503 (server busy) or a failed connection; each waits the server's
            ``Retry-After`` (at most 60 s) or an exponential backoff (``backoff`` s doubling, at most 10 s) with
            full jitter. A timed-out attempt is not retried (the server may still be computing it).
        backoff: the first retry's backoff in seconds.
        deadline: most seconds one call may take, every attempt and wait included (``None``: no limit).

    An attempt's answer must arrive, whole, within ``timeout`` and be at most 128 times the request's size plus
    1 MiB; a server (or a proxy in front of it) answering something else than the cprs server's JSON is a
    :class:`RemoteError` of kind ``"BadResponse"`` quoting what came.

    Raises:
        OptionError: a wrong ``base_url``, ``timeout``, ``retries``, ``backoff``, ``deadline`` or ``api_key``.
    """

    def __init__(
        self,
        base_url: str,
        timeout: float = 120.0,
        api_key: str | None = None,
        *,
        retries: int = 3,
        backoff: float = 0.5,
        deadline: float | None = None,
    ) -> None:
        check_server_url("base_url", base_url)
        check_timeout("timeout", timeout)
        check_int("retries", retries, 0)
        if backoff != 0 or isinstance(backoff, bool):  # 0: retry at once
            check_timeout("backoff", backoff)
        if deadline is not None:
            check_timeout("deadline", deadline)
        _check_api_key(api_key)
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self.api_key = api_key
        self.retries = retries
        self.backoff = backoff
        self.deadline = deadline

    def compress(
        self,
        context: str | bytes,
        query: str = "",
        instruction: str | None = None,
        *,
        granularity: Granularity = DEFAULT_GRANULARITY,
        target_ratio: float | None = None,
        target_tokens: int | None = None,
        min_span_tokens: int = 1,
        separator: str = "\n",
        sentence_windows: bool | None = None,
        fill_backward: bool = False,
        keep: Sequence[KeepPattern] = (),
        keep_spans: Sequence[tuple[int, int]] = (),
        budget_tokenizer: str | None = None,
        allow_empty_query: bool = False,
    ) -> CompressionResult:
        """Compress one context on the server; same arguments, result and errors as ``CPRSCompressor.compress``.

        ``keep`` regexes travel as their pattern text (flags i, m, s, x as inline flags); ``budget_tokenizer`` must
        be a tiktoken encoding name, resolved on the server (a tokenizer object or function cannot be sent).

        Raises:
            CPRSError: the subclass a local call raises for this input (wrong arguments are refused before
                anything is sent).
            RemoteError: the server is unreachable, busy (503), timed out (504) or refused the request.
        """
        request = CompressionRequest(
            context, query, instruction, granularity, target_ratio, target_tokens, min_span_tokens, separator,
            sentence_windows, fill_backward, keep=keep, keep_spans=keep_spans, budget_tokenizer=budget_tokenizer,
            allow_empty_query=allow_empty_query,
        )
        check_request(request)
        return _result_from_dict(self._post(COMPRESS_PATH, _request_to_dict(request)), separator)

    def compress_batch(self, requests: Sequence[CompressionRequest]) -> list[CompressionResult | CPRSError]:
        """Compress several requests in one HTTP call; each slot holds its result or its own error.

        A request with a wrong argument gets its error here and is not sent.

        Raises:
            TextDecodingError: a ``bytes`` context is not UTF-8 (checked before anything is sent).
            RemoteError: the whole call failed (unreachable, busy, timed out, too large).
        """
        outcomes: list[CompressionResult | CPRSError | None] = [None] * len(requests)
        for index, request in enumerate(requests):
            try:
                check_request_type(request)
                check_request(request)
            except CPRSError as error:
                outcomes[index] = error
        sent = [index for index, outcome in enumerate(outcomes) if outcome is None]
        if not sent:
            return outcomes  # type: ignore[return-value]
        answer = self._post(BATCH_PATH, {"requests": [_request_to_dict(requests[index]) for index in sent]})
        slots = answer.get("results")
        if not isinstance(slots, list) or len(slots) != len(sent):
            raise RemoteError(f"the server at {self.base_url} sent a malformed batch answer", "BadResponse", 200)
        for index, slot in zip(sent, slots):
            outcomes[index] = _slot_outcome(slot, requests[index].separator)
        return outcomes  # type: ignore[return-value]

    def health(self) -> dict[str, Any]:
        """The server's ``/health`` report (model, queue depth, batch-size statistics, settings)."""
        return self._call(urllib.request.Request(self.base_url + HEALTH_PATH, method="GET"))

    def _post(self, path: str, payload: dict[str, Any]) -> dict[str, Any]:
        body = json.dumps(payload, ensure_ascii=False).encode("utf-8")
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            # sent as its UTF-8 bytes (http.client writes header text as latin-1), as the server compares them
            headers["Authorization"] = f"Bearer {self.api_key}".encode("utf-8").decode("latin-1")
        return self._call(urllib.request.Request(self.base_url + path, data=body, headers=headers, method="POST"))

    def _call(self, request: urllib.request.Request) -> dict[str, Any]:
        """One call: attempts until success, a failure not worth retrying, ``retries`` or the ``deadline``."""
        give_up_at = None if self.deadline is None else time.monotonic() + self.deadline
        for attempt in range(self.retries + 1):
            timeout = self.timeout if give_up_at is None else max(min(self.timeout, give_up_at - time.monotonic()), 1e-3)
            try:
                return self._attempt(request, timeout)
            except RemoteError as error:
                if error.kind not in RETRIED_KINDS or attempt == self.retries:
                    raise
                wait = error.retry_after
                if wait is None:
                    wait = random.uniform(0.0, min(MAX_BACKOFF_S, self.backoff * 2**attempt))
                wait = min(wait, MAX_RETRY_AFTER_S)
                if give_up_at is not None and time.monotonic() + wait >= give_up_at:
                    raise RemoteError(
                        f"{error} (gave up: the call's deadline of {self.deadline} s would pass before retry "
                        f"{attempt + 1})", error.kind, error.status
                    ) from error
                time.sleep(wait)
        raise AssertionError("unreachable: the last attempt returns or raises")

    def _attempt(self, request: urllib.request.Request, timeout: float) -> dict[str, Any]:
        """One HTTP exchange; every way it can fail is a :class:`RemoteError` (or the server's own error)."""
        read_by = time.monotonic() + timeout
        limit = ANSWER_BYTES_PER_BODY_BYTE * len(request.data or b"") + MIN_ANSWER_LIMIT
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                return self._json_object(self._read(response, limit, read_by, timeout))
        except urllib.error.HTTPError as error:
            if error.code == 404:
                raise RemoteError(
                    f"no cprs endpoint at {request.full_url} (HTTP 404): give the server's base URL, e.g. "
                    "http://gpu-box:8091, without an endpoint path", "NotFound", 404,
                ) from None
            raise _error_from_response(error) from None
        except (TimeoutError, socket.timeout) as error:
            raise self._timed_out(timeout) from error
        except urllib.error.URLError as error:
            if isinstance(error.reason, (TimeoutError, socket.timeout)):
                raise self._timed_out(timeout) from error
            raise RemoteError(
                f"cannot reach the cprs server at {self.base_url}: {error.reason}; is `cprs serve` running there?",
                "ConnectionError",
            ) from error
        except ConnectionError as error:
            raise RemoteError(
                f"the connection to the cprs server at {self.base_url} failed: {error}", "ConnectionError"
            ) from error
        except http.client.InvalidURL as error:
            raise RemoteError(f"cannot call the cprs server at {self.base_url}: {error}", "InvalidURL") from error
        except http.client.HTTPException as error:  # not HTTP (another service's port), or an answer cut short
            raise RemoteError(
                f"no valid HTTP answer from {self.base_url} ({type(error).__name__}: {quoted(str(error))}); is it a "
                "cprs server?", "BadResponse",
            ) from error

    def _timed_out(self, timeout: float) -> RemoteError:
        return RemoteError(
            f"no answer from the cprs server at {self.base_url} within {timeout:g} s; raise timeout= "
            "(or deadline=) for very long contexts", "ClientTimeout"
        )

    def _read(self, response: http.client.HTTPResponse, limit: int, read_by: float, timeout: float) -> bytes:
        """The answer's body: at most ``limit`` bytes, whole before ``read_by`` (a server streaming without end
        would otherwise fill the memory)."""
        chunks: list[bytes] = []
        size = 0
        while chunk := response.read(READ_CHUNK):
            size += len(chunk)
            if size > limit:
                raise RemoteError(
                    f"the answer from {self.base_url} is larger than {limit:,} bytes, far more than a cprs server "
                    "sends for this request; is it a cprs server?", "BadResponse", response.status,
                )
            if time.monotonic() > read_by:
                raise self._timed_out(timeout)
            chunks.append(chunk)
        if response.length:  # the connection closed before the Content-Length the server announced
            raise RemoteError(
                f"the answer from {self.base_url} was cut short: {response.length:,} of its bytes never came",
                "ConnectionError", response.status,
            )
        return b"".join(chunks)

    def _json_object(self, body: bytes) -> dict[str, Any]:
        """``body`` as the JSON object a cprs server answers with."""
        try:
            answer = json.loads(body.decode("utf-8"))
        except (ValueError, RecursionError) as error:  # not UTF-8, not JSON, or nested too deeply to read
            raise RemoteError(
                f"bad answer from the cprs server at {self.base_url} ({error}): {quoted(body)}", "BadResponse", 200
            ) from error
        if not isinstance(answer, dict):
            raise RemoteError(
                f"bad answer from the cprs server at {self.base_url}: not a JSON object but {quoted(answer)}",
                "BadResponse", 200,
            )
        return answer


def _check_api_key(api_key: Any) -> None:
    """An :class:`OptionError` unless ``api_key`` is ``None`` or text a header can carry (the key is not echoed)."""
    if api_key is not None and not isinstance(api_key, str):
        raise OptionError(f"api_key must be a string, got {type(api_key).__name__}")
    if api_key is not None and any(ord(character) < 32 or ord(character) == 127 for character in api_key):
        raise OptionError("api_key holds a line break or another control character, which no HTTP header can carry")


def _request_to_dict(request: CompressionRequest) -> dict[str, Any]:
    """The JSON body of one request (a ``bytes`` context is decoded here, so offsets match a local run)."""
    if request.budget_tokenizer is not None and not isinstance(request.budget_tokenizer, str):
        raise BudgetTokenizerError(
            "a cprs server counts budgets with a tiktoken encoding name only (e.g. 'o200k_base'); a tokenizer "
            "object or function cannot be sent: compress locally to use it"
        )
    check_keep(request.keep, request.keep_spans, len(decode_text(request.context)))
    fields = {field.name: getattr(request, field.name) for field in dataclass_fields(request)}
    fields["context"] = decode_text(request.context)
    fields["keep"], fields["keep_regex"] = split_patterns(request.keep)
    fields["keep_spans"] = [list(span) for span in request.keep_spans]
    return fields


def _result_from_dict(data: Any, separator: str) -> CompressionResult:
    """Rebuild a result from :meth:`CompressionResult.to_dict` (which leaves out the request's separator); fields
    the client does not know are ignored.

    Raises:
        RemoteError: a field is missing or of the wrong type.
    """
    problem = _wrong_field(data, RESULT_FIELDS) or next(
        (f"spans[{index}].{wrong}" for index, span in enumerate(data["spans"])
         if (wrong := _wrong_field(span, SPAN_FIELDS))), None,
    )
    if problem:
        raise RemoteError(
            f"the server sent a malformed result ({problem} missing or of the wrong type): {quoted(data)}",
            "BadResponse", 200,
        )
    return CompressionResult(
        text=data["text"],
        spans=[Span(**{name: span[name] for name in SPAN_FIELDS}) for span in data["spans"]],
        **{name: data[name] for name in ("original_tokens", "compressed_tokens", "windows", "granularity")},
        separator=separator,
        metadata=data["metadata"],
    )


def _wrong_field(data: Any, fields: dict[str, type | tuple[type, ...]]) -> str | None:
    """The first of ``fields`` that ``data`` lacks or holds with another type (``"the value"``: not a dict)."""
    if not isinstance(data, dict):
        return "the value"
    return next((name for name, kind in fields.items() if not isinstance(data.get(name), kind)), None)


def _slot_outcome(slot: Any, separator: str) -> CompressionResult | CPRSError:
    """One slot of a batch answer: its result or its own error; a malformed slot is a :class:`RemoteError` in
    its place, so the other slots keep their results."""
    if isinstance(slot, dict) and slot.get("error"):
        return _error_from_dict(slot["error"], 200)
    try:
        return _result_from_dict(slot.get("result") if isinstance(slot, dict) else slot, separator)
    except RemoteError as error:
        return error


def _error_from_dict(error: Any, status: int) -> CPRSError:
    """The exception for an ``{"type": ..., "message": ...}`` error sent by the server (anything else is quoted
    in a :class:`RemoteError` saying the server described no error)."""
    if not isinstance(error, dict):
        return RemoteError(
            f"the server answered HTTP {status} without an error description: {quoted(error)}", "BadResponse", status
        )
    kind, message = _cut(str(error.get("type", ""))), _cut(str(error.get("message", "")))
    if kind in ERROR_TYPES:
        return ERROR_TYPES[kind](message)
    return RemoteError(f"{kind} (HTTP {status}): {message}", kind, status)


def _cut(text: str) -> str:
    """``text`` as it is, or quoted short when longer than :data:`MESSAGE_CHARACTERS`."""
    return text if len(text) <= MESSAGE_CHARACTERS else quoted(text, MESSAGE_CHARACTERS)


def _error_from_response(error: urllib.error.HTTPError) -> CPRSError:
    """The exception for an HTTP error answer: the server's own error, or its body quoted (a proxy's page)."""
    try:
        body = error.read(ERROR_BODY_LIMIT)
    except (OSError, http.client.HTTPException):
        body = b""
    try:
        answer = json.loads(body.decode("utf-8"))
    except (ValueError, RecursionError):
        answer = None
    described = answer.get("error") if isinstance(answer, dict) else None
    failure = _error_from_dict(body if described is None else described, error.code)
    if isinstance(failure, RemoteError):
        failure.retry_after = _retry_after(error.headers.get("Retry-After"))
    return failure


def _retry_after(header: str | None) -> float | None:
    """The seconds of a ``Retry-After`` header (``None``: absent, or an HTTP date, which is not followed)."""
    text = (header or "").strip()
    return float(text) if text.isdecimal() else None
