"""How a cprs server batches, bounds and times out requests."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True)
class ServerSettings:
    """Limits and batching of a cprs server.

    Attributes:
        max_batch_requests: most requests (from any clients) compressed together in one ``compress_batch`` call.
        max_wait_ms: how long the first request of a batch waits for others to join it.
        max_queue: most requests waiting for the model; more are refused with 503 (retry later).
        max_body_bytes: largest request body; larger ones are refused with 413.
        request_timeout_s: a request not answered within this time (queue wait included) gets 504.
        model_name: the model reported by ``/health``.
        api_key: when set, compression endpoints need ``Authorization: Bearer <api_key>`` (else 401).
    """

    max_batch_requests: int = 16
    max_wait_ms: float = 10.0
    max_queue: int = 256
    max_body_bytes: int = 32 * 1024 * 1024
    request_timeout_s: float = 300.0
    model_name: str = "cprs"
    api_key: str | None = None

    def __post_init__(self) -> None:
        for name in ("max_batch_requests", "max_queue", "max_body_bytes"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.max_wait_ms < 0:
            raise ValueError(f"max_wait_ms must be >= 0, got {self.max_wait_ms}")
        if self.request_timeout_s <= 0:
            raise ValueError(f"request_timeout_s must be > 0, got {self.request_timeout_s}")

    def public(self) -> dict[str, Any]:
        """The settings without the API key (as reported by ``/health``)."""
        settings = asdict(self)
        settings["api_key"] = self.api_key is not None
        return settings
