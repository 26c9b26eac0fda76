"""``cprs-mini``: the embedded CPU critic (MiniLM + a trained BIOE head and low-rank adapter).

``CPRSCompressor.from_pretrained()`` with no argument loads it; see ``docs/cprs-mini.md`` for how it was trained.
"""

from .checkpoint import is_mini_checkpoint
from .critic import MiniCritic, load_mini_critic

__all__ = ["MiniCritic", "is_mini_checkpoint", "load_mini_critic"]
