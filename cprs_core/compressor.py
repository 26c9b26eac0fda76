"""Public entry point: :class:`CPRSCompressor`."""

from __future__ import annotations

import os
from dataclasses import fields
from pathlib import Path
from typing import Any, Iterable, Protocol, Sequence, runtime_checkable

import torch

from .critic import TokenCritic
from .engine import DEFAULT_MAX_CONTEXT_TOKENS, CompressionRequest, Granularity, ProgressCallback, WindowParallelEngine
from .errors import ContextTypeError, CPRSError, ModelLoadError, OptionError, WindowSizeError, quoted
from .keep import KeepPattern
from .qwen_critic import QwenCritic
from .result import CompressionResult
from .text_checks import refuse_bad_characters
from .validation import (
    DEFAULT_GRANULARITY,
    DEFAULT_MODEL,
    check_bool,
    check_int,
    check_known_options,
    check_optional_int,
    listed,
)


def _resolve_model_dir(path_or_id: str | os.PathLike[str]) -> Path:
    """A local directory for ``path_or_id``: the path itself, or a Hugging Face cache snapshot (never downloads)."""
    if not str(path_or_id).strip():  # Path("") is the working directory
        raise ModelLoadError("the model path is empty; give a model directory, or nothing for the embedded cprs-mini")
    text = str(path_or_id)
    path = Path(path_or_id).expanduser()
    try:
        if path.is_dir():
            return path
        if path.exists():
            raise ModelLoadError(f"{quoted(str(path))} is a file; give the model directory that holds config.json")
    except OSError as error:  # a name too long for the file system, a directory that cannot be read
        raise ModelLoadError(f"cannot look up the model path {quoted(text)}: {error.strerror or error}") from None
    if text.count("/") == 1 and not text.startswith((".", "/", "~")):
        from huggingface_hub import snapshot_download
        from huggingface_hub.errors import LocalEntryNotFoundError

        try:
            return Path(snapshot_download(text, local_files_only=True))
        except (LocalEntryNotFoundError, OSError, ValueError):
            pass
    raise ModelLoadError(
        f"no model at {quoted(text)}: it is not a local directory and not in the Hugging Face cache. cprs never "
        "downloads at run time; fetch it first, e.g. `hf download Tongyi-Zhiwen/QwenLong-CPRS-7B "
        "--local-dir ./QwenLong-CPRS-7B`, then pass that directory"
    )


@runtime_checkable
class Compressor(Protocol):
    """Anything that compresses like :class:`CPRSCompressor` (a local model or a remote cprs server)."""

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
        budget_tokenizer: Any = None,
        allow_empty_query: bool = False,
    ) -> CompressionResult: ...

    def compress_batch(self, requests: Sequence[CompressionRequest]) -> list[CompressionResult | CPRSError]: ...


class CPRSCompressor:
    """Query-aware context compression with a QwenLong-CPRS critic.

    Build one with :meth:`from_pretrained`, then call :meth:`compress` as often as you like; the instance is
    safe to share between threads that call it one at a time.

    Args:
        critic: the token critic (see :class:`~cprs_core.critic.TokenCritic`).
        window_size: tokens per window, prompt prefix included; defaults to the critic's (8192 for the 7B).
        max_context_tokens: longer contexts are refused (:class:`ContextTooLargeError`), unless
        truncate_over_length: ``True`` keeps their first ``max_context_tokens`` tokens, as upstream does; the
            result's ``metadata["truncated"]`` then says so and a :class:`ContextTruncatedWarning` is issued.
    """

    def __init__(
        self,
        critic: TokenCritic,
        window_size: int | None = None,
        max_context_tokens: int = DEFAULT_MAX_CONTEXT_TOKENS,
        truncate_over_length: bool = False,
    ) -> None:
        self.engine = WindowParallelEngine(critic, window_size, max_context_tokens, truncate_over_length)

    @classmethod
    def from_pretrained(
        cls,
        path_or_id: str | os.PathLike[str] | None = None,
        *,
        device: str | torch.device | None = None,
        dtype: str | torch.dtype | None = None,
        window_size: int | None = None,
        max_batch_tokens: int | None = None,
        max_context_tokens: int = DEFAULT_MAX_CONTEXT_TOKENS,
        truncate_over_length: bool = False,
        compile: bool = False,
    ) -> "CPRSCompressor":
        """Load a critic and wrap it.

        Args:
            path_or_id: a checkpoint directory (e.g. a local copy of ``Tongyi-Zhiwen/QwenLong-CPRS-7B``), a hub id
                already in the local Hugging Face cache, or ``None``/``"cprs-mini"`` for the embedded CPU critic.
            device: ``"cpu"``, ``"cuda"``, ``"cuda:N"``; ``None`` picks CUDA when available.
            dtype: ``"float32"``, ``"bfloat16"``, ``"float16"`` (CUDA only; upstream serves in float16: labels
                can differ from bfloat16's where two label logits nearly tie), or ``"int8"`` (cprs-mini on CPU);
                ``None`` = bf16 on CUDA, fp32 on CPU, except cprs-mini on CPU: ``$CPRS_MINI_DTYPE`` if set, else
                bfloat16 on CPUs with AMX (Intel Xeon since Sapphire Rapids) and int8 on others, each the faster
                one there (docs/cpu-speed.md); ``"float32"`` is the opt-out.
            window_size: tokens per window including the prompt prefix (must fit the model's positions).
            max_batch_tokens: tokens per forward batch; ``None`` sizes batches from free GPU memory (cprs-mini:
                4,096 tokens).
            max_context_tokens: refuse longer contexts (or truncate them, with ``truncate_over_length``).
            truncate_over_length: keep the first ``max_context_tokens`` tokens of a longer context instead.
            compile: for a QwenLong-CPRS checkpoint on CUDA, fuse projections and ``torch.compile`` the layers
                (about 1.2x faster scoring; the first compressions pay the compilation).

        Raises:
            ModelLoadError: missing path or a directory that is not a CPRS critic.
            DeviceError: unknown/unavailable device or unsupported dtype.
            WindowSizeError: ``window_size`` below 2 (checked before loading) or larger than the model allows.
            OptionError: ``max_batch_tokens`` / ``max_context_tokens`` not a positive integer, or
                ``truncate_over_length`` / ``compile`` not a bool (before loading).
        """
        from .mini import is_mini_checkpoint, load_mini_critic

        check_optional_int("window_size", window_size, 2, WindowSizeError)
        check_optional_int("max_batch_tokens", max_batch_tokens, 1, OptionError)
        check_int("max_context_tokens", max_context_tokens, 1, OptionError)
        check_bool("truncate_over_length", truncate_over_length)
        check_bool("compile", compile)
        if path_or_id is not None and not isinstance(path_or_id, (str, os.PathLike)):
            raise ModelLoadError(
                f"path_or_id must be a directory, a hub id or 'cprs-mini', got {type(path_or_id).__name__} {quoted(path_or_id)}"
            )
        critic: TokenCritic
        if path_or_id is None or str(path_or_id) == DEFAULT_MODEL:
            critic = load_mini_critic(None, device=device, dtype=dtype, max_batch_tokens=max_batch_tokens)
        else:
            directory = _resolve_model_dir(path_or_id)
            if is_mini_checkpoint(directory):
                critic = load_mini_critic(directory, device=device, dtype=dtype, max_batch_tokens=max_batch_tokens)
            else:
                critic = QwenCritic.from_pretrained(
                    directory, device=device, dtype=dtype, max_batch_tokens=max_batch_tokens, compile=compile
                )
        return cls(
            critic,
            window_size=window_size,
            max_context_tokens=max_context_tokens,
            truncate_over_length=truncate_over_length,
        )

    @property
    def critic(self) -> TokenCritic:
        return self.engine.critic

    @property
    def window_size(self) -> int:
        return self.engine.window_size

    def count_tokens(self, text: str) -> int:
        """Tokens of ``text`` in the critic's tokenizer (the unit of budgets and ratios).

        Raises:
            ContextTypeError: ``text`` is not a string.
            TextDecodingError: ``text`` holds a lone surrogate or a NUL character.
        """
        if not isinstance(text, str):
            raise ContextTypeError(f"text must be a str, not {type(text).__name__}")
        refuse_bad_characters(text, "text")
        return self.critic.count_tokens(text)

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
        budget_tokenizer: Any = None,
        allow_empty_query: bool = False,
        progress: ProgressCallback | None = None,
    ) -> CompressionResult:
        """Keep the parts of ``context`` the critic tags for ``query``.

        Args:
            context: the long text (``bytes`` must be UTF-8).
            query: the user's question; must not be empty unless ``allow_empty_query=True``.
            instruction: the control prompt with its tagging rule; a preset name (``"needle"``, ``"fact"``,
                ``"chain"``) or free text; ``None`` = the supporting-facts preset. A single word close to a
                preset (``"needles"``) is refused with the suggestion.
            granularity: ``"sentence"`` (default, :data:`~cprs_core.validation.DEFAULT_GRANULARITY`) keeps whole
                sentences that contain tagged tokens (cprs-mini also ranks them, see docs/cprs-mini-evaluation.md),
                ``"paragraph"`` whole paragraphs, ``"line"`` whole lines, ``"token"`` only the tagged spans. Units
                are structure-safe (markdown headings stay with their section, code blocks by whole lines, table
                rows, chat turns with their speaker; see :func:`cprs_core.text_units.segment`).
            target_ratio: keep about this fraction of tokens (0 < r <= 1): the highest-scoring units that fit.
            target_tokens: keep at most this many tokens: the highest-scoring units that fit.
            min_span_tokens: drop decoded spans shorter than this (no budget only).
            separator: placed between spans in ``result.text``.
            sentence_windows: cut windows at sentence ends instead of every ``window_size`` tokens (upstream's
                ``split_with_sent``); ``None`` = only when the context holds a CJK ideograph, as upstream does.
            fill_backward: also fill short O gaps walking back from each E label (a cprs option; upstream's
                tag correction only walks forward from each B).
            keep: text always kept: literal strings, or compiled ``re.Pattern`` for regular expressions; each
                match (at the chosen granularity: its token/sentence/... units) is kept on top of the critic's
                choice. Under a budget, forced text is taken first and counts against it (see
                :mod:`cprs_core.keep`).
            keep_spans: ``(start, end)`` character offsets always kept, like ``keep`` matches.
            budget_tokenizer: count ``target_tokens``/``target_ratio`` in the reader's tokenizer: a transformers
                tokenizer, a tiktoken encoding name or a ``str -> int`` function; ``result.metadata
                ["budget_tokenizer"]`` then reports the original and kept counts in it (see
                :mod:`cprs_core.reader_tokens`).
            allow_empty_query: opt in to query-free compression (an empty ``query`` is otherwise an error).
            progress: called with (windows scored, windows total) while scoring, e.g. to drive a progress bar.

        Raises:
            QueryError, InstructionError, GranularityError, BudgetError, OptionError, KeepError,
            BudgetTokenizerError: a wrong argument, named.
            EmptyContextError, ContextTypeError, ContextTooLargeError, TextDecodingError, WindowSizeError.
        """
        return self.engine.compress(
            CompressionRequest(
                context, query, instruction, granularity, target_ratio, target_tokens, min_span_tokens, separator,
                sentence_windows, fill_backward, keep=keep, keep_spans=keep_spans, budget_tokenizer=budget_tokenizer,
                allow_empty_query=allow_empty_query,
            ),
            progress,
        )

    def compress_batch(
        self, requests: Sequence[CompressionRequest], progress: ProgressCallback | None = None
    ) -> list[CompressionResult | CPRSError]:
        """Compress several requests in shared forward batches; each slot holds a result or that request's error.

        Raises:
            OptionError: ``requests`` is not a list (or other iterable) of requests, e.g. a single request.
        """
        return self.engine.compress_batch(listed(requests, "requests", CompressionRequest), progress)

    def compress_many(
        self, contexts: Iterable[str | bytes], query: str = "", instruction: str | None = None, **options: Any
    ) -> list[CompressionResult]:
        """Compress each context for the same query (their windows share batches); raises the first error.

        ``options`` are :meth:`compress`'s keyword arguments (an unknown one is an :class:`OptionError`); a single
        text for ``contexts`` is a :class:`ContextTypeError` (use :meth:`compress`).
        """
        positional = ("context", "query", "instruction")
        check_known_options(options, [field.name for field in fields(CompressionRequest) if field.name not in positional])
        contexts = listed(contexts, "contexts", str, ContextTypeError)
        outcomes = self.compress_batch([CompressionRequest(context, query, instruction, **options) for context in contexts])
        for outcome in outcomes:
            if isinstance(outcome, CPRSError):
                raise outcome
        return outcomes  # type: ignore[return-value]
