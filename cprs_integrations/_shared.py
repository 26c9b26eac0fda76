"""What every framework adapter shares: where the compressor comes from, and how texts are compressed for a query.

The adapters (:mod:`cprs_integrations.langchain`, :mod:`cprs_integrations.llamaindex`,
:mod:`cprs_integrations.tools`) only translate their framework's objects to texts and back; the options, the
choice of compressor, the per-document/joint compression and the metadata schema all live here.
"""

from __future__ import annotations

import os
import re
import threading
import weakref
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Any, Literal, Mapping, Sequence, get_args

from pydantic import BaseModel, Field, ValidationError, field_serializer, field_validator, model_validator

from cprs_core import (
    DEFAULT_MODEL,
    CompressionRequest,
    CompressionResult,
    Compressor,
    ContextTypeError,
    CPRSCompressor,
    CPRSError,
    EmptyContextError,
    OptionError,
    Span,
    WindowSizeError,
)
from cprs_core.errors import QUOTED_CHARACTERS, quoted
from cprs_core.keep import check_keep, forced_ranges, regex_text
from cprs_core.reader_tokens import reader_tokenizer
from cprs_core.remote import API_KEY_ENV
from cprs_core.validation import (
    DEFAULT_GRANULARITY,
    Granularity,
    check_bool,
    check_known_options,
    check_optional_int,
    check_query,
    check_server_url,
    check_settings,
    check_timeout,
)

SERVER_URL_ENV = "CPRS_SERVER_URL"
"""When no compressor, ``server_url`` or local model setting is configured, a server URL in this variable is used."""

DEFAULT_TIMEOUT = 120.0
"""Seconds a remote compression may take."""

Mode = Literal["per_document", "joint"]
SUMMARY_KEYS = ("original_tokens", "compressed_tokens", "ratio", "keep_ratio", "windows", "granularity")
"""The :meth:`CompressionResult.to_dict` entries copied into each kept text's metadata."""

_LOCAL_FIELDS = ("model", "device", "dtype", "window_size")
_OPTION_FIELDS = ("instruction", "granularity", "target_ratio", "target_tokens", "min_span_tokens", "separator")

_cache_lock = threading.Lock()
_local_compressors: dict[tuple[str, str | None, str | None, int | None], CPRSCompressor] = {}
_remote_compressors: dict[tuple[str, float, str | None], Compressor] = {}
_call_locks_lock = threading.Lock()
_call_locks: "weakref.WeakKeyDictionary[CPRSCompressor, threading.Lock]" = weakref.WeakKeyDictionary()


def pydantic_problems(error: ValidationError, root: str, with_input: bool = False) -> str:
    """Each of pydantic's complaints as ``field: message``, ``root`` naming the whole object; ``with_input`` adds
    ``(got value)`` to each complaint about a field."""
    return "; ".join(
        f"{'.'.join(_place(part) for part in item['loc']) or root}: {item['msg']}"
        + (f" (got {quoted(item['input'])})" if with_input and item["loc"] else "")
        for item in error.errors()
    )


def _place(part: Any) -> str:
    """One part of a pydantic error location: a field name or index, quoted short when it is long (an unknown
    field's name is the client's own text)."""
    text = str(part)
    return text if len(text) <= QUOTED_CHARACTERS else quoted(text)


def _compiled(entry: dict[str, Any]) -> re.Pattern[str]:
    """A serialized ``keep`` regex, ``{"regex": "..."}``, compiled."""
    if set(entry) != {"regex"} or not isinstance(entry["regex"], str):
        raise ValueError(f'a keep entry given as a dict must be {{"regex": "<pattern>"}}, got {quoted(entry)}')
    try:
        return re.compile(entry["regex"])
    except re.error as error:
        raise ValueError(f"keep regex {quoted(entry['regex'])} is not a valid regular expression: {error}") from None


def local_compressor(
    model: str | None = None, device: str | None = None, dtype: str | None = None, window_size: int | None = None
) -> CPRSCompressor:
    """The process-wide :class:`CPRSCompressor` for these settings, loaded on first use (``None`` = cprs-mini)."""
    key = (model or DEFAULT_MODEL, device, dtype, window_size)
    with _cache_lock:
        if key not in _local_compressors:
            _local_compressors[key] = CPRSCompressor.from_pretrained(
                key[0], device=device, dtype=dtype, window_size=window_size
            )
        return _local_compressors[key]


def remote_compressor(server_url: str, timeout: float = DEFAULT_TIMEOUT, api_key: str | None = None) -> Compressor:
    """The process-wide client of the cprs server at ``server_url`` (``cprs_core.remote.RemoteCompressor``)."""
    from cprs_core.remote import RemoteCompressor

    key = (server_url.rstrip("/"), timeout, api_key)
    with _cache_lock:
        if key not in _remote_compressors:
            _remote_compressors[key] = RemoteCompressor(key[0], timeout=timeout, api_key=api_key)
        return _remote_compressors[key]


def exclusive(compressor: Compressor) -> AbstractContextManager[Any]:
    """Hold while calling ``compressor``: a local :class:`CPRSCompressor` serves one call at a time.

    Threads (e.g. ``asyncio.to_thread`` from concurrent async calls) queue on one lock per local model; remote
    compressors and other implementations are called concurrently.
    """
    if not isinstance(compressor, CPRSCompressor):
        return nullcontext()
    with _call_locks_lock:
        return _call_locks.setdefault(compressor, threading.Lock())


@dataclass(frozen=True)
class KeptText:
    """What was kept of one source text.

    Attributes:
        text: the kept spans joined by the separator.
        spans: the kept spans, with character offsets into the source text (not into a joint context).
        result: the compression it came from (in joint mode, that of all texts together).
    """

    text: str
    spans: list[Span]
    result: CompressionResult

    @property
    def score(self) -> float:
        """The highest span score: how confidently the critic found query-relevant text in the source."""
        return max(span.score for span in self.spans)


class CompressorSettings(BaseModel):
    """Where the compressor comes from and how it compresses; the fields every adapter takes.

    The compressor is, in this order: ``compressor`` (any :class:`cprs_core.Compressor`), ``server_url`` (a
    running cprs server, through ``cprs_core.remote.RemoteCompressor``; ``api_key`` or ``$CPRS_API_KEY`` when
    it needs one), a local model configured by ``model``/``device``/``dtype``/``window_size``, the server in
    ``$CPRS_SERVER_URL``, and finally the embedded cprs-mini. Local models and server clients are cached per
    process, so adapters with the same settings share one loaded model. The compression options are those of
    :meth:`cprs_core.CPRSCompressor.compress`; a wrong one raises its :class:`cprs_core.CPRSError` when the
    adapter is built (before any model loads), and an empty query raises ``QueryError`` on the call unless
    ``allow_empty_query=True``.
    """

    instruction: str | None = Field(
        default=None, description="Tagging instruction: 'needle', 'fact', 'chain' or free text; None = 'fact'."
    )
    granularity: Granularity = Field(
        default=DEFAULT_GRANULARITY,
        description="Keep the whole sentences (default) or paragraphs holding tagged tokens, or only the tagged spans ('token').",
    )
    target_ratio: float | None = Field(default=None, description="Keep about this fraction of tokens (0 < r <= 1).")
    target_tokens: int | None = Field(default=None, description="Keep at most this many tokens.")
    min_span_tokens: int = Field(default=1, description="Drop kept spans shorter than this (no budget only).")
    separator: str = Field(default="\n", description="Placed between kept spans of one text.")
    keep: list[str | re.Pattern[str]] = Field(
        default_factory=list, description="Always kept: literal strings, or re.Pattern objects for regexes."
    )
    keep_spans: list[tuple[int, int]] = Field(
        default_factory=list, description="Always kept: (start, end) character offsets (into each text)."
    )
    budget_tokenizer: Any = Field(
        default=None, repr=False,
        description="Count target_tokens/target_ratio in the reader's tokenizer: a transformers tokenizer, "
        "a tiktoken encoding name or a str -> int function (a tiktoken name survives "
        "to_json/model_dump_json; an object or function is written as null: pass it again when loading).",
    )
    allow_empty_query: bool = Field(default=False, description="Opt in to query-free compression of an empty query.")
    compressor: Any = Field(default=None, exclude=True, repr=False, description="A Compressor object to use.")
    server_url: str | None = Field(default=None, description="Base URL of a running cprs server.")
    timeout: float = Field(default=DEFAULT_TIMEOUT, description="Seconds a remote compression may take.")
    api_key: str | None = Field(
        default=None, exclude=True, repr=False, description="The server's API key; None = $CPRS_API_KEY, if set."
    )
    model: str | None = Field(default=None, description="Local checkpoint directory or cached hub id.")
    device: str | None = Field(default=None, description="Device of a local model; None = CUDA when present.")
    dtype: str | None = Field(
        default=None, description="Dtype of a local model; None = bf16 on CUDA, fp32 on CPU (cprs-mini: bf16 on CPUs with AMX, else int8 linear layers); \"float32\" = cprs-mini's opt-out."
    )
    window_size: int | None = Field(default=None, description="Tokens per window of a local model.")

    def __init__(self, **data: Any) -> None:
        """Check the options as the core does: an unknown or wrong one is an :class:`~cprs_core.OptionError` (or
        the core's own :class:`cprs_core.CPRSError` for it), not a pydantic error."""
        fields = type(self).model_fields
        check_known_options(data, fields)

        def given(name: str) -> Any:
            return data[name] if name in data else fields[name].default

        check_settings(*(given(name) for name in _OPTION_FIELDS))
        check_bool("allow_empty_query", given("allow_empty_query"))
        check_optional_int("window_size", given("window_size"), 2, WindowSizeError)
        check_timeout("timeout", given("timeout"))
        if given("server_url") is not None:
            check_server_url("server_url", given("server_url"))
        if "keep_spans" in data:  # as given: pydantic would make (True, "2") the span (1, 2)
            check_keep((), data["keep_spans"], None)
        try:
            super().__init__(**data)
        except ValidationError as error:
            raise OptionError(
                f"invalid options for {type(self).__name__}: {pydantic_problems(error, 'settings', with_input=True)}"
            ) from error
        check_keep(self.keep, self.keep_spans, None)  # against each text's length on the call
        if self.budget_tokenizer is not None and not isinstance(self.budget_tokenizer, str):
            reader_tokenizer(self.budget_tokenizer)  # a tiktoken name is loaded on the call (it may download)

    @field_validator("keep", mode="before")
    @classmethod
    def _regexes_from_data(cls, value: Any) -> Any:
        """``{"regex": "..."}`` entries (how :meth:`_regexes_as_data` writes a pattern) compiled back."""
        if not isinstance(value, (list, tuple)):
            return value
        return [_compiled(item) if isinstance(item, dict) else item for item in value]

    @field_serializer("keep")
    def _regexes_as_data(self, keep: list[str | re.Pattern[str]]) -> list[str | dict[str, str]]:
        """Patterns as ``{"regex": text with inline flags}``, so that ``to_dict``/``to_json``/``model_dump_json``
        give JSON and load back as patterns (a bare string would load back as a literal)."""
        return [{"regex": regex_text(item)} if isinstance(item, re.Pattern) else item for item in keep]

    @field_serializer("budget_tokenizer")
    def _budget_tokenizer_name(self, budget_tokenizer: Any) -> str | None:
        """A tiktoken encoding name as itself, so a restored adapter counts budgets in the
        same tokens; a tokenizer object or function cannot be written as JSON, so ``None``."""
        return budget_tokenizer if isinstance(budget_tokenizer, str) else None

    @model_validator(mode="after")
    def _one_source(self) -> "CompressorSettings":
        local = [name for name in _LOCAL_FIELDS if getattr(self, name) is not None]
        if self.compressor is not None and (self.server_url or local):
            given = self.server_url or ", ".join(local)
            raise ValueError(f"give a compressor object or the settings to build one, not both (got {given})")
        if self.compressor is not None and not isinstance(self.compressor, Compressor):
            raise ValueError(f"compressor must implement cprs_core.Compressor, got {type(self.compressor).__name__}")
        if self.server_url and local:
            raise ValueError(
                f"server_url sends the work to a server, which uses its own model; {', '.join(local)} "
                f"{'configures' if len(local) == 1 else 'configure'} a local model: leave "
                f"{'it' if len(local) == 1 else 'them'} out, or leave out server_url"
            )
        return self

    def resolve_compressor(self) -> Compressor:
        """The configured compressor (see the class docstring for the order)."""
        if self.compressor is not None:
            return self.compressor
        configured_locally = any(getattr(self, name) is not None for name in _LOCAL_FIELDS)
        from_environment = None if configured_locally or self.server_url else os.environ.get(SERVER_URL_ENV)
        if from_environment:
            check_server_url(f"${SERVER_URL_ENV}", from_environment)
        server_url = self.server_url or from_environment
        if server_url:
            return remote_compressor(server_url, self.timeout, self.api_key or os.environ.get(API_KEY_ENV))
        return local_compressor(self.model, self.device, self.dtype, self.window_size)

    def request(self, context: str, query: str) -> CompressionRequest:
        """A request for ``context`` and ``query`` with these options."""
        return CompressionRequest(
            context, query, self.instruction, self.granularity, self.target_ratio, self.target_tokens,
            self.min_span_tokens, self.separator, keep=tuple(self.keep), keep_spans=tuple(self.keep_spans),
            budget_tokenizer=self.budget_tokenizer, allow_empty_query=self.allow_empty_query,
        )

    def compress_batch(self, contexts: Sequence[str], query: str) -> list[CompressionResult | CPRSError]:
        """Compress ``contexts`` for ``query`` in one batch call; each slot holds a result or its error.

        Raises:
            CPRSError: a wrong query (``QueryError``), before the compressor is resolved or loaded.
        """
        requests = [self.request(context, query) for context in contexts]
        check_query(query, self.allow_empty_query)
        compressor = self.resolve_compressor()
        with exclusive(compressor):
            return compressor.compress_batch(requests)

    def compress(self, context: str, query: str) -> CompressionResult:
        """Compress one context for ``query``; raises its :class:`CPRSError`."""
        outcome = self.compress_batch([context], query)[0]
        if isinstance(outcome, CPRSError):
            raise outcome
        return outcome


class DocumentSettings(CompressorSettings):
    """:class:`CompressorSettings` plus how a list of documents is compressed and where metadata goes."""

    mode: Mode = Field(
        default="per_document",
        description="'per_document': each text compressed on its own (one batch call, budgets per text); "
        "'joint': all texts as one context (budgets shared, the most relevant parts of all texts win).",
    )
    document_separator: str = Field(default="\n\n", description="Joins the texts into one context in joint mode.")
    metadata_key: str = Field(
        default="cprs", description="Metadata key of the compression metadata: free in the documents' metadata, "
        "or holding an earlier compression's metadata (replaced); another value there is an OptionError.",
    )
    min_score: float | None = Field(
        default=None,
        description="Drop a document whose best kept span scores below this (0..1; with cprs-mini, the relevance "
        "probability of its best kept sentence), unless it holds keep/keep_spans text. None: no cut-off.",
    )

    @field_validator("metadata_key")
    @classmethod
    def _key_not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("metadata_key must name a metadata key (such as 'cprs'), not be empty or blank")
        return value

    @field_validator("min_score", mode="before")
    @classmethod
    def _score_in_range(cls, value: Any) -> Any:
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1):
            raise ValueError("min_score must be a span score between 0 and 1, or None")
        return value

    def compress_texts(
        self, texts: Sequence[str], query: str, names: Sequence[str] | None = None
    ) -> list[KeptText | None]:
        """What was kept of each text for ``query``; ``None`` for a text that is empty, had nothing kept, or
        whose best span scored below ``min_score`` (unless ``keep``/``keep_spans`` force some of it: forced text
        is never dropped). ``names`` (default ``texts[i]``) name the texts in errors about one of them.

        Raises:
            CPRSError: any error other than an empty text (an empty query, a context too large, ...); an error
                about one text starts with its name.
        """
        check_query(query, self.allow_empty_query)
        if not texts:
            return []
        names = [f"texts[{index}]" for index in range(len(texts))] if names is None else names
        if self.mode == "joint":
            kept = self._compress_jointly(texts, query, names)
        else:
            kept = [_kept(outcome, name) for outcome, name in zip(self.compress_batch(texts, query), names)]
        if self.min_score is None:
            return kept
        return [item if item is not None and (item.score >= self.min_score or self._forces_some_of(text)) else None
                for text, item in zip(texts, kept)]

    def _forces_some_of(self, text: str) -> bool:
        """Whether ``keep`` or ``keep_spans`` force any of ``text``."""
        return bool((self.keep or self.keep_spans) and forced_ranges(text, self.keep, self.keep_spans))

    def check_metadata(self, metadata: Any, name: str) -> None:
        """Check that the compression metadata can be added to ``metadata``, the metadata of the document or node
        ``name``, without losing any of it: a dict whose ``metadata_key`` is free or holds the compression metadata
        of an earlier pass (which the new one replaces).

        Raises:
            ContextTypeError: ``metadata`` is not a dict.
            OptionError: ``metadata_key`` holds something else, which the compression metadata would overwrite.
        """
        if not isinstance(metadata, Mapping):
            raise ContextTypeError(f"{name}.metadata must be a dict, got {type(metadata).__name__}")
        if self.metadata_key in metadata and not _is_compression_metadata(metadata[self.metadata_key]):
            raise OptionError(
                f"{name}.metadata already has the key {quoted(self.metadata_key)} (holding "
                f"{metadata[self.metadata_key]!r:.60}), where the compression metadata goes; pass a free key as "
                "metadata_key so that it is not overwritten")

    def compression_metadata(self, kept: KeptText) -> dict[str, Any]:
        """The compression metadata of one kept text (stored under ``metadata_key``).

        ``original_tokens``, ``compressed_tokens``, ``ratio`` (``None`` when nothing was kept), ``keep_ratio``,
        ``windows`` and ``granularity`` describe the compressed context: the text itself in per-document mode,
        all texts together in joint mode. ``spans`` are this text's kept spans (``start``/``end`` character
        offsets into the original text, ``text``, ``score``, ``tag``); ``score`` is the highest span score.
        ``best_relevance`` is the compressed context's highest sentence relevance probability (cprs-mini; ``None``
        for a critic without a relevance head): how likely it holds what the query asks at all.
        """
        summary = kept.result.to_dict()
        return {
            "mode": self.mode,
            **{key: summary[key] for key in SUMMARY_KEYS},
            "best_relevance": summary["metadata"].get("best_relevance"),
            "score": kept.score,
            "spans": [span.to_dict() for span in kept.spans],
        }

    def _compress_jointly(self, texts: Sequence[str], query: str, names: Sequence[str]) -> list[KeptText | None]:
        starts = []
        position = 0
        for text in texts:
            starts.append(position)
            position += len(text) + len(self.document_separator)
        settings = self._with_spans_in_each(texts, starts, names) if self.keep_spans else self
        outcome = settings.compress_batch([self.document_separator.join(texts)], query)[0]
        if isinstance(outcome, EmptyContextError):
            return [None] * len(texts)
        if isinstance(outcome, CPRSError):
            raise outcome
        kept: list[KeptText | None] = []
        for text, start in zip(texts, starts):
            spans = [clipped for span in outcome.spans if (clipped := _clip(span, text, start)) is not None]
            kept.append(KeptText(self.separator.join(span.text for span in spans), spans, outcome) if spans else None)
        return kept

    def _with_spans_in_each(
        self, texts: Sequence[str], starts: Sequence[int], names: Sequence[str]
    ) -> "DocumentSettings":
        """These settings with ``keep_spans`` (offsets into each text, as in per-document mode) moved to every
        non-blank text's place in the joint context.

        Raises:
            KeepError: a span ending past a non-blank text's end, as per-document mode raises it (its name first).
        """
        spans = []
        for text, start, name in zip(texts, starts, names):
            if text.strip():
                try:
                    check_keep((), self.keep_spans, len(text))
                except CPRSError as error:
                    raise _about(error, name) from None
                spans.extend((start + span_start, start + span_end) for span_start, span_end in self.keep_spans)
        return self.model_copy(update={"keep_spans": spans})


def _is_compression_metadata(value: Any) -> bool:
    """Whether ``value`` is what :meth:`DocumentSettings.compression_metadata` wrote (an earlier pass)."""
    return isinstance(value, Mapping) and value.get("mode") in get_args(Mode) and "spans" in value


def _kept(outcome: CompressionResult | CPRSError, name: str) -> KeptText | None:
    if isinstance(outcome, EmptyContextError):
        return None
    if isinstance(outcome, CPRSError):
        raise _about(outcome, name) from outcome.__cause__
    return KeptText(outcome.text, list(outcome.spans), outcome) if outcome.spans else None


def _about(error: CPRSError, name: str) -> CPRSError:
    """``error`` as the same kind of error, its message starting with ``name`` (the text it is about)."""
    return type(error)(f"{name}: {error}")


def _clip(span: Span, text: str, offset: int) -> Span | None:
    """The part of a joint-context ``span`` inside ``text`` (which starts at ``offset``), whitespace trimmed."""
    start = max(span.start - offset, 0)
    end = min(span.end - offset, len(text))
    while start < end and text[start].isspace():
        start += 1
    while end > start and text[end - 1].isspace():
        end -= 1
    if start >= end:
        return None
    return Span(start=start, end=end, text=text[start:end], score=span.score, tag=span.tag)
