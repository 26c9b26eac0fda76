"""The ``cprs-mini`` network: the MiniLM encoder, a linear BIOE head and a linear relevance head over every token."""

from __future__ import annotations

import torch
from torch import nn
from transformers import BertModel

from ..critic import BIOE_LABELS


class MiniCriticModel(nn.Module):
    """``BertModel`` + ``Linear(hidden, 4)`` (BIOE, upstream's label order) + ``Linear(hidden, 1)`` (relevance).

    The relevance logit is linear in the hidden state, so the mean of a sentence's token logits is the logit of
    its mean-pooled hidden state: that mean is what training ranks and the engine scores a unit with.

    Args:
        encoder: the backbone.
        relevance_head: whether the model has the relevance head (checkpoints before it have none).
    """

    def __init__(self, encoder: BertModel, relevance_head: bool = True) -> None:
        super().__init__()
        self.encoder = encoder
        self.head = nn.Linear(encoder.config.hidden_size, len(BIOE_LABELS))
        self.relevance = nn.Linear(encoder.config.hidden_size, 1) if relevance_head else None

    def forward(
        self,
        input_ids: torch.Tensor,
        token_type_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """BIOE logits ``[batch, length, 4]`` and relevance logits ``[batch, length]`` (``None`` without the head)."""
        hidden = self.encoder(
            input_ids=input_ids, token_type_ids=token_type_ids, attention_mask=attention_mask
        ).last_hidden_state
        return self.head(hidden), None if self.relevance is None else self.relevance_logits(hidden)

    def relevance_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """The relevance head as a product summed over each token's own hidden state, not a matrix product: a
        one-column matrix product rounds differently with the number of rows, and a window's scores must not
        depend on the windows batched beside it."""
        assert self.relevance is not None
        return (hidden * self.relevance.weight[0]).sum(-1) + self.relevance.bias
