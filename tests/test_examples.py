"""Each example runs offline on the embedded cprs-mini and prints what it kept (the planted text) and the ratio."""

from __future__ import annotations

import contextlib
import io
import re
import runpy
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
NAMES = ("langchain_rag", "llamaindex_query_engine", "agent_pruned_tool", "agent_middleware")


@pytest.fixture(scope="module")
def outputs() -> dict[str, str]:
    """Every example's stdout, run as ``__main__`` in this process (so the loaded cprs-mini is shared)."""
    results = {}
    with pytest.MonkeyPatch.context() as patch:
        patch.syspath_prepend(str(EXAMPLES))
        patch.delenv("CPRS_SERVER_URL", raising=False)
        for name in NAMES:
            stdout = io.StringIO()
            with contextlib.redirect_stdout(stdout):
                runpy.run_path(str(EXAMPLES / f"{name}.py"), run_name="__main__")
            results[name] = stdout.getvalue()
    return results


def _ratio(output: str) -> float:
    return float(re.search(r"\(([\d.]+)x", output).group(1))


def test_langchain_rag_keeps_the_needle_not_the_distractor(outputs: dict[str, str]) -> None:
    output = outputs["langchain_rag"]
    assert "retrieved 8 chapters; CPRS kept text from 1:" in output
    assert "[Ruth 3] chars" in output and "One of the special magic numbers for silver-harbor is: 7318245." in output
    assert "quiet-meadow" not in output
    assert "mode joint" in output and _ratio(output) > 100
    assert "answer: The special magic number for silver-harbor is 7318245." in output


def test_llamaindex_query_engine_keeps_the_fact_and_the_llm_sees_only_it(outputs: dict[str, str]) -> None:
    output = outputs["llamaindex_query_engine"]
    fact = "The harbour master of Joppa, Ezra Calloway, keeps the lighthouse key in a cedar box under the stairs."
    assert "CPRS kept text from 1:" in output and "[Acts 3]" in output
    assert output.count(fact) == 2  # in the kept node and in the prompt MockLLM echoes
    assert "Miriam Okafor" not in output and _ratio(output) > 10


def test_agent_tool_output_is_pruned_to_the_asked_chain(outputs: dict[str, str]) -> None:
    output = outputs["agent_pruned_tool"]
    kept = re.search(r"before entering the context:\n((?:  .*\n)+)", output).group(1).split("\n")
    assert [line.strip() for line in kept if line] == [
        "VAR QXKZT = 48213.", "VAR HRMLP = VAR QXKZT.", "VAR WBNDE = VAR HRMLP."
    ]
    assert "90517" not in output and _ratio(output) > 20
    assert "answer: QXKZT, HRMLP and WBNDE all hold 48213." in output


def test_agent_middleware_hands_the_model_valid_pruned_json_with_the_asked_record(outputs: dict[str, str]) -> None:
    import json

    output = outputs["agent_middleware"]
    shown = re.search(r"smaller\):\n  (.*)\n  (\[cprs: .*\])\n", output)
    kept = json.loads(shown.group(1))
    assert {"order": "A-1187", "item": "bookshelf", "status": "delivered", "ship_to": "Lisbon",
            "tracking": "TRK55120"} in kept["orders"]
    assert len(kept["orders"]) < 30 and set(kept) == {"orders"}
    assert f"$.orders: {len(kept['orders'])} of 300 entries kept" in shown.group(2)
    assert "returned 300 orders" in output and float(re.search(r"\(([\d.]+)x smaller", output).group(1)) > 5


def test_compress_document_example_on_a_file(tmp_path: Path) -> None:
    import subprocess
    import sys

    verses = " ".join(chapter.text for chapter in _kjv_chapters("Ruth"))
    cut = verses.find(". ", len(verses) // 2) + 2
    document = tmp_path / "ruth.txt"
    document.write_text(verses[:cut] + "One of the special magic numbers for amber-falcon is: 5521907. " + verses[cut:])
    completed = subprocess.run(
        [sys.executable, str(EXAMPLES / "compress_document.py"), "--file", str(document), "--instruction", "needle",
         "--query", "What is the special magic number for amber-falcon?"],
        capture_output=True, text=True, timeout=300, check=True,
    )
    assert "critic: cprs-mini;" in completed.stdout
    assert "One of the special magic numbers for amber-falcon is: 5521907." in completed.stdout
    assert float(re.search(r": (\d+)x smaller", completed.stdout).group(1)) > 10


def _kjv_chapters(book: str):
    with pytest.MonkeyPatch.context() as patch:
        patch.syspath_prepend(str(EXAMPLES))
        from kjv_corpus import chapters

        return chapters(book)
