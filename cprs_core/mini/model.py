"""The ``cprs-mini`` network: the MiniLM encoder and a linear BIOE head over every token."""

from __future__ import annotations

import torch
from torch import nn
from transformers import BertModel

from ..critic import BIOE_LABELS


class MiniCriticModel(nn.Module):
    """``BertModel`` + ``Linear(hidden, 4)``: per-token logits over B, I, O, E (upstream's label order)."""

    def __init__(self, encoder: BertModel) -> None:
        super().__init__()
        self.encoder = encoder
        self.head = nn.Linear(encoder.config.hidden_size, len(BIOE_LABELS))

    def forward(
        self,
        input_ids: torch.Tensor,
        token_type_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Logits ``[batch, length, 4]``."""
        hidden = self.encoder(
            input_ids=input_ids, token_type_ids=token_type_ids, attention_mask=attention_mask
        ).last_hidden_state
        return self.head(hidden)
