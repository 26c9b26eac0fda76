"""Query–sentence similarity under the un-adapted MiniLM: the embedding half of ``cprs-mini``'s sentence ranking.

``all-MiniLM-L6-v2`` was trained as a sentence embedder on about a billion pairs; its cosine similarity ranks
real questions' evidence well, and differently from the critic trained on a few thousand questions. cprs-mini
ranks sentences by the sum of both z-scores (see :meth:`cprs_core.spans.SentenceScores.from_relevance`).
"""

from __future__ import annotations

import re
from typing import Sequence

import numpy as np
import torch
from tokenizers import Tokenizer
from transformers import BertModel

from ..spans import zscore

_QUESTION_END = re.compile(r"(?<=[?？])\s+")
EMBEDDER_MAX_TOKENS = 256
"""Texts are cut to this many tokens (``[CLS]`` and ``[SEP]`` included) before they are embedded."""


def questions_of(query: str) -> list[str]:
    """The questions a query is made of (split after each question mark); the query itself if it has one."""
    return [part for part in _QUESTION_END.split(query.strip()) if part]


def probes_of(query: str) -> list[str]:
    """What a query's similarity is measured against: the query, and each of its questions if it has several."""
    questions = questions_of(query)
    return [query, *questions] if len(questions) > 1 else [query]


def padded_ids(sequences: Sequence[Sequence[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded ``long`` ids and their attention mask (``[0, 1]`` tensors when there are none)."""
    length = max((len(sequence) for sequence in sequences), default=1)
    ids = torch.zeros(len(sequences), length, dtype=torch.long)
    mask = torch.zeros(len(sequences), length, dtype=torch.long)
    for row, sequence in enumerate(sequences):
        ids[row, : len(sequence)] = torch.tensor(sequence, dtype=torch.long)
        mask[row, : len(sequence)] = 1
    return ids, mask


def mean_pooled(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Unit-length mean of each row's hidden states over its ``mask`` (sentence-transformers' pooling), float32."""
    pooled = (hidden.float() * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)
    return torch.nn.functional.normalize(pooled, dim=-1)


class SentenceEmbedder:
    """Mean-pooled, unit-length embeddings of ``[CLS] text [SEP]``, as sentence-transformers pools this model.

    Args:
        encoder: the un-adapted backbone, in eval mode.
        tokenizer: its tokenizer (no truncation or padding set).
        max_tokens: texts are cut to this many tokens.
        batch_size: texts per forward pass (sorted by length to limit padding).
        per_question_z: for a query of several questions, z-score each question's cosines over the texts before
            taking a text's best, so a question whose wording happens to sit closer to every text does not take
            the whole budget (otherwise the best raw cosine is taken).
    """

    def __init__(
        self, encoder: BertModel, tokenizer: Tokenizer, max_tokens: int = EMBEDDER_MAX_TOKENS, batch_size: int = 64,
        per_question_z: bool = False,
    ) -> None:
        self.encoder = encoder
        self.tokenizer = tokenizer
        self.max_tokens = max_tokens
        self.batch_size = batch_size
        self.per_question_z = per_question_z

    @torch.inference_mode()
    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """``float32 [len(texts), hidden]`` unit vectors."""
        encodings = self.tokenizer.encode_batch(list(texts))
        ids, mask = padded_ids([encoding.ids[: self.max_tokens] for encoding in encodings])
        device = next(self.encoder.parameters()).device
        return self.embed_ids(ids.to(device), mask.to(device)).cpu().numpy()

    @torch.inference_mode()
    def embed_ids(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """``float32 [rows, hidden]`` unit vectors of padded input ids (``[CLS] text [SEP]``, as
        :func:`padded_ids` gives them), on their device: ``batch_size`` rows of similar length per pass, each
        pass cut to its longest row."""
        lengths = mask.sum(1)
        order = torch.argsort(lengths, stable=True)
        result = torch.empty(len(ids), self.encoder.config.hidden_size, device=ids.device)
        for begin in range(0, len(order), self.batch_size):
            rows = order[begin : begin + self.batch_size]
            width = int(lengths[rows].max())
            hidden = self.encoder(input_ids=ids[rows, :width], attention_mask=mask[rows, :width]).last_hidden_state
            result[rows] = mean_pooled(hidden, mask[rows, :width])
        return result

    def similarity(self, query: str, texts: Sequence[str]) -> np.ndarray:
        """Each text's best cosine against the query and against each question in it (z-scored per probe first
        with ``per_question_z``)."""
        if not texts:
            return np.zeros(0, dtype=np.float32)
        probes = probes_of(query)
        cosines = self.embed(texts) @ self.embed(probes).T
        if self.per_question_z and len(probes) > 1:
            cosines = zscore(cosines)
        return cosines.max(axis=1)
