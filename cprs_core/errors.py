"""Errors raised by cprs. Every one is a ``CPRSError`` and a ``ValueError``, so callers can catch either.

Two warnings too: :class:`ContextTruncatedWarning` and :class:`QueryTruncatedWarning`."""

from __future__ import annotations


class CPRSError(ValueError):
    """Base class of every error cprs raises on bad input or configuration."""


class EmptyContextError(CPRSError):
    """The context to compress is empty or only whitespace."""


class ContextTooLargeError(CPRSError):
    """The context has more tokens than the configured ``max_context_tokens``."""


class WindowSizeError(CPRSError):
    """The window is larger than the model's positions allow, or too small to hold the prompt."""


class ModelLoadError(CPRSError):
    """A model path is missing, or a checkpoint is not in a format cprs can load."""


class DeviceError(CPRSError):
    """An unknown or unavailable device, or a dtype the device cannot run."""


class BudgetError(CPRSError):
    """A ``target_ratio`` / ``target_tokens`` budget that is invalid or cannot be met."""


class TextDecodingError(CPRSError):
    """Input bytes that are not valid UTF-8, or text holding characters cprs refuses (lone surrogates, NUL)."""


class GranularityError(CPRSError):
    """A granularity other than ``token``, ``sentence``, ``paragraph`` or ``line``."""


class ContextTypeError(CPRSError, TypeError):
    """A context that is neither ``str`` nor ``bytes``, or a JSON value nested too deeply to prune by its structure."""


class ContextTruncatedWarning(UserWarning):
    """A context over ``max_context_tokens`` was truncated (only with ``truncate_over_length=True``)."""


class QueryTruncatedWarning(UserWarning):
    """The critic reads only the start of a long query (cprs-mini: its first 64 tokens with the tag words)."""


class KeepError(CPRSError):
    """A ``keep`` pattern or ``keep_spans`` range that is not valid for the context."""


class BudgetTokenizerError(CPRSError):
    """A ``budget_tokenizer`` that is not a tokenizer, a tiktoken encoding name or a ``str -> int`` counter."""


class CompressionFailedError(CPRSError):
    """The model failed while compressing one request (e.g. out of memory); other requests are unaffected.

    The original exception is the ``__cause__``.
    """


class QueryError(CPRSError):
    """A query that is not a string, or is empty/whitespace without ``allow_empty_query=True``."""


class InstructionError(CPRSError):
    """An instruction that is not a string, is empty, or is a near miss of a preset name (``"needles"``)."""


class OptionError(CPRSError):
    """Any other option of the wrong type or out of range (``min_span_tokens``, ``separator``, ...)."""


QUOTED_CHARACTERS = 80
"""How much of a wrong value an error message quotes (a 100,000-character value is cut, with its length said)."""


def quoted(value: object, limit: int = QUOTED_CHARACTERS) -> str:
    """``repr(value)`` for an error message, cut to ``limit`` characters with the value's length said when longer."""
    text = repr(value)
    if len(text) <= limit:
        return text
    length = len(value) if isinstance(value, (str, bytes)) else len(text)
    return f"{text[:limit]}... ({length:,} {'bytes' if isinstance(value, bytes) else 'characters'})"
