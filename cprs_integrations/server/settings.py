"""How a cprs server batches, bounds and times out requests."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

from cprs_core.validation import check_timeout


CPU_STEP_WINDOWS = 1
"""On a CPU, batching windows barely raises throughput: one window per batch keeps short requests' latency
next to a long one within about 3x of idle (see docs/server-operations.md)."""
ACCELERATOR_STEP_WINDOWS = 16
"""On a GPU, a forward batch needs several windows to keep the device busy."""


@dataclass(frozen=True)
class ServerSettings:
    """Limits and batching of a cprs server.

    Attributes:
        max_batch_requests: most requests (from any clients) computed at once, their windows interleaved in
            shared forward batches; more wait in the queue.
        max_wait_ms: how long an idle server waits for more requests before its first forward batch.
        max_queue: most requests waiting for the model; more are refused with 503 (retry later).
        step_windows: most windows per forward batch; a request waits about one batch for its turn, so smaller
            is fairer to short requests and cancels sooner, larger gives more throughput on a GPU. ``None``:
            :data:`CPU_STEP_WINDOWS` on a CPU critic, :data:`ACCELERATOR_STEP_WINDOWS` on an accelerator.
        max_body_bytes: largest request body; larger ones are refused with 413.
        max_header_bytes: largest total size of the request headers (names and values); more is a 431.
        max_headers: most request headers; more is a 431.
        request_timeout_s: a request not answered within this time (queue wait included) gets 504 and its
            remaining windows are cancelled; a request may ask for less with ``timeout_s``.
        body_timeout_s: a request whose body has not all arrived within this time gets 408 and its connection
            is closed (a client trickling its body cannot hold a connection open for ever).
        model_name: the model reported by ``/health``.
        api_key: when set, compression endpoints need ``Authorization: Bearer <api_key>`` (else 401); an empty
            key, or one with spaces at either end or control characters, is refused (no client could send it).
    """

    max_batch_requests: int = 16
    max_wait_ms: float = 10.0
    max_queue: int = 256
    step_windows: int | None = None
    max_body_bytes: int = 32 * 1024 * 1024
    max_header_bytes: int = 16 * 1024
    max_headers: int = 64
    request_timeout_s: float = 300.0
    body_timeout_s: float = 60.0
    model_name: str = "cprs"
    api_key: str | None = None

    def __post_init__(self) -> None:
        for name in ("max_batch_requests", "max_queue", "step_windows", "max_body_bytes", "max_header_bytes", "max_headers"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if not 0 <= self.max_wait_ms < math.inf:  # nan fails every comparison
            raise ValueError(f"max_wait_ms must be a finite number >= 0, got {self.max_wait_ms}")
        for name in ("request_timeout_s", "body_timeout_s"):
            check_timeout(name, getattr(self, name))
        if self.api_key is not None and not _sendable_key(self.api_key):
            raise ValueError(
                "api_key (--api-key, $CPRS_API_KEY) must be a non-empty key without spaces at either end or control "
                "characters: clients send it as 'Authorization: Bearer <key>' (the key is not shown here)"
            )

    def windows_per_step(self, device_type: str) -> int:
        """:attr:`step_windows`, or its default for a critic on ``device_type`` (``"cpu"``, ``"cuda"``, ...)."""
        if self.step_windows is not None:
            return self.step_windows
        return CPU_STEP_WINDOWS if device_type == "cpu" else ACCELERATOR_STEP_WINDOWS

    def public(self) -> dict[str, Any]:
        """The settings without the API key (as reported by ``/health``)."""
        settings = asdict(self)
        settings["api_key"] = self.api_key is not None
        return settings


def _sendable_key(key: str) -> bool:
    """Whether a client can send ``key`` in an ``Authorization`` header that the server matches (it strips the
    header's token, and a header holds no control characters)."""
    return bool(key) and key == key.strip() and key.isprintable()
