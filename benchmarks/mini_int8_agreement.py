"""Paired check of cprs-mini's int8 CPU default against float32 on held-out real questions.

Both precisions compress the same queries of the real-question evaluation (``cprs_core.mini.realeval``: the
gold passage among other articles' passages, ``--split test`` by default) with the same settings; the table gives
each precision's share of gold answers kept whole, its compression, and the paired difference int8 minus
float32 with a 95% bootstrap interval over queries. Only cprs-mini runs (no baselines), so it is cheap enough for
a few hundred queries on 2 cores.

Usage (data as in docs/cprs-mini-evaluation.md)::

    python -m benchmarks.mini_int8_agreement --real-data DIR --tokens 8000 --samples 300 --budgets none 0.05
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from cprs_core import CPRSCompressor
from cprs_core.mini import load_mini_critic
from cprs_core.mini.backbone import backbone_dir, load_tokenizer
from cprs_core.mini.realeval import Cell, bootstrap_interval, budget_name, covered, query_document
from cprs_core.mini.realqa import SPLITS, PassagePool, load_passages, passages_of

DTYPES = ("float32", "int8")


def parse_budget(text: str) -> float | None:
    return None if text == "none" else float(text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--real-data", required=True, help="directory with squaddev_v1.1.json and coqa.test.json")
    parser.add_argument("--split", choices=SPLITS[1:], default="test")
    parser.add_argument("--tokens", type=int, default=8000)
    parser.add_argument("--questions", type=int, default=1)
    parser.add_argument("--samples", type=int, default=300)
    parser.add_argument("--budgets", type=parse_budget, nargs="+", default=[None], help="'none' and/or ratios")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=1, help="the evaluation's seed (1 gives its queries)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    pool = PassagePool(passages_of(load_passages(args.real_data), args.split), load_tokenizer(backbone_dir()))
    compressors = {dtype: CPRSCompressor(load_mini_critic(dtype=dtype)) for dtype in DTYPES}
    cells = {(dtype, budget): Cell() for dtype in DTYPES for budget in args.budgets}
    seconds = dict.fromkeys(DTYPES, 0.0)
    for sample in range(args.samples):
        document = query_document(pool, args.seed, args.tokens, args.questions, sample)
        for dtype, compressor in compressors.items():
            for budget in args.budgets:
                started = time.perf_counter()
                result = compressor.compress(document.text, query=document.query, target_ratio=budget)
                seconds[dtype] += time.perf_counter() - started
                spans = [(span.start, span.end) for span in result.spans]
                cells[dtype, budget].add([covered(spans, answer) for answer in document.answers],
                                         result.compressed_tokens, result.original_tokens, document.source)
    rng = np.random.default_rng(args.seed)
    print(f"{args.samples} {args.split} queries, {args.questions} question(s), ~{args.tokens} tokens, "
          f"{args.threads} threads; compression time {seconds['float32']:.0f} s float32, {seconds['int8']:.0f} s int8")
    print("| budget | float32 kept | int8 kept | float32 ratio | int8 ratio | int8 minus float32 [95% CI] | queries that differ |")
    print("|---|---|---|---|---|---|---|")
    for budget in args.budgets:
        exact, fast = cells["float32", budget].per_query(), cells["int8", budget].per_query()
        low, high = bootstrap_interval(fast - exact, rng)
        print(f"| {budget_name(budget)} | {exact.mean():.1%} | {fast.mean():.1%} | {cells['float32', budget].ratio():.1f}x | "
              f"{cells['int8', budget].ratio():.1f}x | {(fast - exact).mean() * 100:+.1f} [{low * 100:+.1f}, "
              f"{high * 100:+.1f}] pts | {int((fast != exact).sum())} |")


if __name__ == "__main__":
    main()
