"""The shipped ``cprs-mini`` critic, loaded offline: protocol, determinism, offsets and real behaviour."""

from __future__ import annotations

import argparse
import collections
import inspect
import json
import logging
import random
import re
import string
import textwrap
import warnings
from pathlib import Path

import numpy as np
import pytest

from cprs_core import CompressionRequest, CPRSCompressor, EmptyContextError, QueryTruncatedWarning, TokenCritic
from cprs_core.mini import MiniCritic, is_mini_checkpoint, load_mini_critic
from cprs_core.mini.checkpoint import SHIPPED_DIR
from cprs_core.mini.inputs import MAX_PREFIX_TOKENS
from cprs_core.mini.similarity import questions_of

from .window_batches import score_one_window_per_batch

NEEDLE = "One of the special magic numbers for bright-lantern is: 4821937."
DISTRACTOR = "One of the special magic numbers for quiet-harbor is: 1234567."
NEEDLE_QUERY = "What is the special magic number for bright-lantern mentioned in the provided text?"


@pytest.fixture(scope="module")
def critic() -> MiniCritic:
    return load_mini_critic()


@pytest.fixture(scope="module")
def prose() -> str:
    """A few thousand tokens of real English prose that ships with Python: standard-library module docs."""
    modules = (argparse, collections, json, re, logging, string, inspect, textwrap)
    return "\n\n".join(inspect.getdoc(module) or "" for module in modules)


def plant(prose: str, sentences: list[str], seed: int = 0) -> str:
    paragraphs = prose.split("\n\n")
    rng = random.Random(seed)
    for sentence in sentences:
        paragraphs.insert(rng.randrange(len(paragraphs) + 1), sentence)
    return "\n\n".join(paragraphs)


def test_shipped_weights_are_a_small_mini_checkpoint() -> None:
    assert is_mini_checkpoint(SHIPPED_DIR)
    assert sum(path.stat().st_size for path in SHIPPED_DIR.iterdir()) < 10 * 2**20
    config = json.loads((SHIPPED_DIR / "config.json").read_text())
    assert config["cprs_critic"] == "mini" and config["labels"] == ["B", "I", "O", "E"]


def test_is_mini_checkpoint_rejects_other_directories(tmp_path: Path) -> None:
    assert not is_mini_checkpoint(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "qwen2"}))
    assert not is_mini_checkpoint(tmp_path)
    (tmp_path / "config.json").write_text("{not json")
    assert not is_mini_checkpoint(tmp_path)


def test_protocol_conformance(critic: MiniCritic) -> None:
    assert isinstance(critic, TokenCritic)
    assert critic.name == "cprs-mini"
    assert (critic.max_positions, critic.default_window_size, critic.suffix_tokens) == (512, 512, 1)


def test_prefix_is_short_cls_tags_query_sep(critic: MiniCritic) -> None:
    prefix = critic.encode_prefix("needle-like rule\n- tag the needles with 'needle'", "where is it?")
    assert prefix[0] == critic.tokenizer.token_to_id("[CLS]")
    assert prefix[-1] == critic.tokenizer.token_to_id("[SEP]")
    assert critic.tokenizer.decode(prefix[1:-1]) == "needle : where is it?"
    with pytest.warns(QueryTruncatedWarning, match="reads only the first 62 tokens .* this query makes 502"):
        long_prefix = critic.encode_prefix("plain instruction", "why " * 500)
    assert len(long_prefix) == MAX_PREFIX_TOKENS and long_prefix[-1] == prefix[-1]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a query that fits is read whole, without a warning
        assert len(critic.encode_prefix("plain instruction", "why " * 60)) == MAX_PREFIX_TOKENS


def test_offsets_round_trip(critic: MiniCritic) -> None:
    text = "Hello, World!  The café's naïve déjà-vu costs €5.\n\nUUID 3f2a-9B: done."
    tokens = critic.tokenize_context(text)
    assert len(tokens.ids) == len(tokens.offsets) == critic.count_tokens(text)
    assert all(0 <= start < end <= len(text) for start, end in tokens.offsets)
    assert [start for start, _ in tokens.offsets] == sorted(start for start, _ in tokens.offsets)
    ascii_text = "The Quick brown-fox jumped over 12345 lazy dogs; unbelievably."
    ascii_tokens = critic.tokenize_context(ascii_text)
    for token_id, (start, end) in zip(ascii_tokens.ids, ascii_tokens.offsets):
        assert critic.tokenizer.id_to_token(token_id).removeprefix("##") == ascii_text[start:end].lower()


def test_a_word_longer_than_wordpiece_reads_counts_by_its_length_not_as_one_token(
    critic: MiniCritic, prose: str
) -> None:
    from tokenizers import Tokenizer

    from cprs_core.mini.backbone import backbone_dir

    stored = Tokenizer.from_file(str(backbone_dir() / "tokenizer.json"))  # as shipped: one [UNK] per long word
    stored.no_truncation()
    stored.no_padding()
    ordinary = prose + " " + "x" * 100 + " naïve déjà-vu"
    assert critic.tokenize_context(ordinary).ids == stored.encode(ordinary, add_special_tokens=False).ids
    blob = "A" * 20_000
    assert len(stored.encode(blob, add_special_tokens=False).ids) == 1
    assert critic.count_tokens(blob) >= 20_000 // 100 * 10
    tokens = critic.tokenize_context(f"The payload is {blob}.")
    assert all(0 <= start < end for start, end in tokens.offsets) and tokens.offsets[-1][1] == len(blob) + 16
    compressor = CPRSCompressor(critic)
    context = f"The ferry leaves at nine. {prose[:3000]} The payload is {blob}. {prose[3000:6000]}"
    result = compressor.compress(context, "What is the payload?", target_tokens=100)
    assert result.compressed_tokens <= 100 and len(result.text) < 2_000  # a 100-token budget, not 20,000 characters


def test_scores_are_probabilities_deterministic_and_batch_independent(critic: MiniCritic, prose: str) -> None:
    ids = critic.tokenize_context(plant(prose, [NEEDLE])).ids
    prefix = critic.encode_prefix("needle", NEEDLE_QUERY)
    windows = [ids[0:400], ids[400:800], ids[800:1000], ids[1000:1400], ids[1400:1401]]
    first = critic.score_windows(prefix, windows, ["needle"])
    again = critic.score_windows(prefix, windows, ["needle"])
    for scores, window, repeat in zip(first, windows, again):
        assert scores.bioe.shape == (len(window), 4) and scores.bioe.dtype == np.float32
        assert scores.tag_index is None
        assert scores.relevance is not None and scores.relevance.shape == (len(window),)
        np.testing.assert_allclose(scores.bioe.sum(axis=1), 1.0, rtol=1e-5)
        np.testing.assert_array_equal(scores.bioe, repeat.bioe)
    one_by_one = score_one_window_per_batch(critic, prefix, windows, ["needle"])
    for batched, single in zip(first, one_by_one):
        np.testing.assert_allclose(batched.bioe, single.bioe, atol=1e-5)  # int8: bit-equal, see test_mini_precision


def test_keeps_the_needle_and_drops_the_haystack(critic: MiniCritic, prose: str) -> None:
    context = plant(prose, [NEEDLE, DISTRACTOR])
    result = CPRSCompressor(critic).compress(context, query=NEEDLE_QUERY, instruction="needle", granularity="token")
    assert NEEDLE in result.text
    assert DISTRACTOR not in result.text
    assert result.ratio > 20
    sentences = CPRSCompressor(critic).compress(context, query=NEEDLE_QUERY, instruction="needle")
    # whole sentences, plus those the relevance head rates >= 0.007 (tuned for recall on real questions: the
    # look-alike needle sits near that line, so only the needle itself is asserted), and the needle ranks first
    assert NEEDLE in sentences.text and sentences.ratio > 5
    tight = CPRSCompressor(critic).compress(
        context, query=NEEDLE_QUERY, instruction="needle", target_tokens=critic.count_tokens(NEEDLE)
    )
    assert tight.text == NEEDLE


def test_keeps_the_supporting_fact_across_small_windows(critic: MiniCritic, prose: str) -> None:
    fact = "Marla Quint's favourite colour is teal."
    context = plant(prose, [fact, "Oskar Velde's favourite colour is amber."], seed=3)
    compressor = CPRSCompressor(critic, window_size=128)
    query = "What is Marla Quint's favourite colour?"
    result = compressor.compress(context, query=query, instruction="fact", granularity="token")
    assert fact in result.text and "Oskar" not in result.text
    assert result.windows > 10 and result.ratio > 20
    # By sentence with no budget, the recall-tuned threshold also keeps the look-alike fact (documented);
    # the best sentence under a budget is the asked one.
    assert fact in compressor.compress(context, query=query, instruction="fact").text
    assert compressor.compress(context, query=query, instruction="fact", target_tokens=12).text == fact


def test_from_pretrained_without_arguments_is_the_mini_critic() -> None:
    compressor = CPRSCompressor.from_pretrained(device="cpu")
    assert compressor.critic.name == "cprs-mini" and compressor.window_size == 512
    assert compressor.critic.max_batch_tokens == 4096
    named = CPRSCompressor.from_pretrained(SHIPPED_DIR, device="cpu", max_batch_tokens=1024)
    assert named.critic.name == str(SHIPPED_DIR) and named.critic.max_batch_tokens == 1024  # was silently dropped
    assert CPRSCompressor.from_pretrained(device="cpu", max_batch_tokens=512).critic.max_batch_tokens == 512


def test_chain_statements_are_kept(critic: MiniCritic, prose: str) -> None:
    chain = ["VAR QWERT = 55123.", "VAR ASDFG = VAR QWERT."]
    context = plant(prose, chain + ["VAR ZXCVB = 90817."], seed=5)
    query = "Find all variables that are assigned the value 55123 in the text above."
    result = CPRSCompressor(critic).compress(context, query=query, instruction="chain", granularity="token")
    assert all(statement in result.text for statement in chain)
    assert "90817" not in result.text


def test_a_real_questions_evidence_ranks_first_and_survives_the_default_rule(critic: MiniCritic, prose: str) -> None:
    evidence = "The lighthouse on Gull Island was built in 1874 by the harbour board."
    context = plant(prose, [evidence, "The harbour board also repaired the old pier in 1901."], seed=7)
    compressor = CPRSCompressor(critic)
    query = "When was the lighthouse on Gull Island built?"
    tight = compressor.compress(context, query=query, granularity="sentence", target_tokens=critic.count_tokens(evidence))
    assert tight.text == evidence
    default = compressor.compress(context, query=query, granularity="sentence")
    assert evidence in default.text and default.ratio > 15  # ~18x on this code-heavy text at the 0.007 threshold


def test_the_shipped_ranking_uses_the_tuned_similarity_and_threshold(critic: MiniCritic) -> None:
    config = json.loads((SHIPPED_DIR / "config.json").read_text())
    assert critic.similarity_weight == config["similarity_weight"] > 0
    assert critic.relevance_threshold == config["relevance_threshold"]
    assert critic.embedder.per_question_z is config["similarity_per_question_z"] is True
    assert critic.similarity_shortlist == config["similarity_shortlist"] == 6.0
    assert critic.rank_without_budget is config["rank_without_budget"] is True
    assert critic.neighbour_weight == config["neighbour_weight"] == 0.25
    similarity = critic.sentence_similarity(
        "Who built the lighthouse? When was the pier repaired?",
        ["The harbour board built the lighthouse.", "The pier was repaired in 1901.", "Sheep graze on the hills."],
    )
    assert similarity[2] < min(similarity[0], similarity[1])


def test_per_question_z_gives_each_question_its_best_sentence(critic: MiniCritic) -> None:
    query = "Who built the lighthouse on Gull Island in 1874? What colour is the ferry?"
    sentences = [
        "The lighthouse on Gull Island was built in 1874 by the harbour board.",
        "The harbour board's lighthouse on Gull Island still stands.",
        "Gull Island's lighthouse keeper retired in 1874.",
        "The ferry is painted red.",
        "Sheep graze on the hills.",
    ]
    embedder = critic.embedder
    try:
        embedder.per_question_z = False
        raw = embedder.similarity(query, sentences)
        embedder.per_question_z = True
        balanced = embedder.similarity(query, sentences)
    finally:
        embedder.per_question_z = True
    cosines = embedder.embed(sentences) @ embedder.embed([query, *questions_of(query)]).T
    np.testing.assert_allclose(raw, cosines.max(axis=1), rtol=1e-6)
    z = (cosines - cosines.mean(axis=0)) / cosines.std(axis=0)
    np.testing.assert_allclose(balanced, z.max(axis=1), rtol=1e-5)
    assert set(np.argsort(-balanced)[:2]) == {0, 3}  # each question's best sentence leads


@pytest.mark.parametrize("invisible", ["\ufeff", "\u200b", "\x01", "\xad", "\u0301", "\ufeff\u200b \n"])
def test_a_context_of_only_characters_the_tokenizer_drops_is_empty_not_a_failure(
    critic: MiniCritic, invisible: str
) -> None:
    """MiniLM's tokenizer drops a BOM, zero-width and control characters, soft hyphens and lone combining marks:
    such a context has no token, and was a ``CompressionFailedError`` ("need at least one array to concatenate")."""
    compressor = CPRSCompressor(critic)
    for granularity in ("token", "sentence"):
        with pytest.raises(EmptyContextError, match="no characters the critic reads"):
            compressor.compress(invisible, "What is it?", granularity=granularity)
    [outcome] = compressor.compress_batch([CompressionRequest(invisible, "What is it?")])
    assert isinstance(outcome, EmptyContextError)


@pytest.mark.parametrize("invisible", ["\u200b", "\x01", "\xad"])
def test_forced_characters_the_tokenizer_drops_do_not_break_a_budget(critic: MiniCritic, invisible: str) -> None:
    """A ``keep``/``keep_spans`` match holding only characters no token covers cannot be kept, so a budget does not
    have to keep it (it was a ``BudgetError`` saying the forced text does not fit in any budget)."""
    compressor = CPRSCompressor(critic)
    context = f"The code is 4471.{invisible} Nothing else is here. The sky is blue."
    at = context.index(invisible)
    for granularity in ("token", "sentence"):
        for forcing in ({"keep_spans": [(at, at + 1)]}, {"keep": [invisible]}):
            result = compressor.compress(context, "What is the code?", granularity=granularity, target_tokens=10,
                                         **forcing)
            assert result.compressed_tokens <= 10 and result.spans
    # a forced range that also holds a readable character still has to be kept whole
    result = compressor.compress(context, "What is the code?", granularity="token", target_tokens=10,
                                 keep_spans=[(at, at + 9)])
    assert any(span.start <= at + 2 and span.end >= at + 9 for span in result.spans)
