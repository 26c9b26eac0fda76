"""cprs_core: QwenLong-CPRS query-aware context compression (model, critic, window-parallel engine, spans).

Names are imported on first use, so ``import cprs_core`` (and the light modules ``cprs_core.errors``,
``cprs_core.prompt``, ``cprs_core.validation``) do not import torch: ``cprs --help`` stays fast.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .lazy_exports import lazy_exports

if TYPE_CHECKING:
    from .compressor import Compressor, CPRSCompressor
    from .configuration import CPRSConfig
    from .critic import BIOE_LABELS, StreamingTokenCritic, TokenCritic, TokenizedText, WindowScores
    from .engine import CompressionRequest
    from .errors import (
        BudgetError,
        BudgetTokenizerError,
        CompressionFailedError,
        ContextTooLargeError,
        ContextTruncatedWarning,
        ContextTypeError,
        CPRSError,
        DeviceError,
        EmptyContextError,
        GranularityError,
        InstructionError,
        KeepError,
        ModelLoadError,
        OptionError,
        QueryError,
        QueryTruncatedWarning,
        TextDecodingError,
        WindowSizeError,
    )
    from .modeling import CPRSForTokenCritic
    from .prompt import INSTRUCTIONS
    from .qwen_critic import QwenCritic
    from .result import CompressionResult, Span
    from .scheduler import Ticket, WindowScheduler
    from .validation import DEFAULT_GRANULARITY, DEFAULT_MODEL, GRANULARITIES

_EXPORTS = {
    **dict.fromkeys(("Compressor", "CPRSCompressor"), ".compressor"),
    "CPRSConfig": ".configuration",
    **dict.fromkeys(("BIOE_LABELS", "StreamingTokenCritic", "TokenCritic", "TokenizedText", "WindowScores"), ".critic"),
    "CompressionRequest": ".engine",
    **dict.fromkeys(
        (
            "BudgetError", "BudgetTokenizerError", "CompressionFailedError", "ContextTooLargeError",
            "ContextTruncatedWarning", "ContextTypeError", "CPRSError", "DeviceError", "EmptyContextError",
            "GranularityError", "InstructionError", "KeepError", "ModelLoadError", "OptionError", "QueryError",
            "QueryTruncatedWarning", "TextDecodingError", "WindowSizeError",
        ),
        ".errors",
    ),
    "CPRSForTokenCritic": ".modeling",
    "INSTRUCTIONS": ".prompt",
    "QwenCritic": ".qwen_critic",
    **dict.fromkeys(("CompressionResult", "Span"), ".result"),
    **dict.fromkeys(("Ticket", "WindowScheduler"), ".scheduler"),
    **dict.fromkeys(("DEFAULT_GRANULARITY", "DEFAULT_MODEL", "GRANULARITIES"), ".validation"),
}

__all__ = sorted(_EXPORTS)

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
