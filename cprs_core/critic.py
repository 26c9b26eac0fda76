"""The token-critic interface the window-parallel engine drives.

A critic turns ``prefix + window`` token sequences into per-token label distributions. Two critics ship:
:class:`cprs_core.qwen_critic.QwenCritic` (the QwenLong-CPRS checkpoint format) and the embedded
``cprs-mini`` critic. The engine never looks inside a critic; anything that implements this protocol works.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterator, Protocol, Sequence, runtime_checkable

import numpy as np

BIOE_LABELS: tuple[str, str, str, str] = ("B", "I", "O", "E")
"""Upstream's label ids: 0=B(egin), 1=I(nside), 2=O(utside), 3=E(nd)."""
OUTSIDE_ID = BIOE_LABELS.index("O")


@dataclass(frozen=True)
class WindowScores:
    """Critic output for the context tokens of one window (prefix positions removed).

    Attributes:
        bioe: ``float32 [n_tokens, 4]`` probabilities over B, I, O, E.
        tag_index: ``int [n_tokens]`` index into the request's tag list naming the most likely tag of each
            token, or ``None`` when the critic has no tag scorer (then every span gets the first tag).
        relevance: ``float32 [n_tokens]`` relevance logits, or ``None``. A critic that has them (cprs-mini) is
            trained so that the mean over a sentence's tokens ranks sentences by how much they matter to the
            query; the engine then scores sentences and paragraphs with it (see :mod:`cprs_core.spans`).
    """

    bioe: np.ndarray
    tag_index: np.ndarray | None = None
    relevance: np.ndarray | None = None

    def __post_init__(self) -> None:
        if self.bioe.ndim != 2 or self.bioe.shape[1] != len(BIOE_LABELS):
            raise ValueError(f"bioe must have shape [n, 4], got {self.bioe.shape}")
        if self.tag_index is not None and self.tag_index.shape != (self.bioe.shape[0],):
            raise ValueError("tag_index must have one entry per token")
        if self.relevance is not None and self.relevance.shape != (self.bioe.shape[0],):
            raise ValueError("relevance must have one entry per token")


@dataclass(frozen=True)
class TokenizedText:
    """Token ids of a text with each token's ``(start, end)`` character offsets into it."""

    ids: list[int]
    offsets: list[tuple[int, int]]


@runtime_checkable
class TokenCritic(Protocol):
    """What the engine needs from a model."""

    name: str
    """A short name for logs and results (e.g. the checkpoint path)."""
    max_positions: int
    """The most tokens one sequence (prefix + window + suffix) may have."""
    default_window_size: int
    """Window size (prefix included) used when the caller gives none."""
    suffix_tokens: int
    """Tokens the critic appends after each window (e.g. a closing ``[SEP]``)."""

    def tokenize_context(self, text: str) -> TokenizedText:
        """Tokenize the context without special tokens, with character offsets."""

    def encode_prefix(self, instruction: str, query: str) -> list[int]:
        """Token ids of the prompt prefix shared by every window."""

    def count_tokens(self, text: str) -> int:
        """Number of context tokens in ``text``."""

    def score_windows(
        self, prefix_ids: list[int], windows: Sequence[list[int]], tags: Sequence[str]
    ) -> list[WindowScores]:
        """Score each ``prefix + window`` sequence; one :class:`WindowScores` per window, in order."""


@runtime_checkable
class StreamingTokenCritic(TokenCritic, Protocol):
    """A critic that can start scoring before the whole context is tokenized (the GPU critic).

    The engine sends the windows of the context's first part to the device, then tokenizes the rest while the
    device works, so tokenizing a long context costs no device time.
    """

    def tokenize_context_parts(self, text: str) -> Iterator[TokenizedText]:
        """``text``'s tokens in consecutive parts (offsets into ``text``) that concatenate to :meth:`tokenize_context`."""

    def submit_windows(
        self, prefix_ids: list[int], windows: Sequence[list[int]], tags: Sequence[str]
    ) -> Callable[[], list[WindowScores]]:
        """Start scoring like :meth:`score_windows` and return at once; the returned function waits for the scores."""
