"""Budgets in the reader's tokens: count ``target_tokens`` in the tokenizer of the LLM that will read the text.

``budget_tokenizer`` is a transformers tokenizer (or a ``tokenizers.Tokenizer``), a tiktoken encoding name such as
``"o200k_base"`` (or a ``tiktoken.Encoding``), or any ``str -> int`` function. The critic still scores in its own
tokens; the engine then searches the largest budget in critic tokens whose kept text, as it comes out (spans
joined by the separator), has at most the target in reader tokens.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from .errors import BudgetError, BudgetTokenizerError

TokenCounter = Callable[[str], int]
"""Counts the tokens of a text in some tokenizer."""


@dataclass(frozen=True)
class ReaderTokenizer:
    """A resolved ``budget_tokenizer``: a name for reports and the counting function."""

    name: str
    count: TokenCounter


def reader_tokenizer(spec: Any) -> ReaderTokenizer:
    """Resolve a ``budget_tokenizer`` value (see the module docstring).

    Raises:
        BudgetTokenizerError: an unknown tiktoken name, tiktoken missing, or a value that cannot count tokens.
    """
    if isinstance(spec, str):
        return ReaderTokenizer(spec, _tiktoken_counter(spec))
    encode = getattr(spec, "encode", None)
    if callable(encode) and hasattr(spec, "eos_token_id"):  # transformers tokenizer
        return ReaderTokenizer(getattr(spec, "name_or_path", type(spec).__name__) or type(spec).__name__,
                               lambda text: len(encode(text, add_special_tokens=False)))
    if callable(encode) and hasattr(spec, "encode_batch") and hasattr(spec, "get_vocab_size"):  # tokenizers.Tokenizer
        return ReaderTokenizer(type(spec).__name__, lambda text: len(encode(text, add_special_tokens=False).ids))
    if callable(encode) and hasattr(spec, "n_vocab"):  # tiktoken.Encoding
        return ReaderTokenizer(spec.name, lambda text: len(encode(text, disallowed_special=())))
    if callable(spec):
        return ReaderTokenizer(getattr(spec, "__name__", type(spec).__name__), _checked_counter(spec))
    raise BudgetTokenizerError(
        f"budget_tokenizer must be a transformers tokenizer, a tiktoken encoding name or a str -> int function, "
        f"got {type(spec).__name__}"
    )


def _tiktoken_counter(name: str) -> TokenCounter:
    try:
        import tiktoken
    except ImportError as error:
        raise BudgetTokenizerError(
            f"budget_tokenizer={name!r} names a tiktoken encoding, but tiktoken is not installed: pip install tiktoken"
        ) from error
    try:
        encoding = tiktoken.get_encoding(name)
    except ValueError as error:
        raise BudgetTokenizerError(f"budget_tokenizer={name!r} is not a tiktoken encoding name ({error})") from error
    except Exception as error:  # tiktoken downloads its BPE files on first use
        raise BudgetTokenizerError(
            f"tiktoken could not load the encoding {name!r} ({type(error).__name__}); it downloads its files on "
            "first use (cached in $TIKTOKEN_CACHE_DIR): load it once with network, or pass a tokenizer object"
        ) from error
    return lambda text: len(encoding.encode(text, disallowed_special=()))


def _checked_counter(count: Callable[[str], Any]) -> TokenCounter:
    def checked(text: str) -> int:
        try:
            value = count(text)
        except BudgetTokenizerError:
            raise
        except Exception as error:  # a wrong signature, or a bug in the caller's function
            raise BudgetTokenizerError(
                f"budget_tokenizer failed on a text: {type(error).__name__}: {error}; it must take one str and "
                "return its token count") from error
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise BudgetTokenizerError(f"budget_tokenizer returned {value!r} for a text; it must return an int >= 0")
        return value

    return checked


def reader_budget(reader_total: int, target_ratio: float | None, target_tokens: int | None) -> int:
    """The budget in reader tokens: ``target_tokens``, or ``target_ratio`` of the context's reader tokens."""
    if target_ratio is not None:
        return max(1, int(reader_total * target_ratio))
    assert target_tokens is not None
    return target_tokens


def fit_budget(
    kept_text: Callable[[int], str | None], count: TokenCounter, target: int, critic_total: int,
    at_least_one: bool = False,
) -> int:
    """The largest budget in critic tokens whose kept text has at most ``target`` reader tokens (binary search).

    ``kept_text(budget)`` is the text kept under a critic-token budget, or ``None`` when that budget cannot be
    met (no unit fits). More budget keeps more text, so the reader count grows with it. With ``at_least_one``,
    a target that no kept text fits in gives the smallest budget, 1 (whose caller keeps its best unit alone).

    Raises:
        BudgetError: not even the smallest budget keeps a text of at most ``target`` reader tokens (and not
            ``at_least_one``).
    """
    low, high, best = 1, critic_total, None
    while low <= high:
        middle = (low + high) // 2
        text = kept_text(middle)
        if text is not None and count(text) <= target:
            best, low = middle, middle + 1
        else:
            high = middle - 1
    if best is None and at_least_one:
        return 1
    if best is None:
        raise BudgetError(
            f"no kept text fits in {target} tokens of the budget tokenizer; raise target_tokens "
            "or use a finer granularity"
        )
    return best
