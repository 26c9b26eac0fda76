"""Paired checks of cprs-mini's int8 paths against float32 on held-out real questions.

Both paths compress the same queries of the real-question evaluation (``cprs_core.mini.realeval``: the gold
passage among other articles' passages, ``--split test`` by default) with the same settings; the table gives each
path's share of gold answers kept whole, its compression, and the paired difference (second minus first) with a
95% bootstrap interval over queries. Only cprs-mini runs (no baselines), so it is cheap enough for a few hundred
queries on 2 cores.

* ``--compare precision``: ``dtype="float32"`` against ``dtype="int8"`` (critic and sentence embedder in int8).
* ``--compare embedder``: the int8 sentence embedder against the float32 one, under the same float32 critic,
  whose window scores are computed once per query and shared by both.

Usage (data as in docs/cprs-mini-evaluation.md)::

    python -m benchmarks.mini_int8_agreement --real-data DIR --tokens 8000 --samples 300 --budgets none 0.05
    python -m benchmarks.mini_int8_agreement --real-data DIR --split tune --compare embedder --budgets 0.1 0.05 none
"""

from __future__ import annotations

import argparse
import time
from typing import Callable

import numpy as np
import torch

from cprs_core import CompressionResult, CPRSCompressor
from cprs_core.mini import load_mini_critic
from cprs_core.mini.backbone import backbone_dir, load_tokenizer
from cprs_core.mini.realeval import (Cell, bootstrap_interval, budget_name, covered, query_document,
                                     remember_window_scores)
from cprs_core.mini.realqa import SPLITS, PassagePool, load_passages, passages_of
from cprs_core.mini.similarity import SentenceEmbedder

Compress = Callable[[str, str, float | None], CompressionResult]


def parse_budget(text: str) -> float | None:
    return None if text == "none" else float(text)


def precision_paths() -> dict[str, Compress]:
    """float32 and int8, each its own critic."""
    compressors = {dtype: CPRSCompressor(load_mini_critic(dtype=dtype)) for dtype in ("float32", "int8")}
    return {dtype: _compress(compressor) for dtype, compressor in compressors.items()}


def embedder_paths() -> tuple[dict[str, Compress], Callable[[], None]]:
    """The float32 critic with the float32 sentence embedder and with the int8 one of ``dtype="int8"``; the
    window scores of a query are computed once (call the returned function between queries to forget them)."""
    critic = load_mini_critic(dtype="float32")
    exact = critic.embedder
    fast = load_mini_critic(dtype="int8").embedder
    forget = remember_window_scores(critic)
    compressor = CPRSCompressor(critic)

    def with_embedder(embedder: SentenceEmbedder | None) -> Compress:
        def compress(text: str, query: str, budget: float | None) -> CompressionResult:
            critic.embedder = embedder
            return compressor.compress(text, query=query, target_ratio=budget)
        return compress

    return {"float32 embedder": with_embedder(exact), "int8 embedder": with_embedder(fast)}, forget


def _compress(compressor: CPRSCompressor) -> Compress:
    return lambda text, query, budget: compressor.compress(text, query=query, target_ratio=budget)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--real-data", required=True, help="directory with squaddev_v1.1.json and coqa.test.json")
    parser.add_argument("--split", choices=SPLITS[1:], default="test")
    parser.add_argument("--compare", choices=("precision", "embedder"), default="precision")
    parser.add_argument("--tokens", type=int, default=8000)
    parser.add_argument("--questions", type=int, default=1)
    parser.add_argument("--samples", type=int, default=300)
    parser.add_argument("--budgets", type=parse_budget, nargs="+", default=[None], help="'none' and/or ratios")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=1, help="the evaluation's seed (1 gives its queries)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    pool = PassagePool(passages_of(load_passages(args.real_data), args.split), load_tokenizer(backbone_dir()))
    forget: Callable[[], None] = lambda: None
    if args.compare == "precision":
        paths = precision_paths()
    else:
        paths, forget = embedder_paths()
    first, second = paths
    cells = {(name, budget): Cell() for name in paths for budget in args.budgets}
    seconds = dict.fromkeys(paths, 0.0)
    for sample in range(args.samples):
        document = query_document(pool, args.seed, args.tokens, args.questions, sample)
        forget()
        for name, compress in paths.items():
            for budget in args.budgets:
                started = time.perf_counter()
                result = compress(document.text, document.query, budget)
                seconds[name] += time.perf_counter() - started
                spans = [(span.start, span.end) for span in result.spans]
                cells[name, budget].add([covered(spans, answer) for answer in document.answers],
                                        result.compressed_tokens, result.original_tokens, document.source)
    rng = np.random.default_rng(args.seed)
    print(f"{args.samples} {args.split} queries, {args.questions} question(s), ~{args.tokens} tokens, "
          f"{args.threads} threads; compression time " + ", ".join(f"{seconds[n]:.0f} s {n}" for n in paths))
    print(f"| budget | {first} kept | {second} kept | {first} ratio | {second} ratio | {second} minus {first} "
          "[95% CI] | queries that differ |")
    print("|---|---|---|---|---|---|---|")
    for budget in args.budgets:
        exact, fast = cells[first, budget].per_query(), cells[second, budget].per_query()
        low, high = bootstrap_interval(fast - exact, rng)
        print(f"| {budget_name(budget)} | {exact.mean():.1%} | {fast.mean():.1%} | {cells[first, budget].ratio():.1f}x | "
              f"{cells[second, budget].ratio():.1f}x | {(fast - exact).mean() * 100:+.1f} [{low * 100:+.1f}, "
              f"{high * 100:+.1f}] pts | {int((fast != exact).sum())} |")


if __name__ == "__main__":
    main()
