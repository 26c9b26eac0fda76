"""Does a window's score depend on the windows batched beside it, per CPU precision and thread count?

cprs-mini's critic scores one window (8 x 512 random-token windows, fixed seed) alone and inside batches of 8, 4
and 2 windows, and reports the largest difference of any BIOE or relevance logit of that window. Each precision
runs twice: as it loads (int8 calls its linear layers once per window, floats run whole batches) and with every
encoder linear layer called once per window (:class:`cprs_core.mini.precision.PerWindowLinear`), with the time of
64 windows (32,768 tokens) for each, median of ``--repeats``: what batch independence would cost.

Usage (from the repository root)::

    python -m benchmarks.cpu_batch_independence --threads 2 4 16 --dtypes float32 bfloat16 int8 --repeats 3
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from cprs_core.mini import load_mini_critic
from cprs_core.mini.model import MiniCriticModel
from cprs_core.mini.precision import PerWindowLinear

WINDOWS, LENGTH, PREFIX = 8, 512, 40
ROWS_OF_EACH_BATCH = ([0, 1, 2, 3, 4, 5, 6, 7], [0, 5, 6, 7], [0, 3])


def every_linear_per_window(module: torch.nn.Module) -> None:
    """Wrap each float ``nn.Linear`` inside ``module`` (not yet wrapped) in :class:`PerWindowLinear`, in place."""
    for name, child in module.named_children():
        if isinstance(child, torch.nn.Linear):
            setattr(module, name, PerWindowLinear(child))
        elif not isinstance(child, PerWindowLinear):
            every_linear_per_window(child)


def windows() -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids and token types of ``WINDOWS`` windows shaped like the critic's: [CLS] prefix [SEP] window [SEP]."""
    ids = torch.randint(1000, 29000, (WINDOWS, LENGTH), generator=torch.Generator().manual_seed(0))
    ids[:, 0], ids[:, PREFIX], ids[:, -1] = 101, 102, 102
    types = torch.zeros_like(ids)
    types[:, PREFIX + 1:] = 1
    return ids, types


def largest_batch_difference(model: MiniCriticModel, ids: torch.Tensor, types: torch.Tensor) -> float:
    """The largest difference of window 0's logits alone and in each batch of :data:`ROWS_OF_EACH_BATCH`."""
    alone_bioe, alone_relevance = model(ids[:1], types[:1])
    largest = 0.0
    for rows in ROWS_OF_EACH_BATCH:
        bioe, relevance = model(ids[rows], types[: len(rows)])
        largest = max(largest, (alone_bioe[0] - bioe[0]).abs().max().item())
        if relevance is not None and alone_relevance is not None:
            largest = max(largest, (alone_relevance[0] - relevance[0]).abs().max().item())
    return largest


def seconds_for_64_windows(model: MiniCriticModel, ids: torch.Tensor, types: torch.Tensor, repeats: int) -> float:
    """Median seconds of 8 forward batches of the 8 windows, after one warm-up batch."""
    model(ids, types)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(8):
            model(ids, types)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, nargs="+", default=[2, 4])
    parser.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16", "int8"])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    ids, types = windows()
    print("| dtype | linear layers | threads | largest logit difference | s per 32,768 tokens | tokens/s |")
    print("|---|---|---|---|---|---|")
    for dtype in args.dtypes:
        for per_window in (False, True) if dtype != "int8" else (False,):  # int8 loads per window already
            model = load_mini_critic(dtype=dtype).model
            if per_window:
                every_linear_per_window(model.encoder)
            wrapped = any(isinstance(module, PerWindowLinear) for module in model.encoder.modules())
            label = ("per window" if per_window else "per window (as loaded)") if wrapped else "whole batch (as loaded)"
            for threads in args.threads:
                torch.set_num_threads(threads)
                with torch.inference_mode():
                    difference = largest_batch_difference(model, ids, types)
                    seconds = seconds_for_64_windows(model, ids, types, args.repeats)
                print(f"| {dtype} | {label} | {threads} | {difference:.3g} | {seconds:.2f} | "
                      f"{WINDOWS * 8 * LENGTH / seconds:,.0f} |", flush=True)


if __name__ == "__main__":
    main()
