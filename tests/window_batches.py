"""Score windows one per forward batch: the reference the batched scores of a critic are compared with."""

from __future__ import annotations

from typing import Sequence

from cprs_core.mini import MiniCritic
from cprs_core.critic import WindowScores


def score_one_window_per_batch(
    critic: MiniCritic, prefix: list[int], windows: Sequence[list[int]], tags: Sequence[str]
) -> list[WindowScores]:
    """``critic.score_windows`` with a batch budget of one token, so every window is scored on its own."""
    default_batch = critic.max_batch_tokens
    try:
        critic.max_batch_tokens = 1
        return critic.score_windows(prefix, windows, tags)
    finally:
        critic.max_batch_tokens = default_batch
