"""Agent tool-output pruning: the plain function and the LangChain tool wrapper (sync, async, tool calls, remote)."""

from __future__ import annotations

import asyncio
import datetime
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from langchain_core.messages import ToolMessage
from langchain_core.tools import BaseTool, StructuredTool, Tool, tool
import pytest

from cprs_core import CPRSCompressor
from cprs_core.errors import ContextTypeError
from cprs_core.structured import MAX_JSON_DEPTH, json_depth, parse_json_container, plain_json, prune_json
from cprs_integrations.tools import NOTHING_KEPT, prune_tool_output, pruned_tool

from .event_loop import ticks_while
from .live_server import serve

REPO = Path(__file__).resolve().parents[1]
QUESTION = "What is the code?"
FILLER = "Nothing here is a number at all. " * 30
LONG_OUTPUT = f"{FILLER}The code is 4471. {FILLER}"


@tool
def read_log(path: str, lines: int = 100) -> str:
    """Read the last lines of a log file."""
    return LONG_OUTPUT if path == "long.log" else f"{path}: 3 lines"


@tool
def stats(path: str) -> dict[str, Any]:
    """File statistics."""
    return {"path": path, "size": 12}


def test_long_output_is_pruned_short_output_and_empty_pass_unchanged(digit_compressor: CPRSCompressor) -> None:
    options = {"compressor": digit_compressor, "instruction": "needle", "min_tokens": 50}
    assert prune_tool_output(LONG_OUTPUT, QUESTION, **options) == "The code is 4471."
    assert prune_tool_output("Status 200 in 12 ms.", QUESTION, **options) == "Status 200 in 12 ms."
    assert prune_tool_output("  ", QUESTION, **options) == "  "
    unchanged = prune_tool_output(LONG_OUTPUT, QUESTION, digit_compressor, instruction="needle", min_tokens=10_000)
    assert unchanged == LONG_OUTPUT


def test_nothing_kept_becomes_a_note(digit_compressor: CPRSCompressor) -> None:
    pruned = prune_tool_output(FILLER, QUESTION, digit_compressor, instruction="needle", min_tokens=50)
    tokens = digit_compressor.count_tokens(FILLER)
    assert pruned == NOTHING_KEPT.format(tokens=tokens)


def test_pruned_tool_has_the_same_interface(digit_compressor: CPRSCompressor) -> None:
    wrapped = pruned_tool(read_log, QUESTION, digit_compressor, instruction="needle", min_tokens=50)
    assert isinstance(wrapped, BaseTool)
    assert (wrapped.name, wrapped.description) == (read_log.name, read_log.description)
    assert wrapped.args == read_log.args
    assert wrapped.tool_call_schema.model_json_schema() == read_log.tool_call_schema.model_json_schema()


def test_pruned_tool_prunes_against_the_question_from_its_getter(digit_compressor: CPRSCompressor) -> None:
    seen: list[dict[str, Any]] = []

    def question(arguments: dict[str, Any]) -> str:
        seen.append(dict(arguments))
        return QUESTION

    wrapped = pruned_tool(read_log, question, digit_compressor, instruction="needle", min_tokens=50)
    assert wrapped.invoke({"path": "long.log"}) == "The code is 4471."
    assert wrapped.invoke({"path": "short.log", "lines": 5}) == "short.log: 3 lines"
    assert seen[0]["path"] == "long.log" and seen[1] == {"path": "short.log", "lines": 5}

    message = wrapped.invoke({"type": "tool_call", "name": "read_log", "args": {"path": "long.log"}, "id": "call-1"})
    assert isinstance(message, ToolMessage)
    assert (message.content, message.tool_call_id, message.name) == ("The code is 4471.", "call-1", "read_log")
    cprs = message.artifact["cprs"]
    assert cprs["original_tokens"] > 10 * cprs["compressed_tokens"] > 0
    assert LONG_OUTPUT[cprs["spans"][0]["start"] : cprs["spans"][0]["end"]] == "The code is 4471."
    short = wrapped.invoke({"type": "tool_call", "name": "read_log", "args": {"path": "a.log"}, "id": "call-2"})
    assert short.artifact == {"cprs": None} and short.content == "a.log: 3 lines"


async def test_pruned_tool_async_uses_the_inner_coroutine_and_does_not_block(digit_compressor: CPRSCompressor) -> None:
    calls: list[str] = []

    async def fetch(url: str) -> str:
        calls.append(url)
        await asyncio.sleep(0)
        return f"{FILLER * 8} Code 4471. {FILLER * 8}"

    inner = StructuredTool.from_function(coroutine=fetch, name="fetch", description="Fetch a page.")
    wrapped = pruned_tool(inner, QUESTION, digit_compressor, instruction="needle", min_tokens=50)
    pruned, during = await ticks_while(wrapped.ainvoke({"url": "https://example.org"}))
    assert pruned == "Code 4471."
    assert calls == ["https://example.org"]
    assert during >= 3, f"the ticker advanced {during} times while pruning: the loop was blocked"


def test_a_single_input_tool_stays_a_single_input_tool(digit_compressor: CPRSCompressor) -> None:
    search = Tool(name="search", description="Search the web.", func=lambda query: f"{query}: {LONG_OUTPUT}")
    wrapped = pruned_tool(search, lambda query: f"{query}?", digit_compressor, instruction="needle", min_tokens=50)
    assert isinstance(wrapped, Tool) and wrapped.args == search.args
    assert wrapped.invoke("the code") == "The code is 4471."
    message = wrapped.invoke({"type": "tool_call", "name": "search", "args": {"tool_input": "code"}, "id": "c"})
    assert message.content == "The code is 4471." and message.artifact["cprs"]["compressed_tokens"] > 0


def test_json_output_is_pruned_structurally_other_values_pass_through(digit_compressor: CPRSCompressor) -> None:
    wrapped = pruned_tool(stats, QUESTION, digit_compressor, instruction="needle", min_tokens=1)
    kept, note = wrapped.invoke({"path": "x"}).split("\n")
    assert json.loads(kept) == {"size": 12} and note == "[cprs: JSON pruned for the question; dropped keys $.path]"
    assert pruned_tool(stats, QUESTION, digit_compressor, min_tokens=50).invoke({"path": "x"}) == {"path": "x", "size": 12}
    number = StructuredTool.from_function(lambda path: 42, name="size", description="A size.")
    assert pruned_tool(number, QUESTION, digit_compressor, min_tokens=1).invoke({"path": "x"}) == 42


def test_content_blocks_prune_as_text_and_images_pass_unchanged(digit_compressor: CPRSCompressor) -> None:
    """A tool answering LangChain content blocks (as MCP tools do): the blocks were pruned as JSON, so text was
    kept whole and an image reached the model as its base64 text."""
    text = [{"type": "text", "text": FILLER}, {"type": "text", "text": LONG_OUTPUT}]
    image = [*text, {"type": "image", "base64": "iVBORw0KGgo" * 100, "mime_type": "image/png"}]
    short = [{"type": "text", "text": "Status 200."}]
    for blocks, expected in ((text, "The code is 4471."), (image, image), (short, short)):
        inner = StructuredTool.from_function(lambda url, blocks=blocks: blocks, name="page", description="A page.")
        wrapped = pruned_tool(inner, QUESTION, digit_compressor, instruction="needle", min_tokens=50)
        message = wrapped.invoke({"type": "tool_call", "name": "page", "args": {"url": "u"}, "id": "c"})
        assert message.content == expected


def test_python_values_json_cannot_hold_prune_as_their_json_text(digit_compressor: CPRSCompressor) -> None:
    """Tuples, non-string keys, dates and sets (what API clients return) prune as they are written as JSON."""
    rows = [{"note": FILLER[:60], "tags": {"plain"}} for _ in range(20)]
    rows[11] = {"note": "The code is 4471.", "day": datetime.date(2026, 1, 5), "tags": {"refund"}}
    output = {7: tuple(rows)}
    refund = {"note": "The code is 4471.", "day": "2026-01-05", "tags": "{'refund'}"}
    options = {"compressor": digit_compressor, "instruction": "needle", "min_tokens": 50}
    kept, note = prune_tool_output(output, QUESTION, **options).split("\n")
    assert json.loads(kept) == {"7": [refund]} and note.startswith("[cprs: JSON pruned")
    assert prune_json(digit_compressor, output, QUESTION, "needle").value == {"7": [refund]}
    assert plain_json(output)["7"][11] == refund
    by_pair = {(2, 3): "x", "rows": [{datetime.date(2026, 1, 5): "due"}]}  # keys JSON cannot write: a TypeError
    assert plain_json(by_pair) == {"(2, 3)": "x", "rows": [{"2026-01-05": "due"}]}
    with pytest.raises(ContextTypeError, match="prune_json prunes a dict or list, got str"):
        prune_json(digit_compressor, LONG_OUTPUT, QUESTION, "needle")


def test_remote_mode_prunes_on_a_running_cprs_server(digit_compressor: CPRSCompressor) -> None:
    with serve(digit_compressor) as url:
        assert prune_tool_output(LONG_OUTPUT, QUESTION, server_url=url, instruction="needle", min_tokens=50) == (
            "The code is 4471."
        )
        # a remote compressor cannot count tokens locally: short outputs are recognised from the server's count
        assert prune_tool_output("Status 200.", QUESTION, server_url=url, instruction="needle", min_tokens=50) == (
            "Status 200."
        )
        wrapped = pruned_tool(read_log, QUESTION, server_url=url, instruction="needle", min_tokens=50)
        assert wrapped.invoke({"path": "long.log"}) == "The code is 4471."


def test_importing_the_package_and_tools_needs_no_framework() -> None:
    code = (
        "import sys, cprs_integrations, cprs_integrations.tools; "
        "assert not [m for m in sys.modules if m.startswith(('langchain', 'llama_index'))], 'framework imported'; "
        "assert 'CPRSDocumentCompressor' in cprs_integrations.__all__"
    )
    completed = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert completed.returncode == 0, completed.stderr


def test_json_nested_too_deeply_is_pruned_as_text_or_refused_by_name(digit_compressor: CPRSCompressor) -> None:
    options = {"compressor": digit_compressor, "instruction": "needle", "min_tokens": 50}
    for depth in (MAX_JSON_DEPTH + 1, 5000):  # parses but too deep to split / deeper than Python's JSON reader
        text = "[" * depth + json.dumps(LONG_OUTPUT) + "]" * depth
        assert parse_json_container(text) is None
        pruned = prune_tool_output(text, QUESTION, **options)
        assert "The code is 4471." in pruned and len(pruned) < len(text) / 2
    at_limit = [LONG_OUTPUT]
    for _ in range(MAX_JSON_DEPTH - 1):
        at_limit = [at_limit]
    assert json_depth(at_limit) == MAX_JSON_DEPTH and parse_json_container(json.dumps(at_limit)) == at_limit
    assert prune_json(digit_compressor, at_limit, QUESTION, "needle").value == at_limit
    deep: Any = LONG_OUTPUT
    for _ in range(3000):
        deep = [deep]
    with pytest.raises(ContextTypeError, match="3000 levels deep, more than the 100"):
        prune_json(digit_compressor, deep, QUESTION, "needle")
    with pytest.raises(ContextTypeError, match="3000 levels deep, too deep to write as JSON text"):
        prune_tool_output(deep, QUESTION, **options)


def test_a_value_that_holds_itself_is_refused_by_name_not_measured_for_ever(digit_compressor: CPRSCompressor) -> None:
    options = {"compressor": digit_compressor, "instruction": "needle"}
    looped: list[Any] = [LONG_OUTPUT]
    looped.append(looped)  # json_depth looped for ever on it, taking memory
    keyed: dict[Any, Any] = {("a", 1): LONG_OUTPUT}
    keyed["self"] = keyed  # a tuple key too: the key-rewriting path recursed, then looped
    through_tuple = ([LONG_OUTPUT],)
    through_tuple[0].append(through_tuple)
    for value in (looped, keyed, through_tuple):
        with pytest.raises(ContextTypeError, match=r"holds itself \(a circular reference\)"):
            prune_tool_output(value, QUESTION, **options)
        with pytest.raises(ContextTypeError, match="holds itself"):
            prune_json(digit_compressor, value, QUESTION, "needle")
    shared = [LONG_OUTPUT]
    for _ in range(60):  # held twice at every level: 2**60 paths, measured once each
        shared = [shared, shared]
    assert json_depth(shared) == 61 and json_depth(([1], {"a": (2,)})) == 3


def test_keep_spans_are_offsets_into_a_json_outputs_text(digit_compressor: CPRSCompressor) -> None:
    output = {"note": FILLER, "tail": "The code is 4471.", "end": "Nothing here either."}
    text = json.dumps(output)
    end = (text.index('"end"'), len(text))
    for given in (output, text):  # JSON pruned by its records would count the offsets in its lines
        pruned = prune_tool_output(given, QUESTION, digit_compressor, instruction="needle", granularity="token",
                                   min_tokens=0, keep_spans=[end])
        assert pruned.endswith('"end": "Nothing here either."}') and "4471" in pruned and FILLER not in pruned
