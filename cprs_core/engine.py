"""The window-parallel engine: split a long context into windows, score them with a critic, assemble spans."""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

from .critic import OUTSIDE_ID, StreamingTokenCritic, TokenCritic, TokenizedText, WindowScores
from .errors import (
    ContextTooLargeError,
    ContextTypeError,
    CPRSError,
    EmptyContextError,
    TextDecodingError,
    WindowSizeError,
)
from .prompt import parse_tags, resolve_instruction
from .result import CompressionResult, Span
from .spans import (
    TokenScoreSums,
    Unit,
    decode_spans,
    fill_short_gaps,
    merge_adjacent,
    select_by_budget,
    units_from_char_ranges,
)
from .text_units import paragraph_ranges, sentence_ranges
from .validation import DEFAULT_GRANULARITY, Granularity, check_request

DEFAULT_MAX_CONTEXT_TOKENS = 2_048_000
"""Upstream's document limit (it truncates there; cprs refuses instead, so nothing is lost silently)."""
PROGRESS_CHUNK_WINDOWS = 16
"""With a progress callback, windows go to the critic this many at a time so progress can be reported."""

ProgressCallback = Callable[[int, int], None]
"""Called as ``progress(windows_scored, windows_total)`` after each chunk of windows is scored."""


def decode_text(context: str | bytes) -> str:
    """The context as ``str``; bytes must be UTF-8 (the error names the first bad byte)."""
    if isinstance(context, str):
        return context
    if isinstance(context, (bytes, bytearray)):
        try:
            return bytes(context).decode("utf-8")
        except UnicodeDecodeError as error:
            raise TextDecodingError(
                f"context is not valid UTF-8: byte {error.start} ({bytes(context)[error.start:error.start + 1]!r}) "
                f"{error.reason}; decode it yourself with the right encoding"
            ) from error
    raise ContextTypeError(f"context must be str or bytes, not {type(context).__name__}")


@dataclass(frozen=True)
class CompressionRequest:
    """One compression job: a context, the query and instruction, and output options.

    See :meth:`cprs_core.CPRSCompressor.compress` for the meaning of each field; :func:`check_request` checks
    them (the engine calls it first, so a wrong field is that request's own ``CPRSError``).
    """

    context: str | bytes
    query: str = ""
    instruction: str | None = None
    granularity: Granularity = DEFAULT_GRANULARITY
    target_ratio: float | None = None
    target_tokens: int | None = None
    min_span_tokens: int = 1
    separator: str = "\n"
    allow_empty_query: bool = False


@dataclass(frozen=True)
class WindowPlan:
    """How a tokenized context is cut: the shared prefix ids and each window's token range."""

    prefix_ids: list[int]
    windows: list[range]


@dataclass(frozen=True)
class _Prepared:
    request: CompressionRequest
    text: str
    tokens: TokenizedText
    tags: list[str]
    budget: int | None
    plan: WindowPlan


class WindowParallelEngine:
    """Runs one critic over windows of a long context and turns its labels into kept spans.

    Args:
        critic: any :class:`~cprs_core.critic.TokenCritic`.
        window_size: tokens per forward pass, prompt prefix included (upstream: 8192); defaults to the critic's.
        max_context_tokens: longer contexts are refused with :class:`ContextTooLargeError`.
    """

    def __init__(
        self,
        critic: TokenCritic,
        window_size: int | None = None,
        max_context_tokens: int = DEFAULT_MAX_CONTEXT_TOKENS,
    ) -> None:
        window_size = critic.default_window_size if window_size is None else window_size
        if window_size > critic.max_positions:
            raise WindowSizeError(
                f"window_size {window_size} is larger than the model allows ({critic.max_positions} positions)"
            )
        if window_size < 2:
            raise WindowSizeError(f"window_size must be at least 2, got {window_size}")
        self.critic = critic
        self.window_size = window_size
        self.max_context_tokens = max_context_tokens

    def plan(self, tokens: TokenizedText, instruction: str, query: str) -> WindowPlan:
        """Encode the prefix and cut the context tokens into windows that fit ``window_size``."""
        prefix_ids = self.critic.encode_prefix(instruction, query)
        return WindowPlan(prefix_ids, _cut_windows(0, len(tokens.ids), self._window_capacity(prefix_ids)))

    def _window_capacity(self, prefix_ids: list[int]) -> int:
        capacity = self.window_size - len(prefix_ids) - self.critic.suffix_tokens
        if capacity < 1:
            raise WindowSizeError(
                f"the prompt (instruction + query) takes {len(prefix_ids)} tokens, which leaves no room for context "
                f"in a window of {self.window_size}; shorten the query/instruction or raise window_size"
            )
        return capacity

    def compress(self, request: CompressionRequest, progress: ProgressCallback | None = None) -> CompressionResult:
        """Compress one request; raises its error (see :meth:`cprs_core.CPRSCompressor.compress`).

        With a :class:`~cprs_core.critic.StreamingTokenCritic`, the first windows are scored while the rest of
        the context is tokenized; the result is the same as :meth:`compress_batch`'s.
        """
        if isinstance(self.critic, StreamingTokenCritic):
            return self._compress_streaming(self.critic, request, progress)
        outcome = self.compress_batch([request], progress)[0]
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    def _compress_streaming(
        self, critic: StreamingTokenCritic, request: CompressionRequest, progress: ProgressCallback | None
    ) -> CompressionResult:
        text, instruction = self._checked_text(request)
        prefix_ids = critic.encode_prefix(instruction, request.query)
        capacity = self._window_capacity(prefix_ids)
        tags = parse_tags(instruction)
        ids: list[int] = []
        offsets: list[tuple[int, int]] = []
        windows: list[range] = []
        pending: list[Callable[[], list[WindowScores]]] = []

        def submit(new_windows: list[range]) -> None:
            chunk = _submission_size(len(new_windows), progress)
            for start in range(0, len(new_windows), chunk):
                part = [ids[window.start : window.stop] for window in new_windows[start : start + chunk]]
                pending.append(critic.submit_windows(prefix_ids, part, tags))
            windows.extend(new_windows)

        def submitted_to() -> int:
            return windows[-1].stop if windows else 0

        for part in critic.tokenize_context_parts(text):
            ids += part.ids
            offsets += part.offsets
            self._check_size(len(ids))
            start = submitted_to()
            submit(_cut_windows(start, start + (len(ids) - start) // capacity * capacity, capacity))
        submit(_cut_windows(submitted_to(), len(ids), capacity))
        scores: list[WindowScores] = []
        for collect in pending:
            scores += collect()
            if progress is not None:
                progress(len(scores), len(windows))
        budget = _token_budget(len(ids), request.target_ratio, request.target_tokens)
        prepared = _Prepared(request, text, TokenizedText(ids, offsets), tags, budget, WindowPlan(prefix_ids, windows))
        return self._assemble(prepared, scores)

    def compress_batch(
        self, requests: Sequence[CompressionRequest], progress: ProgressCallback | None = None
    ) -> list[CompressionResult | CPRSError]:
        """Compress several requests together; each gets its result or its own error, in order.

        Requests with the same instruction and query share one prompt prefix, so their windows are scored
        in the same forward batches (e.g. many documents compressed for one question). ``progress``, when
        given, is called with (windows scored, windows total) as scoring advances.
        """
        outcomes: list[CompressionResult | CPRSError | None] = [None] * len(requests)
        prepared: dict[int, _Prepared] = {}
        for index, request in enumerate(requests):
            try:
                prepared[index] = self._prepare(request)
            except CPRSError as error:
                outcomes[index] = error
        groups: dict[tuple[tuple[int, ...], tuple[str, ...]], list[int]] = {}
        for index, item in prepared.items():
            groups.setdefault((tuple(item.plan.prefix_ids), tuple(item.tags)), []).append(index)
        total_windows = sum(len(item.plan.windows) for item in prepared.values())
        scored_windows = 0
        for (prefix_ids, tags), members in groups.items():
            windows = [prepared[i].tokens.ids[w.start : w.stop] for i in members for w in prepared[i].plan.windows]
            chunk = _submission_size(len(windows), progress)
            group_scores: list[WindowScores] = []
            for start in range(0, len(windows), chunk):
                group_scores += self.critic.score_windows(list(prefix_ids), windows[start : start + chunk], list(tags))
                scored_windows += len(windows[start : start + chunk])
                if progress is not None:
                    progress(scored_windows, total_windows)
            scores = iter(group_scores)
            for index in members:
                item = prepared[index]
                window_scores = [next(scores) for _ in item.plan.windows]
                try:
                    outcomes[index] = self._assemble(item, window_scores)
                except CPRSError as error:
                    outcomes[index] = error
        return outcomes  # type: ignore[return-value]

    def _prepare(self, request: CompressionRequest) -> _Prepared:
        text, instruction = self._checked_text(request)
        tokens = self.critic.tokenize_context(text)
        self._check_size(len(tokens.ids))
        budget = _token_budget(len(tokens.ids), request.target_ratio, request.target_tokens)
        plan = self.plan(tokens, instruction, request.query)
        return _Prepared(request, text, tokens, parse_tags(instruction), budget, plan)

    @staticmethod
    def _checked_text(request: CompressionRequest) -> tuple[str, str]:
        """The request's text and resolved instruction, after every check that needs no tokens."""
        text = decode_text(request.context)
        check_request(request)
        if not text.strip():
            raise EmptyContextError("context is empty; there is nothing to compress")
        return text, resolve_instruction(request.instruction)

    def _check_size(self, token_count: int) -> None:
        if token_count > self.max_context_tokens:
            raise ContextTooLargeError(
                f"context has at least {token_count} tokens, more than max_context_tokens={self.max_context_tokens}; "
                "split it or raise the limit"
            )

    def _assemble(self, item: _Prepared, scores: Sequence[WindowScores]) -> CompressionResult:
        request, text, tokens, tags = item.request, item.text, item.tokens, item.tags
        bioe = np.concatenate([score.bioe for score in scores])
        sums = TokenScoreSums(1.0 - bioe[:, OUTSIDE_ID], _concat_tag_index(scores), len(tags))
        kept = self._kept_groups(text, tokens, bioe, sums, request.granularity, item.budget, request.min_span_tokens)
        groups = [group for group in kept if text[group[0].char_start : group[-1].char_end].strip()]
        token_starts = np.array([group[0].token_start for group in groups], dtype=np.int64)
        token_ends = np.array([group[-1].token_end for group in groups], dtype=np.int64)
        spans = [
            _span(text, group, float(score), tags[tag])
            for group, score, tag in zip(groups, sums.mean_keep(token_starts, token_ends),
                                         sums.majority_tag(token_starts, token_ends))
        ]
        return CompressionResult(
            text=request.separator.join(span.text for span in spans),
            spans=spans,
            original_tokens=len(tokens.ids),
            compressed_tokens=sum(unit.tokens for group in groups for unit in group),
            windows=len(item.plan.windows),
            granularity=request.granularity,
            separator=request.separator,
            metadata={"critic": self.critic.name, "tags": tags, "window_size": self.window_size, "budget": item.budget},
        )

    @staticmethod
    def _kept_groups(
        text: str,
        tokens: TokenizedText,
        bioe: np.ndarray,
        sums: TokenScoreSums,
        granularity: str,
        budget: int | None,
        min_span_tokens: int,
    ) -> list[list[Unit]]:
        """The kept units, grouped into output spans (a decoded span, or a run of neighbouring kept units)."""
        keep_scores = 1.0 - bioe[:, OUTSIDE_ID]
        labels = fill_short_gaps(bioe.argmax(axis=1))
        if granularity == "token":
            if budget is not None:
                candidates = [
                    Unit(i, i, i + 1, start, end, float(keep_scores[i])) for i, (start, end) in enumerate(tokens.offsets)
                ]
                return merge_adjacent(select_by_budget(candidates, budget, granularity))
            ranges = np.array(decode_spans(labels, min_span_tokens), dtype=np.int64).reshape(-1, 2)
            scores = sums.mean_keep(ranges[:, 0], ranges[:, 1])
            return [
                [Unit(i, start, end, tokens.offsets[start][0], tokens.offsets[end - 1][1], float(score))]
                for i, ((start, end), score) in enumerate(zip(ranges.tolist(), scores))
            ]
        ranges = sentence_ranges(text) if granularity == "sentence" else paragraph_ranges(text)
        candidates = units_from_char_ranges(ranges, [end for _, end in tokens.offsets], keep_scores)
        if budget is not None:
            return merge_adjacent(select_by_budget(candidates, budget, granularity))
        tagged = np.zeros(len(labels) + 1, dtype=np.int64)
        for start, end in decode_spans(labels, min_span_tokens):
            tagged[start:end] = 1
        tagged_before = np.concatenate(([0], np.cumsum(tagged)))
        return merge_adjacent(
            [unit for unit in candidates if tagged_before[unit.token_end] > tagged_before[unit.token_start]]
        )


def _token_budget(total_tokens: int, target_ratio: float | None, target_tokens: int | None) -> int | None:
    """Tokens to keep, from options that :func:`~cprs_core.validation.check_budget` has accepted."""
    if target_ratio is not None:
        return max(1, int(total_tokens * target_ratio))
    return target_tokens


def _submission_size(window_count: int, progress: ProgressCallback | None) -> int:
    """Windows per critic call: all at once, or :data:`PROGRESS_CHUNK_WINDOWS` so progress can be reported."""
    return max(window_count, 1) if progress is None else PROGRESS_CHUNK_WINDOWS


def _cut_windows(start: int, stop: int, capacity: int) -> list[range]:
    """Consecutive token ranges of at most ``capacity`` covering ``[start, stop)``."""
    return [range(first, min(first + capacity, stop)) for first in range(start, stop, capacity)]


def _concat_tag_index(scores: Sequence[WindowScores]) -> np.ndarray | None:
    if any(score.tag_index is None for score in scores):
        return None
    return np.concatenate([score.tag_index for score in scores])


def _span(text: str, group: list[Unit], score: float, tag: str) -> Span:
    start, end = group[0].char_start, group[-1].char_end
    while end < len(text) and unicodedata.category(text[end]).startswith("M"):
        end += 1  # a normalising tokenizer can leave a combining mark outside the last token's offsets
    while start < end and text[start].isspace():
        start += 1
    while end > start and text[end - 1].isspace():
        end -= 1
    return Span(start=start, end=end, text=text[start:end], score=score, tag=tag)
