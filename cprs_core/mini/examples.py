"""From planted documents to training windows: BIOE token labels, sentence relevance, window crops, model inputs."""

from __future__ import annotations

import bisect
import random
from dataclasses import dataclass
from typing import Sequence

import numpy as np
from tokenizers import Tokenizer

from ..critic import BIOE_LABELS
from ..text_units import sentence_ranges
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


def sentence_units(
    text: str, offsets: Sequence[tuple[int, int]], relevant: Sequence[tuple[int, int]]
) -> tuple[np.ndarray, np.ndarray]:
    """Each token's sentence index (-1: none) and each sentence's relevance (1.0 when it overlaps a relevant range).

    Sentences are the engine's (:func:`~cprs_core.text_units.sentence_ranges`), and a token belongs to the
    sentence holding its last character, as the engine assigns tokens to units.
    """
    sentences = sentence_ranges(text)
    starts = [start for start, _ in sentences]
    unit_of = np.full(len(offsets), -1, dtype=np.int64)
    for index, (_, token_end) in enumerate(offsets):
        unit = bisect.bisect_right(starts, token_end - 1) - 1
        if unit >= 0 and token_end <= sentences[unit][1]:
            unit_of[index] = unit
    labels = np.array(
        [float(any(start < high and end > low for low, high in relevant)) for start, end in sentences], dtype=np.float32
    )
    return unit_of, labels


@dataclass(frozen=True)
class WindowExample:
    """One training sequence: ``input_ids``/``token_type_ids``, per-position BIOE labels (``IGNORE`` off-window),
    each position's sentence number within the window (-1 off-window) and each of those sentences' relevance."""

    input_ids: list[int]
    token_type_ids: list[int]
    labels: list[int]
    unit_ids: list[int]
    unit_labels: list[float]


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
    unit_of, unit_relevance = sentence_units(document.text, encoding.offsets, document.relevant)
    in_window = unit_of[start : start + capacity]
    present = np.unique(in_window[in_window >= 0])
    local = np.where(in_window >= 0, np.searchsorted(present, in_window), -1)
    unit_ids = [-1] * len(prefix) + local.tolist() + [-1]
    return WindowExample(ids, types, targets, unit_ids, unit_relevance[present].tolist())
