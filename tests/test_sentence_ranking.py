"""Sentence ranking from a critic's relevance logits: pooling, the similarity ensemble and the keep rule."""

from __future__ import annotations

import re
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Sequence

import numpy as np
import pytest

from cprs_core import CompressionRequest, CPRSCompressor, WindowScheduler
from cprs_core.critic import TokenizedText, WindowScores
from cprs_core.spans import SentenceScores

_WORD = re.compile(r"\S+")
OUTSIDE = np.array([0.0, 0.0, 1.0, 0.0], dtype=np.float32)
BEGIN = np.array([1.0, 0.0, 0.0, 0.0], dtype=np.float32)


class KeywordCritic:
    """A critic with known scores: every token is O but those containing ``gamma``, which are tagged B; a token's
    relevance logit is +4 when it contains ``alpha`` and -4 otherwise; a sentence's similarity to any query is 1
    when it contains ``beta``, else 0."""

    name = "keyword"
    max_positions = 64
    default_window_size = 16
    suffix_tokens = 0

    def __init__(
        self, relevance_threshold: float | None = None, similarity_weight: float | None = None,
        similarity_shortlist: float | None = None, rank_without_budget: bool = False,
        neighbour_weight: float | None = None,
    ) -> None:
        self.neighbour_weight = neighbour_weight
        self.relevance_threshold = relevance_threshold
        self.similarity_weight = similarity_weight
        self.similarity_shortlist = similarity_shortlist
        self.rank_without_budget = rank_without_budget
        self.similarity_calls: list[list[str]] = []

    def tokenize_context(self, text: str) -> TokenizedText:
        matches = list(_WORD.finditer(text))
        ids = [1 if "alpha" in m.group() else 2 if "gamma" in m.group() else 0 for m in matches]
        return TokenizedText(ids, [m.span() for m in matches])

    def encode_prefix(self, instruction: str, query: str) -> list[int]:
        return [7, 7]

    def count_tokens(self, text: str) -> int:
        return len(_WORD.findall(text))

    def score_windows(self, prefix_ids: list[int], windows: Sequence[list[int]], tags: Sequence[str]) -> list[WindowScores]:
        return [
            WindowScores(np.where(np.array(window)[:, None] == 2, BEGIN, OUTSIDE).astype(np.float32),
                         relevance=np.where(np.array(window) == 1, 4.0, -4.0).astype(np.float32))
            for window in windows
        ]

    def sentence_similarity(self, query: str, sentences: Sequence[str]) -> np.ndarray:
        self.similarity_calls.append(list(sentences))
        return np.array([1.0 if "beta" in sentence else 0.0 for sentence in sentences])


CONTEXT = (
    "alpha alpha alpha one. plain words here now. beta is the other key today. "
    "alpha two plain plain plain plain. more plain filler words."
)


def test_sentence_scores_pool_logits_per_sentence_and_combine_z_scores() -> None:
    relevance = np.array([2.0, 4.0, -1.0, -3.0, 0.0], dtype=np.float32)
    token_ends = [3, 6, 10, 14, 18]
    sentences = [(0, 6), (7, 14), (15, 18)]
    scores = SentenceScores.from_relevance(relevance, sentences, token_ends)
    np.testing.assert_allclose(scores.keep, [3.0, 3.0, -2.0, -2.0, 0.0])
    np.testing.assert_array_equal(scores.rank, scores.keep)

    combined = SentenceScores.from_relevance(relevance, sentences, token_ends, lambda idx: np.array([0.0, 1.0, 0.0]), 2.0)
    means = np.array([3.0, -2.0, 0.0])
    similarity = np.array([0.0, 1.0, 0.0])
    expected = (means - means.mean()) / means.std() + 2.0 * (similarity - similarity.mean()) / similarity.std()
    np.testing.assert_allclose(combined.rank, np.repeat(expected, [2, 2, 1]))
    np.testing.assert_array_equal(combined.keep, scores.keep)


def test_without_a_budget_sentences_at_or_above_the_threshold_are_kept() -> None:
    compressor = CPRSCompressor(KeywordCritic(relevance_threshold=0.5))
    result = compressor.compress(CONTEXT, query="which?", granularity="sentence")
    assert [span.text for span in result.spans] == ["alpha alpha alpha one."]
    loose = CPRSCompressor(KeywordCritic(relevance_threshold=0.05))  # logit -2.9: the 1-in-6 sentence (mean -2.7) too
    assert [span.text for span in loose.compress(CONTEXT, query="which?", granularity="sentence").spans] == [
        "alpha alpha alpha one.", "alpha two plain plain plain plain."
    ]
    assert CPRSCompressor(KeywordCritic()).compress(CONTEXT, query="which?", granularity="sentence").spans == []


def test_budgets_rank_by_relevance_alone_or_with_the_weighted_similarity() -> None:
    critic = KeywordCritic()
    own = CPRSCompressor(critic).compress(CONTEXT, query="which?", granularity="sentence", target_tokens=4)
    assert own.text == "alpha alpha alpha one." and critic.similarity_calls == []
    critic.similarity_weight = 3.0
    ensemble = CPRSCompressor(critic).compress(CONTEXT, query="which?", granularity="sentence", target_tokens=7)
    assert ensemble.text == "beta is the other key today."
    assert len(critic.similarity_calls[-1]) == 5  # one similarity per sentence, computed once


def test_a_shortlist_compares_only_the_critics_best_sentences_and_ranks_the_rest_below() -> None:
    relevance = np.array([2.0, 4.0, -1.0, -3.0, 0.0, 1.0], dtype=np.float32)
    token_ends = [3, 6, 10, 14, 18, 22]
    sentences = [(0, 6), (7, 14), (15, 18), (19, 22)]  # means 3, -2, 0, 1 over 2, 2, 1, 1 tokens
    asked: list[list[int]] = []

    def similarity(indices: list[int]) -> np.ndarray:
        asked.append(indices)
        return np.array([{0: 0.0, 1: 5.0, 2: 0.0, 3: 1.0}[i] for i in indices])

    full = SentenceScores.from_relevance(relevance, sentences, token_ends, similarity, 2.0)
    assert asked.pop() == [0, 1, 2, 3]
    everything = SentenceScores.from_relevance(relevance, sentences, token_ends, similarity, 2.0, shortlist_tokens=6)
    assert asked.pop() == [0, 1, 2, 3]
    np.testing.assert_allclose(everything.rank, full.rank)

    short = SentenceScores.from_relevance(relevance, sentences, token_ends, similarity, 2.0, shortlist_tokens=3)
    assert asked.pop() == [0, 3]  # the two best mean logits (3 and 1) hold 3 tokens
    compared = (np.array([3.0, 1.0]) - 2.0) / 1.0 + 2.0 * (np.array([0.0, 1.0]) - 0.5) / 0.5
    assert short.rank[0] == compared[0] and short.rank[5] == compared[1]
    assert max(short.rank[2], short.rank[4]) < compared.min()  # sentence 1's similarity of 5 was never asked for
    assert short.rank[4] > short.rank[2]  # the others keep the critic's order (mean 0 above mean -2)
    np.testing.assert_array_equal(short.keep, full.keep)


def test_the_engine_shortlists_a_multiple_of_the_budget() -> None:
    critic = KeywordCritic(similarity_weight=3.0, similarity_shortlist=1.0)
    result = CPRSCompressor(critic).compress(CONTEXT, query="which?", granularity="sentence", target_tokens=4)
    assert critic.similarity_calls == [["alpha alpha alpha one."]]  # 4 tokens: the critic's best sentence fills them
    assert result.text == "alpha alpha alpha one."
    critic.similarity_shortlist = 2.0  # 14 tokens: the alpha sentences and the first of the three tied at -4
    result = CPRSCompressor(critic).compress(CONTEXT, query="which?", granularity="sentence", target_tokens=7)
    assert len(critic.similarity_calls[-1]) == 3 and "beta" not in result.text
    critic.similarity_shortlist = 3.0  # 21 tokens: every sentence, so the similarity finds the beta sentence
    result = CPRSCompressor(critic).compress(CONTEXT, query="which?", granularity="sentence", target_tokens=7)
    assert len(critic.similarity_calls[-1]) == 5 and result.text == "beta is the other key today."


def test_a_neighbour_weight_adds_the_best_neighbours_score_within_its_paragraph() -> None:
    relevance = np.array([3.0, -1.0, 0.0, 2.0, 1.0], dtype=np.float32)  # one token per sentence
    token_ends = [1, 3, 5, 7, 9]
    sentences = [(0, 1), (2, 3), (4, 5), (6, 7), (8, 9)]
    plain = SentenceScores.from_relevance(relevance, sentences, token_ends, lambda idx: np.zeros(len(idx)), 1.0)
    z = plain.rank.copy()  # the similarity is constant, so these are the z-scores of the means
    starts = [True, False, True, False, False]  # paragraphs: sentences 0-1 and 2-4
    helped = SentenceScores.from_relevance(
        relevance, sentences, token_ends, lambda idx: np.zeros(len(idx)), 1.0,
        neighbour_weight=0.5, paragraph_starts=starts,
    )
    best = [z[1], z[0], z[3], max(z[2], z[4]), z[3]]  # sentence 2's neighbour in the paragraph before does not count
    np.testing.assert_allclose(helped.rank, z + 0.5 * np.array(best))
    alone = SentenceScores.from_relevance(
        relevance, sentences, token_ends, lambda idx: np.zeros(len(idx)), 1.0,
        neighbour_weight=0.5, paragraph_starts=[True] * 5,
    )
    np.testing.assert_allclose(alone.rank, z)  # no sentence has a neighbour in its paragraph: 0 is added
    np.testing.assert_array_equal(helped.keep, plain.keep)  # the no-budget threshold reads the critic alone


def test_a_sentence_without_tokens_still_ends_its_paragraph_for_the_neighbours() -> None:
    relevance = np.array([3.0, 0.0, -1.0], dtype=np.float32)
    token_ends = [1, 3, 5]
    sentences = [(0, 1), (1, 1), (2, 3), (4, 5)]  # the empty second sentence holds no token but opens a paragraph
    helped = SentenceScores.from_relevance(
        relevance, sentences, token_ends, lambda idx: np.zeros(len(idx)), 1.0,
        neighbour_weight=1.0, paragraph_starts=[True, True, False, False],
    )
    z = (relevance - relevance.mean()) / relevance.std()
    np.testing.assert_allclose(helped.rank, [z[0], z[1] + z[2], z[2] + z[1]])


def test_with_a_neighbour_weight_a_sentence_beside_the_evidence_outranks_an_isolated_one() -> None:
    context = (
        "beta stands alone here.\n\nplain words fill this paragraph first. alpha alpha alpha marks it. "
        "beta is the other key today."
    )
    critic = KeywordCritic(similarity_weight=1.0)
    alone = CPRSCompressor(critic).compress(context, query="which?", granularity="sentence", target_tokens=11)
    assert alone.text.split("\n")[0] == "beta stands alone here."  # a tie with the later beta: position decides
    critic.neighbour_weight = 0.5
    helped = CPRSCompressor(critic).compress(context, query="which?", granularity="sentence", target_tokens=11)
    assert [span.text for span in helped.spans] == ["alpha alpha alpha marks it. beta is the other key today."]
    lines = context.replace("\n\n", "\n").replace(". ", ".\n")  # records or log lines: neighbours need not relate
    by_line = CPRSCompressor(critic).compress(lines, query="which?", granularity="line", target_tokens=11)
    assert [span.text for span in by_line.spans] == ["beta stands alone here.", "alpha alpha alpha marks it."]


def test_ranking_without_a_budget_keeps_the_thresholds_size_but_the_rankings_choice() -> None:
    # threshold 0.05 (logit -2.9) keeps "alpha alpha alpha one." (mean 2) and the 6-token "alpha two ..." (-2.7)
    by_threshold = CPRSCompressor(KeywordCritic(relevance_threshold=0.05, similarity_weight=3.0))
    before = by_threshold.compress(CONTEXT, query="which?", granularity="sentence")
    assert [span.text for span in before.spans] == ["alpha alpha alpha one.", "alpha two plain plain plain plain."]
    critic = KeywordCritic(relevance_threshold=0.05, similarity_weight=3.0, rank_without_budget=True)
    ranked = CPRSCompressor(critic).compress(CONTEXT, query="which?", granularity="sentence")
    assert ranked.compressed_tokens == before.compressed_tokens == 10
    assert [span.text for span in ranked.spans] == ["alpha alpha alpha one.", "beta is the other key today."]
    critic.relevance_threshold = 0.95  # nothing reaches it: nothing is kept, and nothing is ranked
    assert CPRSCompressor(critic).compress(CONTEXT, query="which?", granularity="sentence").spans == []
    assert len(critic.similarity_calls) == 1


def test_ranking_without_a_budget_keeps_tagged_spans_first() -> None:
    context = CONTEXT + " gamma marks this plain sentence."
    critic = KeywordCritic(relevance_threshold=0.05, similarity_weight=3.0, rank_without_budget=True)
    kept = [span.text for span in CPRSCompressor(critic).compress(context, query="which?", granularity="sentence").spans]
    assert "gamma marks this plain sentence." in kept and "beta is the other key today." in kept
    assert sum(len(text.split()) for text in kept) == 15  # 10 tokens over the threshold + the 5-token tagged one


def test_a_paragraph_ranks_by_its_best_sentence_not_its_average() -> None:
    focused = "alpha alpha alpha alpha. " + "plain filler words. " * 6
    diffuse = " ".join(["alpha plain plain plain."] * 4)
    context = focused.strip() + "\n\n" + diffuse
    result = CPRSCompressor(KeywordCritic()).compress(
        context, query="which?", granularity="paragraph", target_tokens=len(focused.split())
    )
    assert result.text == focused.strip()


def test_critic_relevance_must_match_the_window_length() -> None:
    with pytest.raises(ValueError, match="relevance"):
        WindowScores(np.tile(OUTSIDE, (3, 1)), relevance=np.zeros(2, dtype=np.float32))


class BlockingSimilarityCritic(KeywordCritic):
    """Its similarity pass (run only under a budget) waits until ``release`` is set."""

    def __init__(self) -> None:
        super().__init__(similarity_weight=3.0)
        self.release = threading.Event()
        self.entered = threading.Event()

    def sentence_similarity(self, query: str, sentences: Sequence[str]) -> np.ndarray:
        self.entered.set()
        assert self.release.wait(timeout=30), "the similarity pass was never released"
        return super().sentence_similarity(query, sentences)


def test_a_slow_assembly_does_not_hold_up_other_requests_windows() -> None:
    critic = BlockingSimilarityCritic()
    compressor = CPRSCompressor(critic)
    with ThreadPoolExecutor(max_workers=1) as assembler:
        scheduler = WindowScheduler(compressor.engine, step_windows=1, assembler=assembler)
        done: dict[str, object] = {}
        slow = CompressionRequest(CONTEXT, "which?", granularity="sentence", target_tokens=7)
        quick = CompressionRequest(CONTEXT * 3, "which?", granularity="sentence")
        for name, item in (("slow", slow), ("quick", quick)):
            scheduler.add(scheduler.ticket(item, lambda outcome, name=name: done.__setitem__(name, outcome)))
        while scheduler.active:  # inline assembly would block here until the 30 s timeout fails the test
            scheduler.step()
        assert critic.entered.wait(timeout=30) and "slow" not in done
        critic.release.set()
    assert [span.text for span in done["quick"].spans] == []  # no threshold: nothing tagged, nothing kept
    assert done["slow"].text == "beta is the other key today."


def test_a_budget_smaller_than_a_run_on_paragraph_keeps_its_relevant_piece() -> None:
    filler = " ".join(["plain words without any stop"] * 40)
    text = f"{filler} then alpha alpha alpha alpha marks the place {filler}"  # one ~2,400-character run-on sentence
    result = CPRSCompressor(KeywordCritic()).compress(text, query="which?", granularity="sentence", target_tokens=80)
    assert len(result.spans) == 1 and "alpha alpha" in result.spans[0].text  # the piece holding most of them
    assert 0 < result.compressed_tokens <= 80


def test_a_kept_span_scores_its_best_sentences_relevance_at_sentence_and_paragraph_granularity() -> None:
    compressor = CPRSCompressor(KeywordCritic())
    logistic = lambda logit: 1 / (1 + np.exp(-logit))  # noqa: E731
    # the two sentences of highest mean logit: "alpha alpha alpha one." (+2) and "alpha two plain ..." (-16/6)
    result = compressor.compress(CONTEXT, query="which?", granularity="sentence", target_tokens=10)
    assert [span.text for span in result.spans] == ["alpha alpha alpha one.", "alpha two plain plain plain plain."]
    assert [span.score for span in result.spans] == pytest.approx([logistic(2.0), logistic(-16 / 6)])
    whole = compressor.compress(CONTEXT, query="which?", granularity="paragraph", target_tokens=40)
    assert [span.score for span in whole.spans] == pytest.approx([logistic(2.0)])  # one paragraph: its best sentence
    # token spans are the critic's tagged spans, scored by their tokens' mean keep probability (1 - P(outside))
    tagged = compressor.compress("plain gamma words. alpha here.", query="which?", granularity="token")
    assert [(span.text, span.score) for span in tagged.spans] == [("gamma", pytest.approx(1.0))]


def test_the_best_sentence_relevance_is_reported_whatever_the_granularity_or_budget() -> None:
    compressor = CPRSCompressor(KeywordCritic(relevance_threshold=0.5))
    best = 1 / (1 + np.exp(-2.0))  # "alpha alpha alpha one.": logits +4 +4 +4 -4, mean 2
    for settings in ({}, {"granularity": "token"}, {"granularity": "paragraph"}, {"target_ratio": 0.5}):
        result = compressor.compress(CONTEXT, query="which?", **{"granularity": "sentence", **settings})
        assert result.metadata["best_relevance"] == pytest.approx(best)
    nothing = compressor.compress("plain words here. more filler now.", query="which?")
    assert nothing.spans == [] and nothing.metadata["best_relevance"] == pytest.approx(1 / (1 + np.exp(4.0)))

    class TagsOnly(KeywordCritic):  # a critic without a relevance head (as the 7B) reports none
        def score_windows(self, prefix_ids, windows, tags):  # type: ignore[no-untyped-def]
            return [WindowScores(score.bioe) for score in super().score_windows(prefix_ids, windows, tags)]

    assert "best_relevance" not in CPRSCompressor(TagsOnly()).compress(CONTEXT, query="which?").metadata
