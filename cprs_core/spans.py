"""From per-token BIOE labels and scores to kept units: upstream's span decoding, granularity and budgets."""

from __future__ import annotations

import bisect
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

from .critic import BIOE_LABELS
from .errors import BudgetError

B, I, O, E = (BIOE_LABELS.index(label) for label in "BIOE")
MAX_FILL_GAP = 20
"""Runs of O are filled when the tagged tokens around them are fewer than this many positions apart (at most 18 O)."""


def fill_short_gaps(labels: np.ndarray, max_gap: int = MAX_FILL_GAP, backward: bool = False) -> np.ndarray:
    """Upstream's tag correction: short O runs after a B become I.

    Walking forward from every B, each O run that ends at a non-O token fewer than ``max_gap`` positions after the
    previous tagged token is relabelled I; the walk stops at the next B or E (after filling up to it), at a longer
    gap, or at the end. This is everything upstream's correction does: its second pass, meant to walk backward
    from every E, calls ``list.rindex`` (lists have no such method) inside a bare ``try/except: break``, so it
    stops before doing anything. ``O O I O O E`` therefore stays as it is.

    ``backward=True`` also runs that second pass as intended (the same fill walking back from every E, so
    ``O O I O O E`` becomes ``O O I I I E``). It is a cprs option, not upstream behaviour.
    """
    labels = labels.copy()
    n = len(labels)
    for start in np.flatnonzero(labels == B):
        _fill_walk(labels, int(start), range(int(start) + 1, n), max_gap)
    if backward:
        for start in np.flatnonzero(labels == E)[::-1]:
            _fill_walk(labels, int(start), range(int(start) - 1, -1, -1), max_gap)
    return labels


def _fill_walk(labels: np.ndarray, anchor: int, path: range, max_gap: int) -> None:
    last_tagged = anchor
    for index in path:
        if labels[index] == O:
            continue
        if abs(index - last_tagged) >= max_gap:
            return
        low, high = sorted((last_tagged, index))
        labels[low + 1 : high] = I
        if labels[index] in (B, E):
            return
        last_tagged = index


def decode_spans(labels: np.ndarray, min_span_tokens: int = 1) -> list[tuple[int, int]]:
    """Token ranges ``[start, end)`` of tagged spans, as upstream reads them.

    A span starts at any non-O token and runs through the following non-O tokens up to (not including) the next
    O or B. Spans shorter than ``min_span_tokens`` are dropped (upstream's ``min_keyword_len`` is
    ``min_span_tokens - 1``).
    """
    labels = np.asarray(labels)
    tagged = labels != O
    previous_tagged = np.concatenate(([False], tagged[:-1]))
    starts_here = tagged & (~previous_tagged | (labels == B))
    next_starts = np.concatenate((starts_here[1:], [True]))
    next_untagged = np.concatenate((~tagged[1:], [True]))
    starts = np.flatnonzero(starts_here)
    ends = np.flatnonzero(tagged & (next_untagged | next_starts)) + 1
    keep = ends - starts >= min_span_tokens
    return [(int(start), int(end)) for start, end in zip(starts[keep], ends[keep])]


class TokenScoreSums:
    """Prefix sums over per-token scores, so any token range's mean keep score and majority tag cost O(1).

    Args:
        keep_scores: ``1 - P(outside)`` per token.
        tag_index: per-token index of the most likely tag word, or ``None``.
        tag_count: how many tag words there are.
    """

    def __init__(self, keep_scores: np.ndarray, tag_index: np.ndarray | None, tag_count: int) -> None:
        self._keep = np.concatenate(([0.0], np.cumsum(keep_scores, dtype=np.float64)))
        self._tags = None
        if tag_index is not None:
            one_hot = np.eye(tag_count, dtype=np.int64)[tag_index]
            self._tags = np.concatenate((np.zeros((1, tag_count), dtype=np.int64), np.cumsum(one_hot, axis=0)))

    def mean_keep(self, starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
        """Mean keep score of each token range ``[starts[i], ends[i])``."""
        return (self._keep[ends] - self._keep[starts]) / (ends - starts)

    def majority_tag(self, starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
        """For each token range, the tag most of its tokens carry (all 0 without tag scores; ties: the first)."""
        if self._tags is None:
            return np.zeros(len(starts), dtype=np.int64)
        return np.argmax(self._tags[ends] - self._tags[starts], axis=1)


@dataclass(frozen=True)
class Unit:
    """A candidate piece of output: its position among all candidates, token range, character range, score."""

    index: int
    token_start: int
    token_end: int
    char_start: int
    char_end: int
    score: float

    @property
    def tokens(self) -> int:
        return self.token_end - self.token_start


@dataclass(frozen=True)
class SentenceScores:
    """Per-sentence scores from a critic's relevance logits, spread back onto the tokens each sentence owns.

    Attributes:
        keep: per token, the mean relevance logit of its sentence (a calibrated logit: the no-budget keep rule
            compares it with the critic's threshold).
        rank: per token, its sentence's ranking score (``keep``, or combined with a similarity, see
            :meth:`combined`). Taking a unit's best token scores a sentence by itself and a paragraph by its best
            sentence. Tokens outside every sentence keep their own logit (``rank``: the lowest score).
    """

    keep: np.ndarray
    rank: np.ndarray

    @classmethod
    def from_relevance(
        cls,
        relevance: np.ndarray,
        sentences: list[tuple[int, int]],
        token_ends: list[int],
        similarity: Callable[[list[int]], np.ndarray] | None = None,
        similarity_weight: float = 0.0,
        shortlist_tokens: int | None = None,
        neighbour_weight: float = 0.0,
        paragraph_starts: Sequence[bool] | None = None,
    ) -> SentenceScores:
        """Pool ``relevance`` over each sentence's tokens (owned as in :func:`units_from_char_ranges`).

        With ``similarity`` (called with the indices of the sentences to compare, returning one similarity
        each), the ranking score is ``z(mean logit) + similarity_weight * z(similarity)``, z-scores taken over
        the context's sentences. With ``shortlist_tokens``, only the sentences of highest mean logit that
        together hold that many tokens are compared (and z-scored among themselves); the others rank below them
        all, in the order of their mean logit. With ``neighbour_weight``, each sentence's ranking score then gains
        that weight times the better score of its neighbours in the same paragraph (``paragraph_starts``: per
        sentence, whether it opens one; ``None``: one paragraph), 0 (the mean z-score) when it has none: evidence
        comes in runs of sentences, so a sentence beside a strong one is likelier to matter than an isolated one.
        """
        ranges = [
            (index, bisect.bisect_right(token_ends, start), bisect.bisect_right(token_ends, end))
            for index, (start, end) in enumerate(sentences)
        ]
        ranges = [(index, first, last) for index, first, last in ranges if first < last]
        keep = relevance.astype(np.float64)
        means = np.array([relevance[first:last].mean() for _, first, last in ranges], dtype=np.float64)
        for (_, first, last), mean in zip(ranges, means):
            keep[first:last] = mean
        if similarity is None or not ranges:
            return cls(keep, keep)
        shortlist = _shortlist(means, np.array([last - first for _, first, last in ranges]), shortlist_tokens)
        combined = zscore(means)
        compared = zscore(means[shortlist]) + similarity_weight * zscore(
            similarity([ranges[i][0] for i in shortlist])
        )
        if len(shortlist) < len(ranges):
            combined += compared.min() - 1.0 - combined.max()
        combined[shortlist] = compared
        if neighbour_weight:
            opens = _opens_paragraph([index for index, _, _ in ranges], paragraph_starts)
            combined = combined + neighbour_weight * _best_neighbour(combined, opens)
        rank = np.full(len(relevance), combined.min(), dtype=np.float64)
        for (_, first, last), score in zip(ranges, combined):
            rank[first:last] = score
        return cls(keep, rank)


def _best_neighbour(scores: np.ndarray, opens: np.ndarray) -> np.ndarray:
    """For each score, the higher of its two neighbours' within its paragraph (``opens[i]``: score ``i`` starts a
    paragraph), 0 where it has neither."""
    before = np.concatenate(([-np.inf], scores[:-1]))
    before[opens] = -np.inf
    after = np.concatenate((scores[1:], [-np.inf]))
    after[np.concatenate((opens[1:], [True]))] = -np.inf
    best = np.maximum(before, after)
    return np.where(np.isfinite(best), best, 0.0)


def _opens_paragraph(indices: list[int], paragraph_starts: Sequence[bool] | None) -> np.ndarray:
    """Whether each of the sentences numbered ``indices`` (ascending; some sentences may be skipped) starts a
    paragraph among them: it is the first, or a paragraph opens at it or at a skipped sentence before it."""
    if paragraph_starts is None:
        return np.arange(len(indices)) == 0
    opened_by = np.cumsum(np.asarray(paragraph_starts, dtype=np.int64))
    counts = opened_by[np.asarray(indices, dtype=np.int64)]
    return np.concatenate(([True], counts[1:] > counts[:-1])) if len(indices) else np.zeros(0, dtype=bool)


def _shortlist(means: np.ndarray, sizes: np.ndarray, tokens: int | None) -> np.ndarray:
    """Indices (ascending) of the highest ``means`` whose ``sizes`` first add up to ``tokens`` (all: ``None``)."""
    if tokens is None:
        return np.arange(len(means))
    order = np.argsort(-means, kind="stable")
    count = int(np.searchsorted(np.cumsum(sizes[order]), tokens)) + 1
    return np.sort(order[:count])


def zscore(values: np.ndarray) -> np.ndarray:
    """``values`` (in float64) minus their mean over the first axis, divided by their standard deviation there
    (left at 0 where it is 0): a 1-D array as a whole, a 2-D one column by column."""
    values = np.asarray(values, dtype=np.float64)
    spread = values.std(axis=0)
    return (values - values.mean(axis=0)) / np.where(spread > 0, spread, 1.0)


def units_from_char_ranges(
    char_ranges: list[tuple[int, int]], token_ends: list[int], keep_scores: np.ndarray
) -> list[Unit]:
    """Units for sentences/paragraphs: each owns the tokens whose last character lies inside it.

    A unit's score is its best token's score (a sentence holding one needle token is relevant).
    """
    units = []
    for char_start, char_end in char_ranges:
        first = bisect.bisect_right(token_ends, char_start)
        last = bisect.bisect_right(token_ends, char_end)
        if first < last:
            units.append(Unit(len(units), first, last, char_start, char_end, float(keep_scores[first:last].max())))
    return units


def select_by_budget(
    units: list[Unit],
    max_tokens: int,
    granularity: str,
    anchors: Sequence[Sequence[int]] | None = None,
    best_if_none_fits: bool = False,
) -> list[Unit]:
    """The highest-scoring units whose tokens fit in ``max_tokens`` (greedy, ties by position), in order.

    ``anchors[i]``, when given, are the positions of the units that must be kept with unit ``i`` (all of them,
    transitively closed); a unit is taken only if it fits together with those of its anchors not yet taken.
    When no unit fits, that is a :class:`BudgetError`, or with ``best_if_none_fits`` the best unit is kept
    alone (with its anchors), over the budget.
    """
    if max_tokens < 1:
        raise BudgetError(f"the budget allows {max_tokens} tokens; at least 1 is needed")
    order = sorted(range(len(units)), key=lambda i: (-units[i].score, units[i].token_start))
    if units and min(unit.tokens for unit in units) > max_tokens and not best_if_none_fits:
        smallest = min(unit.tokens for unit in units)
        raise BudgetError(
            f"no {granularity} fits in a budget of {max_tokens} tokens (the smallest has {smallest}); "
            "raise target_tokens or use a finer granularity"
        )
    chosen: dict[int, Unit] = {}
    remaining = max_tokens
    for position in order:
        if position in chosen:
            continue
        needed = [i for i in (position, *(anchors[position] if anchors else ())) if i not in chosen]
        cost = sum(units[i].tokens for i in needed)
        if cost <= remaining:
            chosen.update((i, units[i]) for i in needed)
            remaining -= cost
    if not chosen and units and best_if_none_fits:
        chosen = {i: units[i] for i in (order[0], *(anchors[order[0]] if anchors else ()))}
    return sorted(chosen.values(), key=lambda unit: unit.index)


def merge_adjacent(units: list[Unit]) -> list[list[Unit]]:
    """Group kept units with no dropped unit between them, so they come out as one span."""
    groups: list[list[Unit]] = []
    for unit in units:
        if groups and groups[-1][-1].index + 1 == unit.index:
            groups[-1].append(unit)
        else:
            groups.append([unit])
    return groups
