"""The JSON of the server's endpoints, as pydantic models."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from cprs_core import CompressionRequest
from cprs_core.validation import DEFAULT_GRANULARITY


class CompressBody(BaseModel):
    """One compression: the fields of :class:`cprs_core.CompressionRequest` (see ``CPRSCompressor.compress``).

    Values are checked by the compressor itself, so an empty query, a bad granularity or budget comes back as
    the same error a local call raises (``QueryError``, ``GranularityError``, ``BudgetError``, ...).
    """

    model_config = ConfigDict(extra="forbid")

    context: str
    query: str = Field(default="", description="the question; empty only with allow_empty_query")
    instruction: str | None = Field(default=None, description="'needle', 'fact', 'chain' or free text; null = 'fact'")
    granularity: str = Field(default=DEFAULT_GRANULARITY, description="'sentence' (default), 'paragraph' or 'token'")
    target_ratio: float | None = None
    target_tokens: int | None = None
    min_span_tokens: int = 1
    separator: str = "\n"
    allow_empty_query: bool = Field(default=False, description="opt in to query-free compression")

    def to_request(self) -> CompressionRequest:
        return CompressionRequest(**self.model_dump())  # type: ignore[arg-type]


class BatchBody(BaseModel):
    """Several compressions answered together, each with its own result or error."""

    model_config = ConfigDict(extra="forbid")

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
    batches: int
    requests: int
    max_batch_size: int
    batch_sizes: dict[int, int] = Field(description="batch size -> how many batches had it")
    settings: dict[str, Any]


class UpstreamMessage(BaseModel):
    model_config = ConfigDict(extra="allow")

    role: str = ""
    content: str


class UpstreamInput(BaseModel):
    model_config = ConfigDict(extra="allow")

    messages: list[UpstreamMessage] = Field(
        min_length=3, max_length=3, description="[system prompt (instruction), user (query), context], in this order"
    )


class UpstreamParameters(BaseModel):
    """Upstream's options. ``split_with_sent``, ``batch_size`` and ``chunk_size`` are accepted and ignored:
    windows are cut by the server's ``--window-size`` and batching is dynamic across clients."""

    model_config = ConfigDict(extra="allow")

    min_keyword_len: int = Field(default=4, ge=0, description="keep spans of more than this many tokens")
    complete_sentence: bool = Field(default=False, description="widen spans to whole sentences")
    return_offset: bool = Field(default=False, description="answer [text, start, end] items instead of strings")
    split_with_sent: bool = True
    batch_size: int = 1
    chunk_size: int | None = None


class UpstreamHeader(BaseModel):
    model_config = ConfigDict(extra="allow")

    request_id: str | int | None = None


class UpstreamPayload(BaseModel):
    model_config = ConfigDict(extra="allow")

    input: UpstreamInput
    parameters: UpstreamParameters = Field(default_factory=UpstreamParameters)


class UpstreamRequest(BaseModel):
    """The body of upstream QwenLong-CPRS's ``/qwen_long_compress_server``."""

    model_config = ConfigDict(extra="allow")

    header: UpstreamHeader = Field(default_factory=UpstreamHeader)
    payload: UpstreamPayload
