"""Structure-preserving JSON pruning: keep the records and keys of a JSON value that matter for a query.

The value is cut into units: a container whose compact JSON is longer than ``unit_chars`` is split into its
members (list entries, object keys), recursively; smaller values are units whole. Each unit becomes one line
(``key: value`` for object members, the value for list entries), the lines are compressed at ``"line"``
granularity, and the value is rebuilt from the kept units. The result is valid JSON of the same shape where
kept: objects keep their kept keys, lists their kept entries in order, split containers stay (possibly empty;
an emptied list entry is dropped), and :attr:`PrunedJSON.note` says what was dropped.
"""

from __future__ import annotations

import bisect
import json
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Sequence

from .errors import ContextTypeError, KeepError
from .result import CompressionResult

DEFAULT_UNIT_CHARS = 400
"""Containers whose compact JSON is longer than this are split into their members."""
NOTE_PATHS = 5
"""How many dropped paths the note names before summing up the rest."""
MAX_JSON_DEPTH = 100
"""JSON nested deeper than this is not pruned by its structure: :func:`parse_json_container` leaves such text as
text, and :func:`prune_json` refuses such a value (its walks recurse once per level)."""

Path = tuple[str | int, ...]
_DROPPED = object()


@dataclass(frozen=True)
class JSONUnit:
    """One unit of a JSON value: where it is, and the line the critic reads for it."""

    path: Path
    line: str


@dataclass(frozen=True)
class PrunedJSON:
    """What was kept of a JSON value.

    Attributes:
        value: the kept JSON value (same shape where kept).
        note: what was dropped, e.g. ``"[cprs: $.items: 12 of 3000 entries kept]"``; ``""`` when nothing was.
        kept_units: units kept, of ``total_units``.
        result: the compression of the units' lines (its spans are offsets into those lines).
    """

    value: Any
    note: str
    kept_units: int
    total_units: int
    result: CompressionResult

    @property
    def text(self) -> str:
        """:attr:`value` as compact JSON text."""
        return _dumps(self.value)


def _dumps(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(", ", ": "))


def path_text(path: Path) -> str:
    """``$.items[3].name``-style text of a path."""
    return "$" + "".join(f"[{part}]" if isinstance(part, int) else
                         (f".{part}" if part.isidentifier() else f"[{json.dumps(part, ensure_ascii=False)}]")
                         for part in path)


def json_units(value: Any, unit_chars: int = DEFAULT_UNIT_CHARS) -> tuple[list[JSONUnit], set[Path]]:
    """The units of ``value`` in document order, and the paths of the containers split into their members."""
    units: list[JSONUnit] = []
    split: set[Path] = set()

    def walk(item: Any, path: Path, label: str | None) -> None:
        text = _dumps(item)
        if isinstance(item, (dict, list)) and item and (not path or len(text) > unit_chars):
            split.add(path)
            members = item.items() if isinstance(item, dict) else enumerate(item)
            for key, member in members:
                walk(member, (*path, key), key if isinstance(key, str) else None)
        else:
            units.append(JSONUnit(path, text if label is None else f"{label}: {text}"))

    walk(value, (), None)
    return units, split


def parse_json_container(text: str) -> Any:
    """``text`` parsed when it is a JSON object or array (whitespace around allowed), else ``None``."""
    stripped = text.strip()
    if not stripped or stripped[0] not in "[{":
        return None
    try:
        value = json.loads(stripped)
    except (ValueError, RecursionError):  # not JSON, or nested deeper than Python's reader goes
        return None
    return value if isinstance(value, (dict, list)) and json_depth(value) <= MAX_JSON_DEPTH else None


def plain_json_text(value: Any) -> str:
    """``value`` written as JSON: tuples as lists, keys as strings, and what JSON cannot hold (sets, bytes, dates,
    other objects) as its ``str()``, so that a tool's output of Python values prunes as its JSON would.

    Raises:
        ContextTypeError: ``value`` nests deeper than Python's ``json`` writes, or holds itself.
    """
    try:
        try:
            return json.dumps(value, ensure_ascii=False, default=str)
        except TypeError:  # a dict key JSON cannot write: json.dumps has no default for keys
            return json.dumps(_writable_keys(value), ensure_ascii=False, default=str)
    except (RecursionError, ValueError):  # ValueError: json.dumps found a circular reference
        raise ContextTypeError(  # json_depth names a circular reference itself
            f"the value nests {json_depth(value)} levels deep, too deep to write as JSON text") from None


def _writable_keys(value: Any) -> Any:
    """``value`` with every dict key that JSON cannot write (a tuple, a date, an object) as its ``str()``."""
    if isinstance(value, dict):
        return {
            key if key is None or isinstance(key, (str, int, float, bool)) else str(key): _writable_keys(item)
            for key, item in value.items()
        }
    if isinstance(value, (list, tuple)):
        return [_writable_keys(item) for item in value]
    return value


def plain_json(value: Any) -> Any:
    """``value`` as the JSON :func:`plain_json_text` writes, read back (plain dicts, lists and scalars)."""
    return json.loads(plain_json_text(value))


def json_depth(value: Any) -> int:
    """How many levels of containers (dicts, lists, tuples) ``value`` nests (0 for a scalar, 1 for a flat list),
    without recursing; a container held in several places is measured once.

    Raises:
        ContextTypeError: ``value`` holds itself (a list appended to itself), which no JSON text can write.
    """
    depths: dict[int, int] = {}
    on_path: set[int] = set()
    stack: list[tuple[Any, bool]] = [(value, False)]
    while stack:
        item, measured = stack.pop()
        if not isinstance(item, _CONTAINERS):
            continue
        key = id(item)
        if measured:  # its members are measured: the item is one level more than its deepest
            on_path.discard(key)
            depths[key] = 1 + max((depths[id(member)] for member in _members(item)
                                   if isinstance(member, _CONTAINERS)), default=0)
        elif key in on_path:
            raise ContextTypeError("the value holds itself (a circular reference), which no JSON text can write")
        elif key not in depths:
            on_path.add(key)
            stack.append((item, True))
            stack.extend((member, False) for member in _members(item))
    return depths.get(id(value), 0)


_CONTAINERS = (dict, list, tuple)


def _members(container: dict | list | tuple) -> Iterable[Any]:
    return container.values() if isinstance(container, dict) else container


def prune_json(
    compressor: Any, value: Any, query: str, instruction: str | None = None, *,
    unit_chars: int = DEFAULT_UNIT_CHARS, **options: Any,
) -> PrunedJSON:
    """Keep the units of the JSON ``value`` (a dict or list) that the critic tags for ``query``.

    Args:
        compressor: any :class:`cprs_core.Compressor`.
        value: a dict or list of parsed JSON (dicts, lists, strings, numbers, booleans, ``None``); tuples,
            non-string keys and values JSON cannot hold are taken as they are written (:func:`plain_json`).
        query, instruction: as for ``compress``.
        unit_chars: containers longer than this (compact JSON) are split into their members.
        options: ``compress`` options applied to the units' lines: ``target_ratio``/``target_tokens`` (then the
            highest-scoring units that fit), ``keep`` (units whose line matches are always kept; a key name
            such as ``'"id": 17'`` works), ``budget_tokenizer``, ``instruction``. ``granularity`` is always
            ``"line"``; ``keep_spans`` has no meaning here.

    Raises:
        CPRSError: as ``compress`` (e.g. :class:`~cprs_core.errors.EmptyContextError` for an empty container);
            :class:`~cprs_core.errors.ContextTypeError` for a value that is not a dict or list, or nests deeper
            than :data:`MAX_JSON_DEPTH`.
    """
    if options.get("keep_spans"):
        raise KeepError("keep_spans are offsets into a text; for JSON use keep=[...] patterns over its records")
    if not isinstance(value, (dict, list, tuple)):
        raise ContextTypeError(
            f"prune_json prunes a dict or list, got {type(value).__name__}; compress a text with compress()")
    depth = json_depth(value)
    if depth > MAX_JSON_DEPTH:
        raise ContextTypeError(
            f"the JSON value nests {depth} levels deep, more than the {MAX_JSON_DEPTH} that JSON pruning splits; "
            "compress its text instead")
    value = plain_json(value)
    options = {**options, "granularity": "line"}
    options.pop("keep_spans", None)
    return prune_json_with(lambda lines: compressor.compress(lines, query, instruction, **options), value, unit_chars)


def prune_json_with(
    compress_lines: Callable[[str], CompressionResult], value: Any, unit_chars: int = DEFAULT_UNIT_CHARS
) -> PrunedJSON:
    """:func:`prune_json` with the compression given as a function of the units' lines (one per line, joined by
    newlines), which must compress at ``"line"`` granularity. ``value`` must nest at most :data:`MAX_JSON_DEPTH`
    levels (:func:`prune_json` and :func:`parse_json_container` see to it)."""
    units, split = json_units(value, unit_chars)
    lines = [unit.line for unit in units]
    result = compress_lines("\n".join(lines))
    kept = _kept_paths(units, lines, result)
    rebuilt = _rebuild(value, (), kept, split)
    return PrunedJSON(
        value=({} if isinstance(value, dict) else []) if rebuilt is _DROPPED else rebuilt,
        note=_note(value, kept, split, len(units)),
        kept_units=len(kept),
        total_units=len(units),
        result=result,
    )


def _kept_paths(units: Sequence[JSONUnit], lines: Sequence[str], result: CompressionResult) -> set[Path]:
    """Paths of the units whose lines overlap a kept span."""
    starts, position = [], 0
    for line in lines:
        starts.append(position)
        position += len(line) + 1
    kept: set[Path] = set()
    for span in result.spans:
        first = max(bisect.bisect_right(starts, span.start) - 1, 0)
        last = bisect.bisect_left(starts, span.end)
        kept.update(unit.path for unit in units[first:last])
    return kept


def _rebuild(value: Any, path: Path, kept: set[Path], split: set[Path]) -> Any:
    if path not in split:
        return value if path in kept else _DROPPED
    if isinstance(value, dict):
        members = {key: _rebuild(member, (*path, key), kept, split) for key, member in value.items()}
        rebuilt: Any = {key: member for key, member in members.items() if member is not _DROPPED}
    else:
        entries = [_rebuild(member, (*path, index), kept, split) for index, member in enumerate(value)]
        rebuilt = [entry for entry in entries if entry is not _DROPPED]
    emptied_entry = path and isinstance(path[-1], int) and not rebuilt
    return _DROPPED if emptied_entry else rebuilt


def _note(value: Any, kept: set[Path], split: set[Path], total: int) -> str:
    """What was dropped: per split list, entries kept of all; then the dropped object keys."""
    if len(kept) == total:
        return ""
    holds_kept = {path[:length] for path in kept for length in range(len(path) + 1)}
    parts, dropped_keys = [], []

    def walk(item: Any, path: Path) -> None:
        if path not in split:
            return
        members = list(item.items() if isinstance(item, dict) else enumerate(item))
        if isinstance(item, list):
            kept_entries = sum((*path, index) in holds_kept for index, _ in members)
            parts.append(f"{path_text(path)}: {kept_entries} of {len(item)} entries kept")
        for key, member in members:
            if (*path, key) in holds_kept:
                walk(member, (*path, key))
            elif isinstance(item, dict):
                dropped_keys.append(path_text((*path, key)))

    walk(value, ())
    if dropped_keys:
        named = ", ".join(dropped_keys[:NOTE_PATHS])
        more = f" and {len(dropped_keys) - NOTE_PATHS} more" if len(dropped_keys) > NOTE_PATHS else ""
        parts.append(f"dropped keys {named}{more}")
    return f"[cprs: JSON pruned for the question; {'; '.join(parts)}]"
