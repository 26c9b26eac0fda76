"""The JSON of the server's endpoints, as pydantic models."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator

from cprs_core import CompressionRequest
from cprs_core.keep import KEEP_REGEX_SECONDS, join_patterns
from cprs_core.regex_size import check_compiled_size
from cprs_core.validation import DEFAULT_GRANULARITY

MAX_KEEP_PATTERNS = 256
"""Most entries in ``keep`` or ``keep_regex``: each is a pass over the context."""
MAX_KEEP_CHARS = 10_000
MAX_KEEP_REGEX_CHARS = 1_000
MAX_KEEP_REGEX_ITEMS = 1_000
"""Most items a ``keep_regex`` may hold once its counted repeats are written out (``a{1000}``: 1,000), as compiling
does: as many as the longest pattern holds without them (see :mod:`cprs_core.regex_size`)."""
MAX_KEEP_SPANS = 10_000
"""Most ``keep_spans`` entries: each is checked and marked on the context's tokens while the request is prepared."""


def _compilable(pattern: str) -> str:
    """``pattern``, unless compiling it would write out more than :data:`MAX_KEEP_REGEX_ITEMS` items."""
    check_compiled_size(pattern, MAX_KEEP_REGEX_ITEMS, name="", limit_text="the server's limit of ")
    return pattern


class CompressBody(BaseModel):
    """One compression: the fields of :class:`cprs_core.CompressionRequest` (see ``CPRSCompressor.compress``).

    Types are strict (``"0.5"`` or ``true`` is not a number). Values are checked by the compressor itself, so an
    empty query, a bad granularity or budget comes back as the same error a local call raises (``QueryError``,
    ``GranularityError``, ``BudgetError``, ...). ``timeout_s`` is this request's own deadline (at most the server's).
    """

    model_config = ConfigDict(extra="forbid", strict=True)

    context: str
    query: str = Field(default="", description="the question; empty only with allow_empty_query")
    instruction: str | None = Field(default=None, description="'needle', 'fact', 'chain' or free text; null = 'fact'")
    granularity: str = Field(default=DEFAULT_GRANULARITY, description="'sentence' (default), 'paragraph' or 'token'")
    target_ratio: float | None = None
    target_tokens: int | None = None
    min_span_tokens: int = 1
    separator: str = "\n"
    sentence_windows: bool | None = Field(default=None, description="cut windows at sentence ends; null = for CJK text")
    fill_backward: bool = Field(default=False, description="also fill short O gaps walking back from each E")
    upstream_spans: bool = Field(default=False, description="read spans as upstream's endpoint does")
    keep: list[Annotated[str, Field(max_length=MAX_KEEP_CHARS)]] = Field(
        default_factory=list, max_length=MAX_KEEP_PATTERNS, description="literal strings always kept"
    )
    keep_regex: list[Annotated[str, Field(max_length=MAX_KEEP_REGEX_CHARS), AfterValidator(_compilable)]] = Field(
        default_factory=list, max_length=MAX_KEEP_PATTERNS,
        description=f"regular expressions always kept (all matched within {KEEP_REGEX_SECONDS:g} s together)",
    )
    keep_spans: list[Annotated[list[int], Field(min_length=2, max_length=2)]] = Field(
        default_factory=list, max_length=MAX_KEEP_SPANS, description="[start, end] offsets always kept"
    )
    budget_tokenizer: str | None = Field(
        default=None, description="tiktoken encoding name in which target_tokens/target_ratio count; null = the critic's"
    )
    allow_empty_query: bool = Field(default=False, description="opt in to query-free compression")
    timeout_s: float | None = Field(default=None, gt=0, description="answer 504 and stop after this many seconds")

    def to_request(self) -> CompressionRequest:
        """The request; a ``keep_regex`` that does not compile raises :class:`cprs_core.KeepError`."""
        fields = self.model_dump(exclude={"timeout_s"})
        fields["keep"] = join_patterns(fields["keep"], fields.pop("keep_regex"))
        fields["keep_spans"] = [tuple(span) for span in fields["keep_spans"]]
        return CompressionRequest(**fields)


class BatchBody(BaseModel):
    """Several compressions answered together, each with its own result or error."""

    model_config = ConfigDict(extra="forbid", strict=True)

    requests: list[CompressBody] = Field(min_length=1)


class SpanOut(BaseModel):
    start: int
    end: int
    text: str
    score: float
    tag: str


class CompressOut(BaseModel):
    """:meth:`cprs_core.CompressionResult.to_dict`: kept text, spans with character offsets, token counts."""

    text: str
    spans: list[SpanOut]
    original_tokens: int
    compressed_tokens: int
    ratio: float | None
    keep_ratio: float
    windows: int
    granularity: str
    metadata: dict[str, Any]


class ErrorOut(BaseModel):
    type: str = Field(description="a cprs_core error class name, or MalformedJSON, ValidationError, ...")
    message: str


class ErrorEnvelope(BaseModel):
    error: ErrorOut


class BatchSlotOut(BaseModel):
    """Exactly one of ``result`` and ``error`` is set."""

    result: CompressOut | None = None
    error: ErrorOut | None = None


class BatchOut(BaseModel):
    results: list[BatchSlotOut]


class HealthOut(BaseModel):
    status: str
    model: str
    queue_depth: int
    in_flight: int
    batches: int = Field(description="forward batches (critic calls) so far")
    requests: int = Field(description="requests computed to the end so far")
    max_batch_size: int
    batch_sizes: dict[int, int] = Field(description="requests in a forward batch -> how many forward batches had that many")
    settings: dict[str, Any]


UPSTREAM_ROLES = ("system", "user", "context")
"""The roles of upstream's three messages, in their order."""


class UpstreamMessage(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True)

    role: str
    content: str


class UpstreamInput(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True)

    messages: list[UpstreamMessage] = Field(
        min_length=3, max_length=3, description="[system prompt (instruction), user (query), context], in this order"
    )

    @field_validator("messages")
    @classmethod
    def _roles_in_order(cls, messages: list[UpstreamMessage]) -> list[UpstreamMessage]:
        roles = tuple(message.role for message in messages)
        if roles != UPSTREAM_ROLES:
            raise ValueError(f"message roles must be {list(UPSTREAM_ROLES)} in this order, got {list(roles)}")
        return messages


class UpstreamParameters(BaseModel):
    """Upstream's options. ``batch_size`` and ``chunk_size`` are accepted and ignored: windows hold the server's
    ``--window-size`` tokens and batching is dynamic across clients."""

    model_config = ConfigDict(extra="allow", strict=True)

    min_keyword_len: int = Field(default=4, ge=0, description="keep spans of more than this many tokens")
    complete_sentence: bool = Field(default=False, description="widen each span to upstream's sentence delimiters")
    return_offset: bool = Field(default=False, description="answer [text, start, end] items instead of strings")
    split_with_sent: bool = Field(default=True, description="cut the windows of a context holding CJK at sentence ends")
    batch_size: int = 1
    chunk_size: int | None = None


class UpstreamHeader(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True)

    request_id: str | int | None = None


class UpstreamPayload(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True)

    input: UpstreamInput
    parameters: UpstreamParameters = Field(default_factory=UpstreamParameters)


class UpstreamRequest(BaseModel):
    """The body of upstream QwenLong-CPRS's ``/qwen_long_compress_server``."""

    model_config = ConfigDict(extra="allow", strict=True)

    header: UpstreamHeader = Field(default_factory=UpstreamHeader)
    payload: UpstreamPayload
