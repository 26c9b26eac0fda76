"""Spans read the way upstream's endpoint reads them (``upstream_spans=True``).

cprs's own output strips whitespace from every span, merges neighbouring sentences and finds sentences with its
own splitter. Upstream's ``/qwen_long_compress_server`` does otherwise, and its clients see the difference:

* a span's character range runs from its first token's start (a leading space included) to the start of the
  token after it (the end of the text for the last token), unstripped;
* ``complete_sentence`` widens each kept span on its own: its start moves left until the character before it is
  a delimiter (:data:`UPSTREAM_DELIMITERS`) or it reaches the end of the previous decoded span (kept or not,
  widened or not, as that span ended up); its end moves right until its last character is a delimiter. Spans
  are not merged, so widened spans can overlap and repeat text.

One deliberate difference: upstream's right-widening stops one character before the end of the text (so a last
sentence without a delimiter loses its final character); here it may reach the end.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

UPSTREAM_DELIMITERS = ".。：？！\"”?!\n"
"""The characters upstream's ``complete_sentence`` widens to."""


@dataclass(frozen=True)
class UpstreamSpan:
    """One kept span: its token range ``[token_start, token_end)`` and unstripped character range."""

    token_start: int
    token_end: int
    char_start: int
    char_end: int


def upstream_spans(
    text: str,
    offsets: Sequence[tuple[int, int]],
    token_spans: Sequence[tuple[int, int]],
    min_span_tokens: int,
    widen: bool,
) -> list[UpstreamSpan]:
    """The kept spans, with upstream's character ranges.

    Args:
        text: the context.
        offsets: each token's ``(start, end)`` characters in ``text``.
        token_spans: every decoded span's token range, in order, none dropped (the dropped ones still bound the
            widening of the next span).
        min_span_tokens: spans with fewer tokens are not kept (upstream's ``min_keyword_len + 1``).
        widen: upstream's ``complete_sentence``.
    """
    kept: list[UpstreamSpan] = []
    previous_end = -1
    for token_start, token_end in token_spans:
        char_start = offsets[token_start][0]
        char_end = offsets[token_end][0] if token_end < len(offsets) else len(text)
        if token_end - token_start >= min_span_tokens:
            if widen:
                char_start = _widen_left(text, char_start, previous_end)
                char_end = _widen_right(text, char_end)
            kept.append(UpstreamSpan(token_start, token_end, char_start, char_end))
        previous_end = char_end
    return kept


def _widen_left(text: str, start: int, floor: int) -> int:
    while start > 0 and start > floor and text[start - 1] not in UPSTREAM_DELIMITERS:
        start -= 1
    return start


def _widen_right(text: str, end: int) -> int:
    while end < len(text) and text[end - 1] not in UPSTREAM_DELIMITERS:
        end += 1
    return end
