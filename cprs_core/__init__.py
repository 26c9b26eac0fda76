"""cprs_core: QwenLong-CPRS query-aware context compression (model, critic, window-parallel engine, spans)."""

from .compressor import DEFAULT_MODEL, Compressor, CPRSCompressor
from .engine import CompressionRequest
from .configuration import CPRSConfig
from .critic import BIOE_LABELS, StreamingTokenCritic, TokenCritic, TokenizedText, WindowScores
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
    KeepError,
    ModelLoadError,
    TextDecodingError,
    WindowSizeError,
)
from .modeling import CPRSForTokenCritic
from .prompt import INSTRUCTIONS
from .qwen_critic import QwenCritic
from .result import CompressionResult, Span
from .scheduler import Ticket, WindowScheduler

__all__ = [
    "BIOE_LABELS",
    "BudgetError",
    "BudgetTokenizerError",
    "CompressionFailedError",
    "CompressionRequest",
    "Compressor",
    "ContextTypeError",
    "GranularityError",
    "CPRSCompressor",
    "CPRSConfig",
    "CPRSError",
    "CPRSForTokenCritic",
    "CompressionResult",
    "ContextTooLargeError",
    "ContextTruncatedWarning",
    "DEFAULT_MODEL",
    "DeviceError",
    "EmptyContextError",
    "INSTRUCTIONS",
    "KeepError",
    "ModelLoadError",
    "QwenCritic",
    "Span",
    "StreamingTokenCritic",
    "TextDecodingError",
    "TokenCritic",
    "TokenizedText",
    "Ticket",
    "WindowScheduler",
    "WindowScores",
    "WindowSizeError",
]
