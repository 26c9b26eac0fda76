"""Command-line options shared by the ``cprs`` commands (compress, serve, batch, serve-ray): what to keep, how to
join it, and the precision and windows of a local model."""

from __future__ import annotations

import argparse
import re
from pathlib import Path
from typing import Any

from cprs_core.errors import BudgetTokenizerError, quoted
from cprs_core.keep import join_patterns
from cprs_core.reader_tokens import reader_tokenizer
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


def add_precision_options(parser: argparse.ArgumentParser) -> None:
    """``--dtype`` and ``--window-size`` of a local model."""
    parser.add_argument(
        "--dtype", help="float32, bfloat16, float16 or int8 (default: bf16 on CUDA; on CPU fp32, or for cprs-mini bf16 with AMX, else int8 (float32: its opt-out))"
    )
    parser.add_argument("--window-size", type=int, help="tokens per window, prompt included (default: the model's)")


def add_keep_options(parser: argparse.ArgumentParser) -> None:
    """``--keep``, ``--keep-regex``, ``--keep-span`` (always kept) and ``--budget-tokenizer``."""
    parser.add_argument("--keep", action="append", default=[], metavar="TEXT",
                        help="always keep this literal text (repeatable); counts against a budget")
    parser.add_argument("--keep-regex", action="append", default=[], metavar="REGEX",
                        help="always keep the matches of this regular expression (repeatable)")
    parser.add_argument("--keep-span", action="append", default=[], type=_span, metavar="START:END",
                        help="always keep these character offsets of the input (repeatable)")
    parser.add_argument("--budget-tokenizer", metavar="NAME",
                        help="count --target-tokens/--target-ratio in this tokenizer: a tiktoken encoding name "
                             "(e.g. o200k_base) or a local transformers tokenizer directory")


def keep_options(args: argparse.Namespace) -> dict[str, Any]:
    """The ``keep``, ``keep_spans`` and ``budget_tokenizer`` arguments of ``compress`` from parsed options.

    Raises:
        KeepError: a ``--keep-regex`` that does not compile.
        BudgetTokenizerError: a ``--budget-tokenizer`` directory that is not a tokenizer or, without ``--server``
            (a server resolves names itself), a name that is not a tiktoken encoding this machine can load.
    """
    options: dict[str, Any] = {"keep": join_patterns(args.keep, args.keep_regex), "keep_spans": args.keep_span}
    if args.budget_tokenizer is not None:
        options["budget_tokenizer"] = _budget_tokenizer(args.budget_tokenizer, local=args.server is None)
    return options


def _budget_tokenizer(name: str, local: bool) -> Any:
    if not Path(name).expanduser().is_dir():
        if local:
            _check_encoding(name)
        return name
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(Path(name).expanduser())
    except (OSError, ValueError) as error:
        raise BudgetTokenizerError(
            f"--budget-tokenizer {quoted(name)} is a directory but not a transformers tokenizer ({_one_line(error)})"
        ) from error


def _check_encoding(name: str) -> None:
    """Load the tiktoken encoding ``name`` now (tiktoken keeps it for the compression), so that a wrong one fails
    before the model loads."""
    try:
        reader_tokenizer(name)
    except BudgetTokenizerError as error:
        raise BudgetTokenizerError(
            f"--budget-tokenizer {quoted(name)} is neither a tokenizer directory nor a tiktoken encoding this machine can "
            f"load ({_one_line(error)})"
        ) from error


def _one_line(error: Exception) -> str:
    """``error``'s message on one line (transformers' and tiktoken's span several)."""
    return " ".join(str(error).split()) or type(error).__name__


def _span(value: str) -> tuple[int, int]:
    match = re.fullmatch(r"(\d+):(\d+)", value.strip())
    if not match:
        raise argparse.ArgumentTypeError(f"expected START:END character offsets, got {quoted(value)}")
    return int(match.group(1)), int(match.group(2))
