"""A :class:`~cprs_core.Compressor` that calls a running cprs server (``cprs serve``) over HTTP.

Only the standard library is used, so ``cprs_core`` stays free of web frameworks. The server's richer endpoints
carry :class:`CompressionRequest` fields as JSON and answer with :meth:`CompressionResult.to_dict`; errors come
back as ``{"error": {"type": ..., "message": ...}}`` and are raised here as the same :class:`CPRSError`
subclass the server raised (``EmptyContextError``, ``BudgetError``, ...), or as :class:`RemoteError` for
everything that is not a compression error (server unreachable, busy, timed out, request too large).
"""

from __future__ import annotations

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
from .errors import BudgetTokenizerError, CPRSError
from .keep import KeepPattern, check_keep, split_patterns
from .result import CompressionResult, Span
from .validation import DEFAULT_GRANULARITY, check_request, check_request_type, check_server_url, check_timeout

API_KEY_ENV = "CPRS_API_KEY"
"""Environment variable holding a cprs server's API key (read by the CLI and the framework adapters)."""
COMPRESS_PATH = "/v1/compress"
BATCH_PATH = "/v1/compress_batch"
HEALTH_PATH = "/health"
RETRIED_KINDS = frozenset({"ServerBusy", "ConnectionError"})
"""Failures worth another attempt: a full queue (503) or no connection; compressing is idempotent."""
MAX_BACKOFF_S = 10.0

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
            ``Retry-After`` or an exponential backoff (``backoff`` s doubling, at most 10 s) with full jitter.
            A timed-out attempt is not retried (the server may still be computing it).
        backoff: the first retry's backoff in seconds.
        deadline: most seconds one call may take, every attempt and wait included (``None``: no limit).
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
        if retries < 0 or backoff < 0 or (deadline is not None and deadline <= 0):
            raise ValueError(f"need retries >= 0, backoff >= 0, deadline > 0; got {retries}, {backoff}, {deadline}")
        check_server_url("base_url", base_url)
        check_timeout("timeout", timeout)
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
            outcomes[index] = (
                _error_from_dict(slot["error"], 200) if slot.get("error")
                else _result_from_dict(slot["result"], requests[index].separator)
            )
        return outcomes  # type: ignore[return-value]

    def health(self) -> dict[str, Any]:
        """The server's ``/health`` report (model, queue depth, batch-size statistics, settings)."""
        return self._call(urllib.request.Request(self.base_url + HEALTH_PATH, method="GET"))

    def _post(self, path: str, payload: dict[str, Any]) -> dict[str, Any]:
        body = json.dumps(payload, ensure_ascii=False).encode("utf-8")
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
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
                if give_up_at is not None and time.monotonic() + wait >= give_up_at:
                    raise RemoteError(
                        f"{error} (gave up: the call's deadline of {self.deadline} s would pass before retry "
                        f"{attempt + 1})", error.kind, error.status
                    ) from error
                time.sleep(wait)
        raise AssertionError("unreachable: the last attempt returns or raises")

    def _attempt(self, request: urllib.request.Request, timeout: float) -> dict[str, Any]:
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                return json.loads(response.read().decode("utf-8"))
        except urllib.error.HTTPError as error:
            if error.code == 404:
                raise RemoteError(
                    f"no cprs endpoint at {request.full_url} (HTTP 404): give the server's base URL, e.g. "
                    "http://gpu-box:8091, without an endpoint path", "NotFound", 404,
                ) from None
            raise _error_from_response(error) from None
        except (TimeoutError, socket.timeout) as error:
            raise RemoteError(
                f"no answer from the cprs server at {self.base_url} within {timeout:g} s; raise timeout= "
                "(or deadline=) for very long contexts", "ClientTimeout"
            ) from error
        except urllib.error.URLError as error:
            if isinstance(error.reason, (TimeoutError, socket.timeout)):
                raise RemoteError(
                    f"no answer from the cprs server at {self.base_url} within {timeout:g} s", "ClientTimeout"
                ) from error
            raise RemoteError(
                f"cannot reach the cprs server at {self.base_url}: {error.reason}; is `cprs serve` running there?",
                "ConnectionError",
            ) from error
        except ConnectionError as error:
            raise RemoteError(
                f"the connection to the cprs server at {self.base_url} failed: {error}", "ConnectionError"
            ) from error
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise RemoteError(f"bad answer from the cprs server at {self.base_url}: {error}", "BadResponse") from error


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


def _result_from_dict(data: dict[str, Any], separator: str) -> CompressionResult:
    """Rebuild a result from :meth:`CompressionResult.to_dict` (which leaves out the request's separator)."""
    try:
        return CompressionResult(
            text=data["text"],
            spans=[Span(**span) for span in data["spans"]],
            original_tokens=data["original_tokens"],
            compressed_tokens=data["compressed_tokens"],
            windows=data["windows"],
            granularity=data["granularity"],
            separator=separator,
            metadata=data["metadata"],
        )
    except (KeyError, TypeError) as error:
        raise RemoteError(f"the server sent a malformed result ({error!r})", "BadResponse", 200) from error


def _error_from_dict(error: Any, status: int) -> CPRSError:
    """The exception for an ``{"type": ..., "message": ...}`` error sent by the server."""
    if not isinstance(error, dict):
        return RemoteError(f"the server answered HTTP {status} without an error description", "BadResponse", status)
    kind, message = str(error.get("type", "")), str(error.get("message", ""))
    if kind in ERROR_TYPES:
        return ERROR_TYPES[kind](message)
    return RemoteError(f"{kind} (HTTP {status}): {message}", kind, status)


def _error_from_response(error: urllib.error.HTTPError) -> CPRSError:
    try:
        body = json.loads(error.read().decode("utf-8"))
    except (ValueError, OSError):
        body = None
    failure = _error_from_dict(body.get("error") if isinstance(body, dict) else None, error.code)
    retry_after = (error.headers.get("Retry-After") or "").strip()
    if isinstance(failure, RemoteError) and retry_after.isdigit():
        failure.retry_after = float(retry_after)
    return failure
