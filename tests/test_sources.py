"""The repository's Python sources compile without warnings on the running interpreter.

An invalid escape such as ``"\\w"`` in a normal string is a DeprecationWarning on Python 3.11, a SyntaxWarning
printed at every fresh import on 3.12 and 3.13, and is to become an error; users see it, so it fails here.
"""

from __future__ import annotations

import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SOURCES = sorted(
    path for folder in ("cprs_core", "cprs_integrations", "benchmarks", "examples", "tests")
    for path in (ROOT / folder).rglob("*.py")
)


def test_every_source_compiles_without_warnings() -> None:
    failures = []
    for path in SOURCES:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            try:
                compile(path.read_text(encoding="utf-8"), str(path), "exec")
            except (SyntaxError, Warning) as problem:
                failures.append(f"{path.relative_to(ROOT)}: {problem}")
    assert len(SOURCES) > 100 and not failures, failures
