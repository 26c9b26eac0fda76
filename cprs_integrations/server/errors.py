"""Errors a cprs server answers with: an HTTP status, an error type and a message meant for people."""

from __future__ import annotations

from typing import Any

from cprs_core import BudgetTokenizerError, CompressionFailedError, CPRSError
from cprs_core.errors import quoted


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


def from_budget_tokenizer_error(name: str, error: BudgetTokenizerError) -> ApiError:
    """A 400 ``BudgetTokenizerError`` for ``budget_tokenizer=name`` that says what a remote client can do: it cannot
    send a tokenizer object, only a tiktoken encoding name that this server can load (or no budget tokenizer)."""
    try:
        import tiktoken
    except ImportError:
        problem = "cannot be counted here: this server has no tiktoken installed"
    else:
        names = tiktoken.list_encoding_names()
        if name in names:
            problem = (
                f"{quoted(name)} names a tiktoken encoding this server cannot load ({type(error.__cause__).__name__}); "
                "tiktoken fetches an encoding's files on first use, so the server's operator must give it network "
                "access or start it with TIKTOKEN_CACHE_DIR holding those files"
            )
        else:
            problem = f"{quoted(name)} is not a tiktoken encoding name; the names are {', '.join(names)}"
    return ApiError(
        400, type(error).__name__,
        f"budget_tokenizer {problem}. A cprs server counts budgets only in a tiktoken encoding it can load: "
        "leave budget_tokenizer out to count target_tokens/target_ratio in the critic's tokens",
    )
