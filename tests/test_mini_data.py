"""The ``cprs-mini`` training data: planted sentences, their BIOE labels and the training windows."""

from __future__ import annotations

import random
import re

import numpy as np
import pytest

from cprs_core.mini.backbone import backbone_dir, load_tokenizer
from cprs_core.mini.data import VARIANTS, build_document, make_task
from cprs_core.mini.examples import IGNORE, token_labels, window_example
from cprs_core.mini.haystack import Haystack
from cprs_core.spans import decode_spans

PROSE = (
    "It was a bright cold day in April, and the clocks were striking thirteen.",
    "The harbour lay quiet under a low grey sky while the gulls argued over scraps.",
    "Nobody in the village remembered when the old mill had last turned its wheel.",
    "She folded the letter twice, slipped it into her coat, and walked to the station.",
    "Across the valley the orchards were heavy with pears that no one would pick.",
    "He counted the coins again, though he knew exactly how many there were.",
)


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer(backbone_dir())


@pytest.fixture(scope="module")
def haystack(tokenizer) -> Haystack:
    names = [chr(97 + i // 26) + chr(97 + i % 26) for i in range(240)]
    verses = [f"{PROSE[i % len(PROSE)]} Then {names[i]}ward met {names[-1 - i]}wick." for i in range(240)]
    counts = np.array([len(tokenizer.encode(verse, add_special_tokens=False).ids) for verse in verses])
    return Haystack(verses, np.arange(len(verses)) % 12 == 0, counts)


ALL_TASKS = [(family, variant) for family, variants in VARIANTS.items() for variant in variants]


@pytest.mark.parametrize(("family", "variant"), ALL_TASKS)
def test_relevant_ranges_are_the_gold_sentences(haystack: Haystack, family: str, variant: str) -> None:
    for seed in range(5):
        rng = random.Random(seed)
        task = make_task(rng, family, variant, haystack, paraphrase=True)
        document = build_document(rng, task, haystack, 400)
        assert sorted(document.text[start:end] for start, end in document.relevant) == sorted(task.gold)
        assert all(insert.text in document.text for insert in task.inserts)
        if family != "chain" and variant != "absent":
            assert task.gold


@pytest.mark.parametrize(("family", "variant"), ALL_TASKS)
def test_labels_decode_back_to_the_gold_sentences(tokenizer, haystack: Haystack, family: str, variant: str) -> None:
    rng = random.Random(11)
    task = make_task(rng, family, variant, haystack, paraphrase=False)
    document = build_document(rng, task, haystack, 400)
    encoding = tokenizer.encode(document.text, add_special_tokens=False)
    labels = token_labels(encoding.offsets, document.relevant)
    spans = decode_spans(labels)
    decoded = [document.text[encoding.offsets[start][0] : encoding.offsets[end - 1][1]] for start, end in spans]
    assert decoded == [document.text[start:end] for start, end in document.relevant]


def test_token_labels_mark_begin_inside_end() -> None:
    offsets = [(0, 3), (4, 7), (8, 11), (12, 15), (16, 19)]
    assert token_labels(offsets, [(4, 15)]).tolist() == [2, 0, 1, 3, 2]
    assert token_labels(offsets, [(16, 19)]).tolist() == [2, 2, 2, 2, 0]
    assert token_labels(offsets, []).tolist() == [2] * 5


def test_needle_variants_plant_what_the_query_asks(haystack: Haystack) -> None:
    rng = random.Random(2)
    task = make_task(rng, "needle", "multikey", haystack, paraphrase=False)
    gold, distractors = task.gold, [i.text for i in task.inserts if not i.relevant]
    assert len(gold) == 1 and distractors
    key = gold[0].split(" for ")[1].split(" is")[0]
    assert key in task.query and not any(key in text for text in distractors)
    absent = make_task(random.Random(3), "needle", "absent", haystack, paraphrase=False)
    assert absent.gold == []


def test_chain_gold_is_the_asked_chain_and_every_link(haystack: Haystack) -> None:
    task = make_task(random.Random(4), "chain", "distractors", haystack, paraphrase=False)
    value = re.search(r"\d{5}", task.query).group()
    values = [i.text for i in task.inserts if not i.text.split("= ")[1].startswith("VAR")]
    assert [text for text in values if text in task.gold] == [text for text in values if value in text]
    assert len(values) > 1
    assert all(text in task.gold for text in (i.text for i in task.inserts) if "= VAR" in text)


def test_windows_fit_and_label_only_the_context(tokenizer, haystack: Haystack) -> None:
    rng = random.Random(5)
    for _ in range(20):
        task = make_task(rng, "fact", "single", haystack, paraphrase=True)
        document = build_document(rng, task, haystack, 600)
        example = window_example(rng, document, tokenizer, 512, focus=1.0, short=0.2)
        assert len(example.input_ids) == len(example.token_type_ids) == len(example.labels) <= 512
        first_window = example.token_type_ids.index(1)
        assert set(example.labels[:first_window]) == {IGNORE} and example.labels[-1] == IGNORE
        assert all(label != IGNORE for label in example.labels[first_window:-1])
        assert any(label != 2 for label in example.labels[first_window:-1])
