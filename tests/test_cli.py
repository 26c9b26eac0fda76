"""The ``cprs`` command line: ``main([...])`` in process, plus real subprocesses for ``compress`` and ``serve``."""

from __future__ import annotations

import importlib
import io
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Iterator

import httpx
import pytest

from cprs_core import CPRSCompressor
from cprs_integrations.cli import main
from cprs_integrations.server import BackgroundServer, ServerSettings, create_app

REPO = Path(__file__).resolve().parents[1]
CONTEXT = "The year was 1984. Nothing else matters here.\n\nWe counted 42 cats and 7 dogs. Then we left."
VERSES = (
    "And Abraham begat Isaac; and Isaac begat Jacob. The sea roared and the waves lifted up. "
    "And Jacob begat Judas and his brethren. The grass withereth, the flower fadeth."
)
PASSAGE = "\n\n".join([VERSES] * 3)
QUERY = "Who begat Isaac?"


@pytest.fixture(scope="module")
def mini() -> CPRSCompressor:
    return CPRSCompressor.from_pretrained(None)


@pytest.fixture(scope="module")
def mini_server(mini: CPRSCompressor) -> Iterator[BackgroundServer]:
    with BackgroundServer(create_app(mini, ServerSettings())) as server:
        yield server


@pytest.fixture
def text_file(tmp_path: Path) -> Path:
    path = tmp_path / "verses.txt"
    path.write_text(VERSES, encoding="utf-8")
    return path


def feed_stdin(monkeypatch: pytest.MonkeyPatch, data: bytes) -> None:
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(data), encoding="utf-8"))


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_compress_file_prints_the_kept_text(
    text_file: Path, mini: CPRSCompressor, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["compress", "--query", QUERY, "--instruction", "fact", "--granularity", "sentence", str(text_file)]) == 0
    expected = mini.compress(VERSES, QUERY, "fact", granularity="sentence")
    out, err = capsys.readouterr()
    assert out == expected.text + "\n" and "Abraham begat Isaac" in out
    assert err == ""  # no progress bar when stderr is not a terminal


def test_a_utf8_byte_order_mark_is_not_part_of_the_text(
    tmp_path: Path, mini: CPRSCompressor, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "notepad.txt"
    path.write_bytes(b"\xef\xbb\xbf" + VERSES.encode())
    assert main(["compress", "-q", QUERY, "--format", "json", str(path)]) == 0
    answer = json.loads(capsys.readouterr().out)
    assert answer["spans"][0]["text"].startswith("And Abraham") and answer["spans"][0]["start"] == 0
    assert answer == json.loads(json.dumps(mini.compress(VERSES, QUERY).to_dict()))


def test_stdin_with_json_output_and_local_model_options(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    feed_stdin(monkeypatch, PASSAGE.encode())
    argv = ["compress", "-q", QUERY, "-i", "fact", "--model", "cprs-mini", "--device", "cpu", "--dtype", "float32",
            "--window-size", "64", "--target-tokens", "12", "--format", "json", "-"]
    assert main(argv) == 0
    answer = json.loads(capsys.readouterr().out)
    local = CPRSCompressor.from_pretrained(None, device="cpu", dtype="float32", window_size=64)
    expected = local.compress(PASSAGE, QUERY, "fact", target_tokens=12)
    assert answer == json.loads(json.dumps(expected.to_dict()))
    assert answer["metadata"]["window_size"] == 64 and answer["windows"] > 1 and answer["compressed_tokens"] <= 12
    assert all(PASSAGE[span["start"] : span["end"]] == span["text"] for span in answer["spans"])


def test_server_option_compresses_remotely(
    mini_server: BackgroundServer, mini: CPRSCompressor, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    feed_stdin(monkeypatch, PASSAGE.encode())
    argv = ["compress", "-q", QUERY, "--granularity", "sentence", "--separator", " / ", "--server", mini_server.url]
    assert main(argv) == 0
    expected = mini.compress(PASSAGE, QUERY, granularity="sentence", separator=" / ")
    assert capsys.readouterr().out == expected.text + "\n" and " / " in expected.text


def test_progress_bar_follows_the_windows(
    text_file: Path, mini: CPRSCompressor, capsys: pytest.CaptureFixture[str]
) -> None:
    text_file.write_text(VERSES * 40, encoding="utf-8")
    windows = mini.compress(VERSES * 40, QUERY).windows
    assert windows > 1
    assert main(["compress", "-q", QUERY, "--progress", str(text_file)]) == 0
    err = capsys.readouterr().err
    assert f"{windows}/{windows}" in err and "window" in err and "100%" in err


@pytest.mark.parametrize(
    ("argv", "content", "message"),
    [
        (["--target-ratio", "1.5"], VERSES.encode(), "target_ratio is the fraction of tokens to keep"),
        ([], b"caf\xe9 au lait", "not valid UTF-8: byte 3"),
        ([], b" \n ", "context is empty"),
        (["--model", "/no/such/model"], VERSES.encode(), "no model at '/no/such/model'"),
        (["--device", "tpu"], VERSES.encode(), "unknown device 'tpu'"),
        (["--budget-tokenizer", str(REPO / "docs"), "--target-tokens", "5"], VERSES.encode(),
         "'" + str(REPO / "docs") + "' is a directory but not a transformers tokenizer ("),
        (["--model", "/no/such/model", "--budget-tokenizer", str(REPO / "docs")], VERSES.encode(),  # before loading
         "is a directory but not a transformers tokenizer"),
    ],
)
def test_compression_errors_exit_1_with_the_message(
    text_file: Path, argv: list[str], content: bytes, message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    text_file.write_bytes(content)
    assert main(["compress", "-q", QUERY, *argv, str(text_file)]) == 1
    out, err = capsys.readouterr()
    assert out == "" and err.startswith("cprs compress: error: ") and message in err


def test_missing_file_and_unreachable_server(tmp_path: Path, text_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["compress", "-q", QUERY, str(tmp_path / "missing.txt")]) == 1
    err = capsys.readouterr().err
    assert err == f"cprs compress: error: cannot read {tmp_path / 'missing.txt'}: No such file or directory\n"
    port = free_port()
    assert main(["compress", "-q", QUERY, "--server", f"http://127.0.0.1:{port}", str(text_file)]) == 1
    assert f"cannot reach the cprs server at http://127.0.0.1:{port}" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["compress", "file.txt"], "the following arguments are required: -q/--query"),
        (["compress", "-q", "x", "--server", "http://h:1", "--device", "cpu"], "--device configure a local model"),
        (["compress", "-q", "x", "--server", "http://h:1", "--progress"], "--progress needs a local model"),
        (["compress", "-q", "x", "--server", "http://h:1", "--model", "m"], "not allowed with argument"),
        (["compress", "-q", "x", "--target-ratio", "0.5", "--target-tokens", "3"], "not allowed with argument"),
        (["compress", "-q", "x", "--granularity", "word"], "invalid choice: 'word'"),
        (["compress", "-q", "x", "--bogus"], "unrecognized arguments: --bogus"),
        (["serve", "--port", "many"], "invalid int value: 'many'"),
        (["compress", "-q", "x", "--server", "http://h:1", "--timeout", "nan"], "--timeout: expected a finite number"),
        (["serve", "--max-body-mb", "inf"], "--max-body-mb: expected a finite number, got 'inf'"),
    ],
)
def test_usage_errors_exit_2(argv: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2 and message in capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--server", "gpu-box:8091"], "--server must be an http:// or https:// URL such as http://gpu-box:8091, got"),
        (["--server", "http://h:1", "--timeout", "0"], "--timeout must be a positive number of seconds"),
        (["--server", "http://h:1", "--timeout", "1e300"], "at most 9223372036; got 1e+300"),
    ],
)
def test_wrong_server_url_or_timeout_exits_1_before_connecting(
    text_file: Path, argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """These failed deep in urllib and sockets with a traceback (or, for 0, as "cannot reach the server")."""
    assert main(["compress", "-q", QUERY, *argv, str(text_file)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("cprs compress: error: ") and message in err and err.count("\n") == 1


def test_closed_stdin_is_a_usage_error(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """``cprs compress -q ... <&-`` (no stdin at all: ``sys.stdin`` is None) raised AttributeError."""
    monkeypatch.setattr(sys, "stdin", None)
    with pytest.raises(SystemExit) as exit_info:
        main(["compress", "-q", QUERY])
    assert exit_info.value.code == 2 and "no input: give a FILE" in capsys.readouterr().err


def test_a_reader_that_quits_early_is_a_one_line_error(
    text_file: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """``cprs compress ... | head`` whose reader is gone: was a BrokenPipeError traceback."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    with open(write_end, "w", encoding="utf-8") as closed_pipe:
        monkeypatch.setattr(sys, "stdout", closed_pipe)
        assert main(["compress", "-q", QUERY, str(text_file)]) == 1
    assert capsys.readouterr().err == (
        "cprs compress: error: the output pipe closed before all the output was written\n"
    )


@pytest.mark.parametrize("port", [-1, 65536])
def test_serve_refuses_a_port_out_of_range_before_loading(port: int, capsys: pytest.CaptureFixture[str]) -> None:
    """``--port 99999`` loaded the model and claimed to serve on it."""
    assert main(["serve", "--model", "/no/such/model", "--port", str(port)]) == 2
    assert capsys.readouterr().err == f"cprs serve: error: --port must be a TCP port, 0 to 65535; got {port}\n"


@pytest.mark.parametrize(("command", "module", "option"), [("batch", "ray_batch", "--input"),
                                                        ("serve-ray", "ray_serve", "--num-replicas")])
def test_ray_commands_delegate_or_say_how_to_install_ray(
    capsys: pytest.CaptureFixture[str], command: str, module: str, option: str
) -> None:
    try:
        importlib.import_module(f"cprs_integrations.{module}")
    except ImportError:
        assert main([command, option, "1"]) == 1
        assert "pip install -e '.[ray]'" in capsys.readouterr().err
    else:
        with pytest.raises(SystemExit) as exit_info:
            main([command, "--help"])
        help_text = capsys.readouterr().out
        assert exit_info.value.code == 0 and f"usage: cprs {command}" in help_text and option in help_text


@pytest.mark.parametrize("compile", [True, False])
def test_serve_compile_option_compiles_the_served_critic(
    tiny_cprs_dir: Path, monkeypatch: pytest.MonkeyPatch, compile: bool
) -> None:
    import cprs_integrations.server as server_package

    loaded: list[CPRSCompressor] = []
    load = CPRSCompressor.from_pretrained.__func__

    def keep_loaded(cls, *args, **kwargs):
        loaded.append(load(cls, *args, **kwargs))
        return loaded[-1]

    served: list[object] = []
    monkeypatch.setattr(CPRSCompressor, "from_pretrained", classmethod(keep_loaded))
    monkeypatch.setattr(server_package, "serve", lambda app, **_: served.append(app))
    argv = ["serve", "--model", str(tiny_cprs_dir), "--device", "cpu"] + (["--compile"] if compile else [])
    assert main(argv) == 0 and len(served) == 1
    fused = loaded[0].critic.model.model.layers[0].self_attn.qkv_weight is not None  # compile_layers fuses first
    assert fused is compile


@pytest.mark.slow
def test_subprocess_reads_stdin(mini: CPRSCompressor) -> None:
    command = [sys.executable, "-m", "cprs_integrations.cli", "compress", "--query", QUERY, "--format", "json"]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run(command, input=VERSES.encode(), capture_output=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr.decode()
    assert json.loads(done.stdout) == json.loads(json.dumps(mini.compress(VERSES, QUERY).to_dict()))


@pytest.mark.slow
def test_serve_subprocess_answers_upstream_clients(mini: CPRSCompressor) -> None:
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    command = [sys.executable, "-m", "cprs_integrations.cli", "serve", "--port", str(port), "--max-batch-requests", "4",
               "--max-wait-ms", "5", "--log-level", "warning"]
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while True:
            assert process.poll() is None, process.stderr.read().decode() if process.stderr else ""
            try:
                if httpx.get(url + "/readiness").json() == "success":
                    break
            except httpx.TransportError:
                assert time.monotonic() < deadline
                time.sleep(0.1)
        messages = [{"role": "system", "content": "fact"}, {"role": "user", "content": QUERY},
                    {"role": "context", "content": VERSES}]
        body = {"header": {"request_id": "cli"}, "payload": {"input": {"messages": messages},
                                                             "parameters": {"min_keyword_len": 1}}}
        answer = httpx.post(url + "/qwen_long_compress_server", content=json.dumps(body), timeout=60).json()
        expected = [span.text for span in mini.compress(VERSES, QUERY, "fact", granularity="token", min_span_tokens=2).spans]
        assert answer["header"]["status_code"] == 200 and answer["payload"]["output"]["text"] == expected
        health = httpx.get(url + "/health").json()
        assert health["model"] == "cprs-mini" and health["settings"]["max_batch_requests"] == 4
    finally:
        process.terminate()
        process.wait(timeout=30)


def test_ctrl_c_prints_one_line_and_exits_130(
    text_file: Path, mini: CPRSCompressor, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A real SIGINT, raised as the compression starts (not on a timer: a fast machine finished first): it exited
    130 without a word."""
    compress = CPRSCompressor.compress

    def interrupted(self: CPRSCompressor, *args: Any, **options: Any) -> Any:
        signal.raise_signal(signal.SIGINT)
        return compress(self, *args, **options)

    monkeypatch.setattr(CPRSCompressor, "compress", interrupted)
    status = main(["compress", "-q", QUERY, str(text_file)])
    assert status == 130
    assert capsys.readouterr() == ("", "cprs compress: interrupted\n")


@pytest.mark.slow
def test_ctrl_c_in_a_subprocess_prints_one_line_and_exits_130(text_file: Path) -> None:
    """``cprs compress`` interrupted once its progress bar shows (scoring has begun)."""
    text_file.write_text(VERSES * 400, encoding="utf-8")
    command = [sys.executable, "-m", "cprs_integrations.cli", "compress", "-q", QUERY, "--progress", str(text_file)]
    process = subprocess.Popen(command, env={**os.environ, "PYTHONPATH": str(REPO)}, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE)
    assert process.stderr is not None
    started = b""
    while b"compressing" not in started:
        chunk = process.stderr.read1(4096)
        assert chunk, f"cprs compress ended before compressing: {started.decode()}"
        started += chunk
    process.send_signal(signal.SIGINT)
    out, rest = process.communicate(timeout=120)
    err = (started + rest).decode()
    assert process.returncode == 130 and out == b""
    assert err.endswith("cprs compress: interrupted\n") and "Traceback" not in err


@pytest.mark.parametrize(("argv", "environment"), [(["--api-key", ""], None), ([], ""), ([], " s3cret ")])
def test_serve_refuses_an_api_key_no_client_can_send_before_loading(
    argv: list[str], environment: str | None, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """``--api-key ""`` (say, from an unset shell variable) served with no key at all."""
    monkeypatch.delenv("CPRS_API_KEY", raising=False)
    if environment is not None:
        monkeypatch.setenv("CPRS_API_KEY", environment)
    assert main(["serve", "--model", "/no/such/model", *argv]) == 2
    assert capsys.readouterr().err.startswith(
        "cprs serve: error: api_key (--api-key, $CPRS_API_KEY) must be a non-empty key without spaces at either end"
    )


def test_an_output_encoding_that_cannot_write_the_text_is_a_one_line_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Output redirected to a file on Windows is cp1252 (here ascii): a character it lacks was a traceback."""
    path = tmp_path / "cafe.txt"
    path.write_text("The café on Rue 42 opened in 1984. Nothing else happened.", encoding="utf-8")
    ascii_stdout = io.TextIOWrapper(io.BytesIO(), encoding="ascii")
    monkeypatch.setattr(sys, "stdout", ascii_stdout)
    assert main(["compress", "-q", "When did the café open?", "--keep", "café", str(path)]) == 1
    assert capsys.readouterr().err == (
        "cprs compress: error: the output holds 'é' (U+00E9), which stdout's encoding ascii cannot write; "
        "set PYTHONIOENCODING=utf-8 to write UTF-8\n"
    )
    assert ascii_stdout.buffer.getvalue() == b""  # nothing half-written


def test_an_unknown_budget_tokenizer_name_fails_on_one_line_before_the_model_loads(
    text_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """It failed only after the model had loaded, with tiktoken's three-line message."""
    pytest.importorskip("tiktoken")
    argv = ["compress", "-q", QUERY, "--model", "/no/such/model", "--budget-tokenizer", "o200k", "--target-tokens", "5"]
    assert main([*argv, str(text_file)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("cprs compress: error: --budget-tokenizer 'o200k' is neither a tokenizer directory nor a "
                          "tiktoken encoding this machine can load (") and err.count("\n") == 1


def test_a_keep_regex_too_large_to_compile_fails_on_one_line(
    text_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``--keep-regex 'a{1000000000}'`` asked the regex package for a billion copies: the process ran out of memory."""
    argv = ["compress", "-q", QUERY, "--model", "/no/such/model", "--keep-regex", "a{1000000000}", str(text_file)]
    assert main(argv) != 0
    err = capsys.readouterr().err
    assert "'a{1000000000}' has counted repeats ({n}) that compiling writes out to about 1000000000 items" in err
    assert err.count("\n") == 1
