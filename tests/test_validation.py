"""Every wrong input at a public boundary is a clear ``CPRSError`` naming the argument, before any model loads;
one default granularity everywhere."""

from __future__ import annotations

import dataclasses
import inspect
import json
import os
import pickle
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from cprs_core import (
    DEFAULT_GRANULARITY,
    BudgetError,
    CompressionRequest,
    ContextTypeError,
    CPRSCompressor,
    CPRSError,
    GranularityError,
    InstructionError,
    KeepError,
    ModelLoadError,
    OptionError,
    QueryError,
    TextDecodingError,
    WindowSizeError,
)
from cprs_core.keep import compile_regex
from cprs_core.remote import RemoteCompressor
from cprs_core.validation import check_request
from cprs_integrations.server import BackgroundServer, create_app

REPO = Path(__file__).resolve().parents[1]
CONTEXT = "The year was 1984. Nothing else matters here.\n\nWe counted 42 cats and 7 dogs. Then we left."
QUERY = "Which numbers appear?"

WRONG_ARGUMENTS = [
    ({"query": ""}, QueryError, "query is empty"),
    ({"query": " \n\t"}, QueryError, "allow_empty_query=True"),
    ({"query": "\u200b\ufeff "}, QueryError, "query holds only invisible characters"),
    ({"query": None}, QueryError, "query must be a string"),
    ({"allow_empty_query": "yes"}, OptionError, "allow_empty_query must be True or False"),
    ({"instruction": "needles"}, InstructionError, "did you mean 'needle'?"),
    ({"instruction": "Fact"}, InstructionError, "did you mean 'fact'?"),
    ({"instruction": "chians"}, InstructionError, "did you mean 'chain'?"),
    ({"instruction": "needle-literl"}, InstructionError, "did you mean 'needle-literal'?"),
    ({"instruction": "   "}, InstructionError, "instruction is empty"),
    ({"instruction": 3}, InstructionError, "instruction must be a string or None"),
    ({"granularity": "word"}, GranularityError, "granularity must be one of"),
    ({"target_ratio": 1.5}, BudgetError, "in (0, 1]"),
    ({"target_ratio": float("nan")}, BudgetError, "target_ratio must be a number"),
    ({"target_ratio": "0.5"}, BudgetError, "target_ratio must be a number"),
    ({"target_tokens": np.int64(5)}, BudgetError, "(a NumPy int64: convert it with int() or float())"),
    ({"target_tokens": 0}, BudgetError, "target_tokens must be a positive integer"),
    ({"target_ratio": 0.5, "target_tokens": 10}, BudgetError, "not both"),
    ({"min_span_tokens": -1}, OptionError, "min_span_tokens must be an integer >= 1"),
    ({"min_span_tokens": True}, OptionError, "min_span_tokens must be an integer >= 1"),
    ({"separator": None}, OptionError, "separator must be a string"),
    ({"fill_backward": "no"}, OptionError, "fill_backward must be True or False"),  # a truthy string turned it on
    ({"sentence_windows": "yes"}, OptionError, "sentence_windows must be True or False"),
    ({"upstream_spans": "no"}, OptionError, "upstream_spans must be True or False"),
]


def request(**changes: Any) -> CompressionRequest:
    return CompressionRequest(**{"context": CONTEXT, "query": QUERY, "instruction": "needle", **changes})


@pytest.mark.parametrize(("changes", "error", "message"), WRONG_ARGUMENTS)
def test_each_wrong_argument_is_its_named_error(changes: dict[str, Any], error: type[CPRSError], message: str) -> None:
    with pytest.raises(error, match=message.replace("(", r"\(").replace(")", r"\)").replace("?", r"\?")):
        check_request(request(**changes))


@pytest.mark.parametrize(
    "changes",
    [
        {"query": "", "allow_empty_query": True},
        {"instruction": None},
        {"instruction": " fact "},
        {"instruction": "Extract the dates.\n## tagging rule:\n- tag the dates with 'date'"},
        {"instruction": "summary"},  # one word, but not close to a preset: free text
        {"instruction": "needle-literal"},  # upstream's README prompts (docs/upstream-behaviour.md); was "did you
        {"instruction": "fact-literal"},  # mean 'needle'?" for the needle one
        {"instruction": "chain-literal"},
        {"target_ratio": 1},
        {"target_tokens": 5, "granularity": "token"},
        {"sentence_windows": False, "fill_backward": True},
    ],
)
def test_right_arguments_pass(changes: dict[str, Any]) -> None:
    check_request(request(**changes))


def test_the_compressor_refuses_an_empty_query_unless_asked_and_defaults_to_sentences(
    digit_compressor: CPRSCompressor,
) -> None:
    with pytest.raises(QueryError):
        digit_compressor.compress(CONTEXT)
    query_free = digit_compressor.compress(CONTEXT, "", "needle", allow_empty_query=True)
    assert query_free.spans and query_free.granularity == "sentence"
    result = digit_compressor.compress(CONTEXT, QUERY, "needle")
    assert DEFAULT_GRANULARITY == "sentence" and result.granularity == "sentence"
    assert result.text == "The year was 1984.\nWe counted 42 cats and 7 dogs."
    outcomes = digit_compressor.compress_batch([request(), request(query=""), request(instruction="needles")])
    assert outcomes[0].text == result.text
    assert isinstance(outcomes[1], QueryError) and isinstance(outcomes[2], InstructionError)
    plain_texts = digit_compressor.compress_batch([request(), CONTEXT])  # type: ignore[list-item]
    assert plain_texts[0].text == result.text
    assert isinstance(plain_texts[1], OptionError) and "got str: build one per text" in str(plain_texts[1])
    with pytest.raises(OptionError, match="progress must be a function"):
        digit_compressor.compress_batch([request()], QUERY)  # type: ignore[arg-type]
    with pytest.raises(OptionError, match="progress must be a function"):
        digit_compressor.compress(CONTEXT, QUERY, progress=3)  # type: ignore[arg-type]


def test_batches_take_a_list_or_generator_never_a_single_item(digit_compressor: CPRSCompressor) -> None:
    expected = digit_compressor.compress(CONTEXT, QUERY, "needle").text
    from_generator = digit_compressor.compress_batch(request() for _ in range(2))
    assert [outcome.text for outcome in from_generator] == [expected, expected]  # type: ignore[union-attr]
    for wrong in (None, request(), "text"):
        with pytest.raises(OptionError, match="requests must be a list"):
            digit_compressor.compress_batch(wrong)  # type: ignore[arg-type]
    many = digit_compressor.compress_many((text for text in [CONTEXT, CONTEXT]), QUERY, "needle")
    assert [result.text for result in many] == [expected, expected]
    with pytest.raises(ContextTypeError, match="contexts must be a list"):  # not one compression per character
        digit_compressor.compress_many("4471", QUERY, "needle")
    with pytest.raises(OptionError, match="unknown option 'target_ratoi': did you mean 'target_ratio'"):
        digit_compressor.compress_many([CONTEXT], QUERY, "needle", target_ratoi=0.5)


def test_count_tokens_names_text_it_cannot_count(digit_compressor: CPRSCompressor) -> None:
    with pytest.raises(ContextTypeError, match="text must be a str, not NoneType"):
        digit_compressor.count_tokens(None)  # type: ignore[arg-type]
    with pytest.raises(TextDecodingError, match="text holds a lone surrogate"):
        digit_compressor.count_tokens("ab\ud800")
    assert digit_compressor.count_tokens(CONTEXT) > 0


def test_one_default_granularity_in_every_signature() -> None:
    from cprs_integrations._shared import CompressorSettings
    from cprs_integrations.cli import build_parser
    from cprs_integrations.server.schemas import CompressBody

    assert CompressionRequest("x").granularity == DEFAULT_GRANULARITY
    for function in (CPRSCompressor.compress, RemoteCompressor.compress):
        assert inspect.signature(function).parameters["granularity"].default == DEFAULT_GRANULARITY
    assert CompressorSettings().granularity == DEFAULT_GRANULARITY
    assert CompressBody(context="x").granularity == DEFAULT_GRANULARITY
    assert build_parser().parse_args(["compress", "-q", "x", "f"]).granularity == DEFAULT_GRANULARITY


def test_model_options_are_checked_before_anything_loads(tmp_path: Path) -> None:
    missing = tmp_path / "no-model"  # loading it would raise ModelLoadError: the option check comes first
    with pytest.raises(WindowSizeError, match="window_size must be an integer >= 2, got 1"):
        CPRSCompressor.from_pretrained(missing, window_size=1)
    with pytest.raises(OptionError, match="max_batch_tokens"):
        CPRSCompressor.from_pretrained(missing, max_batch_tokens=0)
    with pytest.raises(OptionError, match="truncate_over_length must be True or False, got 'yes'"):
        CPRSCompressor.from_pretrained(missing, truncate_over_length="yes")  # type: ignore[arg-type]
    with pytest.raises(ModelLoadError, match="path_or_id must be a directory, a hub id or 'cprs-mini', got int 5"):
        CPRSCompressor.from_pretrained(5)  # type: ignore[arg-type]


def test_adapters_raise_the_core_errors_when_built() -> None:
    from cprs_integrations.langchain import CPRSDocumentCompressor
    from cprs_integrations.llamaindex import CPRSNodePostprocessor

    for adapter in (CPRSDocumentCompressor, CPRSNodePostprocessor):
        with pytest.raises(GranularityError):
            adapter(granularity="words")
        with pytest.raises(InstructionError, match="did you mean 'needle'"):
            adapter(instruction="needles")
        with pytest.raises(BudgetError):
            adapter(target_ratio=2.0)
        with pytest.raises(WindowSizeError):
            adapter(window_size=0)
        with pytest.raises(OptionError, match="timeout"):
            adapter(timeout=-1)
    with pytest.raises(QueryError):  # refused before the (unreachable) server is ever called
        CPRSDocumentCompressor(server_url="http://127.0.0.1:9").compress_documents([], "  ")


def test_tool_pruning_names_a_wrong_question_or_option(digit_compressor: CPRSCompressor) -> None:
    from cprs_integrations.tools import prune_tool_output

    with pytest.raises(QueryError, match="question is empty"):  # checked before a structured output is looked at
        prune_tool_output({"rows": [1, 2]}, " ", digit_compressor)
    with pytest.raises(QueryError, match="question is empty"):
        prune_tool_output(CONTEXT, " ", digit_compressor)
    with pytest.raises(QueryError, match="question must be a string"):
        prune_tool_output(CONTEXT, None, digit_compressor)  # type: ignore[arg-type]
    with pytest.raises(OptionError, match="min_tokens"):
        prune_tool_output(CONTEXT, QUERY, digit_compressor, min_tokens=-5)


def test_server_refuses_an_empty_query_on_v1_but_not_on_upstreams_endpoint(digit_compressor: CPRSCompressor) -> None:
    with BackgroundServer(create_app(digit_compressor)) as server:
        empty = httpx.post(server.url + "/v1/compress", json={"context": CONTEXT, "query": ""}, timeout=60)
        assert empty.status_code == 400 and empty.json()["error"]["type"] == "QueryError"
        near_miss = httpx.post(server.url + "/v1/compress", json={"context": CONTEXT, "query": QUERY,
                                                                 "instruction": "needles"}, timeout=60)
        assert near_miss.status_code == 400 and "did you mean 'needle'" in near_miss.json()["error"]["message"]
        default = httpx.post(server.url + "/v1/compress", json={"context": CONTEXT, "query": QUERY,
                                                               "instruction": "needle"}, timeout=60)
        assert default.json()["granularity"] == "sentence"
        messages = [{"role": "system", "content": "needle"}, {"role": "user", "content": ""},
                    {"role": "context", "content": CONTEXT}]
        upstream = httpx.post(server.url + "/qwen_long_compress_server", content=json.dumps(
            {"payload": {"input": {"messages": messages}, "parameters": {"min_keyword_len": 0}}}), timeout=60)
        assert upstream.status_code == 200
        assert upstream.json()["payload"]["output"]["text"] == ["1984", "42", "7"]  # upstream's token spans
        batch = RemoteCompressor(server.url).compress_batch(
            [request(), request(query=None), CONTEXT]  # type: ignore[arg-type,list-item]
        )
        assert batch[0].text == "The year was 1984.\nWe counted 42 cats and 7 dogs."
        assert isinstance(batch[1], QueryError)
        assert isinstance(batch[2], OptionError) and "got str: build one per text" in str(batch[2])


def run_cli(*argv: str, stdin: bytes | None = b"") -> subprocess.CompletedProcess[str]:
    """``cprs ARGV`` in a fresh interpreter that reports whether torch was imported."""
    code = (
        "import sys\nfrom cprs_integrations.cli import main\n"
        "try:\n    status = main(sys.argv[1:])\nexcept SystemExit as exit:\n    status = exit.code\n"
        "print('torch imported:', 'torch' in sys.modules, file=sys.stderr)\nsys.exit(status)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO), "COLUMNS": "250"}
    return subprocess.run([sys.executable, "-c", code, *argv], input=stdin.decode() if stdin is not None else None,
                          capture_output=True, text=True, env=env, timeout=60)


@pytest.mark.parametrize(
    ("argv", "status", "message"),
    [
        (["--help"], 0, "COMMAND"),
        (["compress", "--help"], 0, "default sentence"),
        (["--version"], 0, "cprs "),
        (["compress", "-q", "x", "--target-ratio", "1.5", "f.txt"], 1, "target_ratio is the fraction"),
        (["compress", "-q", "x", "--window-size", "1", "f.txt"], 1, "--window-size must be an integer >= 2"),
        (["compress", "-q", "x", "--min-span-tokens", "-2", "f.txt"], 1, "min_span_tokens must be an integer >= 1"),
        (["compress", "-q", " ", "f.txt"], 1, "query is empty"),
        (["compress", "-q", "x", "-i", "needles", "f.txt"], 1, "did you mean 'needle'"),
        (["compress", "f.txt"], 2, "the following arguments are required: -q/--query"),
    ],
)
def test_cli_answers_help_version_and_argument_errors_without_torch(argv: list[str], status: int, message: str) -> None:
    done = run_cli(*argv)
    assert done.returncode == status, done.stderr
    assert message in done.stdout + done.stderr
    assert "torch imported: False" in done.stderr


def test_cli_refuses_to_wait_on_a_terminal(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    from cprs_integrations.cli import main

    class Terminal:
        def isatty(self) -> bool:
            return True

    monkeypatch.setattr(sys, "stdin", Terminal())
    with pytest.raises(SystemExit) as exit_info:
        main(["compress", "-q", QUERY])
    assert exit_info.value.code == 2 and "no input: give a FILE, or pipe text into stdin" in capsys.readouterr().err


def test_an_unknown_compression_request_field_is_an_option_error_naming_the_closest() -> None:
    """``CompressionRequest(target_ratoi=0.1)`` raised Python's bare TypeError."""
    with pytest.raises(OptionError, match="unknown option 'target_ratoi': did you mean 'target_ratio'\\? The options "
                                          "are allow_empty_query, budget_tokenizer, context, "):
        CompressionRequest(CONTEXT, QUERY, target_ratoi=0.1)  # type: ignore[call-arg]
    with pytest.raises(OptionError, match="unknown option 'qeury': did you mean 'query'"):
        dataclasses.replace(request(), qeury="x")
    with pytest.raises(CPRSError, match="unknown option 'colour': The options"):
        CompressionRequest(context=CONTEXT, colour="red")  # type: ignore[call-arg]
    positional = CompressionRequest(CONTEXT, QUERY, "needle", "token", None, 5)
    assert positional == request(granularity="token", target_tokens=5) and dataclasses.is_dataclass(positional)
    assert pickle.loads(pickle.dumps(positional)) == positional


def test_compression_request_positional_mistakes_are_option_errors() -> None:
    """Too many positional arguments, a field given twice or no context raised Python's bare TypeError."""
    with pytest.raises(OptionError, match=r"takes at most 15 positional arguments \(context, query, .*\), got 16"):
        CompressionRequest(CONTEXT, *[None] * 15)  # type: ignore[misc]
    with pytest.raises(OptionError, match="got context both as a positional argument and by name"):
        CompressionRequest(CONTEXT, context=CONTEXT)  # type: ignore[misc]
    with pytest.raises(OptionError, match="needs a context"):
        CompressionRequest(query=QUERY)  # type: ignore[call-arg]


def test_a_huge_wrong_value_is_quoted_short_with_its_length(digit_compressor: CPRSCompressor, tmp_path: Path) -> None:
    huge = "w" * 100_000

    def compress(**options: Any) -> None:
        digit_compressor.compress(CONTEXT, query=QUERY, **options)

    cases = [
        (lambda: check_request(request(granularity=huge)), GranularityError, "granularity must be one of"),
        (lambda: compress(keep=[re.compile(huge.encode())]), KeepError, "a bytes pattern b'www"),
        (lambda: compile_regex("(" + huge), KeepError, r"keep_regex '\(www.* compiles to about 100001 items, more than "
                                                        "100000; use a shorter pattern"),  # the CLI's and server's
        (lambda: compress(keep_spans=[(huge, 1)]), KeepError, r"got \('www"),
        (lambda: check_request(request(target_ratio=huge)), BudgetError, "target_ratio must be a number"),
        (lambda: CPRSCompressor.from_pretrained(huge), ModelLoadError, "cannot look up the model path 'www"),
        (lambda: CPRSCompressor.from_pretrained(tmp_path / huge), ModelLoadError, "cannot look up the model path"),
    ]
    for call, error, message in cases:
        with pytest.raises(error, match=message) as raised:
            call()
        assert len(str(raised.value)) < 400 and re.search(r"\(100,0\d\d (characters|bytes)\)", str(raised.value))
