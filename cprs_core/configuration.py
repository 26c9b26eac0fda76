"""Configuration of the QwenLong-CPRS hybrid-attention token critic."""

from __future__ import annotations

from typing import Any

from transformers import Qwen2Config


class CPRSConfig(Qwen2Config):
    """A :class:`~transformers.Qwen2Config` plus the two things QwenLong-CPRS adds.

    ``model_type`` stays ``"qwen2"``, so a checkpoint saved by cprs is still a Qwen2 checkpoint to any other
    tool, and the released ``Tongyi-Zhiwen/QwenLong-CPRS-7B`` ``config.json`` loads unchanged (its extra
    training keys such as ``bi_label_type`` or ``bi_loss_weight`` are kept as plain attributes).

    Args:
        bidirectional_start_layer: index of the first decoder layer whose self-attention is bidirectional;
            layers below it stay causal. Upstream hard-codes 21 for its 28-layer model (the top quarter), which
            is this default: ``num_hidden_layers * 3 // 4``. ``-1`` disables bidirectional layers.
        num_critic_labels: classes of the BIOE boundary head (``cls_head``): 4 (B, I, O, E).
    """

    def __init__(
        self,
        bidirectional_start_layer: int | None = None,
        num_critic_labels: int = 4,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if bidirectional_start_layer is None:
            bidirectional_start_layer = self.num_hidden_layers * 3 // 4
        self.bidirectional_start_layer = bidirectional_start_layer
        self.num_critic_labels = num_critic_labels

    @property
    def first_bidirectional_layer(self) -> int:
        """Index of the first bidirectional layer (``num_hidden_layers`` when there is none)."""
        if self.bidirectional_start_layer < 0:
            return self.num_hidden_layers
        return min(self.bidirectional_start_layer, self.num_hidden_layers)

    @property
    def rope_base(self) -> float:
        """RoPE theta, wherever this transformers version keeps it."""
        parameters = getattr(self, "rope_parameters", None) or {}
        return float(parameters.get("rope_theta", getattr(self, "rope_theta", 10000.0)))

    @property
    def attention_head_dim(self) -> int:
        return getattr(self, "head_dim", None) or self.hidden_size // self.num_attention_heads
