"""Retrieval baselines the evaluation compares ``cprs-mini`` against, under the same token budget.

* :class:`BM25Chunks`: whole sentences packed into chunks of at most ~128 tokens, ranked by BM25 (rank-bm25).
* :class:`EmbeddingSentences`: sentences ranked by cosine similarity to the query under the same MiniLM,
  mean-pooled and normalised as sentence-transformers does for all-MiniLM-L6-v2.

Both rank their units once per document and query (:class:`Ranking`); a ranking then keeps its best units
until the kept tokens reach a budget (so never tighter than asked), in document order.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
from tokenizers import Tokenizer
from transformers import BertModel

from ..text_units import lower_words, sentence_ranges
from .similarity import SentenceEmbedder

CHUNK_TOKENS = 128


@dataclass(frozen=True)
class Selection:
    """What a baseline kept: the text (units joined by newlines, in order) and its token count."""

    text: str
    tokens: int


def _units(text: str, count_tokens: Callable[[list[str]], list[int]]) -> tuple[list[str], list[int]]:
    pieces = [text[start:end] for start, end in sentence_ranges(text)]
    return pieces, count_tokens(pieces)


@dataclass(frozen=True)
class Ranking:
    """A document's units, their token counts and their relevance scores."""

    units: Sequence[str]
    tokens: Sequence[int]
    scores: np.ndarray

    def keep(self, budget: int) -> Selection:
        """The highest-scoring units, best first, until their tokens reach ``budget``; joined in document order."""
        chosen: list[int] = []
        kept = 0
        for index in np.argsort(-self.scores, kind="stable"):
            if kept >= budget:
                break
            chosen.append(int(index))
            kept += self.tokens[index]
        chosen.sort()
        return Selection("\n".join(self.units[index] for index in chosen), kept)


class BM25Chunks:
    """BM25 over consecutive sentences packed into chunks of at most :data:`CHUNK_TOKENS` tokens."""

    def __init__(self, count_tokens: Callable[[list[str]], list[int]], chunk_tokens: int = CHUNK_TOKENS) -> None:
        self.count_tokens = count_tokens
        self.chunk_tokens = chunk_tokens

    def chunks(self, text: str) -> tuple[list[str], list[int]]:
        """The chunks of ``text`` and their token counts (a longer sentence is a chunk of its own)."""
        sentences, counts = _units(text, self.count_tokens)
        chunks: list[list[str]] = []
        sizes: list[int] = []
        for sentence, count in zip(sentences, counts):
            if chunks and sizes[-1] + count <= self.chunk_tokens:
                chunks[-1].append(sentence)
                sizes[-1] += count
            else:
                chunks.append([sentence])
                sizes.append(count)
        return [" ".join(chunk) for chunk in chunks], sizes

    def rank(self, text: str, query: str) -> Ranking:
        """Chunks of ``text`` scored by BM25 against ``query``."""
        from rank_bm25 import BM25Okapi

        chunks, sizes = self.chunks(text)
        scores = np.asarray(BM25Okapi([lower_words(chunk) for chunk in chunks]).get_scores(lower_words(query)))
        return Ranking(chunks, sizes, scores)


class EmbeddingSentences:
    """Sentences ranked by cosine similarity of mean-pooled MiniLM embeddings to the query's."""

    def __init__(
        self,
        encoder: BertModel,
        tokenizer: Tokenizer,
        count_tokens: Callable[[list[str]], list[int]],
        max_tokens: int = 256,
        batch_size: int = 64,
    ) -> None:
        self.embedder = SentenceEmbedder(encoder, tokenizer, max_tokens, batch_size)
        self.count_tokens = count_tokens

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """Unit-length embeddings ``[len(texts), hidden]`` (``[CLS] text [SEP]``, mean over real tokens)."""
        return self.embedder.embed(texts)

    def rank(self, text: str, query: str) -> Ranking:
        """Sentences of ``text`` scored by cosine similarity to ``query``."""
        sentences, counts = _units(text, self.count_tokens)
        return Ranking(sentences, counts, self.embed(sentences) @ self.embed([query])[0])
