"""The window-parallel engine: split a long context into windows, score them with a critic, assemble spans."""

from __future__ import annotations

import unicodedata
import warnings
from dataclasses import dataclass, fields
from typing import Any, Callable, Literal, Sequence

import numpy as np

from .critic import OUTSIDE_ID, StreamingTokenCritic, TokenCritic, TokenizedText, WindowScores
from .errors import (
    BudgetError,
    CompressionFailedError,
    ContextTooLargeError,
    ContextTruncatedWarning,
    ContextTypeError,
    CPRSError,
    EmptyContextError,
    GranularityError,
    KeepError,
    OptionError,
    TextDecodingError,
    WindowSizeError,
)
from .keep import Forced, KeepPattern, check_forced_kept, check_keep, find_forced, force, forced_ranges
from .prompt import parse_tags, resolve_instruction
from .reader_tokens import fit_budget, reader_budget, reader_tokenizer
from .result import CompressionResult, Span
from .sentence_windows import has_cjk, sentence_windows
from .scheduler import WindowScheduler
from .spans import (
    I,
    SentenceScores,
    TokenScoreSums,
    Unit,
    decode_spans,
    fill_short_gaps,
    merge_adjacent,
    select_by_budget,
)
from .text_checks import refuse_bad_characters
from .text_units import TextUnit, paragraph_starts, segment
from .unit_anchors import anchored_units, with_anchors
from .upstream_spans import upstream_spans
from .validation import (
    DEFAULT_GRANULARITY,
    Granularity,
    check_known_options,
    check_progress,
    check_request,
    check_request_type,
)

DEFAULT_MAX_CONTEXT_TOKENS = 2_048_000
"""Upstream's document limit (it truncates there; cprs refuses by default, so nothing is lost silently)."""
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
    them (the engine calls it first, so a wrong field is that request's own ``CPRSError``). ``upstream_spans=True``
    reads spans as upstream's endpoint does (unstripped offsets; with ``granularity="sentence"``, upstream's
    per-span widening instead of whole merged sentences; see :mod:`cprs_core.upstream_spans`).

    An unknown keyword (``target_ratoi=0.1``) is an :class:`~cprs_core.OptionError` naming the closest field.
    """

    context: str | bytes
    query: str = ""
    instruction: str | None = None
    granularity: Granularity = DEFAULT_GRANULARITY
    target_ratio: float | None = None
    target_tokens: int | None = None
    min_span_tokens: int = 1
    separator: str = "\n"
    sentence_windows: bool | None = None
    fill_backward: bool = False
    upstream_spans: bool = False
    keep: Sequence[KeepPattern] = ()
    keep_spans: Sequence[tuple[int, int]] = ()
    budget_tokenizer: Any = None
    allow_empty_query: bool = False

    def __new__(cls, *args: Any, **named: Any) -> CompressionRequest:
        # before the generated __init__, which would raise a bare TypeError for an unknown keyword, a missing
        # context or too many positional arguments (pickle calls __new__ with none at all: left to __init__)
        names = [field.name for field in fields(cls)]
        check_known_options(named, names)
        if len(args) > len(names):
            raise OptionError(f"CompressionRequest takes at most {len(names)} positional arguments "
                              f"({', '.join(names)}), got {len(args)}")
        twice = [name for name in names[: len(args)] if name in named]
        if twice:
            raise OptionError(f"CompressionRequest got {twice[0]} both as a positional argument and by name")
        if named and not args and "context" not in named:
            raise OptionError("CompressionRequest needs a context (the text to compress), as its first argument "
                              "or context=...")
        return super().__new__(cls)

    @property
    def keeps_best_if_none_fits(self) -> bool:
        """Whether a budget that no unit fits in still keeps the best unit: so for ``target_ratio`` (a ratio always
        keeps something), not for ``target_tokens`` (a hard cap: :class:`BudgetError` instead)."""
        return self.target_ratio is not None


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
    forced: Forced
    """The force-kept text, found while preparing (a client's regex fails here, before the model's batches)."""
    truncated: bool = False


class WindowParallelEngine:
    """Runs one critic over windows of a long context and turns its labels into kept spans.

    Args:
        critic: any :class:`~cprs_core.critic.TokenCritic`.
        window_size: tokens per forward pass, prompt prefix included (upstream: 8192); defaults to the critic's.
        max_context_tokens: longer contexts are refused with :class:`ContextTooLargeError`.
        truncate_over_length: instead of refusing, keep a longer context's first ``max_context_tokens`` tokens
            (as upstream does); the result's ``metadata["truncated"]`` is then ``True`` and a
            :class:`ContextTruncatedWarning` is issued.
    """

    def __init__(
        self,
        critic: TokenCritic,
        window_size: int | None = None,
        max_context_tokens: int = DEFAULT_MAX_CONTEXT_TOKENS,
        truncate_over_length: bool = False,
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
        self.truncate_over_length = truncate_over_length

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
        check_progress(progress)
        if isinstance(self.critic, StreamingTokenCritic) and not _sentence_windowed(request):
            return self._compress_streaming(self.critic, request, progress)
        outcome = self.compress_batch([request], progress)[0]
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    def _compress_streaming(
        self, critic: StreamingTokenCritic, request: CompressionRequest, progress: ProgressCallback | None
    ) -> CompressionResult:
        text, instruction = self._checked_text(request)
        # A text that cannot be truncated is final: its keep patterns are matched before any window is scored, so
        # a keep regex that times out fails at once (a truncated text's are matched on the cut text, below).
        ranges = None if self.truncate_over_length else forced_ranges(text, request.keep, request.keep_spans)
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

        truncated = False
        for part in critic.tokenize_context_parts(text):
            ids += part.ids
            offsets += part.offsets
            truncated = self._over_limit(len(ids))
            if truncated:
                del ids[self.max_context_tokens :], offsets[self.max_context_tokens :]
                text = self._truncated_text(text, offsets)
                break
            start = submitted_to()
            submit(_cut_windows(start, start + (len(ids) - start) // capacity * capacity, capacity))
        _refuse_tokenless(len(ids))
        submit(_cut_windows(submitted_to(), len(ids), capacity))
        scores: list[WindowScores] = []
        for collect in pending:
            scores += collect()
            if progress is not None:
                progress(len(scores), len(windows))
        budget = _token_budget(len(ids), request.target_ratio, request.target_tokens)
        if ranges is None:
            ranges = forced_ranges(text, request.keep, request.keep_spans)
        forced = Forced.of_ranges(ranges, offsets)
        plan = WindowPlan(prefix_ids, windows)
        prepared = _Prepared(request, text, TokenizedText(ids, offsets), tags, budget, plan, forced, truncated)
        return self._assemble(prepared, scores)

    def compress_batch(
        self, requests: Sequence[CompressionRequest], progress: ProgressCallback | None = None
    ) -> list[CompressionResult | CPRSError]:
        """Compress several requests together; each gets its result or its own error, in order.

        Requests with the same instruction and query share one prompt prefix, so their windows are scored
        in the same forward batches (e.g. many documents compressed for one question). ``progress``, when
        given, is called with (windows scored, windows total) as scoring advances. A failure caused by one
        request (even an unexpected one, as :class:`CompressionFailedError`) fails that request only.
        """
        check_progress(progress)
        return WindowScheduler(self, PROGRESS_CHUNK_WINDOWS if progress is not None else None).run(requests, progress)

    def _prepare(self, request: CompressionRequest) -> _Prepared:
        text, instruction = self._checked_text(request)
        if _sentence_windowed(request):
            prefix_ids = self.critic.encode_prefix(instruction, request.query)
            capacity = self._window_capacity(prefix_ids)
            tokens, windows = sentence_windows(text, self.critic.tokenize_context, self.critic.count_tokens, capacity)
            plan = WindowPlan(prefix_ids, windows)
        else:
            tokens = self.critic.tokenize_context(text)
            plan = None
        _refuse_tokenless(len(tokens.ids))
        truncated = self._over_limit(len(tokens.ids))
        if truncated:
            limit = self.max_context_tokens
            tokens = TokenizedText(tokens.ids[:limit], tokens.offsets[:limit])
            text = self._truncated_text(text, tokens.offsets)
            if plan is not None:
                windows = [range(w.start, min(w.stop, limit)) for w in plan.windows if w.start < limit]
                plan = WindowPlan(plan.prefix_ids, windows)
        budget = _token_budget(len(tokens.ids), request.target_ratio, request.target_tokens)
        forced = find_forced(text, tokens.offsets, request.keep, request.keep_spans)
        plan = plan or self.plan(tokens, instruction, request.query)
        return _Prepared(request, text, tokens, parse_tags(instruction), budget, plan, forced, truncated)

    @staticmethod
    def _checked_text(request: CompressionRequest) -> tuple[str, str]:
        """The request's text and resolved instruction, after every check that needs no tokens."""
        check_request_type(request)
        text = decode_text(request.context)
        for field, value in (("context", text), ("query", request.query), ("instruction", request.instruction),
                             ("separator", request.separator)):
            if isinstance(value, str):
                refuse_bad_characters(value, field)
        check_request(request)
        if not text.strip():
            raise EmptyContextError("context is empty; there is nothing to compress")
        if request.upstream_spans and request.granularity not in ("token", "sentence"):
            raise GranularityError(
                f"upstream_spans reads spans as upstream does: granularity 'token' or 'sentence', "
                f"not {request.granularity!r}"
            )
        if request.upstream_spans and (request.target_ratio is not None or request.target_tokens is not None):
            raise BudgetError(
                "upstream_spans keeps what the critic tags, as upstream does: give no target_ratio/target_tokens"
            )
        if request.upstream_spans and (request.keep or request.keep_spans):
            raise KeepError("upstream_spans keeps what the critic tags, as upstream does: give no keep/keep_spans")
        check_keep(request.keep, request.keep_spans, len(text))
        if request.budget_tokenizer is not None:
            reader_tokenizer(request.budget_tokenizer)
        return text, resolve_instruction(request.instruction)

    def _over_limit(self, token_count: int) -> bool:
        """Whether the context must be truncated; raises :class:`ContextTooLargeError` when it must be refused."""
        if token_count <= self.max_context_tokens:
            return False
        if not self.truncate_over_length:
            raise ContextTooLargeError(
                f"context has at least {token_count} tokens, more than max_context_tokens={self.max_context_tokens}; "
                "split it, raise the limit, or pass truncate_over_length=True to keep only the first tokens"
            )
        return True

    def _truncated_text(self, text: str, kept_offsets: list[tuple[int, int]]) -> str:
        """``text`` cut after the last kept token, with a :class:`ContextTruncatedWarning`."""
        cut = kept_offsets[-1][1] if kept_offsets else 0
        warnings.warn(
            f"context is longer than max_context_tokens={self.max_context_tokens}: only its first "
            f"{self.max_context_tokens} tokens ({cut} of {len(text)} characters) are compressed",
            ContextTruncatedWarning,
            stacklevel=4,
        )
        return text[:cut]

    def _assemble(self, item: _Prepared, scores: Sequence[WindowScores]) -> CompressionResult:
        request, text, tokens, tags = item.request, item.text, item.tokens, item.tags
        bioe = np.concatenate([score.bioe for score in scores])
        relevance = _concat_relevance(scores)
        if not np.isfinite(bioe).all() or (relevance is not None and not np.isfinite(relevance).all()):
            raise CompressionFailedError(
                f"the critic {self.critic.name!r} gave scores that are not finite numbers (NaN or infinity): its "
                "weights are broken, or its dtype overflows on this device; reload it, or use float32"
            )
        sums = TokenScoreSums(1.0 - bioe[:, OUTSIDE_ID], _concat_tag_index(scores), len(tags))
        labels = fill_short_gaps(bioe.argmax(axis=1), backward=request.fill_backward)
        budget, reader = item.budget, None
        metadata = {"critic": self.critic.name, "tags": tags, "window_size": self.window_size,
                    "truncated": item.truncated, "forced_tokens": 0}
        if request.upstream_spans:
            spans, compressed_tokens = _upstream_read(text, tokens, labels, sums, tags, request)
        else:
            forced = item.forced
            sentence_units = None if relevance is None else segment(text, "sentence")  # split once, used below
            if request.budget_tokenizer is not None:
                reader = reader_tokenizer(request.budget_tokenizer)
                if budget is not None:
                    target = reader_budget(reader.count(text), request.target_ratio, request.target_tokens)
                    budget = fit_budget(
                        lambda critic_budget: self._kept_text(
                            item, bioe, labels, forced, relevance, sentence_units, critic_budget),
                        reader.count, target, len(tokens.ids), at_least_one=request.keeps_best_if_none_fits,
                    )
            kept = self._kept_groups(
                text, request.query, tokens, bioe, labels, forced, relevance, sentence_units, request.granularity,
                budget, request.min_span_tokens, best_if_none_fits=request.keeps_best_if_none_fits,
            )
            groups = [group for group in kept if text[group[0].char_start : group[-1].char_end].strip()]
            token_starts = np.array([group[0].token_start for group in groups], dtype=np.int64)
            token_ends = np.array([group[-1].token_end for group in groups], dtype=np.int64)
            span_scores = sums.mean_keep(token_starts, token_ends)
            if relevance is not None:
                assert sentence_units is not None
                sentence_logits = _sentence_logits(tokens, relevance, sentence_units)
                metadata["best_relevance"] = _probability(float(np.max(sentence_logits, initial=-np.inf)))
                if request.granularity in ("sentence", "paragraph"):  # the units the relevance ranks
                    span_scores = [_probability(float(np.max(sentence_logits[start:end])))
                                   for start, end in zip(token_starts, token_ends)]
            spans = [
                _span(text, group, float(score), tags[tag])
                for group, score, tag in zip(groups, span_scores, sums.majority_tag(token_starts, token_ends))
            ]
            compressed_tokens = sum(unit.tokens for group in groups for unit in group)
            metadata["forced_tokens"] = int(forced.mask.sum())
        kept_text = request.separator.join(span.text for span in spans)
        metadata["budget"] = budget
        if reader is not None:
            metadata["budget_tokenizer"] = {"name": reader.name, "original_tokens": reader.count(text),
                                            "compressed_tokens": reader.count(kept_text)}
        return CompressionResult(
            text=kept_text,
            spans=spans,
            original_tokens=len(tokens.ids),
            compressed_tokens=compressed_tokens,
            windows=len(item.plan.windows),
            granularity=request.granularity,
            separator=request.separator,
            metadata=metadata,
        )

    def _kept_text(
        self,
        item: _Prepared,
        bioe: np.ndarray,
        labels: np.ndarray,
        forced: Forced,
        relevance: np.ndarray | None,
        sentence_units: list[TextUnit] | None,
        budget: int,
    ) -> str | None:
        """The text kept under a critic-token ``budget`` (``None`` when the budget cannot be met)."""
        request, text = item.request, item.text
        try:
            groups = self._kept_groups(text, request.query, item.tokens, bioe, labels, forced, relevance,
                                       sentence_units, request.granularity, budget, request.min_span_tokens,
                                       best_if_none_fits=request.keeps_best_if_none_fits)
        except BudgetError:
            return None
        pieces = (text[group[0].char_start : group[-1].char_end].strip() for group in groups)
        return request.separator.join(piece for piece in pieces if piece)

    def _kept_groups(
        self,
        text: str,
        query: str,
        tokens: TokenizedText,
        bioe: np.ndarray,
        labels: np.ndarray,
        forced: Forced,
        relevance: np.ndarray | None,
        sentence_units: list[TextUnit] | None,
        granularity: str,
        budget: int | None,
        min_span_tokens: int,
        best_if_none_fits: bool = False,
    ) -> list[list[Unit]]:
        """The kept units, grouped into output spans (a decoded span, or a run of neighbouring kept units).
        ``sentence_units`` are the text's sentences (``segment(text, "sentence")``), given whenever ``relevance`` is.

        Forced tokens (see :mod:`cprs_core.keep`) are kept on top of the critic's tags, and first under a budget.
        Sentences and paragraphs are scored by their best token's keep probability, or, when the critic gives
        relevance logits, by their (best) sentence's :class:`~cprs_core.spans.SentenceScores`; without a budget,
        a sentence or paragraph is kept when it holds a tagged token or its sentence's mean logit reaches the
        critic's ``relevance_threshold`` (a line only when it holds a tagged token). A critic that sets
        ``rank_without_budget`` keeps as many tokens as that rule would, chosen by the budget ranking instead
        (units holding a tagged span first).
        """
        keep_scores, labels = force(1.0 - bioe[:, OUTSIDE_ID], labels, forced.mask, I)
        decoded = [(start, end) for start, end in decode_spans(labels)
                   if end - start >= min_span_tokens or forced.mask[start:end].any()]
        if granularity == "token":
            if budget is not None:
                candidates = [
                    Unit(i, i, i + 1, start, end, float(keep_scores[i])) for i, (start, end) in enumerate(tokens.offsets)
                ]
                chosen = select_by_budget(candidates, budget, granularity)
                check_forced_kept(
                    text, forced.ranges, [(unit.char_start, unit.char_end) for unit in chosen], budget, tokens.offsets
                )
                return merge_adjacent(chosen)
            return [
                [Unit(i, start, end, tokens.offsets[start][0], tokens.offsets[end - 1][1], 0.0)]
                for i, (start, end) in enumerate(decoded)
            ]
        token_ends = [end for _, end in tokens.offsets]
        reuse = granularity == "sentence" and sentence_units is not None
        text_units = sentence_units if reuse else segment(text, granularity)
        above_threshold = None  # tokens whose sentence's mean logit reaches the critic's keep threshold
        if relevance is None:
            candidates, anchors = anchored_units(text_units, token_ends, keep_scores)
        else:
            assert sentence_units is not None
            sentences = [(unit.start, unit.end) for unit in sentence_units]
            prose = granularity != "line"  # the keep threshold and the neighbour lift were tuned on prose
            scores = self._sentence_scores(text, query, relevance, sentences, token_ends, budget, prose)
            candidates, anchors = anchored_units(text_units, token_ends, np.where(forced.mask, np.inf, scores.rank))
            if prose:  # lines (records, code, logs) keep what is tagged
                above_threshold = scores.keep >= _logit(getattr(self.critic, "relevance_threshold", None))
        if budget is not None:  # a share (target_ratio) that no whole unit fits in keeps the best unit alone
            chosen = select_by_budget(candidates, budget, granularity, anchors, best_if_none_fits)
            check_forced_kept(
                text, forced.ranges, [(unit.char_start, unit.char_end) for unit in chosen], budget, tokens.offsets
            )
            return merge_adjacent(chosen)
        spanned = np.zeros(len(labels), dtype=bool)  # tokens inside a span the critic tagged
        for start, end in decoded:
            spanned[start:end] = True
        marked = spanned if above_threshold is None else spanned | above_threshold
        kept = with_anchors(_holding(candidates, marked), candidates, anchors)
        if above_threshold is None or not kept or not getattr(self.critic, "rank_without_budget", False):
            return merge_adjacent(kept)
        # the threshold sets how many tokens to keep; the budget ranking chooses which (tagged spans first)
        size = sum(unit.tokens for unit in kept)
        ranked = self._sentence_scores(text, query, relevance, sentences, token_ends, size)
        first = spanned | forced.mask
        candidates, anchors = anchored_units(text_units, token_ends, np.where(first, np.inf, ranked.rank))
        return merge_adjacent(select_by_budget(candidates, size, granularity, anchors))

    def _sentence_scores(
        self,
        text: str,
        query: str,
        relevance: np.ndarray,
        sentences: list[tuple[int, int]],
        token_ends: list[int],
        budget: int | None,
        lift_neighbours: bool = True,
    ) -> SentenceScores:
        """Sentence scores from the critic's relevance logits; under a ``budget``, ranked together with its
        query–sentence similarity where it has one (``sentence_similarity`` and a ``similarity_weight``), for the
        critic's best sentences covering ``similarity_shortlist`` times the budget when it sets one, each sentence
        helped by its best neighbour in its paragraph when the critic sets a ``neighbour_weight`` and
        ``lift_neighbours`` (prose: neighbouring records or lines need not share a topic)."""
        weight = getattr(self.critic, "similarity_weight", None)
        similarity_of = getattr(self.critic, "sentence_similarity", None)
        if budget is None or not weight or similarity_of is None:
            return SentenceScores.from_relevance(relevance, sentences, token_ends)

        def similarity(indices: list[int]) -> np.ndarray:
            return similarity_of(query, [text[sentences[i][0] : sentences[i][1]] for i in indices])

        factor = getattr(self.critic, "similarity_shortlist", None)
        shortlist = None if factor is None else int(np.ceil(factor * budget))
        neighbours = (getattr(self.critic, "neighbour_weight", None) or 0.0) if lift_neighbours else 0.0
        starts = paragraph_starts(text, sentences) if neighbours else None
        return SentenceScores.from_relevance(
            relevance, sentences, token_ends, similarity, weight, shortlist, neighbours, starts
        )


def _sentence_logits(tokens: TokenizedText, relevance: np.ndarray, sentence_units: list[TextUnit]) -> np.ndarray:
    """Per token, the relevance logit of its sentence (its tokens' mean logit, as the keep rule reads it)."""
    sentences = [(unit.start, unit.end) for unit in sentence_units]
    return SentenceScores.from_relevance(relevance, sentences, [end for _, end in tokens.offsets]).keep


def _probability(logit: float) -> float:
    """The logistic function, without overflow (0 for a logit of minus infinity)."""
    return float(0.5 * (1.0 + np.tanh(0.5 * logit)))


def _holding(units: list[Unit], marked: np.ndarray) -> list[Unit]:
    """The units that hold at least one ``marked`` token."""
    marked_before = np.concatenate(([0], np.cumsum(marked)))
    return [unit for unit in units if marked_before[unit.token_end] > marked_before[unit.token_start]]


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


def _refuse_tokenless(token_count: int) -> None:
    """A context that is not blank but holds no token the critic reads (a lone BOM, zero-width space or control
    character) is empty to it: :class:`EmptyContextError`, as a blank one is."""
    if token_count == 0:
        raise EmptyContextError(
            "context has no characters the critic reads (only invisible or control characters such as a BOM or "
            "zero-width space); there is nothing to compress"
        )


def _concat_relevance(scores: Sequence[WindowScores]) -> np.ndarray | None:
    if any(score.relevance is None for score in scores):
        return None
    return np.concatenate([score.relevance for score in scores])


def _logit(probability: float | None) -> float:
    """The logit of a keep threshold given as a probability (``None``: no threshold, i.e. infinity)."""
    if probability is None:
        return float("inf")
    return float(np.log(probability) - np.log1p(-probability))


def _sentence_windowed(request: CompressionRequest) -> bool:
    """Whether the request's windows are cut at sentence ends (by default: when the context holds CJK, as upstream)."""
    if request.sentence_windows is not None:
        return request.sentence_windows
    return has_cjk(decode_text(request.context))


def _upstream_read(
    text: str,
    tokens: TokenizedText,
    labels: np.ndarray,
    sums: TokenScoreSums,
    tags: list[str],
    request: CompressionRequest,
) -> tuple[list[Span], int]:
    """Spans as upstream's endpoint reads them (see :mod:`cprs_core.upstream_spans`), and the tokens they cover."""
    found = upstream_spans(
        text, tokens.offsets, decode_spans(labels), request.min_span_tokens, widen=request.granularity == "sentence"
    )
    found = [span for span in found if text[span.char_start : span.char_end].strip()]
    starts = np.array([span.token_start for span in found], dtype=np.int64)
    ends = np.array([span.token_end for span in found], dtype=np.int64)
    spans = [
        Span(span.char_start, span.char_end, text[span.char_start : span.char_end], float(score), tags[tag])
        for span, score, tag in zip(found, sums.mean_keep(starts, ends), sums.majority_tag(starts, ends))
    ]
    edges = np.zeros(len(text) + 1, dtype=np.int64)
    for span in spans:
        edges[span.start] += 1
        edges[span.end] -= 1
    kept_before = np.concatenate(([0], np.cumsum(np.cumsum(edges)[:-1] > 0)))  # kept characters before each position
    offsets = np.asarray(tokens.offsets, dtype=np.int64).reshape(-1, 2)
    compressed_tokens = int(np.count_nonzero(kept_before[offsets[:, 1]] > kept_before[offsets[:, 0]]))
    return spans, compressed_tokens


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
