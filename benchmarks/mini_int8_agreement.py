"""Paired checks of cprs-mini's reduced-precision CPU paths (int8, bfloat16) against float32 on held-out real
questions.

Both paths compress the same queries of the real-question evaluation (``cprs_core.mini.realeval``: the gold
passage among other articles' passages, ``--split test`` by default) with the same settings; the table gives each
path's share of gold answers kept whole, its compression, and the paired difference (second minus first) with a
95% bootstrap interval over queries. Only cprs-mini runs (no baselines), so it is cheap enough for a few hundred
queries on 2 cores.

* ``--compare precision``: ``dtype="float32"`` against ``dtype="int8"`` (critic and sentence embedder in int8).
* ``--compare bfloat16``: ``dtype="float32"`` against ``dtype="bfloat16"`` on CPU (the default on CPUs with AMX,
  :func:`cprs_core.mini.precision.default_cpu_precision`).
* ``--compare embedder``: the int8 sentence embedder against the float32 one, under the same float32 critic,
  whose window scores are computed once per query and shared by both.
* ``--compare smoothing``: float32 against int8 without activation smoothing and int8 as loaded (smoothed when
  the checkpoint has ``int8_ranges.safetensors``, :mod:`cprs_core.mini.smoothing`).

Every path computes a query's window scores once and reuses them for each budget. ``--start`` and ``--samples``
pick a slice of the queries, so that slices can run in parallel processes (``--json`` writes each query's
outcomes; ``--merge`` prints the table of several such files).

Usage (data as in docs/cprs-mini-evaluation.md)::

    python -m benchmarks.mini_int8_agreement --real-data DIR --tokens 8000 --samples 300 --budgets none 0.05
    python -m benchmarks.mini_int8_agreement --real-data DIR --split tune --compare embedder --budgets 0.1 0.05 none
    python -m benchmarks.mini_int8_agreement --real-data DIR --split tune --compare smoothing --budgets 0.1 0.05 none
    python -m benchmarks.mini_int8_agreement --real-data DIR --split tune --compare bfloat16 --budgets 0.1 0.05 none
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict
from functools import partial
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from cprs_core import CompressionResult, CPRSCompressor
from cprs_core.mini import MiniCritic, load_mini_critic
from cprs_core.mini.backbone import backbone_dir, load_tokenizer
from cprs_core.mini.realeval import (Cell, bootstrap_interval, budget_name, covered, query_document,
                                     remember_window_scores)
from cprs_core.mini.realqa import SPLITS, PassagePool, load_passages, passages_of
from cprs_core.mini.similarity import SentenceEmbedder

from benchmarks.unsmoothed import UNSMOOTHED, unsmoothed_checkpoint

Compress = Callable[[str, str, float | None], CompressionResult]


def parse_budget(text: str) -> float | None:
    return None if text == "none" else float(text)


def reduced_precision_paths(
    dtype: str, float32_device: str = "cpu"
) -> tuple[dict[str, Compress], Callable[[], None]]:
    """float32 (on ``float32_device``) and ``dtype`` (``"int8"`` or ``"bfloat16"``) on CPU, each its own critic."""
    return _paths({"float32": load_mini_critic(device=float32_device, dtype="float32"),
                   dtype: load_mini_critic(device="cpu", dtype=dtype)})


def smoothing_paths(float32_device: str = "cpu") -> tuple[dict[str, Compress], Callable[[], None]]:
    """float32 (on ``float32_device``), int8 without activation smoothing (a copy of the shipped weights without
    their ranges) and int8 as shipped."""
    with unsmoothed_checkpoint() as copy:
        plain = load_mini_critic(copy, device="cpu", dtype="int8")
    return _paths({"float32": load_mini_critic(device=float32_device, dtype="float32"), UNSMOOTHED: plain,
                   "int8": load_mini_critic(device="cpu", dtype="int8")})


def _paths(critics: dict[str, MiniCritic]) -> tuple[dict[str, Compress], Callable[[], None]]:
    """One compress function per critic, each remembering its window scores until the returned function is called."""
    forgets = [remember_window_scores(critic) for critic in critics.values()]
    paths = {name: _compress(CPRSCompressor(critic)) for name, critic in critics.items()}
    return paths, lambda: [forget() for forget in forgets]


def embedder_paths() -> tuple[dict[str, Compress], Callable[[], None]]:
    """The float32 critic with the float32 sentence embedder and with the int8 one of ``dtype="int8"``; the
    window scores of a query are computed once (call the returned function between queries to forget them)."""
    critic = load_mini_critic(device="cpu", dtype="float32")
    exact = critic.embedder
    fast = load_mini_critic(device="cpu", dtype="int8").embedder
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


PATHS = {"precision": partial(reduced_precision_paths, "int8"),
         "bfloat16": partial(reduced_precision_paths, "bfloat16"),
         "smoothing": smoothing_paths}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--real-data", help="directory with squaddev_v1.1.json and coqa.test.json")
    parser.add_argument("--split", choices=SPLITS[1:], default="test")
    parser.add_argument("--compare", choices=(*PATHS, "embedder"), default="precision")
    parser.add_argument("--tokens", type=int, default=8000)
    parser.add_argument("--questions", type=int, default=1)
    parser.add_argument("--start", type=int, default=0, help="first query number")
    parser.add_argument("--samples", type=int, default=300)
    parser.add_argument("--budgets", type=parse_budget, nargs="+", default=[None], help="'none' and/or ratios")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--float32-device", default="cpu", help="where the float32 path runs ('cuda': a GPU's float32)")
    parser.add_argument("--seed", type=int, default=1, help="the evaluation's seed (1 gives its queries)")
    parser.add_argument("--json", type=Path, help="also write each query's outcomes here")
    parser.add_argument("--merge", type=Path, nargs="+", help="print the table of these --json files instead")
    args = parser.parse_args()
    if not args.merge and not args.real_data:
        parser.error("--real-data is required (unless --merge)")
    if args.compare == "embedder" and args.float32_device != "cpu":
        parser.error("--compare embedder runs on CPU only")
    return args


def run(args: argparse.Namespace) -> dict:
    """Compress the chosen queries with every path; each (path, budget)'s per-answer outcomes and sizes."""
    torch.set_num_threads(args.threads)
    pool = PassagePool(passages_of(load_passages(args.real_data), args.split), load_tokenizer(backbone_dir()))
    if args.compare == "embedder":
        paths, forget = embedder_paths()
    else:
        paths, forget = PATHS[args.compare](args.float32_device)
    cells = {(name, budget): Cell() for name in paths for budget in args.budgets}
    seconds = dict.fromkeys(paths, 0.0)
    for sample in range(args.start, args.start + args.samples):
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
    return {
        "header": f"{args.split} queries, {args.questions} question(s), ~{args.tokens} tokens, {args.threads} threads",
        "queries": args.samples, "seconds": seconds, "budgets": [budget_name(budget) for budget in args.budgets],
        "cells": {f"{name}|{budget_name(budget)}": asdict(cell) for (name, budget), cell in cells.items()},
    }


def merge(parts: list[dict]) -> dict:
    """One result of several slices' results."""
    merged = {**parts[0], "queries": sum(part["queries"] for part in parts)}
    merged["seconds"] = {name: sum(part["seconds"][name] for part in parts) for name in parts[0]["seconds"]}
    merged["cells"] = {
        key: {field: [value for part in parts for value in part["cells"][key][field]] for field in cell}
        for key, cell in parts[0]["cells"].items()
    }
    return merged


def table(result: dict, seed: int) -> str:
    """Each path against the first, per budget, paired over queries."""
    names = list(result["seconds"])
    first = names[0]
    cells = {key: Cell(**value) for key, value in result["cells"].items()}
    lines = [
        f"{result['queries']} {result['header']}; compression time "
        + ", ".join(f"{result['seconds'][name]:.0f} s {name}" for name in names),
        "| budget | path | kept | ratio | minus " + first + " [95% CI] | queries that differ |",
        "|---|---|---|---|---|---|",
    ]
    rng = np.random.default_rng(seed)
    for budget in result["budgets"]:
        reference = cells[f"{first}|{budget}"].per_query()
        for name in names:
            cell = cells[f"{name}|{budget}"]
            kept = cell.per_query()
            if name == first:
                lines.append(f"| {budget} | {name} | {kept.mean():.1%} | {cell.ratio():.1f}x | – | – |")
                continue
            low, high = bootstrap_interval(kept - reference, rng)
            lines.append(f"| {budget} | {name} | {kept.mean():.1%} | {cell.ratio():.1f}x | "
                         f"{(kept - reference).mean() * 100:+.1f} [{low * 100:+.1f}, {high * 100:+.1f}] pts | "
                         f"{int((kept != reference).sum())} |")
    return "\n".join(lines)


def main() -> None:
    args = parse_args()
    if args.merge:
        result = merge([json.loads(path.read_text()) for path in args.merge])
    else:
        result = run(args)
        if args.json:
            args.json.write_text(json.dumps(result))
    print(table(result, args.seed))


if __name__ == "__main__":
    main()
