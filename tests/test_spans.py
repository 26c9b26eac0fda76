"""Upstream's BIOE decoding rules, sentence/paragraph boundaries and budget selection."""

from __future__ import annotations

import numpy as np
import pytest

from cprs_core import BudgetError
from cprs_core.spans import Unit, decode_spans, fill_short_gaps, merge_adjacent, select_by_budget
from cprs_core.text_units import (
    MAX_SENTENCE_CHARS, SENTENCE_PIECE_CHARS, paragraph_ranges, segment, sentence_ranges,
)

LABEL_IDS = {"B": 0, "I": 1, "O": 2, "E": 3}


def labels(pattern: str) -> np.ndarray:
    return np.array([LABEL_IDS[c] for c in pattern])


def pattern(values: np.ndarray) -> str:
    return "".join("BIOE"[v] for v in values)


# Expected outputs worked out by hand from upstream's tag correction (run_api.py's correct_tag_pred): a forward
# walk from each B fills O runs that end at a tagged token fewer than 20 positions after the previous one, and stops
# after reaching a B or E; its backward pass never runs (list.rindex raises, a bare except breaks out).
@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("OBOOIOOEO", "OBIIIIIEO"),  # short gaps between B ... E are filled
        ("B" + "O" * 18 + "E", "B" + "I" * 18 + "E"),  # 18 O: the E is 19 positions on, under 20: filled
        ("B" + "O" * 19 + "E", "B" + "O" * 19 + "E"),  # 19 O: 20 positions on: left alone
        ("OOIOOE", "OOIOOE"),  # no B: nothing is filled (the backward walk from E does not run upstream)
        ("OOOOEOO", "OOOOEOO"),
        ("IOOE", "IOOE"),
        ("BOOBOOE", "BIIBIIE"),  # each walk fills up to the next B or E and stops there
        ("BOOEOOI", "BIIEOOI"),  # stopping at E: the O run after it stays
        ("BOOIO" + "O" * 20 + "IOE", "BIIIO" + "O" * 20 + "IOE"),  # a long gap stops the walk; "IOE" stays
        ("BOOO", "BOOO"),  # a run of O reaching the end is never filled
    ],
)
def test_fill_short_gaps_is_upstreams_forward_fill(given: str, expected: str) -> None:
    assert pattern(fill_short_gaps(labels(given))) == expected


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("OOIOOE", "OOIIIE"),  # walking back from E fills the gap before it
        ("IOOE", "IIIE"),
        ("BOOIO" + "O" * 20 + "IOE", "BIIIO" + "O" * 20 + "IIE"),
        ("OOOOEOO", "OOOOEOO"),  # nothing tagged before the E: nothing to fill
    ],
)
def test_fill_short_gaps_backward_option(given: str, expected: str) -> None:
    assert pattern(fill_short_gaps(labels(given), backward=True)) == expected


@pytest.mark.parametrize(
    ("given", "min_tokens", "expected"),
    [
        ("OBIIEOO", 1, [(1, 5)]),
        ("BIBI", 1, [(0, 2), (2, 4)]),  # a B starts a new span
        ("OIIOEO", 1, [(1, 3), (4, 5)]),  # any non-O starts a span
        ("OBIOBO", 2, [(1, 3)]),  # spans shorter than min_span_tokens are dropped
        ("OOOO", 1, []),
    ],
)
def test_decode_spans(given: str, min_tokens: int, expected: list[tuple[int, int]]) -> None:
    assert decode_spans(labels(given), min_tokens) == expected


def _spans_by_reading(values: np.ndarray, min_tokens: int) -> list[tuple[int, int]]:
    """The rule read literally, token by token: the oracle for the vectorised decoder."""
    spans, index = [], 0
    while index < len(values):
        if values[index] == LABEL_IDS["O"]:
            index += 1
            continue
        end = index + 1
        while end < len(values) and values[end] not in (LABEL_IDS["O"], LABEL_IDS["B"]):
            end += 1
        if end - index >= min_tokens:
            spans.append((index, end))
        index = end
    return spans


@pytest.mark.parametrize("seed", range(5))
def test_decode_spans_matches_the_rule_on_random_labels(seed: int) -> None:
    rng = np.random.default_rng(seed)
    values = rng.choice(4, size=2000, p=[0.1, 0.2, 0.55, 0.15])
    for min_tokens in (1, 3):
        assert decode_spans(values, min_tokens) == _spans_by_reading(values, min_tokens)


def test_sentence_and_paragraph_ranges_index_the_text() -> None:
    text = "First one. Second? Third!\n\n  Para two, sentence “quoted.” 你好。再见！\nLast line"
    sentences = [text[s:e] for s, e in sentence_ranges(text)]
    assert sentences == ["First one.", "Second?", "Third!", "Para two, sentence “quoted.”", "你好。", "再见！", "Last line"]
    paragraphs = [text[s:e] for s, e in paragraph_ranges(text)]
    assert paragraphs == ["First one. Second? Third!", "Para two, sentence “quoted.” 你好。再见！\nLast line"]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Mr. Smith met Dr. Jones at 6 p.m. in the U.S. capital. They spoke.",
         ["Mr. Smith met Dr. Jones at 6 p.m. in the U.S. capital.", "They spoke."]),
        ("C. J. Anderson ran for No. 1 on Jan. 5 this year. Apple Inc. said so.",
         ["C. J. Anderson ran for No. 1 on Jan. 5 this year.", "Apple Inc. said so."]),
        ("He ranked No. 1. Shares of Apple Inc. fell. He said no. Then he left.",
         ["He ranked No. 1.", "Shares of Apple Inc. fell.", "He said no.", "Then he left."]),
        ("They say unto him, Caesar's. Yet will not I. Then he went (with A. Smith).",
         ["They say unto him, Caesar's.", "Yet will not I.", "Then he went (with A. Smith)."]),
        ("If it isn't Jane Jones. '' \n\nIt was a day. ”\n''\nDone.",
         ["If it isn't Jane Jones. ''", "It was a day. ”", "''", "Done."]),
    ],
)
def test_sentences_do_not_end_at_abbreviations_or_bare_punctuation(text: str, expected: list[str]) -> None:
    assert [text[start:end] for start, end in sentence_ranges(text)] == expected
    assert [text[unit.start : unit.end] for unit in segment(text, "sentence")] == expected


def test_a_sentence_longer_than_the_limit_is_cut_into_pieces_at_clause_breaks() -> None:
    clause = "the lid leaks a little when you fill it high, "
    text = "Short one. " + clause * 30 + "and that is all. Next sentence."
    pieces = [text[start:end] for start, end in sentence_ranges(text)]
    assert pieces[0] == "Short one." and pieces[-1] == "Next sentence."
    middle = pieces[1:-1]
    assert len(middle) > 1 and all(len(piece) <= SENTENCE_PIECE_CHARS for piece in middle)
    assert all(len(piece) >= SENTENCE_PIECE_CHARS // 2 for piece in middle)
    assert all(piece.endswith(",") for piece in middle[:-1])  # cut after a clause, not inside one
    assert " ".join(middle).split() == (clause * 30 + "and that is all.").split()  # nothing lost or repeated
    assert [text[unit.start : unit.end] for unit in segment(text, "sentence")] == pieces


def test_run_on_text_without_commas_is_cut_at_spaces_and_text_within_the_limit_is_not_cut() -> None:
    run_on = " ".join(f"word{i}" for i in range(200))  # ~1,400 characters, no punctuation at all
    pieces = [run_on[start:end] for start, end in sentence_ranges(run_on)]
    assert len(pieces) > 1 and all(len(piece) <= SENTENCE_PIECE_CHARS for piece in pieces)
    assert " ".join(pieces) == run_on
    no_spaces = "x" * (MAX_SENTENCE_CHARS + 1)
    assert all(end - start <= SENTENCE_PIECE_CHARS for start, end in sentence_ranges(no_spaces))
    long_but_within = "word " * (MAX_SENTENCE_CHARS // 5 - 1) + "end."
    assert len(long_but_within) <= MAX_SENTENCE_CHARS
    assert sentence_ranges(long_but_within) == [(0, len(long_but_within))]


def _units(scores_and_sizes: list[tuple[float, int]]) -> list[Unit]:
    units, token = [], 0
    for index, (score, size) in enumerate(scores_and_sizes):
        units.append(Unit(index, token, token + size, token, token + size, score))
        token += size
    return units


def test_budget_keeps_best_units_that_fit_in_order() -> None:
    units = _units([(0.1, 5), (0.9, 5), (0.8, 20), (0.7, 3), (0.95, 2)])
    chosen = select_by_budget(units, 10, "sentence")
    assert [unit.index for unit in chosen] == [1, 3, 4]  # 0.95 (2) + 0.9 (5) + 0.7 (3); 0.8 (20) does not fit
    assert sum(unit.tokens for unit in chosen) <= 10
    assert [[u.index for u in group] for group in merge_adjacent(chosen)] == [[1], [3, 4]]


def test_budget_that_no_unit_fits_is_an_error() -> None:
    with pytest.raises(BudgetError, match="smallest has 5"):
        select_by_budget(_units([(0.5, 5), (0.6, 8)]), 4, "sentence")


def test_a_budget_no_unit_fits_can_keep_the_best_unit_alone() -> None:
    units = _units([(0.5, 5), (0.6, 8), (0.2, 6)])
    assert [unit.index for unit in select_by_budget(units, 4, "sentence", best_if_none_fits=True)] == [1]
    anchored = select_by_budget(units, 4, "sentence", [[], [2], []], best_if_none_fits=True)
    assert [unit.index for unit in anchored] == [1, 2]  # the best unit comes with its anchors
    fitting = select_by_budget(units, 11, "sentence", best_if_none_fits=True)
    assert fitting == select_by_budget(units, 11, "sentence")  # something fits: the plain greedy choice
