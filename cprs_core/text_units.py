"""Sentence, paragraph and line units as character ranges of the original text, structure-safe.

:func:`segment` is what the engine keeps from: it reads markdown (headings, code fences, list items, tables) and
chat transcripts (speaker turns) so that units never cut a structure in a harmful place, and names for each unit
the units that must be kept with it (its *anchors*): the heading of its section, the speaker tag of its turn,
a table's header rows, a code block's fences. Plain prose gives the same units as :func:`sentence_ranges` and
:func:`paragraph_ranges`.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Literal, Sequence

UnitKind = Literal["sentence", "paragraph", "line"]

_CLOSERS = "\"'”’)\\]」』）】》〉"
_SENTENCE_END = re.compile(rf"[.!?;]+[{_CLOSERS}]*(?=\s|$)|[。！？；]+[{_CLOSERS}]*|\n+")
_ABBREVIATED = re.compile(r"(?:^|(?<=[\s(\[\"“‘]))(?P<word>[A-Za-z]+(?:\.[A-Za-z]+)*)\.$")
_TITLES = frozenset(
    "Mr Mrs Ms Mx Dr Prof Rev Fr Sr Jr St Mt Ft Gen Gov Sen Rep Lt Col Capt Sgt Maj Adm Cmdr Pres Hon Messrs Mme Mlle"
    .split()
)
_ABBREVIATIONS = _TITLES | frozenset(
    "No Nos Vol Vols Fig Figs Art Sec Ch pp vs etc al cf ca approx Inc Corp Co Ltd Bros Dept Univ Ave Blvd "
    "Jan Feb Mar Apr Jun Jul Aug Sep Sept Oct Nov Dec".split()
)
MAX_SENTENCE_CHARS = 600
"""Longer sentences are cut into pieces (see :func:`_pieces`): a text without sentence punctuation (a
transcript, a chat, a forum post) would otherwise be one unit per paragraph, kept or dropped whole, and too
long for a small budget. About 1 in 1,500 sentences of SQuAD's and CoQA's passages is longer."""
SENTENCE_PIECE_CHARS = 300
"""The longest piece of a cut sentence."""
_CLAUSE_BREAK = re.compile(r"[,;:](?=\s)|\s[-–—](?=\s)")
_PARAGRAPH_BREAK = re.compile(r"\n[ \t]*\n\s*")
_BLANK_LINE = re.compile(r"\n[^\S\n]*\n")
_LINE = re.compile(r"[^\n]*\n?")
_FENCE = re.compile(r"[ \t]{0,3}(`{3,}|~{3,})")
_HEADING = re.compile(r"[ \t]{0,3}(#{1,6})[ \t]+\S")
_TABLE_ROW = re.compile(r"[ \t]*\|")
_TABLE_RULE = re.compile(r"[ \t]*\|?[ \t]*:?-{3,}:?[ \t]*(\|[ \t]*:?-{3,}:?[ \t]*)*\|?[ \t]*$")
_LIST_ITEM = re.compile(r"[ \t]*(?:[-*+]|\d{1,9}[.)])[ \t]+\S")
_SPEAKER = re.compile(
    r"[ \t]*(?:\*\*|\[)?(?P<name>(?i:user|assistant|system|human|ai|bot|tool)|[A-Z][\w'.-]*(?: [A-Z][\w'.-]*){0,2})"
    r"(?:\*\*|\])?:(?:\*\*)?(?=[ \t]+\S)"
)


@dataclass(frozen=True)
class TextUnit:
    """A unit of text ``[start, end)``; ``anchors`` are indices of units that are kept whenever this one is."""

    start: int
    end: int
    anchors: tuple[int, ...] = ()


def strip_range(text: str, start: int, end: int) -> tuple[int, int] | None:
    """``text[start:end]`` without its leading and trailing whitespace, or ``None`` if nothing is left."""
    while start < end and text[start].isspace():
        start += 1
    while end > start and text[end - 1].isspace():
        end -= 1
    return (start, end) if start < end else None


def _ranges_between(text: str, cut_points: list[int], start: int = 0, end: int | None = None) -> list[tuple[int, int]]:
    ranges = []
    bounds = [start, *cut_points, len(text) if end is None else end]
    for first, last in zip(bounds, bounds[1:]):
        stripped = strip_range(text, first, last)
        if stripped:
            ranges.append(stripped)
    return ranges


def _sentences(text: str, start: int, end: int) -> list[tuple[int, int]]:
    cuts = [match.end() for match in _SENTENCE_END.finditer(text, start, end) if not _abbreviation_at(text, match, end)]
    sentences = _attach_punctuation(text, _ranges_between(text, cuts, start, end))
    return [piece for sentence in sentences for piece in _pieces(text, *sentence)]


def _pieces(text: str, start: int, end: int) -> list[tuple[int, int]]:
    """``text[start:end]`` itself, or if longer than :data:`MAX_SENTENCE_CHARS`, cut into about equal pieces of
    at most :data:`SENTENCE_PIECE_CHARS`: each ends at the last clause break (``,;:`` or a dash, then a space) in
    the second half of its share, else at the last space there, else at the end of its share."""
    if end - start <= MAX_SENTENCE_CHARS:
        return [(start, end)]
    pieces = []
    while end - start > SENTENCE_PIECE_CHARS:
        share = math.ceil((end - start) / math.ceil((end - start) / SENTENCE_PIECE_CHARS))
        low, high = start + share // 2, start + share
        breaks = [match.end() for match in _CLAUSE_BREAK.finditer(text, low, high + 1)]
        cut = breaks[-1] if breaks else max(text.rfind(" ", low, high + 1), text.rfind("\t", low, high + 1))
        cut = high if cut <= low else cut
        piece = strip_range(text, start, cut)
        if piece:
            pieces.append(piece)
        start = cut
    rest = strip_range(text, start, end)
    return [*pieces, rest] if rest else pieces


def _abbreviation_at(text: str, match: re.Match[str], end: int) -> bool:
    """Whether a sentence end ``match`` is only the period of an abbreviation: an initial (``J.``; not the
    pronoun ``I.``), a dotted acronym (``U.S.``, ``a.m.``, ``e.g.``), a title (``Mr.``, ``Dr.``, ``St.``), or
    another common abbreviation (``No. 1``, ``Jan. 5``, ``Inc. said``) followed by a number or a lower-case word.
    The word must start the text or follow a space, a bracket or an opening quote (``Caesar's.`` is no initial)."""
    if match.group() != ".":
        return False
    abbreviated = _ABBREVIATED.search(text, max(0, match.start() - 24), match.end())
    if abbreviated is None:
        return False
    word = abbreviated.group("word")
    if (len(word) == 1 and word != "I") or "." in word or word in _TITLES:
        return True
    following = text[match.end() : min(end, match.end() + 8)].lstrip()[:1]
    return word in _ABBREVIATIONS and (following.isdigit() or following.islower())


def _attach_punctuation(text: str, ranges: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """``ranges`` with each one that holds no letter or digit (a closing quote set off by a space, a stray
    bracket) joined to the sentence before it on the same line."""
    joined: list[tuple[int, int]] = []
    for start, end in ranges:
        if joined and "\n" not in text[joined[-1][1] : start] and not any(c.isalnum() for c in text[start:end]):
            joined[-1] = (joined[-1][0], end)
        else:
            joined.append((start, end))
    return joined


def sentence_ranges(text: str) -> list[tuple[int, int]]:
    """``(start, end)`` of every sentence, whitespace trimmed, in order; ends at ``.!?;`` (and CJK ``。！？；``,
    closing quotes and brackets included) or newlines, but not at the period of an abbreviation (``Mr.``,
    ``U.S.``, ``J. K.``, ``No. 5``), and a piece with no letter or digit stays with the sentence before it. A
    sentence longer than :data:`MAX_SENTENCE_CHARS` is cut at clause breaks or spaces into pieces of at most
    :data:`SENTENCE_PIECE_CHARS`. Plain-prose rules; :func:`segment` adds structure."""
    return _sentences(text, 0, len(text))


_WORD = re.compile(r"\w+")


def lower_words(text: str) -> list[str]:
    """The lower-cased words (``\\w+`` runs) of ``text``, for lexical matching: BM25, shared word runs."""
    return _WORD.findall(text.lower())


def paragraph_ranges(text: str) -> list[tuple[int, int]]:
    """``(start, end)`` of every paragraph (blocks separated by blank lines), whitespace trimmed, in order."""
    return _ranges_between(text, [match.end() for match in _PARAGRAPH_BREAK.finditer(text)])


def paragraph_starts(text: str, ranges: Sequence[tuple[int, int]]) -> list[bool]:
    """For each of ``ranges`` (in order, not overlapping), whether it opens a paragraph: it is the first, or a
    blank line lies between it and the range before it."""
    return [
        index == 0 or _BLANK_LINE.search(text, ranges[index - 1][1], start) is not None
        for index, (start, _) in enumerate(ranges)
    ]


def line_ranges(text: str, start: int = 0, end: int | None = None) -> list[tuple[int, int]]:
    """``(start, end)`` of every non-blank line of ``text[start:end]``, whitespace trimmed, in order."""
    end = len(text) if end is None else end
    ranges = []
    for match in _LINE.finditer(text, start, end):
        stripped = strip_range(text, match.start(), match.end())
        if stripped:
            ranges.append(stripped)
    return ranges


@dataclass(frozen=True)
class _Block:
    kind: Literal["prose", "fence", "heading", "table", "item"]
    lines: list[tuple[int, int]]
    """``(start, end)`` of each line, newline excluded."""
    level: int = 0

    @property
    def start(self) -> int:
        return self.lines[0][0]

    @property
    def end(self) -> int:
        return self.lines[-1][1]


def _split_lines(text: str, start: int, end: int) -> list[tuple[int, int]]:
    return [(m.start(), m.end() - (text[m.end() - 1 : m.end()] == "\n")) for m in _LINE.finditer(text, start, end)
            if m.end() > m.start()]


def _blocks(text: str, start: int, end: int) -> list[_Block]:
    """Markdown blocks of ``text[start:end]``: prose paragraphs, fenced code, headings, tables, list items."""
    lines = _split_lines(text, start, end)
    blocks: list[_Block] = []
    index = 0
    while index < len(lines):
        line_start, line_end = lines[index]
        line = text[line_start:line_end]
        if not line.strip():
            index += 1
            continue
        fence = _FENCE.match(line)
        if fence:
            marker = fence.group(1)
            close = next((i for i in range(index + 1, len(lines))
                          if text[lines[i][0] : lines[i][1]].strip().startswith(marker[0] * len(marker))
                          and not text[lines[i][0] : lines[i][1]].strip().strip(marker[0])), len(lines) - 1)
            blocks.append(_Block("fence", lines[index : close + 1]))
            index = close + 1
        elif heading := _HEADING.match(line):
            blocks.append(_Block("heading", [lines[index]], len(heading.group(1))))
            index += 1
        elif _TABLE_ROW.match(line):
            stop = index
            while stop < len(lines) and _TABLE_ROW.match(text[lines[stop][0] : lines[stop][1]]):
                stop += 1
            blocks.append(_Block("table", lines[index:stop]))
            index = stop
        else:
            kind: Literal["prose", "item"] = "item" if _LIST_ITEM.match(line) else "prose"
            stop = index + 1
            while stop < len(lines):
                following = text[lines[stop][0] : lines[stop][1]]
                if (not following.strip() or _FENCE.match(following) or _HEADING.match(following)
                        or _TABLE_ROW.match(following) or _LIST_ITEM.match(following)):
                    break
                stop += 1
            blocks.append(_Block(kind, lines[index:stop]))
            index = stop
    return blocks


class _Units:
    """Collects units; each gets the anchors of its context (section heading, speaker tag) plus its own."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.units: list[TextUnit] = []

    def add(self, start: int, end: int, anchors: tuple[int, ...] = ()) -> int | None:
        stripped = strip_range(self.text, start, end)
        if stripped is None:
            return None
        self.units.append(TextUnit(*stripped, tuple(dict.fromkeys(anchors))))
        return len(self.units) - 1

    def anchor(self, indices: list[int], anchors: list[int]) -> None:
        """Add ``anchors`` to the units at ``indices`` (for anchors that come after them, like a closing fence)."""
        for index in indices:
            unit = self.units[index]
            self.units[index] = TextUnit(unit.start, unit.end, tuple(dict.fromkeys((*unit.anchors, *anchors))))


def _add_blocks(units: _Units, text: str, start: int, end: int, kind: UnitKind, context: tuple[int, ...]) -> None:
    headings: list[tuple[int, int]] = []  # (level, unit index) of the open sections, outermost first
    for block in _blocks(text, start, end):
        section = (*context, *(index for _, index in headings[-1:]))
        if block.kind == "heading":
            while headings and headings[-1][0] >= block.level:
                headings.pop()
            own = units.add(block.start, block.end, (*context, *(index for _, index in headings[-1:])))
            if own is not None:
                headings.append((block.level, own))
        elif block.kind == "fence":
            if kind == "paragraph" or len(block.lines) < 2:
                units.add(block.start, block.end, section)
                continue
            opener = units.add(*block.lines[0], section)
            inner = [index for line in block.lines[1:-1] if (index := units.add(*line, section)) is not None]
            closer = units.add(*block.lines[-1], section)
            units.anchor(inner, [fence for fence in (opener, closer) if fence is not None])
        elif block.kind == "table":
            head = [row for row in block.lines[:2] if _TABLE_RULE.match(text[row[0] : row[1]])]
            header_rows = block.lines[:2] if head and len(block.lines) > 2 else []
            anchors = [index for row in header_rows if (index := units.add(*row, section)) is not None]
            for row in block.lines[len(header_rows):]:
                units.add(*row, (*section, *anchors))
        elif kind == "paragraph":
            units.add(block.start, block.end, section)
        else:
            for sentence in _sentences(text, block.start, block.end):
                units.add(*sentence, section)


def _speaker_turns(text: str) -> list[tuple[int, int, int]] | None:
    """``(turn start, tag end, turn end)`` of each speaker turn when ``text`` is a chat transcript, else ``None``.

    A transcript starts with a speaker line (``User: ...``, ``**Alice:** ...``) and has at least two turns by at
    least two speakers.
    """
    starts = []
    for line_start, line_end in _split_lines(text, 0, len(text)):
        match = _SPEAKER.match(text, line_start, line_end)
        if match:
            starts.append((line_start, match.end(), match.group("name").lower()))
        elif not starts and text[line_start:line_end].strip():
            return None
    if len(starts) < 2 or len({name for _, _, name in starts}) < 2:
        return None
    ends = [start for start, _, _ in starts[1:]] + [len(text)]
    return [(start, tag_end, end) for (start, tag_end, _), end in zip(starts, ends)]


def segment(text: str, kind: UnitKind) -> list[TextUnit]:
    """The units of ``text`` to keep or drop whole, with their anchors, in order.

    * ``"line"``: every non-blank line (code, logs, JSON records); no anchors.
    * ``"sentence"``: prose sentences (CJK ``。！？；`` end one too, without a following space); list items and
      table rows are never merged; each code-block line is a unit anchored to the block's fences; headings are
      units that anchor every unit of their section.
    * ``"paragraph"``: blank-line separated paragraphs; a fenced code block is one unit even with blank lines
      inside; each list item and table row is a unit (rows anchored to the table's header and rule rows).

    In a chat transcript (see :func:`_speaker_turns`) a whole turn is one paragraph unit; at sentence level the
    speaker tag (``User:``) is a unit that anchors the turn's sentences, so a kept sentence keeps its speaker.
    Every unit is whitespace trimmed and ``text[unit.start:unit.end]`` is its text.
    """
    if kind == "line":
        return [TextUnit(start, end) for start, end in line_ranges(text)]
    units = _Units(text)
    turns = _speaker_turns(text)
    if turns is None:
        _add_blocks(units, text, 0, len(text), kind, ())
        return units.units
    for turn_start, tag_end, turn_end in turns:
        if kind == "paragraph":
            units.add(turn_start, turn_end)
            continue
        tag = units.add(turn_start, tag_end)
        _add_blocks(units, text, tag_end, turn_end, kind, () if tag is None else (tag,))
    return units.units
