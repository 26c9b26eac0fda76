"""The cross-encoder input of ``cprs-mini``: ``[CLS] tags: query [SEP] window [SEP]``.

The upstream instruction is long; only its tag words (from the tagging rule) and the query go into the
prefix, truncated to :data:`MAX_PREFIX_TOKENS`, so most of the 512 positions hold context. Training and
inference both build sequences here, so they cannot drift apart.
"""

from __future__ import annotations

from typing import Sequence

from tokenizers import Tokenizer

from ..prompt import parse_tags

MAX_PREFIX_TOKENS = 64
"""Prefix length limit, ``[CLS]`` and ``[SEP]`` included."""
PREFIX_TYPE, WINDOW_TYPE = 0, 1


def prefix_text(instruction: str, query: str) -> str:
    """The words the critic reads before each window: the instruction's tag names, then the query."""
    return ", ".join(parse_tags(instruction)) + ": " + query.strip()


def prefix_words(tokenizer: Tokenizer, instruction: str, query: str) -> list[int]:
    """The token ids of :func:`prefix_text`, before any cut."""
    return tokenizer.encode(prefix_text(instruction, query), add_special_tokens=False).ids


def encode_prefix(tokenizer: Tokenizer, instruction: str, query: str, max_tokens: int = MAX_PREFIX_TOKENS) -> list[int]:
    """``[CLS] tags: query [SEP]`` as token ids, the words cut to fit ``max_tokens``."""
    return framed_prefix(tokenizer, prefix_words(tokenizer, instruction, query), max_tokens)


def framed_prefix(tokenizer: Tokenizer, words: Sequence[int], max_tokens: int) -> list[int]:
    """``[CLS] words [SEP]``, the words cut to fit ``max_tokens``."""
    return [special_id(tokenizer, "[CLS]"), *words[: max_tokens - 2], special_id(tokenizer, "[SEP]")]


def special_id(tokenizer: Tokenizer, token: str) -> int:
    """Id of a special token such as ``[SEP]``."""
    token_id = tokenizer.token_to_id(token)
    if token_id is None:
        raise ValueError(f"the tokenizer has no {token} token")
    return token_id


def assemble(prefix_ids: Sequence[int], window_ids: Sequence[int], sep_id: int) -> tuple[list[int], list[int]]:
    """Input ids and token type ids of ``prefix + window + [SEP]`` (type 0 for the prefix, 1 after it)."""
    ids = [*prefix_ids, *window_ids, sep_id]
    types = [PREFIX_TYPE] * len(prefix_ids) + [WINDOW_TYPE] * (len(window_ids) + 1)
    return ids, types
