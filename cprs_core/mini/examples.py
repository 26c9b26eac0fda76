"""From planted documents to training windows: BIOE token labels, window crops, model inputs."""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Sequence

import numpy as np
from tokenizers import Tokenizer

from ..critic import BIOE_LABELS
from .data import Document
from .inputs import assemble, encode_prefix, special_id

B, I, O, E = (BIOE_LABELS.index(label) for label in "BIOE")
IGNORE = -100
"""Label of positions the loss skips (prefix, separators, padding)."""


def token_labels(offsets: Sequence[tuple[int, int]], relevant: Sequence[tuple[int, int]]) -> np.ndarray:
    """BIOE label of each token: B on the first token inside a relevant range, E on its last, I between, O outside.

    A range of one token gets B. A token is inside a range when its characters lie within it.
    """
    labels = np.full(len(offsets), O, dtype=np.int64)
    starts = np.array([start for start, _ in offsets], dtype=np.int64)
    ends = np.array([end for _, end in offsets], dtype=np.int64)
    for low, high in relevant:
        inside = np.flatnonzero((starts >= low) & (ends <= high) & (ends > starts))
        if inside.size == 0:
            continue
        labels[inside] = I
        labels[inside[-1]] = E
        labels[inside[0]] = B
    return labels


@dataclass(frozen=True)
class WindowExample:
    """One training sequence: ``input_ids``/``token_type_ids`` and per-position labels (``IGNORE`` off-window)."""

    input_ids: list[int]
    token_type_ids: list[int]
    labels: list[int]


def window_example(
    rng: random.Random,
    document: Document,
    tokenizer: Tokenizer,
    max_positions: int,
    focus: float,
    short: float,
) -> WindowExample:
    """Cut one window out of ``document`` as the engine would see it, and label it.

    The window fills ``max_positions`` after the prefix (or, with probability ``short``, is shorter, like a
    context's last window). With probability ``focus`` it holds the start of a relevant sentence (often cut at
    an edge, as real windows cut sentences); otherwise it starts anywhere.
    """
    encoding = tokenizer.encode(document.text, add_special_tokens=False)
    labels = token_labels(encoding.offsets, document.relevant)
    prefix = encode_prefix(tokenizer, document.task.instruction, document.task.query)
    capacity = max_positions - len(prefix) - 1
    if rng.random() < short:
        capacity = rng.randint(16, capacity)
    count = len(encoding.ids)
    capacity = min(capacity, count)
    begins = np.flatnonzero(labels == B)
    if begins.size and rng.random() < focus:
        anchor = int(rng.choice(begins))
        start = rng.randint(max(0, anchor - capacity + 1), min(anchor, count - capacity))
    else:
        start = rng.randint(0, count - capacity)
    window = encoding.ids[start : start + capacity]
    ids, types = assemble(prefix, window, special_id(tokenizer, "[SEP]"))
    targets = [IGNORE] * len(prefix) + labels[start : start + capacity].tolist() + [IGNORE]
    return WindowExample(ids, types, targets)
