"""How large a ``keep_regex`` becomes once compiled, told before it is compiled.

The ``regex`` package writes a counted repeat out when it compiles it: ``a{1000000000}`` asks for a billion copies
of ``a`` (about 250 bytes each), which takes the process's memory until it is killed, and ``a{10000000}`` takes
2.8 GB and 6 s. Nested repeats multiply (``((a{1000}){1000}){1000}``). So a pattern's written-out size is estimated
from its text first, with Python's own regular expression parser, and a pattern too large is refused:
:func:`cprs_core.keep.compile_regex` above :data:`MAX_COMPILED_ITEMS`, a server above its own, smaller limit.
"""

from __future__ import annotations

import re
from typing import Any

from .errors import KeepError, quoted

try:
    from re import _parser as _regex_parser  # Python 3.11+
except ImportError:  # pragma: no cover - Python 3.10
    import sre_parse as _regex_parser  # type: ignore[no-redef]

MAX_COMPILED_ITEMS = 100_000
"""Most items a regex compiled for ``keep`` may hold once written out (about 25 MB; ``a{100000}`` compiles in
well under a second)."""

_REPEATS = {"MAX_REPEAT", "MIN_REPEAT", "POSSESSIVE_REPEAT"}
_COUNTED_REPEAT = re.compile(r"\{(\d*),?\d*\}")


def check_compiled_size(pattern: str, limit: int, *, name: str = "keep_regex ", limit_text: str = "") -> None:
    """Refuse ``pattern`` when compiling it would write out more than ``limit`` items (:func:`written_out_items`).

    ``name`` starts the message (a server's validation error already names the field); ``limit_text`` says whose
    limit it is.

    Raises:
        KeepError: the pattern is too large (a ``ValueError``, so pydantic validators report it as theirs).
    """
    items = written_out_items(pattern)
    if items <= limit:
        return
    if _COUNTED_REPEAT.search(pattern):
        raise KeepError(
            f"{name}{quoted(pattern)} has counted repeats ({{n}}) that compiling writes out to about {items} items, "
            f"more than {limit_text}{limit}; use smaller counts, or * and + (not counted)")
    raise KeepError(f"{name}{quoted(pattern)} compiles to about {items} items, more than {limit_text}{limit}; "
                    "use a shorter pattern")


def written_out_items(pattern: str) -> int:
    """About how many items ``pattern`` holds once every counted repeat's least count of copies is written out (as
    many as its length at most without counted repeats). A pattern Python's parser does not read (``regex``-only
    syntax such as ``\\p{L}``) is bounded by its length times the product of all its counted repeats' least counts.
    """
    try:
        return max(_items(_regex_parser.parse(pattern)), 1)
    except (re.error, RecursionError, OverflowError, ValueError):
        product = 1
        for least in _COUNTED_REPEAT.findall(pattern):
            product *= max(int(least or 0), 1)
        return len(pattern) * product


def _items(parsed: Any) -> int:
    """The written-out items of a parsed pattern, or of an item's operand (0 for a number or a flag)."""
    if isinstance(parsed, _regex_parser.SubPattern):
        return sum(_item(operator, operand) for operator, operand in parsed)
    if isinstance(parsed, (list, tuple)):
        return sum(_items(part) for part in parsed)
    return 0


def _item(operator: Any, operand: Any) -> int:
    """One item: a counted repeat is its body times its least count; a group, its contents; anything else, 1."""
    if str(operator) in _REPEATS:
        least, _, body = operand
        return max(least, 1) * _items(body)
    return max(_items(operand), 1)
