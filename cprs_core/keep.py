"""Force-keep: text that is always kept, whatever the critic says (``keep=`` patterns and ``keep_spans=`` offsets).

Forced tokens are tagged as kept on top of the critic's own tags, so they never take the place of something the
critic chose. Under a budget they are taken first and their tokens count against it: the critic's choice fills
what remains, and a budget too small for the forced text alone is a :class:`~cprs_core.errors.BudgetError`.

Regular expressions given as text (a server's ``keep_regex``, the CLI's ``--keep-regex``) are compiled with the
``regex`` package, which matches them with the interpreter lock released and under a time limit
(:data:`KEEP_REGEX_SECONDS`): Python's own ``re`` holds the lock while it matches, so one pattern that
backtracks catastrophically (``(a|aa)+$``) would stop every thread of a server for hours.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from typing import Sequence, Union

import numpy as np
import regex

from .errors import BudgetError, KeepError, quoted
from .regex_size import MAX_COMPILED_ITEMS, check_compiled_size

KeepPattern = Union[str, "re.Pattern[str]", "regex.Pattern[str]"]
"""A literal string (matched as is) or a compiled regular expression."""

KEEP_REGEX_SECONDS = 2.0
"""Time all of a request's text-given regular expressions may take to match its context, together."""
_PATTERN_TYPES = (re.Pattern, regex.Pattern)

FORCED_SCORE = 2.0
"""Keep score given to forced tokens: above any critic score (at most 1), so budgets take them first."""

_INLINE_FLAGS = {re.IGNORECASE: "i", re.MULTILINE: "m", re.DOTALL: "s", re.VERBOSE: "x"}


def check_keep(keep: Sequence[KeepPattern], keep_spans: Sequence[tuple[int, int]], text_length: int | None) -> None:
    """Raise :class:`KeepError` for a pattern that is neither a string nor a regex, an empty one, or a bad span
    (``text_length`` None: no context yet, so spans are checked for their shape and order only)."""
    if isinstance(keep, (str, bytes)):
        raise KeepError("keep must be a list of strings or patterns, not a single string")
    if not isinstance(keep, (list, tuple, set, frozenset)):  # read more than once: no generators
        raise KeepError(f"keep must be a list of strings or patterns, got {type(keep).__name__}")
    if not isinstance(keep_spans, (list, tuple)):
        raise KeepError(f"keep_spans must be a list of (start, end) pairs, got {type(keep_spans).__name__}")
    for pattern in keep:
        if isinstance(pattern, _PATTERN_TYPES):
            if not isinstance(pattern.pattern, str):
                raise KeepError(f"keep patterns must match str, got a bytes pattern {quoted(pattern.pattern)}")
            if _matches(pattern, ""):
                raise KeepError(f"keep pattern {quoted(pattern.pattern)} matches the empty string")
        elif not isinstance(pattern, str) or not pattern:
            raise KeepError(f"keep entries must be non-empty strings or re.Pattern objects, got {quoted(pattern)}")
    for span in keep_spans:
        offsets = (isinstance(span, (list, tuple)) and len(span) == 2
                   and all(isinstance(x, int) and not isinstance(x, bool) for x in span))
        if not offsets or not 0 <= span[0] < span[1] or (text_length is not None and span[1] > text_length):
            bound = "" if text_length is None else f" <= {text_length} (the context's length)"
            raise KeepError(f"keep_spans entries are (start, end) character offsets with 0 <= start < end{bound}; "
                            f"got {quoted(span)}")


def compile_regex(pattern: str) -> "regex.Pattern[str]":
    """``pattern`` compiled by the ``regex`` package (``re``'s syntax; matched with a time limit), with a bad
    pattern reported as :class:`KeepError`."""
    check_compiled_size(pattern, MAX_COMPILED_ITEMS)
    try:
        return regex.compile(pattern)
    except regex.error as error:
        raise KeepError(f"keep_regex {quoted(pattern)} is not a valid regular expression: {error}") from error


def split_patterns(keep: Sequence[KeepPattern]) -> tuple[list[str], list[str]]:
    """``keep`` as (literals, regex strings) for JSON transport; a pattern's flags become inline flags."""
    literals, regexes = [], []
    for pattern in keep:
        if isinstance(pattern, _PATTERN_TYPES):
            regexes.append(regex_text(pattern))
        else:
            literals.append(pattern)
    return literals, regexes


def regex_text(pattern: "re.Pattern[str] | regex.Pattern[str]") -> str:
    """A compiled pattern as text, its flags (``IGNORECASE``, ``MULTILINE``, ``DOTALL``, ``VERBOSE``, ``ASCII``)
    inline."""
    ascii_flag = re.ASCII if isinstance(pattern, re.Pattern) else regex.ASCII  # the two packages number it apart
    letters = {**_INLINE_FLAGS, ascii_flag: "a"}
    flags = "".join(letter for flag, letter in letters.items() if pattern.flags & flag)
    return f"(?{flags}){pattern.pattern}" if flags else pattern.pattern


def join_patterns(literals: Sequence[str], regexes: Sequence[str]) -> tuple[KeepPattern, ...]:
    """The inverse of :func:`split_patterns`: literals as they are, regex strings compiled."""
    return (*literals, *(compile_regex(regex) for regex in regexes))


@dataclass(frozen=True)
class Forced:
    """The forced character ranges of a context and which of its tokens they touch."""

    ranges: list[tuple[int, int]]
    mask: np.ndarray

    @classmethod
    def of_ranges(cls, ranges: list[tuple[int, int]], offsets: Sequence[tuple[int, int]]) -> Forced:
        """The forced character ``ranges`` (from :func:`forced_ranges`) and the tokens (by ``offsets``) they touch."""
        return cls(ranges, _forced_token_mask(offsets, ranges))


def find_forced(
    text: str, offsets: Sequence[tuple[int, int]], keep: Sequence[KeepPattern], keep_spans: Sequence[tuple[int, int]]
) -> Forced:
    """Every match of every ``keep`` pattern, every ``keep_spans`` range, and the tokens (by ``offsets``) they touch."""
    return Forced.of_ranges(forced_ranges(text, keep, keep_spans), offsets)


def forced_ranges(
    text: str, keep: Sequence[KeepPattern], keep_spans: Sequence[tuple[int, int]]
) -> list[tuple[int, int]]:
    """Character ranges of ``text`` to keep: every match of every pattern, and every span (unsorted).

    ``keep_spans`` were checked against the whole context; when ``text`` is that context truncated
    (``truncate_over_length=True``), a span is cut at its end and one wholly past it is left out, as the rest of
    the truncated text is.

    Raises:
        KeepError: the ``regex``-compiled patterns took more than :data:`KEEP_REGEX_SECONDS` together, or one
            recursed without end.
    """
    ranges = [(start, min(end, len(text))) for start, end in keep_spans if start < len(text)]
    deadline = time.monotonic() + KEEP_REGEX_SECONDS
    for pattern in keep:
        if isinstance(pattern, regex.Pattern):
            matches = _timed_matches(pattern, text, deadline)
        elif isinstance(pattern, re.Pattern):
            matches = pattern.finditer(text)
        else:  # a literal: linear, found with the interpreter lock released
            matches = regex.compile(regex.escape(pattern)).finditer(text, concurrent=True)
        ranges += [match.span() for match in matches if match.end() > match.start()]
    return ranges  # type: ignore[return-value]


def _timed_matches(pattern: "regex.Pattern[str]", text: str, deadline: float) -> list["regex.Match[str]"]:
    """Every match of ``pattern`` in ``text``, found with the interpreter lock released, by ``deadline``."""
    try:
        return list(pattern.finditer(text, concurrent=True, timeout=max(deadline - time.monotonic(), 0.001)))
    except TimeoutError:
        raise KeepError(
            f"keep_regex {quoted(pattern.pattern)} took more than {KEEP_REGEX_SECONDS:g} s to match this context (a pattern "
            "that backtracks without end, such as '(a|aa)+$'?); simplify it"
        ) from None
    except MemoryError:
        raise _recursing(pattern) from None


def _matches(pattern: "re.Pattern[str] | regex.Pattern[str]", text: str) -> bool:
    """Whether ``pattern`` matches all of ``text``."""
    try:
        return pattern.fullmatch(text) is not None
    except MemoryError:
        raise _recursing(pattern) from None


def _recursing(pattern: "re.Pattern[str] | regex.Pattern[str]") -> KeepError:
    """The error for a pattern the ``regex`` package gave up on with a ``MemoryError`` (it recurses without end)."""
    return KeepError(
        f"keep_regex {quoted(pattern.pattern)} ran out of memory matching (a pattern that recurses without end, such as "
        "'(?R)'?); simplify it"
    )


def _forced_token_mask(offsets: Sequence[tuple[int, int]], ranges: Sequence[tuple[int, int]]) -> np.ndarray:
    """Which tokens (by character ``offsets``) overlap a forced character range."""
    token_offsets = np.asarray(offsets, dtype=np.int64).reshape(-1, 2)
    mask = np.zeros(len(token_offsets), dtype=bool)
    starts, ends = token_offsets[:, 0], token_offsets[:, 1]
    for start, end in ranges:
        mask |= (starts < end) & (ends > start)
    return mask


def force(keep_scores: np.ndarray, labels: np.ndarray, mask: np.ndarray, inside_label: int) -> tuple[np.ndarray, np.ndarray]:
    """Keep scores and labels with the forced tokens tagged ``inside_label`` and scored :data:`FORCED_SCORE`."""
    keep_scores, labels = keep_scores.copy(), labels.copy()
    keep_scores[mask] = FORCED_SCORE
    labels[mask] = inside_label
    return keep_scores, labels


def check_forced_kept(
    text: str,
    ranges: Sequence[tuple[int, int]],
    kept: Sequence[tuple[int, int]],
    budget: int | None,
    offsets: Sequence[tuple[int, int]],
) -> None:
    """Raise :class:`BudgetError` when a budget left out a forced character: whitespace aside, and characters in no
    token (by ``offsets``: a zero-width space, BOM or control character the tokenizer drops cannot be kept)."""
    if not ranges:
        return
    covered = _covered(len(text), kept)
    readable = _covered(len(text), offsets)
    for start, end in ranges:
        if any(readable[i] and not covered[i] and not text[i].isspace() for i in range(start, end)):
            raise BudgetError(
                f"the force-kept text {text[start:end][:40]!r} does not fit in the budget of {budget} tokens "
                "together with the other forced text; raise target_tokens/target_ratio or keep less"
            )


def _covered(length: int, ranges: Sequence[tuple[int, int]]) -> np.ndarray:
    """Which of ``length`` characters lie inside at least one of the character ``ranges``."""
    edges = np.zeros(length + 1, dtype=np.int64)
    for start, end in ranges:
        edges[start] += 1
        edges[end] -= 1
    return np.cumsum(edges)[:-1] > 0
