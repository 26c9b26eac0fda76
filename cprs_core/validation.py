"""A compression's arguments: their defaults, and the checks that make every wrong input a clear ``CPRSError``.

The core API, the adapters, the tools, the CLI, the server and Ray batch call these before any model loads (or,
for a loaded model, before any tokenizing), and each error names the argument. This module imports neither torch
nor numpy, so the CLI can check its options in well under a second.
"""

from __future__ import annotations

import difflib
import math
import threading
import unicodedata
from collections.abc import Collection, Iterable
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import urlsplit

from .errors import BudgetError, CPRSError, GranularityError, InstructionError, OptionError, QueryError, quoted
from .prompt import INSTRUCTIONS, LITERAL_INSTRUCTIONS

if TYPE_CHECKING:
    from .engine import CompressionRequest

DEFAULT_MODEL = "cprs-mini"
"""Name of the embedded CPU critic shipped inside the package (the model when none is given)."""

Granularity = Literal["token", "sentence", "paragraph", "line"]
GRANULARITIES: tuple[str, ...] = ("token", "sentence", "paragraph", "line")
DEFAULT_GRANULARITY: Granularity = "sentence"
"""The one default everywhere: core API, ``CompressionRequest``, CLI, ``/v1`` server endpoints, adapters, tools and
Ray batch. Whole sentences holding tagged tokens read as text, survive a sentence cut by a window edge, and are
what the real-question evaluation of cprs-mini measures best (docs/cprs-mini-evaluation.md); ``"token"`` keeps
only the tagged spans (fragments such as "The" on a real question). Upstream's endpoint keeps upstream's token
spans."""


def check_query(query: Any, allow_empty_query: Any = False, name: str = "query") -> None:
    """``query`` must be a non-blank string, unless ``allow_empty_query`` opts in to query-free compression.

    ``name`` is the argument's name in the caller's API (e.g. ``question`` for tool pruning).

    Raises:
        QueryError: ``query`` is not a string, or is empty/whitespace without the opt-in.
        OptionError: ``allow_empty_query`` is not a bool.
    """
    check_bool("allow_empty_query", allow_empty_query)
    if not isinstance(query, str):
        raise QueryError(f"{name} must be a string (the question the kept text must answer), got {_describe(query)}")
    if not has_visible_text(query) and not allow_empty_query:
        what = "is empty" if not query.strip() else f"holds only invisible characters ({query[:20]!r})"
        raise QueryError(
            f"{name} {what}: give the question the kept text must answer (without one the critic keeps stray "
            "fragments), or pass allow_empty_query=True (CLI: --no-query) to compress without a question on purpose"
        )


def has_visible_text(text: str) -> bool:
    """Whether ``text`` holds a character other than whitespace, control and format characters (zero-width
    spaces, BOMs, soft hyphens), which tokenizers drop: a question of only those asks nothing."""
    return any(not char.isspace() and unicodedata.category(char) not in ("Cc", "Cf") for char in text)


def check_instruction(instruction: Any) -> None:
    """``instruction`` must be ``None`` (the ``fact`` preset), a preset name (or its ``-literal`` form, see
    :data:`~cprs_core.prompt.LITERAL_INSTRUCTIONS`), or free text with its tagging rule.

    Raises:
        InstructionError: not a string, empty/whitespace, or a single word close to a preset name but not one
            (``"needles"``, ``"Fact"``): the message suggests the preset.
    """
    if instruction is None:
        return
    if not isinstance(instruction, str):
        raise InstructionError(f"instruction must be a string or None, got {_describe(instruction)}")
    text = instruction.strip()
    if not text:
        raise InstructionError(
            f"instruction is empty: leave it out (None) for the default 'fact' preset, name a preset "
            f"({', '.join(INSTRUCTIONS)}), or write your own with a tagging rule (\"... tag the X with 'x'\")"
        )
    if text in INSTRUCTIONS or text in LITERAL_INSTRUCTIONS or len(text.split()) > 1:
        return
    close = difflib.get_close_matches(text.lower(), [*INSTRUCTIONS, *LITERAL_INSTRUCTIONS], n=1, cutoff=0.6)
    if close:
        raise InstructionError(
            f"unknown instruction preset {text!r}: did you mean {close[0]!r}? The presets are "
            f"{', '.join(repr(name) for name in INSTRUCTIONS)} (and their '-literal' forms); free text needs a "
            "tagging rule (\"... tag the X with 'x'\")"
        )


def check_granularity(granularity: Any) -> None:
    """``granularity`` must be one of :data:`GRANULARITIES`."""
    if granularity not in GRANULARITIES:
        raise GranularityError(f"granularity must be one of {GRANULARITIES}, got {quoted(granularity)}")


def check_budget(target_ratio: Any, target_tokens: Any) -> None:
    """At most one budget; ``target_ratio`` in (0, 1], ``target_tokens`` a positive integer.

    Raises:
        BudgetError: both given, a wrong type, or out of range.
    """
    if target_ratio is not None and target_tokens is not None:
        raise BudgetError("give target_ratio or target_tokens, not both")
    if target_ratio is not None:
        if not _is_number(target_ratio):
            raise BudgetError(f"target_ratio must be a number in (0, 1], got {_describe(target_ratio)}")
        if not 0.0 < target_ratio <= 1.0:
            raise BudgetError(f"target_ratio is the fraction of tokens to keep, in (0, 1]; got {target_ratio}")
    if target_tokens is not None and (not _is_int(target_tokens) or target_tokens < 1):
        raise BudgetError(f"target_tokens must be a positive integer, got {_describe(target_tokens)}")


def check_settings(
    instruction: Any,
    granularity: Any,
    target_ratio: Any,
    target_tokens: Any,
    min_span_tokens: Any,
    separator: Any,
) -> None:
    """Every compression option except the query (what an adapter can check when it is built).

    Raises:
        InstructionError, GranularityError, BudgetError, OptionError: the first wrong option, named.
    """
    check_instruction(instruction)
    check_granularity(granularity)
    check_budget(target_ratio, target_tokens)
    check_int("min_span_tokens", min_span_tokens, minimum=1)
    if not isinstance(separator, str):
        raise OptionError(f"separator must be a string (placed between kept spans), got {_describe(separator)}")


def check_request_type(request: Any) -> None:
    """``request`` must be a :class:`~cprs_core.CompressionRequest` (an item of a ``compress_batch`` list)."""
    from .engine import CompressionRequest  # the engine imports this module

    if not isinstance(request, CompressionRequest):
        raise OptionError(
            f"a request must be a CompressionRequest, got {type(request).__name__}: build one per text, "
            "CompressionRequest(context, query, ...)"
        )


def check_request(request: "CompressionRequest") -> None:
    """Every argument of ``request`` except the context (checked when it is decoded): query and options."""
    check_query(request.query, request.allow_empty_query)
    check_settings(
        request.instruction, request.granularity, request.target_ratio, request.target_tokens,
        request.min_span_tokens, request.separator,
    )
    if request.sentence_windows is not None:
        check_bool("sentence_windows", request.sentence_windows)
    check_bool("fill_backward", request.fill_backward)
    check_bool("upstream_spans", request.upstream_spans)


def listed(
    items: Any, name: str, item_type: type | tuple[type, ...], error: type[CPRSError] = OptionError
) -> list[Any]:
    """``items`` (a list, a tuple or any other iterable, e.g. a generator) as a list, so it is read only once.

    Raises:
        error: naming ``name``, for ``None``, a single string, a single ``item_type`` or anything else that is not
            a collection of items (its items are not checked here).
    """
    if isinstance(items, (str, bytes, bytearray, item_type)) or not isinstance(items, Iterable):
        raise error(f"{name} must be a list (a single one in a list too), got {_describe(items)}")
    return list(items)


def check_known_options(given: Iterable[str], known: Collection[str]) -> None:
    """An :class:`OptionError` naming the first of ``given`` that is not in ``known`` (a mistyped option would
    otherwise be ignored, e.g. ``target_ratoi=0.1`` compressing without a budget)."""
    for name in given:
        if name not in known:
            close = difflib.get_close_matches(name, list(known), n=1, cutoff=0.6)
            hint = f"did you mean {close[0]!r}? " if close else ""
            raise OptionError(f"unknown option {quoted(name)}: {hint}The options are {', '.join(sorted(known))}")


def check_timeout(name: str, value: Any) -> None:
    """An :class:`OptionError` unless ``value`` is a number of seconds a socket accepts: above 0, at most
    ``threading.TIMEOUT_MAX`` (``nan`` and ``inf`` included in what is refused)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= threading.TIMEOUT_MAX:
        raise OptionError(
            f"{name} must be a positive number of seconds, at most {threading.TIMEOUT_MAX:.0f}; got {quoted(value)}"
        )


def check_server_url(name: str, url: Any) -> None:
    """An :class:`OptionError` unless ``url`` is an ``http(s)://host[:port]`` address (anything else would fail
    deep inside urllib on the first call)."""
    try:  # urlsplit refuses a broken IPv6 address ('http://[::1'), .port a port that is not one ('h:abc', 'h:99999')
        parts = urlsplit(url) if isinstance(url, str) else None
        port_ok = parts is not None and (parts.port is None or parts.port > 0)
    except ValueError:
        parts, port_ok = None, False
    if parts is None or parts.scheme not in ("http", "https") or not parts.hostname or not port_ok:
        raise OptionError(f"{name} must be an http:// or https:// URL such as http://gpu-box:8091, got {quoted(url)}")
    if any(character.isspace() for character in parts.netloc):
        raise OptionError(f"{name} has a space in its host, {quoted(parts.netloc)}: no host name holds one")


def check_progress(progress: Any) -> None:
    """``progress`` must be ``None`` or a callable taking (windows scored, windows total)."""
    if progress is not None and not callable(progress):
        raise OptionError(
            f"progress must be a function of (windows scored, windows total) or None, got {_describe(progress)}"
        )


def check_bool(name: str, value: Any) -> None:
    """``value`` must be ``True`` or ``False`` (not a truthy string or number); an :class:`OptionError` naming ``name``."""
    if not isinstance(value, bool):
        raise OptionError(f"{name} must be True or False, got {_describe(value)}")


def check_int(name: str, value: Any, minimum: int, error: type[CPRSError] = OptionError) -> None:
    """``value`` must be an integer (not a bool) of at least ``minimum``; raises ``error`` naming ``name``."""
    if not _is_int(value) or value < minimum:
        raise error(f"{name} must be an integer >= {minimum}, got {_describe(value)}")


def check_optional_int(name: str, value: Any, minimum: int, error: type[CPRSError] = OptionError) -> None:
    """As :func:`check_int`, with ``None`` allowed (the default)."""
    if value is not None:
        check_int(name, value, minimum, error)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and not math.isnan(value)


def _describe(value: Any) -> str:
    kind = type(value).__name__
    if type(value).__module__ == "numpy":  # np.int64(5) reads like an int: say how to pass one
        kind = f"a NumPy {kind}: convert it with int() or float()"
    return f"{quoted(value)} ({kind})"
