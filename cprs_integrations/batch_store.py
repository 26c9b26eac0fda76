"""Exactly-once, resumable JSONL output for corpus batch jobs (no Ray, no model: plain files).

A job's input is cut into *blocks* of consecutive records (``block_size`` non-blank lines each, addressed by
byte range), so block ``k`` is the same records on every run over the same file. Each finished block is
committed as one part file, ``<output>.parts/part-<k>.jsonl``, written to a temporary name and renamed, so a
part either holds all of its block's output lines or does not exist. A re-run skips the blocks whose part
exists; committing a block twice (a retried worker) replaces the part with the same lines. When every block
is committed, the parts are concatenated in block order into ``<output>`` (again temp file + rename), each id
written once, and the parts directory is removed.

The parts directory holds a ``manifest.json`` (input size and hash, block size, options that change the output);
a re-run with a different input or options is refused rather than mixing outputs.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cprs_core import CPRSError
from cprs_core.errors import quoted

MANIFEST = "manifest.json"
_PART_PREFIX = "part-"
_PART_SUFFIX = ".jsonl"


class BatchInputError(CPRSError):
    """An input file that is not JSONL with unique ids, or a parts directory left by a different job."""


@dataclass(frozen=True)
class Block:
    """``records`` consecutive records of the input, stored in its bytes ``[start, end)``."""

    index: int
    start: int
    end: int
    records: int


@dataclass(frozen=True)
class InputPlan:
    """The blocks of one input file and the fingerprint that ties part files to it."""

    path: Path
    blocks: list[Block]
    records: int
    size: int
    digest: str


def id_key(record_id: Any) -> str:
    """A hashable key that tells ``1`` and ``"1"`` apart (ids are compared as JSON values)."""
    return json.dumps(record_id, sort_keys=True, ensure_ascii=False)


def plan_blocks(path: str | os.PathLike[str], id_field: str, block_size: int) -> InputPlan:
    """Read ``path`` once: check every line is a JSON object with a unique ``id_field``, and cut it into blocks.

    Raises:
        BatchInputError: a line that is not a JSON object, a record without an id, or a repeated id
            (the message names the line).
        OSError: the file cannot be read.
    """
    if block_size < 1:
        raise BatchInputError(f"batch_size must be at least 1, got {block_size}")
    path = Path(path)
    digest = hashlib.blake2b(digest_size=16)
    seen: dict[str, int] = {}
    blocks: list[Block] = []
    block_start = offset = records = 0
    with path.open("rb") as file:
        for line_number, line in enumerate(file, start=1):
            digest.update(line)
            if line.strip():
                record_id = _record_id(line, f"{path}:{line_number}", id_field)
                key = id_key(record_id)
                if key in seen:
                    raise BatchInputError(f"{path}:{line_number}: id {key} repeats line {seen[key]}; ids must be unique")
                seen[key] = line_number
                if records % block_size == 0:
                    block_start = offset
                records += 1
                if records % block_size == 0:
                    blocks.append(Block(len(blocks), block_start, offset + len(line), block_size))
            offset += len(line)
    if records % block_size:
        blocks.append(Block(len(blocks), block_start, offset, records % block_size))
    return InputPlan(path, blocks, records, offset, digest.hexdigest())


def read_block(path: str | os.PathLike[str], start: int, end: int) -> list[dict[str, Any]]:
    """The records stored in bytes ``[start, end)`` of ``path`` (a :class:`Block`'s range)."""
    with open(path, "rb") as file:
        file.seek(start)
        data = file.read(end - start)
    return [json.loads(line) for line in data.splitlines() if line.strip()]


class PartStore:
    """The committed blocks of one output file (see the module docstring).

    Args:
        output: the final JSONL file; parts live in ``<output>.parts/`` until :meth:`finish`.
    """

    def __init__(self, output: str | os.PathLike[str]) -> None:
        self.output = Path(output)
        self.directory = self.output.with_name(self.output.name + ".parts")

    def open(self, manifest: dict[str, Any]) -> set[int]:
        """Start or resume the job described by ``manifest``; returns the indices of blocks already committed.

        Raises:
            BatchInputError: the parts directory belongs to a job with another manifest.
        """
        self.directory.mkdir(parents=True, exist_ok=True)
        manifest_path = self.directory / MANIFEST
        if manifest_path.exists():
            previous = json.loads(manifest_path.read_text(encoding="utf-8"))
            if previous != manifest:
                raise BatchInputError(
                    f"{self.directory} holds a job with other {'; '.join(_differences(previous, manifest))}; resume "
                    "with the same input and options, or delete that directory to start over"
                )
        else:
            _write_atomically(manifest_path, json.dumps(manifest, indent=2, sort_keys=True) + "\n")
        for stale in [*self.directory.glob("*.tmp-*"), *self.output.parent.glob(f"{self.output.name}.tmp-*")]:
            stale.unlink()
        return {index for index in map(_part_index, self.directory.iterdir()) if index is not None}

    def commit(self, index: int, text: str) -> None:
        """Make block ``index``'s output lines (``text``, newline-terminated) durable; idempotent."""
        _write_atomically(self.directory / f"{_PART_PREFIX}{index:08d}{_PART_SUFFIX}", text)

    def finish(self, blocks: int, id_field: str) -> tuple[int, int]:
        """Merge parts ``0 .. blocks-1`` into the output (each id once), remove the parts directory.

        Returns:
            (records written, records whose line carries an ``error``).

        Raises:
            BatchInputError: a part is missing (the job is not complete).
        """
        missing = [index for index in range(blocks) if not self._part(index).exists()]
        if missing:
            raise BatchInputError(f"blocks {missing[:10]} of {self.output} are not committed yet")
        seen: set[str] = set()
        errors = 0
        temporary = _temporary(self.output)
        with temporary.open("w", encoding="utf-8") as merged:
            for index in range(blocks):
                for line in self._part(index).read_text(encoding="utf-8").splitlines():
                    row = json.loads(line)
                    key = id_key(row[id_field])
                    if key in seen:
                        continue
                    seen.add(key)
                    errors += row.get("error") is not None
                    merged.write(line + "\n")
            merged.flush()
            os.fsync(merged.fileno())
        os.replace(temporary, self.output)
        shutil.rmtree(self.directory)
        return len(seen), errors

    def _part(self, index: int) -> Path:
        return self.directory / f"{_PART_PREFIX}{index:08d}{_PART_SUFFIX}"


def _record_id(line: bytes, where: str, id_field: str) -> Any:
    """The id of the record on ``line`` (``where``: its ``path:line``, named in every error)."""
    try:
        record = json.loads(line)
    except (ValueError, RecursionError) as error:  # RecursionError: nested deeper than Python's JSON reader goes
        raise BatchInputError(f"{where}: not valid JSON: {error}") from None
    if not isinstance(record, dict):
        raise BatchInputError(f"{where}: a JSON {type(record).__name__}, not an object")
    if record.get(id_field) is None:
        raise BatchInputError(f"{where}: no {quoted(id_field)} field; every record needs a unique id")
    return record[id_field]


def _part_index(path: Path) -> int | None:
    name = path.name
    if not (name.startswith(_PART_PREFIX) and name.endswith(_PART_SUFFIX)):
        return None
    digits = name[len(_PART_PREFIX):-len(_PART_SUFFIX)]
    return int(digits) if digits.isdigit() else None


def _temporary(path: Path) -> Path:
    return path.with_name(f"{path.name}.tmp-{uuid.uuid4().hex}")


def _write_atomically(path: Path, text: str) -> None:
    temporary = _temporary(path)
    with temporary.open("w", encoding="utf-8") as file:
        file.write(text)
        file.flush()
        os.fsync(file.fileno())
    os.replace(temporary, path)


def _differences(before: dict[str, Any], now: dict[str, Any], prefix: str = "") -> list[str]:
    """``name (old -> new)`` for each differing entry; nested dicts (the options) name their own keys."""
    differences = []
    for key in sorted({*before, *now}):
        old, new = before.get(key), now.get(key)
        if isinstance(old, dict) and isinstance(new, dict):
            differences += _differences(old, new, f"{prefix}{key}.")
        elif old != new:
            differences.append(f"{prefix}{key} ({json.dumps(old)[:60]} -> {json.dumps(new)[:60]})")
    return differences
