"""Real-question evaluation of ``cprs-mini``: ``python -m cprs_core.mini.eval --real --real-data DIR``.

Held-out data: the ``test`` split of :mod:`cprs_core.mini.realqa` (SQuAD v1.1 dev articles and CoQA stories
never trained on; ``--split tune`` evaluates the split the keep threshold is chosen on). Each query asks one
question, or two questions of passages from different groups; its gold passages are placed among passages of
other groups of the same source until the context holds ``--tokens`` MiniLM tokens. Half the queries come from
SQuAD (Wikipedia), half from CoQA (news, Reddit, exams, fiction, science, Wikipedia); ``--sources multirc`` or
``--sources nq`` asks MultiRC's or Natural Questions' instead (see :mod:`cprs_core.mini.realqa`).
``--squad-file FILE ...`` (instead of ``--real-data``) asks the questions of your own SQuAD-format files, each
file a source: every answerable question of it, among passages of the same file's other articles.

Every method keeps whole sentences (the engine's sentence units) under the same rule, the engine's own
:func:`~cprs_core.spans.select_by_budget`: the best-scoring sentences that fit in ``ratio x context`` tokens.

* ``cprs-mini``: ``CPRSCompressor.compress(granularity="sentence", target_ratio=r)``, i.e. what a user gets;
  with no budget, the default keep rule.
* ``embed``: cosine of mean-pooled un-adapted MiniLM embeddings (LangChain's ``EmbeddingsFilter`` idea);
  ``embed-max``: for two-question queries, each question embedded on its own and a sentence's best cosine taken;
  ``embed-zmax``: the same after z-scoring each question's cosines over the context's sentences.
* ``bm25``: BM25 (rank-bm25) of each sentence against the query.

Without a budget the baselines keep as many tokens as cprs-mini kept on that context. The metric is the share
of gold answers (SQuAD and NQ answer span, CoQA rationale, each MultiRC evidence sentence) lying whole inside
one kept span, with 95% bootstrap intervals over queries, and the paired difference cprs-mini minus each
baseline.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import random
import re
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np
import torch
from tokenizers import Tokenizer

from ..compressor import CPRSCompressor
from ..result import CompressionResult
from ..spans import Unit, merge_adjacent, select_by_budget, units_from_char_ranges, zscore
from ..text_units import lower_words, sentence_ranges
from .backbone import backbone_dir, load_encoder, load_tokenizer
from .baselines import EmbeddingSentences
from .critic import load_mini_critic
from .realqa import (
    DEFAULT_SOURCES, SOURCES, SPLITS, PassagePool, RealDocument, describe_left_out, load_own_squad, load_passages,
    own_source_name, passages_of,
)
from .similarity import questions_of

BUDGETS: tuple[float | None, ...] = (0.10, 0.05, None)
RELEVANCE_CUTOFFS = (0.1, 0.2, 0.3, 0.5, 0.7, 0.9)
"""``--no-answer`` reports the share of contexts, with and without the answer, whose best relevance reaches these."""
SIGNALS = ("best_scores", "best_relevance", "best_cosine")
"""The ``--no-answer`` signals of each context, as :func:`answer_signals` gives them."""
BOOTSTRAP_SAMPLES = 2000


@dataclass
class Cell:
    """Per-query outcomes of one method on one (size, questions, budget) setting."""

    kept: list[list[bool]] = field(default_factory=list)
    kept_tokens: list[int] = field(default_factory=list)
    original_tokens: list[int] = field(default_factory=list)
    sources: list[str] = field(default_factory=list)
    best_scores: list[float] = field(default_factory=list)
    """With ``--no-answer``, cprs-mini's best kept span score per context without a budget (0: nothing kept)."""
    best_relevance: list[float] = field(default_factory=list)
    """With ``--no-answer``, the result's ``metadata["best_relevance"]`` per context without a budget."""
    best_cosine: list[float] = field(default_factory=list)
    """With ``--no-answer``, the embedding filter's best sentence cosine to the whole query, per context."""

    def add(self, kept: list[bool], kept_tokens: int, original_tokens: int, source: str,
            signals: tuple[float, float, float] | None = None) -> None:
        self.kept.append(kept)
        self.kept_tokens.append(kept_tokens)
        self.original_tokens.append(original_tokens)
        self.sources.append(source)
        if signals is not None:
            self.best_scores.append(signals[0])
            self.best_relevance.append(signals[1])
            self.best_cosine.append(signals[2])

    def rate(self, mask: np.ndarray | None = None) -> float:
        values = [np.mean(row) for row, on in zip(self.kept, self._mask(mask)) if on]
        return float(np.mean(values)) if values else float("nan")

    def ratio(self, mask: np.ndarray | None = None) -> float:
        on = self._mask(mask)
        return float(np.sum(np.array(self.original_tokens)[on]) / max(1, np.sum(np.array(self.kept_tokens)[on])))

    def per_query(self) -> np.ndarray:
        """Each query's share of its answers kept (what the bootstrap resamples)."""
        return np.array([np.mean(row) for row in self.kept])

    def _mask(self, mask: np.ndarray | None) -> np.ndarray:
        return np.ones(len(self.kept), dtype=bool) if mask is None else mask


def bootstrap_interval(values: np.ndarray, rng: np.random.Generator) -> tuple[float, float]:
    """95% percentile bootstrap interval of the mean of ``values`` (resampling queries)."""
    if len(values) == 0:
        return float("nan"), float("nan")
    draws = rng.integers(0, len(values), size=(BOOTSTRAP_SAMPLES, len(values)))
    means = values[draws].mean(axis=1)
    return float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))


def covered(spans: Sequence[tuple[int, int]], answer: tuple[int, int]) -> bool:
    """Whether ``answer`` (character range, whitespace trimmed by the caller) lies whole inside one span."""
    return any(start <= answer[0] and answer[1] <= end for start, end in spans)


class SentenceBaselines:
    """Embedding and BM25 scores of the engine's sentence units, kept under the engine's budget rule."""

    def __init__(self, compressor: CPRSCompressor, embedder: EmbeddingSentences) -> None:
        self.compressor = compressor
        self.embedder = embedder

    def units(self, text: str) -> tuple[list[Unit], int]:
        """The sentence units exactly as the engine builds them, and the context's token count."""
        tokens = self.compressor.critic.tokenize_context(text)
        units = units_from_char_ranges(sentence_ranges(text), [end for _, end in tokens.offsets], np.zeros(len(tokens.ids)))
        return units, len(tokens.ids)

    def scores(self, text: str, units: list[Unit], query: str) -> dict[str, np.ndarray]:
        """``embed``, ``embed-max`` (best cosine over the query's questions), ``embed-zmax`` (best over the questions
        of each question's z-scored cosines) and ``bm25`` score of each unit."""
        from rank_bm25 import BM25Okapi

        pieces = [text[unit.char_start : unit.char_end] for unit in units]
        sentence_vectors = self.embedder.embed(pieces)
        questions = questions_of(query)
        query_vectors = self.embedder.embed([query, *questions])
        cosines = sentence_vectors @ query_vectors.T
        bm25 = BM25Okapi([lower_words(piece) or [""] for piece in pieces])
        per_question = cosines[:, 1:] if len(questions) > 1 else cosines[:, :1]
        return {
            "embed": cosines[:, 0],
            "embed-max": per_question.max(axis=1),
            "embed-zmax": zscore(per_question).max(axis=1),
            "bm25": np.asarray(bm25.get_scores(lower_words(query))),
        }


def keep_spans(units: list[Unit], scores: np.ndarray, budget: int) -> tuple[list[tuple[int, int]], int]:
    """Character ranges kept by the engine's budget rule over ``units`` scored by ``scores``, and their tokens."""
    scored = [Unit(u.index, u.token_start, u.token_end, u.char_start, u.char_end, float(s)) for u, s in zip(units, scores)]
    smallest = min(unit.tokens for unit in scored)
    chosen = select_by_budget(scored, max(budget, smallest), "sentence")
    groups = merge_adjacent(chosen)
    return [(group[0].char_start, group[-1].char_end) for group in groups], sum(unit.tokens for unit in chosen)


EMBEDDINGS = ("embed", "embed-max", "embed-zmax")
"""The embedding baselines: the whole query; each question's best cosine; each question's best z-scored cosine."""


def size_name(tokens: int) -> str:
    """A context size as the tables name it: ``8K`` for 8000 tokens, else the number (``2500``)."""
    return f"{tokens // 1000}K" if tokens % 1000 == 0 else str(tokens)


def budget_name(budget: float | None) -> str:
    return "none" if budget is None else f"{budget:.0%}"


SOURCE_FAMILIES = ("wikipedia-squad", "coqa", "multirc", "nq")
"""Query ``i`` of a setting asks about the ``i % n``-th family present in the pool (CoQA: one of its sources)."""


def remember_window_scores(critic: object) -> Callable[[], None]:
    """Make ``critic.score_windows`` answer a repeated call (same prefix, windows and tags) from memory, so that
    the variants compared on one query share one critic pass; returns the function that forgets (call it
    between queries). ``del critic.score_windows`` restores the plain method."""
    memory: dict[tuple, list] = {}
    score_windows = critic.score_windows  # type: ignore[attr-defined]

    def remembered(prefix_ids: list[int], windows: Sequence[list[int]], tags: Sequence[str]) -> list:
        key = (tuple(prefix_ids), tuple(map(tuple, windows)), tuple(tags))
        if key not in memory:
            memory[key] = score_windows(prefix_ids, windows, tags)
        return memory[key]

    critic.score_windows = remembered  # type: ignore[attr-defined]
    return memory.clear


_SENTENCE_PUNCTUATION = re.compile(r"[.!?;](?=\s)")


def unpunctuated(document: RealDocument) -> RealDocument:
    """``document`` with every sentence-ending ``.!?;`` that precedes whitespace replaced by a space (same
    length, so the answers' offsets still hold): each passage becomes one run-on sentence, as in a transcript."""
    return dataclasses.replace(document, text=_SENTENCE_PUNCTUATION.sub(" ", document.text))


def query_document(
    pool: PassagePool, seed: int, tokens: int, questions: int, sample: int, with_gold: bool = True,
    retriever: Callable[[str, str], list[int]] | None = None,
) -> RealDocument:
    """Query number ``sample`` of a setting: the pool's source families take turns (SQuAD and CoQA: even numbers
    ask about SQuAD, odd ones about a CoQA source); the same arguments always give the same query and context.
    ``with_gold=False``: the same query over a context of the same size without its gold passages, taken at
    random or, with a ``retriever`` (query, source -> the source's passage indices, best first), the passages it
    ranks highest, as a retriever's top results that do not answer."""
    rng = random.Random(f"real:{seed}:{tokens}:{questions}:{sample}")
    families = [family for family in SOURCE_FAMILIES if family in pool.families]
    families += sorted(family for family in pool.families if family not in SOURCE_FAMILIES)  # --squad-file sources
    family = families[sample % len(families)]
    if family == "wikipedia-squad":
        source = family
    else:
        source = rng.choice([
            name for name in pool.families[family]
            if len({pool.passages[i].group for i in pool.by_source[name]}) >= questions
        ])
    gold = pool.sample_gold(rng, source, questions)
    ranked = None
    if retriever is not None:
        ranked = retriever(" ".join(question.text for _, question in gold), pool.passages[gold[0][0]].source)
    return pool.document(rng, gold, tokens, with_gold=with_gold, ranked=ranked)


def evaluate(
    compressor: CPRSCompressor,
    baselines: SentenceBaselines,
    pool: PassagePool,
    tokens: int,
    questions: int,
    samples: Sequence[int],
    seed: int,
    thresholds: Sequence[float] = (),
    weights: Sequence[float] = (),
    per_question_z: bool = False,
    shortlists: Sequence[float] = (),
    other_keep_rule: bool = False,
    without_punctuation: bool = False,
    neighbour_weights: Sequence[float] = (),
    without_answer: bool = False,
    retrieved_negatives: bool = False,
) -> dict[str, Cell]:
    """Run every method on the queries numbered ``samples``, of ``questions`` questions over ~``tokens`` tokens.

    Keys are ``"<method>@<budget>"``. Variants of cprs-mini's settings, for choosing them on the tune split: each
    of ``thresholds`` as the no-budget keep threshold (``cprs-mini@none/t=<p>``) and each of ``weights`` as the
    similarity weight of the ranking, under the budgets and without one (``cprs-mini@10%/w=<w>``); each of
    ``shortlists`` as the similarity shortlist under the budgets (``cprs-mini@10%/s=<f>``; ``s=0``: no
    shortlist); with ``per_question_z``, the other setting of the embedder's question pooling under the budgets
    (``cprs-mini@10%/pqz``); with ``other_keep_rule``, the other setting of ``rank_without_budget``
    (``cprs-mini@none/rwb``); each of ``neighbour_weights`` as the neighbour lift of the ranking, under the budgets
    and without one (``cprs-mini@10%/n=<w>``). Each query's windows are scored once for all of these variants. With
    ``without_punctuation``, every context is :func:`unpunctuated` first (a stress test). With ``without_answer``,
    each query is also asked of a context of the same size without its gold passages, with no budget: the cell
    ``cprs-mini@none/no-answer`` records for each such context whether nothing at all was kept (its "kept" share),
    how many tokens were, and its :func:`answer_signals` (which ``cprs-mini@none`` then records too); with
    ``retrieved_negatives``, that context's passages are those a MiniLM retriever ranks highest for the query
    (:func:`passage_retriever`) rather than random ones.
    """
    cells: dict[str, Cell] = {}
    critic = compressor.critic
    settings_names = ("relevance_threshold", "similarity_weight", "similarity_shortlist", "rank_without_budget",
                      "neighbour_weight")
    defaults = {name: getattr(critic, name, None) for name in settings_names}

    def configure(**settings: float | bool | None) -> None:
        for setting, value in {**defaults, **settings}.items():
            setattr(critic, setting, value)

    def run(name: str, document: RealDocument, total: int, budget: float | None, cosines: np.ndarray | None = None,
            **settings: float | bool | None) -> int:
        configure(**settings)
        result = compressor.compress(document.text, query=document.query, granularity="sentence", target_ratio=budget)
        signals = None if cosines is None else answer_signals(result, cosines)
        _record(cells, name, document, [(s.start, s.end) for s in result.spans], result.compressed_tokens, total, signals)
        return result.compressed_tokens

    retriever = passage_retriever(pool, baselines.embedder) if retrieved_negatives else None
    forget = remember_window_scores(critic)
    for sample in samples:
        forget()
        document = query_document(pool, seed, tokens, questions, sample)
        if without_punctuation:
            document = unpunctuated(document)
        units, total = baselines.units(document.text)
        method_scores = baselines.scores(document.text, units, document.query)
        same_size = run("cprs-mini@none", document, total, None, method_scores["embed"] if without_answer else None)
        for weight in weights:
            run(f"cprs-mini@none/w={weight:g}", document, total, None, similarity_weight=weight)
        for threshold in thresholds:
            run(f"cprs-mini@none/t={threshold:g}", document, total, None, relevance_threshold=threshold)
        for lift in neighbour_weights:
            run(f"cprs-mini@none/n={lift:g}", document, total, None, neighbour_weight=lift or None)
        if other_keep_rule:
            run("cprs-mini@none/rwb", document, total, None, rank_without_budget=not defaults["rank_without_budget"])
        if without_answer:
            absent = query_document(pool, seed, tokens, questions, sample, with_gold=False, retriever=retriever)
            if without_punctuation:
                absent = unpunctuated(absent)
            configure()
            result = compressor.compress(absent.text, query=absent.query, granularity="sentence")
            absent_cosines = baselines.scores(absent.text, baselines.units(absent.text)[0], absent.query)["embed"]
            cells.setdefault("cprs-mini@none/no-answer", Cell()).add(
                [not result.spans], result.compressed_tokens, result.original_tokens, absent.source,
                answer_signals(result, absent_cosines))
        for budget in BUDGETS:
            limit = same_size if budget is None else max(1, int(total * budget))
            if budget is not None:
                run(f"cprs-mini@{budget_name(budget)}", document, total, budget)
                for weight in weights:
                    run(f"cprs-mini@{budget_name(budget)}/w={weight:g}", document, total, budget, similarity_weight=weight)
                for lift in neighbour_weights:
                    run(f"cprs-mini@{budget_name(budget)}/n={lift:g}", document, total, budget,
                        neighbour_weight=lift or None)
                for factor in shortlists:
                    run(f"cprs-mini@{budget_name(budget)}/s={factor:g}", document, total, budget,
                        similarity_shortlist=factor or None)
                if per_question_z and questions > 1 and critic.embedder is not None:
                    critic.embedder.per_question_z = not critic.embedder.per_question_z
                    run(f"cprs-mini@{budget_name(budget)}/pqz", document, total, budget)
                    critic.embedder.per_question_z = not critic.embedder.per_question_z
            for method, scores in method_scores.items():
                if method in ("embed-max", "embed-zmax") and questions == 1:
                    continue
                spans, kept = keep_spans(units, scores, limit)
                _record(cells, f"{method}@{budget_name(budget)}", document, spans, kept, total)
    configure()
    del critic.score_windows
    return cells


def passage_retriever(pool: PassagePool, embedder: EmbeddingSentences) -> Callable[[str, str], list[int]]:
    """(query, source) -> the source's passage indices, closest to the query first under mean-pooled MiniLM
    embeddings of whole passages (cut to the embedder's length), as a dense retriever would rank them."""
    vectors: dict[str, np.ndarray] = {}

    def ranked(query: str, source: str) -> list[int]:
        indices = pool.by_source[source]
        if source not in vectors:
            vectors[source] = embedder.embed([pool.passages[index].text for index in indices])
        order = np.argsort(-(vectors[source] @ embedder.embed([query])[0]), kind="stable")
        return [indices[position] for position in order]

    return ranked


def answer_signals(result: CompressionResult, cosines: np.ndarray) -> tuple[float, float, float]:
    """Three signals that the context holds what was asked: the highest score of cprs-mini's kept spans (what
    LlamaIndex nodes get as their score; 0 when nothing is kept), its ``metadata["best_relevance"]``, and the
    embedding filter's best sentence ``cosines`` to the query (what a sentence-level similarity cut-off reads)."""
    return (max((span.score for span in result.spans), default=0.0), float(result.metadata["best_relevance"]),
            float(np.max(cosines, initial=-1.0)))


def score_auc(present: Sequence[float], absent: Sequence[float]) -> float:
    """The chance that a context holding the answer has a higher best span score than one without it (ties: half):
    how well that score tells the two apart (0.5: not at all, 1: perfectly)."""
    high, low = np.asarray(present)[:, None], np.asarray(absent)[None, :]
    return float(np.mean((high > low) + 0.5 * (high == low)))


def _record(cells: dict[str, Cell], name: str, document: RealDocument, spans: list[tuple[int, int]], kept: int, total: int,
            signals: tuple[float, float] | None = None) -> None:
    cells.setdefault(name, Cell()).add([covered(spans, answer) for answer in document.answers], kept, total, document.source,
                                       signals)


def summarize(cells: dict[str, Cell], seed: int) -> dict[str, dict]:
    """Mean, interval, ratio and per-source means of each cell, and the paired cprs-mini minus baseline gaps.

    ``by_source`` gives the same per source (e.g. ``coqa-reddit``), its intervals drawn from a generator of
    their own, so that adding them left every overall interval as it was.
    """
    rng = np.random.default_rng(seed)
    source_rng = np.random.default_rng([seed, 1])
    summary: dict[str, dict] = {}
    for name, cell in cells.items():
        low, high = bootstrap_interval(cell.per_query(), rng)
        sources = np.array(cell.sources)
        wikipedia = sources == "wikipedia-squad"
        masks = {source: sources == source for source in sorted(set(cell.sources))}
        summary[name] = {
            "kept": cell.rate(), "low": low, "high": high, "ratio": cell.ratio(), "queries": len(cell.kept),
            "context_tokens": float(np.mean(cell.original_tokens)),
            "answers": int(sum(len(row) for row in cell.kept)),
            "kept_wikipedia": cell.rate(wikipedia), "kept_other": cell.rate(~wikipedia),
            "by_source": {source: {"kept": cell.rate(on), "queries": int(on.sum()), "ratio": cell.ratio(on)}
                          for source, on in masks.items()},
        }
        present = cells.get("cprs-mini@none", Cell())
        for signal in SIGNALS:
            if getattr(cell, signal):
                summary[name][f"{signal}_median"] = float(np.median(getattr(cell, signal)))
            if name == "cprs-mini@none/no-answer" and getattr(present, signal):
                summary[name][f"{signal}_auc"] = score_auc(getattr(present, signal), getattr(cell, signal))
        if name == "cprs-mini@none/no-answer" and present.best_relevance:
            with_answer, without = np.asarray(present.best_relevance), np.asarray(cell.best_relevance)
            summary[name]["relevance_cutoffs"] = {
                f"{cutoff:g}": {"with": float(np.mean(with_answer >= cutoff)), "without": float(np.mean(without >= cutoff))}
                for cutoff in RELEVANCE_CUTOFFS
            }
        method, budget = name.split("@", 1)
        if method != "cprs-mini" and "/" not in budget and f"cprs-mini@{budget}" in cells:
            difference = cells[f"cprs-mini@{budget}"].per_query() - cell.per_query()
            low, high = bootstrap_interval(difference, rng)
            summary[name].update(gap=float(difference.mean()), gap_low=low, gap_high=high)
            for source, row in summary[name]["by_source"].items():
                part = difference[masks[source]]
                low, high = bootstrap_interval(part, source_rng)
                row.update(gap=float(part.mean()), gap_low=low, gap_high=high)
    return summary


def _budget_rows(results: dict[str, dict[str, dict]]) -> Iterator[tuple[str, str, str, dict, dict, dict]]:
    """(context, questions, budget, cprs-mini's row, the best embedding baseline's row, the setting's summary) for
    each measured budget; the best embedding baseline is the one that kept most answers over all sources."""
    for setting, summary in results.items():
        size, questions = setting.split("/")
        for budget in (budget_name(b) for b in BUDGETS):
            cprs = summary.get(f"cprs-mini@{budget}")
            if cprs is None:
                continue
            best = max((summary[f"{m}@{budget}"] for m in EMBEDDINGS if f"{m}@{budget}" in summary),
                       key=lambda row: row["kept"])
            yield size, questions, budget, cprs, best, summary


def _gap(row: dict) -> str:
    return f"{row['gap'] * 100:+.1f} [{row['gap_low'] * 100:+.1f}, {row['gap_high'] * 100:+.1f}] pts"


def _budget_label(budget: str, ratio: float) -> str:
    return f"{budget} ({ratio:.0f}x)" if budget == "none" else budget


def markdown(results: dict[str, dict[str, dict]]) -> str:
    """One table row per (context, questions, budget): each method's kept share [95% CI] and the gaps."""
    header = ("| context | questions | budget | n answers | cprs-mini | embed | embed-max | embed-zmax | bm25 "
              "| cprs-mini minus embed (best) |")
    lines = [header, "|" + "---|" * (header.count("|") - 1)]
    for size, questions, budget, cprs, best, summary in _budget_rows(results):
        cells = []
        for method in ("cprs-mini", *EMBEDDINGS, "bm25"):
            row = summary.get(f"{method}@{budget}")
            cells.append("–" if row is None else f"{row['kept']:.1%} [{row['low']:.1%}, {row['high']:.1%}]")
        lines.append(f"| {size} | {questions} | {_budget_label(budget, cprs['ratio'])} | {cprs['answers']} | "
                     + " | ".join(cells) + f" | {_gap(best)} |")
    return "\n".join(lines)


def markdown_by_source(results: dict[str, dict[str, dict]]) -> str:
    """One table row per (context, questions, budget, source): queries, cprs-mini's kept share, the best embedding
    baseline's (chosen over all sources, as in :func:`markdown`), BM25's, and cprs-mini minus that baseline; without a
    budget, how many times smaller cprs-mini made that source's contexts (the baselines keep as much per context)."""
    header = "| context | questions | budget | source | queries | cprs-mini | best embed | bm25 | cprs-mini minus best embed |"
    lines = [header, "|" + "---|" * (header.count("|") - 1)]
    for size, questions, budget, cprs, best, summary in _budget_rows(results):
        bm25 = summary.get(f"bm25@{budget}", {}).get("by_source", {})
        for source, row in cprs["by_source"].items():
            other = best["by_source"][source]
            lexical = f"{bm25[source]['kept']:.1%}" if source in bm25 else "–"
            lines.append(f"| {size} | {questions} | {_budget_label(budget, row['ratio'])} | {source} | {row['queries']} | "
                         f"{row['kept']:.1%} | {other['kept']:.1%} | {lexical} | {_gap(other)} |")
    return "\n".join(lines)


def markdown_no_answer(results: dict[str, dict[str, dict]]) -> str:
    """One row per (context, questions) measured ``--no-answer``: without a budget, cprs-mini's kept share and size
    on the queries' own contexts, and on contexts without their gold passages, the share of contexts of which
    nothing was kept [95% CI] and the share of tokens kept; then how well the best kept span's score (a LlamaIndex
    node's score) and the best sentence relevance (``metadata["best_relevance"]``) tell the two kinds of context
    apart (medians, and the chance that a context with the answer scores higher: AUC), beside the embedding
    filter's best sentence cosine to the query."""
    header = ("| context | questions | with the answer: kept, size | without it: nothing kept | "
              "without it: tokens kept | best span score, median with / without, AUC | "
              "best sentence relevance, median with / without, AUC | "
              "embedding filter's best cosine, median with / without, AUC |")
    lines = [header, "|" + "---|" * (header.count("|") - 1)]
    for setting, summary in results.items():
        absent = summary.get("cprs-mini@none/no-answer")
        if absent is None:
            continue
        size, questions = setting.split("/")
        present = summary["cprs-mini@none"]
        lines.append(f"| {size} | {questions} | {present['kept']:.1%} at {present['ratio']:.0f}x | "
                     f"{absent['kept']:.1%} [{absent['low']:.1%}, {absent['high']:.1%}] of {absent['queries']} | "
                     f"{1 / absent['ratio']:.2%} ({absent['ratio']:.0f}x) | "
                     + " | ".join(f"{present[f'{signal}_median']:.3f} / {absent[f'{signal}_median']:.3f}, "
                                  f"{absent[f'{signal}_auc']:.3f}" for signal in SIGNALS)
                     + " |")
    header = "| context | questions | " + " | ".join(f"best relevance >= {c:g}: with / without" for c in RELEVANCE_CUTOFFS) + " |"
    lines += ["", header, "|" + "---|" * (header.count("|") - 1)]
    for setting, summary in results.items():
        cutoffs = summary.get("cprs-mini@none/no-answer", {}).get("relevance_cutoffs")
        if cutoffs:
            size, questions = setting.split("/")
            lines.append(f"| {size} | {questions} | " + " | ".join(
                f"{row['with']:.1%} / {row['without']:.1%}" for row in cutoffs.values()) + " |")
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m cprs_core.mini.eval --real", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--real-data", type=Path, default=None,
                        help="folder with squaddev_v1.1.json and coqa.test.json (.xz allowed) from bigbench's sdist")
    parser.add_argument("--squad-file", type=Path, nargs="+", default=[],
                        help="instead of --real-data: your own questions, SQuAD-format files (.json, .jsonl, either "
                             "maybe .gz or .xz; each its own source, named by its file; --split does not apply)")
    parser.add_argument("--sources", nargs="+", choices=SOURCES, default=list(DEFAULT_SOURCES),
                        help="where the questions come from (multirc, nq: their files must be in --real-data too)")
    parser.add_argument("--split", choices=SPLITS[1:], default="test")
    parser.add_argument("--checkpoint", default=None, help="cprs-mini checkpoint directory (default: shipped)")
    parser.add_argument("--tokens", type=positive_int, nargs="+", default=[8000, 32000],
                        help="context sizes in MiniLM tokens")
    parser.add_argument("--questions", type=positive_int, nargs="+", default=[1, 2], help="questions per query")
    parser.add_argument("--samples", type=positive_int, default=500, help="queries per setting (two-question: half)")
    parser.add_argument("--thresholds", type=float, nargs="*", default=[], help="also try these keep thresholds")
    parser.add_argument("--weights", type=float, nargs="*", default=[], help="also try these similarity weights")
    parser.add_argument("--per-question-z", action="store_true",
                        help="also try the other question pooling of the similarity (two-question queries)")
    parser.add_argument("--shortlists", type=float, nargs="*", default=[],
                        help="also try these similarity shortlists (multiples of the budget; 0: none)")
    parser.add_argument("--neighbour-weights", type=float, nargs="*", default=[],
                        help="also try these neighbour lifts in the ranking (0: none)")
    parser.add_argument("--other-keep-rule", action="store_true",
                        help="also try the other no-budget rule (rank_without_budget on or off)")
    parser.add_argument("--unpunctuated", action="store_true",
                        help="stress test: drop the sentence punctuation of every context (see unpunctuated)")
    parser.add_argument("--no-answer", nargs="?", const="random", choices=["random", "retrieved"], default=None,
                        help="also ask each query of a context without its gold passages (no budget): how often "
                             "nothing is kept, and how much is; its other passages are taken at random, or "
                             "('retrieved') those of the same source whose MiniLM embedding is closest to the query")
    parser.add_argument("--window-size", type=int, default=None, help="cprs-mini's window size (default: its own)")
    parser.add_argument("--workers", type=positive_int, default=1,
                        help="processes sharing the queries (GPUs round-robin; on CPU they share its cores)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default=None,
                        help="cprs-mini's precision (default: the device's default: int8 on CPU, bfloat16 on CUDA)")
    parser.add_argument("--backbone", default=None)
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--markdown", type=Path, default=None)
    parser.add_argument("--by-source", action="store_true",
                        help="also print a table per source (CoQA by domain: coqa-cnn, coqa-reddit, ...)")
    args = parser.parse_args(argv)
    if (args.real_data is None) == (not args.squad_file):
        parser.error("give either --real-data (the built-in held-out questions) or --squad-file (your own)")
    names = [own_source_name(path) for path in args.squad_file]
    if len(set(names)) < len(names):
        parser.error(f"--squad-file: two files share a name ({', '.join(names)}); each file is a source named by it")
    missing = [str(path) for path in args.squad_file if not path.exists()]
    if missing:
        parser.error(f"--squad-file: no such file: {', '.join(missing)}")
    folders = [str(path) for path in args.squad_file if path.is_dir()]
    if folders:
        parser.error(f"--squad-file: {', '.join(folders)} is a folder; give the files in it (e.g. {folders[0]}/*.json)")
    try:
        args.notes = own_file_notes(args.squad_file, max(args.questions), args.samples)
    except ValueError as error:
        parser.error(f"--squad-file: {error}")
    return args


def positive_int(text: str) -> int:
    """``text`` as a whole number of at least 1 (an argparse ``type``)."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text} is not a positive whole number")
    return value


def own_file_notes(paths: Sequence[Path], questions: int, samples: int) -> list[str]:
    """What the evaluation will use of each ``--squad-file``: its questions, paragraphs and titles and the questions
    left out; and a note where a file has fewer questions than ``samples`` queries draw.

    Raises:
        ValueError: a file cannot be used (:func:`load_own_squad`), or has fewer titles than a query of
            ``questions`` questions asks about (each question of a query comes from another title).
    """
    notes, repeated = [], []
    for path in paths:
        left_out: Counter[str] = Counter()
        passages = load_own_squad(path, left_out)
        count, titles = sum(len(passage.questions) for passage in passages), len({p.group for p in passages})
        if titles < questions:
            raise ValueError(f"{path.name} has questions on {titles} title{'s' * (titles > 1)}; a query of "
                             f"{questions} questions needs {questions} (give --questions 1, or a file with more titles)")
        notes.append(f"{path.name}: {count} questions on {len(passages)} paragraphs of {titles} titles"
                     + (f"; {describe_left_out(left_out)}" if left_out else ""))
        if count < samples:
            repeated.append(f"({path.name} has {count} questions: with --samples {samples} some are asked more than "
                            f"once, each time in another context, and the intervals are narrower than {count} "
                            f"questions warrant)")
    return notes + repeated


def question_pool(args: argparse.Namespace, tokenizer: Tokenizer) -> PassagePool:
    """The passages queries are drawn from: every question of the ``--squad-file`` files, or else the
    ``--split`` of the built-in ``--sources``."""
    if args.squad_file:
        passages = [passage for path in args.squad_file for passage in load_own_squad(path)]
    else:
        passages = passages_of(load_passages(args.real_data, args.sources), args.split)
    return PassagePool(passages, tokenizer)


_WORKER: dict[str, object] = {}
CHUNK_QUERIES = 8


def _load(args: argparse.Namespace, device: str) -> None:
    """Load the critic, the baselines and the query pool of this process into ``_WORKER``."""
    torch.set_grad_enabled(False)
    np.seterr(all="ignore")
    backbone = backbone_dir(args.backbone)
    critic = load_mini_critic(args.checkpoint, device=device, dtype=args.dtype, backbone=backbone)
    tokenizer = load_tokenizer(backbone)

    def count_tokens(texts: list[str]) -> list[int]:
        return [len(encoding.ids) for encoding in tokenizer.encode_batch(texts, add_special_tokens=False)]

    embedder = EmbeddingSentences(load_encoder(backbone).to(device), tokenizer, count_tokens)
    if critic.embedder is None:
        critic.embedder = embedder.embedder  # lets --weights try the similarity on a checkpoint without it
    compressor = CPRSCompressor(critic, window_size=args.window_size)
    _WORKER.update(args=args, compressor=compressor, baselines=SentenceBaselines(compressor, embedder),
                   pool=question_pool(args, tokenizer))


def _init_worker(args: argparse.Namespace, devices: list[str]) -> None:
    """Load a worker process on its device; on CPU with its share of the cores (torch would take them all in every
    worker, and ``--workers`` would then run slower than one process)."""
    import multiprocessing

    index = multiprocessing.current_process()._identity[0] - 1
    device = devices[index % len(devices)]
    if device == "cpu":
        torch.set_num_threads(max(1, torch.get_num_threads() // args.workers))
    _load(args, device)


def _evaluate_chunk(task: tuple[int, int, list[int]]) -> dict[str, Cell]:
    size, questions, samples = task
    args = _WORKER["args"]
    return evaluate(_WORKER["compressor"], _WORKER["baselines"], _WORKER["pool"], size, questions, samples,  # type: ignore[arg-type]
                    args.seed, args.thresholds, args.weights, args.per_question_z,  # type: ignore[attr-defined]
                    args.shortlists, args.other_keep_rule, args.unpunctuated,  # type: ignore[attr-defined]
                    args.neighbour_weights, args.no_answer is not None,  # type: ignore[attr-defined]
                    args.no_answer == "retrieved")  # type: ignore[attr-defined]


def _merge(parts: list[dict[str, Cell]]) -> dict[str, Cell]:
    merged: dict[str, Cell] = {}
    for part in parts:
        for name, cell in part.items():
            target = merged.setdefault(name, Cell())
            for column in dataclasses.fields(Cell):
                getattr(target, column.name).extend(getattr(cell, column.name))
    return merged


def _devices(device: str) -> list[str]:
    if device == "cuda" and torch.cuda.device_count() > 1:
        return [f"cuda:{index}" for index in range(torch.cuda.device_count())]
    return [device]


SHORT_CONTEXTS, LONG_CONTEXTS = 0.9, 1.25
"""Contexts averaging less or more than these multiples of the size asked for get a note saying why."""


def context_notes(results: dict[str, dict[str, dict]], settings: Sequence[tuple[int, int]]) -> list[str]:
    """How many tokens the contexts of each (size, questions) setting averaged, and a note for each setting whose
    contexts were much shorter or longer than asked."""
    means = {(size, questions): results[f"{size_name(size)}/{questions}"]["cprs-mini@none"]["context_tokens"]
             for size, questions in settings}
    notes = ["(contexts averaged " + ", ".join(f"{tokens:,.0f} tokens at {size_name(size)} with {questions} "
                                              f"question(s)" for (size, questions), tokens in means.items()) + ")"]
    for (size, questions), tokens in means.items():
        if tokens < SHORT_CONTEXTS * size:
            reason = "the data has too few passages to fill them"
        elif tokens > LONG_CONTEXTS * size:
            reason = "some passages are longer than that"
        else:
            continue
        notes.append(f"(contexts of {questions} question(s) averaged {tokens:.0f} tokens, not {size}: {reason})")
    return notes


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.notes:
        print("\n".join(args.notes), flush=True)
    settings = [(size, questions) for size in args.tokens for questions in args.questions]
    tasks = []
    for size, questions in settings:
        samples = list(range(args.samples if questions == 1 else max(1, args.samples // 2)))
        tasks.extend((size, questions, samples[i : i + CHUNK_QUERIES]) for i in range(0, len(samples), CHUNK_QUERIES))
    started = time.perf_counter()
    if args.workers > 1:
        import multiprocessing

        context = multiprocessing.get_context("spawn")
        with context.Pool(args.workers, _init_worker, (args, _devices(args.device))) as workers:
            parts = workers.map(_evaluate_chunk, tasks, chunksize=1)
    else:
        _load(args, args.device)
        parts = [_evaluate_chunk(task) for task in tasks]
    results: dict[str, dict[str, dict]] = {}
    for size, questions in settings:
        key = f"{size_name(size)}/{questions}"
        chosen = [part for task, part in zip(tasks, parts) if task[:2] == (size, questions)]
        results[key] = summarize(_merge(chosen), args.seed)
    table = markdown(results)
    if args.by_source:
        table += "\n\n" + markdown_by_source(results)
    if args.no_answer:
        table += f"\n\nWithout the answer (other passages: {args.no_answer}):\n" + markdown_no_answer(results)
    print(table)
    data = (f"files {' '.join(str(path) for path in args.squad_file)}" if args.squad_file
            else f"split {args.split}; sources {' '.join(args.sources)}")
    print(f"({time.perf_counter() - started:.0f} s; {data}; seed {args.seed}; checkpoint {args.checkpoint or 'shipped'})")
    print("\n".join(context_notes(results, settings)))
    if args.markdown:
        args.markdown.write_text(table + "\n", encoding="utf-8")
    if args.json:
        payload = {"args": {key: str(value) for key, value in vars(args).items()}, "results": results}
        args.json.write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
