"""Sentence and paragraph boundaries as character ranges of the original text."""

from __future__ import annotations

import re

_SENTENCE_END = re.compile(r"[.!?。！？；;]+[\"'”’)\]]*(?=\s|$)|[。！？]+[\"'”’)\]]*|\n+")
_PARAGRAPH_BREAK = re.compile(r"\n[ \t]*\n\s*")


def _strip_range(text: str, start: int, end: int) -> tuple[int, int] | None:
    while start < end and text[start].isspace():
        start += 1
    while end > start and text[end - 1].isspace():
        end -= 1
    return (start, end) if start < end else None


def _ranges_between(text: str, cut_points: list[int]) -> list[tuple[int, int]]:
    ranges = []
    bounds = [0, *cut_points, len(text)]
    for start, end in zip(bounds, bounds[1:]):
        stripped = _strip_range(text, start, end)
        if stripped:
            ranges.append(stripped)
    return ranges


def sentence_ranges(text: str) -> list[tuple[int, int]]:
    """``(start, end)`` of every sentence, whitespace trimmed, in order; ends at ``.!?`` (and CJK marks) or newlines."""
    return _ranges_between(text, [match.end() for match in _SENTENCE_END.finditer(text)])


def paragraph_ranges(text: str) -> list[tuple[int, int]]:
    """``(start, end)`` of every paragraph (blocks separated by blank lines), whitespace trimmed, in order."""
    return _ranges_between(text, [match.end() for match in _PARAGRAPH_BREAK.finditer(text)])
