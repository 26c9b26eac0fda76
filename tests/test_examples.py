"""Each example runs offline on the embedded cprs-mini and prints what it kept (the planted text) and the ratio."""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import runpy
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Iterator

import pytest

pytestmark = pytest.mark.slow  # each example loads models and runs end to end

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
NAMES = ("langchain_rag", "llamaindex_query_engine", "agent_pruned_tool", "agent_middleware")


@pytest.fixture(scope="module")
def outputs() -> dict[str, str]:
    """Every example's stdout, run as ``__main__`` in this process (so the loaded cprs-mini is shared)."""
    results = {}
    with pytest.MonkeyPatch.context() as patch:
        patch.syspath_prepend(str(EXAMPLES))
        patch.delenv("CPRS_SERVER_URL", raising=False)
        patch.delenv("CPRS_LLM_BASE_URL", raising=False)
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
    # cprs-mini v2's recall-tuned sentence rule may keep one more short fragment beside the needle's chunk
    assert re.search(r"MiniLM retrieved the top 4 chunks of 8 chapters; CPRS kept text from [12]:", output)
    assert "[Ruth 3] chars" in output and "One of the special magic numbers for silver-harbor is: 7318245." in output
    assert "quiet-meadow" not in output
    assert "mode joint" in output and _ratio(output) > 20
    assert "answer: The special magic number for silver-harbor is 7318245." in output


def test_llamaindex_query_engine_keeps_the_fact_and_the_llm_sees_only_it(outputs: dict[str, str]) -> None:
    output = outputs["llamaindex_query_engine"]
    fact = "The harbour master of Joppa, Ezra Calloway, keeps the lighthouse key in a cedar box under the stairs."
    assert "MiniLM retrieved the top 3 of 9 nodes; CPRS kept text from 1:" in output and "[Acts 3]" in output
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
    document = _document_with_needle(tmp_path)
    completed = subprocess.run(
        [sys.executable, str(EXAMPLES / "compress_document.py"), "--file", str(document), "--instruction", "needle",
         "--query", "What is the special magic number for amber-falcon?"],
        capture_output=True, text=True, timeout=300, check=True,
    )
    assert "critic: cprs-mini;" in completed.stdout
    assert "One of the special magic numbers for amber-falcon is: 5521907." in completed.stdout
    assert float(re.search(r": (\d+)x smaller", completed.stdout).group(1)) > 10


@pytest.fixture
def chat_endpoint() -> Iterator[tuple[str, list[dict[str, Any]]]]:
    """A real OpenAI-compatible ``/chat/completions`` endpoint on loopback that echoes the messages it got (so the
    answer shows what the LLM was given) and records every request."""
    received: list[dict[str, Any]] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 (http.server's name)
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            received.append({"path": self.path, "auth": self.headers["Authorization"], **body})
            answer = "echo: " + " | ".join(str(message["content"]) for message in body["messages"]).replace("\n", " ")
            data = json.dumps({
                "id": f"chat-{len(received)}", "object": "chat.completion", "created": 0, "model": body["model"],
                "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": answer}}],
                "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
            }).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/v1", received
    finally:
        server.shutdown()
        server.server_close()


def test_cascade_compresses_then_asks_the_configured_llm(
    tmp_path: Path, chat_endpoint: tuple[str, list[dict[str, Any]]]
) -> None:
    url, received = chat_endpoint
    document = _document_with_needle(tmp_path)
    env = {**os.environ, "CPRS_LLM_BASE_URL": url, "CPRS_LLM_MODEL": "tiny-chat", "CPRS_LLM_API_KEY": "k-1"}
    completed = subprocess.run(
        [sys.executable, str(EXAMPLES / "cascade.py"), "--file", str(document), "--instruction", "needle",
         "--query", "What is the special magic number for amber-falcon?", "--target-tokens", "60"],
        capture_output=True, text=True, timeout=300, check=True, env=env,
    )
    assert re.search(r"answer: echo: .*amber-falcon is: 5521907\.", completed.stdout)
    assert f"LLM: tiny-chat at {url}" in completed.stdout
    [request] = received
    assert request["path"] == "/v1/chat/completions" and request["auth"] == "Bearer k-1"
    prompt = request["messages"][1]["content"]
    assert "One of the special magic numbers for amber-falcon is: 5521907." in prompt
    assert len(prompt) < len(document.read_text()) / 10


@pytest.mark.parametrize(("name", "kept", "dropped"), [
    ("langchain_rag", "silver-harbor is: 7318245.", "quiet-meadow"),
    ("llamaindex_query_engine", "keeps the lighthouse key in a cedar box", "Miriam Okafor"),
])
def test_framework_examples_answer_with_the_configured_llm(
    name: str, kept: str, dropped: str, chat_endpoint: tuple[str, list[dict[str, Any]]]
) -> None:
    url, received = chat_endpoint
    stdout = io.StringIO()
    with pytest.MonkeyPatch.context() as patch:
        patch.syspath_prepend(str(EXAMPLES))
        patch.delenv("CPRS_SERVER_URL", raising=False)
        for key, value in {"CPRS_LLM_BASE_URL": url, "CPRS_LLM_MODEL": "tiny-chat", "CPRS_LLM_API_KEY": "k-2"}.items():
            patch.setenv(key, value)
        with contextlib.redirect_stdout(stdout):
            runpy.run_path(str(EXAMPLES / f"{name}.py"), run_name="__main__")
    output = stdout.getvalue()
    assert f"LLM: tiny-chat at {url}" in output
    answer = output[output.index("answer: echo: "):]
    assert kept in answer and dropped not in answer  # the LLM got the compressed context
    assert [request["path"] for request in received] == ["/v1/chat/completions"]
    assert received[0]["model"] == "tiny-chat" and received[0]["auth"] == "Bearer k-2"


def test_cascade_without_an_llm_prints_the_prompt(tmp_path: Path) -> None:
    env = {key: value for key, value in os.environ.items() if key != "CPRS_LLM_BASE_URL"}
    completed = subprocess.run(
        [sys.executable, str(EXAMPLES / "cascade.py"), "--file", str(_document_with_needle(tmp_path)),
         "--instruction", "needle", "--query", "What is the special magic number for amber-falcon?"],
        capture_output=True, text=True, timeout=300, check=True, env=env,
    )
    assert "LLM: none configured (set CPRS_LLM_BASE_URL for a real one)" in completed.stdout
    assert "prompt it would get" in completed.stdout and "amber-falcon is: 5521907." in completed.stdout


def _document_with_needle(tmp_path: Path) -> Path:
    verses = " ".join(chapter.text for chapter in _kjv_chapters("Ruth"))
    cut = verses.find(". ", len(verses) // 2) + 2
    document = tmp_path / "ruth.txt"
    document.write_text(verses[:cut] + "One of the special magic numbers for amber-falcon is: 5521907. " + verses[cut:])
    return document


def _kjv_chapters(book: str):
    with pytest.MonkeyPatch.context() as patch:
        patch.syspath_prepend(str(EXAMPLES))
        from kjv_corpus import chapters

        return chapters(book)


def test_the_flagship_answer_check_wants_the_denial_not_just_the_name() -> None:
    with pytest.MonkeyPatch.context() as patch:
        patch.syspath_prepend(str(EXAMPLES))
        from compress_document import ANSWERING_SENTENCE

    assert ANSWERING_SENTENCE.search("And Peter remembered the word of Jesus, which said unto him, Before the cock "
                                     "crow, thou shalt deny me thrice.")
    assert ANSWERING_SENTENCE.search("But he denied before them all. Peter went out.")
    assert not ANSWERING_SENTENCE.search("The first, Simon, who is called Peter, and Andrew his brother;")
