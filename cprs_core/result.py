"""Result types returned by :class:`cprs_core.CPRSCompressor`."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass(frozen=True)
class Span:
    """One kept piece of the original context.

    ``context[start:end] == text`` always holds: offsets are character offsets into the
    original (decoded) context string.

    ``score`` (0..1) is how strongly the critic marks the piece as what the query asks: for a critic with a
    relevance head (cprs-mini) at sentence or paragraph granularity, the highest relevance probability of the
    sentences it holds (the number the no-budget keep threshold reads); otherwise (token granularity, or the 7B
    critic) the mean keep probability, 1 - P(outside), of its tokens.
    """

    start: int
    end: int
    text: str
    score: float
    tag: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class CompressionResult:
    """The outcome of compressing one context for one query.

    Attributes:
        text: the kept spans, in original order, joined by ``separator``.
        spans: the kept spans with character offsets, scores and tags.
        original_tokens: context tokens seen by the critic.
        compressed_tokens: context tokens inside the kept spans.
        windows: how many windows the context was split into.
        granularity: ``"token"``, ``"sentence"``, ``"paragraph"`` or ``"line"``.
        separator: the string placed between spans in ``text``.
    """

    text: str
    spans: list[Span]
    original_tokens: int
    compressed_tokens: int
    windows: int
    granularity: str
    separator: str = "\n"
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def keep_ratio(self) -> float:
        """Fraction of context tokens kept, in [0, 1]."""
        return self.compressed_tokens / self.original_tokens if self.original_tokens else 0.0

    @property
    def ratio(self) -> float:
        """Compression factor ``original_tokens / compressed_tokens`` (``inf`` when nothing was kept)."""
        return self.original_tokens / self.compressed_tokens if self.compressed_tokens else math.inf

    def to_dict(self) -> dict[str, Any]:
        """A JSON-safe dict (an infinite ratio becomes ``None``)."""
        return {
            "text": self.text,
            "spans": [span.to_dict() for span in self.spans],
            "original_tokens": self.original_tokens,
            "compressed_tokens": self.compressed_tokens,
            "ratio": None if math.isinf(self.ratio) else self.ratio,
            "keep_ratio": self.keep_ratio,
            "windows": self.windows,
            "granularity": self.granularity,
            "metadata": dict(self.metadata),
        }
