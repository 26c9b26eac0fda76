"""Grouping windows into forward batches under a token budget."""

from __future__ import annotations

from typing import Sequence


def plan_batches(lengths: Sequence[int], max_batch_tokens: int) -> list[list[int]]:
    """Indices of windows grouped into batches of equal length (so no padding) of at most ``max_batch_tokens``.

    Every window lands in exactly one batch; a window longer than the budget gets a batch of its own.
    Batches come out in order of their first window.
    """
    by_length: dict[int, list[int]] = {}
    for index, length in enumerate(lengths):
        by_length.setdefault(length, []).append(index)
    batches = []
    for length, indices in by_length.items():
        per_batch = max(1, max_batch_tokens // max(length, 1))
        batches.extend(indices[i : i + per_batch] for i in range(0, len(indices), per_batch))
    return sorted(batches, key=lambda batch: batch[0])
