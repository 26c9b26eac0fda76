"""The shipped cprs-mini weights without their int8 activation ranges: int8 as it was before smoothing
(:mod:`cprs_core.mini.smoothing`), for the benchmarks that measure what smoothing costs and gives."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from cprs_core import CPRSCompressor
from cprs_core.mini.checkpoint import SHIPPED_DIR, copy_checkpoint

UNSMOOTHED = "int8-unsmoothed"
"""The precision name the benchmarks give this path."""


@contextmanager
def unsmoothed_checkpoint() -> Iterator[Path]:
    """A temporary copy of the shipped checkpoint without ``int8_ranges.safetensors`` (load it with dtype int8)."""
    with tempfile.TemporaryDirectory() as directory:
        yield copy_checkpoint(SHIPPED_DIR, directory, int8_ranges=False)


def load_path(name: str) -> CPRSCompressor:
    """cprs-mini on CPU in the precision ``name``: ``default`` (none given: bfloat16 with AMX, else int8 as
    shipped), :data:`UNSMOOTHED`, or any dtype cprs-mini accepts."""
    if name == UNSMOOTHED:
        with unsmoothed_checkpoint() as directory:
            return CPRSCompressor.from_pretrained(directory, device="cpu", dtype="int8")
    return CPRSCompressor.from_pretrained(device="cpu", dtype=None if name == "default" else name)
