"""Chunked parallel tokenization gives exactly the ids and offsets of one tokenizer call."""

from __future__ import annotations

from pathlib import Path

import pytest
from transformers import AutoTokenizer

from cprs_core.tokenizing import chunk_starts, splits_before_spaced_words, tokenize_in_chunks, tokenize_in_parts

MIXED_TEXT = (
    "Ünïcödé façade — naïve café. 東京は晴れ。Emoji 🙂👍🏽 and combining e\u0301 marks.\n\n"
    "Zero-width\u200bjoiner, tabs\tand  double  spaces. Ελληνικά και русский текст. it's 12,345.67 3rd\r\n"
    "   indented   words\n\n\nand  line\u00a0breaks "
) * 120


@pytest.fixture(scope="module")
def qwen_tokenizer(tiny_cprs_dir: Path):
    return AutoTokenizer.from_pretrained(tiny_cprs_dir)


@pytest.mark.parametrize("chunk_chars", [7, 100, 1000])
def test_chunked_tokenization_equals_one_call(qwen_tokenizer, chunk_chars: int) -> None:
    whole = qwen_tokenizer(MIXED_TEXT, add_special_tokens=False, return_offsets_mapping=True)
    chunked = tokenize_in_chunks(qwen_tokenizer.backend_tokenizer, MIXED_TEXT, chunk_chars)
    assert len(chunk_starts(MIXED_TEXT, chunk_chars)) > 10
    assert chunked.ids == whole["input_ids"]
    assert chunked.offsets == [tuple(pair) for pair in whole["offset_mapping"]]


@pytest.mark.parametrize("first_part_chars", [1, 500, 20_000])
def test_parts_concatenate_to_one_call(qwen_tokenizer, first_part_chars: int) -> None:
    whole = tokenize_in_chunks(qwen_tokenizer.backend_tokenizer, MIXED_TEXT)
    parts = list(tokenize_in_parts(qwen_tokenizer.backend_tokenizer, MIXED_TEXT, first_part_chars))
    assert len(parts) == 2 and parts[0].ids and parts[1].ids
    assert [i for part in parts for i in part.ids] == whole.ids
    assert [pair for part in parts for pair in part.offsets] == whole.offsets
    assert parts[1].offsets[0][0] >= first_part_chars


def test_a_text_shorter_than_the_first_part_is_one_part(qwen_tokenizer) -> None:
    parts = list(tokenize_in_parts(qwen_tokenizer.backend_tokenizer, MIXED_TEXT, len(MIXED_TEXT)))
    assert len(parts) == 1 and parts[0] == tokenize_in_chunks(qwen_tokenizer.backend_tokenizer, MIXED_TEXT)


def test_cuts_fall_on_a_space_between_letters() -> None:
    starts = chunk_starts(MIXED_TEXT, 50)
    assert starts[0] == 0
    for start in starts[1:]:
        assert MIXED_TEXT[start] == " " and MIXED_TEXT[start - 1].isalpha() and MIXED_TEXT[start + 1].isalpha()
    assert chunk_starts("short", 50) == [0]


def test_only_tokenizers_that_split_before_words_are_chunked(qwen_tokenizer) -> None:
    from tokenizers import Tokenizer, models, pre_tokenizers

    assert splits_before_spaced_words(qwen_tokenizer.backend_tokenizer)
    unsplit = Tokenizer(models.WordLevel({"[UNK]": 0}, unk_token="[UNK]"))
    assert not splits_before_spaced_words(unsplit)
    unsplit.pre_tokenizer = pre_tokenizers.Metaspace(split=False)
    assert not splits_before_spaced_words(unsplit)
