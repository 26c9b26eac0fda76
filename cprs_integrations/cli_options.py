"""Command-line options shared by ``cprs compress`` and ``cprs batch``: what to keep and how to join it."""

from __future__ import annotations

import argparse

from cprs_core.validation import DEFAULT_GRANULARITY, GRANULARITIES


def add_output_options(parser: argparse.ArgumentParser) -> None:
    """``--granularity``, ``--target-ratio`` | ``--target-tokens``, ``--min-span-tokens`` and ``--separator``."""
    parser.add_argument(
        "--granularity", choices=GRANULARITIES, default=DEFAULT_GRANULARITY,
        help=f"keep whole sentences or paragraphs holding tagged tokens, or only the tagged spans (token); "
        f"default {DEFAULT_GRANULARITY}",
    )
    budget = parser.add_mutually_exclusive_group()
    budget.add_argument("--target-ratio", type=float, help="keep about this fraction of tokens (0 < r <= 1)")
    budget.add_argument("--target-tokens", type=int, help="keep at most this many tokens")
    parser.add_argument("--min-span-tokens", type=int, default=1, help="drop shorter spans (no budget only; default 1)")
    parser.add_argument("--separator", default="\n", help="placed between kept spans in the text output")
