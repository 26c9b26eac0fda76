"""Sentence-aligned windows: upstream's ``split_with_sent`` cutting, used for contexts that contain CJK text.

Upstream (``src/api_utils/dataset.py``) cuts a context holding any CJK ideograph (U+4E00 to U+9FFF) into
windows at sentence ends instead of every N tokens. Its rule, reimplemented here:

* a sentence ends after the first of ``. \\n ” 。 ！ ？ |`` (``。”``, ``！”`` and ``？”`` count as one mark), plus the
  spaces and newlines right after it; text without a mark is one sentence;
* sentences are added to the current window while the window's token count, counted sentence by sentence
  (each sentence tokenized on its own), stays within the window's room; the next sentence starts a new window;
* each window's text is then tokenized on its own, and those are the tokens the critic scores.

So no window edge falls inside a sentence, a word or a character. Where upstream would overflow a window (one
sentence longer than a window, or a window whose text tokenizes longer than its sentences did), it truncates the
window's text, tags the lost tokens O and shifts the offsets of every later window; here that window's tokens
are cut into full-size windows instead, so nothing is lost or shifted.
"""

from __future__ import annotations

import re
from typing import Callable

from .critic import TokenizedText

_CJK = re.compile(r"[\u4e00-\u9fff]")
_SENTENCE_MARK = re.compile(r"[。！？]”|[.\n”。！？|]")
_TRAILING_SPACE = re.compile(r"[ \n]*")


def has_cjk(text: str) -> bool:
    """Whether ``text`` holds a CJK unified ideograph (upstream's test for sentence-aligned windows)."""
    return _CJK.search(text) is not None


def sentence_ends(text: str) -> list[int]:
    """Character positions where upstream's window cutter may end a window, ascending; the last is ``len(text)``."""
    ends: list[int] = []
    position = 0
    while position < len(text):
        mark = _SENTENCE_MARK.search(text, position)
        if mark is None:
            break
        position = _TRAILING_SPACE.match(text, mark.end()).end()  # type: ignore[union-attr]
        ends.append(position)
    if not ends or ends[-1] < len(text):
        ends.append(len(text))
    return ends


def sentence_windows(
    text: str,
    tokenize: Callable[[str], TokenizedText],
    count_tokens: Callable[[str], int],
    capacity: int,
) -> tuple[TokenizedText, list[range]]:
    """The context's tokens (each window's text tokenized on its own) and each window's token range.

    Args:
        text: the context.
        tokenize: the critic's context tokenizer (ids and character offsets, no special tokens).
        count_tokens: the critic's token counter.
        capacity: context tokens one window holds (window size less the prompt).
    """
    ids: list[int] = []
    offsets: list[tuple[int, int]] = []
    windows: list[range] = []
    for window_start, window_end in _packed(text, count_tokens, capacity):
        part = tokenize(text[window_start:window_end])
        first = len(ids)
        ids += part.ids
        offsets += [(start + window_start, end + window_start) for start, end in part.offsets]
        windows += [range(start, min(start + capacity, len(ids))) for start in range(first, len(ids), capacity)]
    return TokenizedText(ids, offsets), windows


def _packed(text: str, count_tokens: Callable[[str], int], capacity: int) -> list[tuple[int, int]]:
    """Character ranges of the windows: whole sentences, as many as fit by their separate token counts."""
    windows: list[tuple[int, int]] = []
    window_start = sentence_start = 0
    used = 0
    for sentence_end in sentence_ends(text):
        tokens = count_tokens(text[sentence_start:sentence_end])
        if used + tokens > capacity and sentence_start > window_start:
            windows.append((window_start, sentence_start))
            window_start, used = sentence_start, 0
        used += tokens
        sentence_start = sentence_end
    windows.append((window_start, len(text)))
    return windows
