"""RemoteCompressor against a real server on loopback: same results and same errors as the local compressor."""

from __future__ import annotations

import json
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Iterator

import pytest

from cprs_core import (
    BudgetError,
    CompressionRequest,
    Compressor,
    CPRSCompressor,
    EmptyContextError,
    GranularityError,
    OptionError,
    TextDecodingError,
    WindowSizeError,
)
from cprs_core.errors import quoted
from cprs_core.remote import RemoteCompressor, RemoteError
from cprs_integrations.server import BackgroundServer, ServerSettings, create_app

CONTEXT = "The year was 1984. Nothing else matters here.\n\nWe counted 42 cats and 7 dogs. Then we left."
QUERY = "Which numbers appear?"


@pytest.fixture(scope="module")
def server(digit_compressor: CPRSCompressor) -> Iterator[BackgroundServer]:
    settings = ServerSettings(max_body_bytes=16 * 1024, api_key="key-1", model_name="digit-tagger")
    with BackgroundServer(create_app(digit_compressor, settings)) as running:
        yield running


@pytest.fixture(scope="module")
def remote(server: BackgroundServer) -> RemoteCompressor:
    return RemoteCompressor(server.url + "/", timeout=60, api_key="key-1")


@pytest.mark.parametrize(
    "options",
    [
        {},
        {"instruction": "needle", "granularity": "sentence", "separator": " | "},
        {"instruction": "needle", "granularity": "paragraph"},
        {"instruction": "needle", "target_ratio": 0.2},
        {"instruction": "needle", "target_tokens": 3, "granularity": "token"},
        {"instruction": "needle", "min_span_tokens": 3},
    ],
)
def test_remote_equals_local(remote: RemoteCompressor, digit_compressor: CPRSCompressor, options: dict) -> None:
    assert remote.compress(CONTEXT, QUERY, **options) == digit_compressor.compress(CONTEXT, QUERY, **options)


def test_bytes_context_and_offsets_match_local(remote: RemoteCompressor, digit_compressor: CPRSCompressor) -> None:
    context = "Café № 5 opened in 1921 — ünïcode before the 42nd street.".encode()
    result = remote.compress(context, QUERY, "needle", granularity="token")
    assert result == digit_compressor.compress(context, QUERY, "needle", granularity="token")
    assert [context.decode()[span.start : span.end] for span in result.spans] == [span.text for span in result.spans]
    assert result.text == "5\n1921\n42"


def test_batch_equals_local_slot_by_slot(remote: RemoteCompressor, digit_compressor: CPRSCompressor) -> None:
    requests = [
        CompressionRequest(CONTEXT, QUERY, "needle"),
        CompressionRequest("\n\t ", QUERY),
        CompressionRequest(CONTEXT, QUERY, granularity="chapter"),  # type: ignore[arg-type]
        CompressionRequest("Room 101 and 102.", "Which rooms?", "needle", "token", target_ratio=0.5, separator="; "),
    ]
    remote_outcomes = remote.compress_batch(requests)
    local_outcomes = digit_compressor.compress_batch(requests)
    assert remote_outcomes[0] == local_outcomes[0] and remote_outcomes[3] == local_outcomes[3]
    for index in (1, 2):
        assert type(remote_outcomes[index]) is type(local_outcomes[index])
        assert str(remote_outcomes[index]) == str(local_outcomes[index])
    assert remote.compress_batch([]) == []


@pytest.mark.parametrize(
    ("context", "options", "error"),
    [
        ("   ", {}, EmptyContextError),
        (CONTEXT, {"target_ratio": 1.5}, BudgetError),
        (CONTEXT, {"target_ratio": 0.5, "target_tokens": 3}, BudgetError),
        (CONTEXT, {"granularity": "chapter"}, GranularityError),
        (CONTEXT, {"instruction": "tag everything with 'x' " * 40}, WindowSizeError),
        (b"caf\xe9", {}, TextDecodingError),
    ],
)
def test_server_errors_come_back_as_the_same_class(
    remote: RemoteCompressor, digit_compressor: CPRSCompressor, context: str | bytes, options: dict, error: type
) -> None:
    with pytest.raises(error) as local:
        digit_compressor.compress(context, QUERY, **options)
    with pytest.raises(error) as raised:
        remote.compress(context, QUERY, **options)
    assert str(raised.value) == str(local.value)


def test_refusals_become_remote_errors(server: BackgroundServer, remote: RemoteCompressor) -> None:
    with pytest.raises(RemoteError, match="larger than the server's limit of 16384 bytes") as too_large:
        remote.compress("digits 1 2 3 " * 2000, QUERY)
    assert (too_large.value.kind, too_large.value.status) == ("RequestTooLarge", 413)
    with pytest.raises(RemoteError, match="Unauthorized") as unauthorized:
        RemoteCompressor(server.url).compress(CONTEXT, QUERY)
    assert unauthorized.value.status == 401
    with pytest.raises(RemoteError, match=r"/nowhere/v1/compress \(HTTP 404\): give the server's base URL") as missing:
        RemoteCompressor(server.url + "/nowhere", api_key="key-1").compress(CONTEXT, QUERY)
    assert (missing.value.kind, missing.value.status) == ("NotFound", 404)


def test_unreachable_server_is_a_clear_error() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # closed again: nothing listens there
    with pytest.raises(RemoteError, match=rf"cannot reach the cprs server at http://127.0.0.1:{port}.*cprs serve") as error:
        RemoteCompressor(f"http://127.0.0.1:{port}").compress(CONTEXT, QUERY)
    assert error.value.kind == "ConnectionError" and error.value.status is None
    assert isinstance(error.value, ValueError)


def test_client_timeout_is_a_clear_error(server: BackgroundServer) -> None:
    slow = RemoteCompressor(server.url, timeout=0.05, api_key="key-1")
    long_context = " ".join(f"Entry {i} of the ledger." for i in range(300))
    with pytest.raises(RemoteError, match="no answer .* within 0.05 s") as error:
        slow.compress(long_context, QUERY, "needle")
    assert error.value.kind == "ClientTimeout"


def test_is_a_compressor_and_reports_health(remote: RemoteCompressor) -> None:
    assert isinstance(remote, Compressor)
    assert not remote.base_url.endswith("/")
    health = remote.health()
    assert health["status"] == "ok" and health["model"] == "digit-tagger" and health["requests"] >= 0


def test_retries_stop_at_the_deadline_when_nothing_listens() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    patient = RemoteCompressor(f"http://127.0.0.1:{port}", retries=1000, backoff=0.1, deadline=1.0)
    started = time.monotonic()
    with pytest.raises(RemoteError, match=r"cannot reach .* \(gave up: the call's deadline of 1.0 s") as error:
        patient.compress(CONTEXT, QUERY)
    assert 0.2 < time.monotonic() - started < 1.5 and error.value.kind == "ConnectionError"


@pytest.mark.slow
def test_a_busy_server_is_retried_after_its_retry_after(digit_compressor: CPRSCompressor) -> None:
    settings = ServerSettings(max_batch_requests=1, max_wait_ms=0, max_queue=1, step_windows=1)
    long_context = " ".join(f"Entry {i} of the ledger was read aloud." for i in range(600))
    with BackgroundServer(create_app(digit_compressor, settings)) as running, ThreadPoolExecutor(2) as pool:
        # the second long request waits for the first: generous timeouts, so a slow or busy CI machine cannot fail it
        busy = RemoteCompressor(running.url, timeout=600, retries=0)
        computing = pool.submit(busy.compress, long_context, QUERY, "needle")
        while busy.health()["in_flight"] < 1:
            time.sleep(0.01)
        waiting = pool.submit(busy.compress, long_context, QUERY, "needle")
        while busy.health()["queue_depth"] < 1:
            time.sleep(0.01)
        with pytest.raises(RemoteError, match="ServerBusy") as refused:
            busy.compress(CONTEXT, QUERY, "needle")
        assert refused.value.retry_after == 1.0
        patient = RemoteCompressor(running.url, retries=1000, deadline=600)
        started = time.monotonic()
        result = patient.compress(CONTEXT, QUERY, "needle")
        assert time.monotonic() - started >= 1.0  # waited the server's Retry-After at least once
        assert result == digit_compressor.compress(CONTEXT, QUERY, "needle")
        assert computing.result().text and waiting.result().text


@contextmanager
def answering(answer: bytes, endless: bytes = b"") -> Iterator[str]:
    """A loopback server that reads each request and writes ``answer`` (then ``endless`` again and again until the
    client leaves): what a proxy, another service or a broken server sends instead of a cprs server's JSON."""
    listener = socket.create_server(("127.0.0.1", 0))

    def serve() -> None:
        while True:
            try:
                connection, _ = listener.accept()
            except OSError:  # closed: the test is over
                return
            with connection:
                received = b""
                while b"\r\n\r\n" not in received:
                    received += connection.recv(65536)
                head, _, body = received.partition(b"\r\n\r\n")
                length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n")
                               if line.lower().startswith(b"content-length:")), 0)
                while len(body) < length:
                    body += connection.recv(65536)
                try:
                    connection.sendall(answer)
                    while endless:
                        connection.sendall(endless)
                except OSError:  # the client stopped reading
                    pass

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    finally:
        listener.shutdown(socket.SHUT_RDWR)  # wakes the accept() waiting in the thread
        listener.close()
        thread.join(timeout=10)


def http_answer(status: int, body: bytes, headers: str = "") -> bytes:
    return f"HTTP/1.1 {status} X\r\nContent-Length: {len(body)}\r\n{headers}\r\n".encode() + body


PROXY_PAGE = b"<html><body><h1>502 Bad Gateway</h1></body></html>"


@pytest.mark.parametrize(
    ("answer", "message"),
    [
        (http_answer(200, PROXY_PAGE), r"\(Expecting value.*\): b'<html><body><h1>502 Bad Gateway"),
        (http_answer(502, PROXY_PAGE), r"HTTP 502 without an error description: b'<html><body><h1>502 Bad Gateway"),
        (http_answer(422, b'{"detail": "bad"}'), r"HTTP 422 without an error description: b'{\"detail\": \"bad\"}'"),
        (http_answer(200, b"[1, 2]"), r"not a JSON object but \[1, 2\]"),
        (http_answer(200, b"[" * 100_000 + b"]" * 100_000), r"maximum recursion depth .*\(200,000 bytes\)"),
        (http_answer(200, '{"text": "café"}'.encode("latin-1")), r"can't decode byte 0xe9"),
        (b"SSH-2.0-OpenSSH_8.9\r\n", r"no valid HTTP answer .* \(BadStatusLine: 'SSH-2.0-OpenSSH_8.9\\r\\n'\); is it"),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", r"\(IncompleteRead: "),
    ],
)
def test_answers_that_are_not_a_cprs_servers_are_named_remote_errors(answer: bytes, message: str) -> None:
    """Each was a bare JSON, http.client, Attribute or RecursionError, or an unchecked result (text=5)."""
    with answering(answer) as url:
        client = RemoteCompressor(url, timeout=10, retries=0)
        batch = [CompressionRequest(CONTEXT, QUERY)]
        for call in (lambda: client.compress(CONTEXT, QUERY), lambda: client.compress_batch(batch)):
            with pytest.raises(RemoteError, match=message) as error:
                call()
            assert error.value.kind == "BadResponse" and len(str(error.value)) < 400


def test_a_malformed_result_is_named_and_in_a_batch_only_its_slot_fails(digit_compressor: CPRSCompressor) -> None:
    """A result of the wrong types (text=5) was returned unchecked; a malformed slot failed the whole batch with an
    AttributeError or KeyError."""
    wrong = json.dumps({"text": 5, "spans": [], "note": "x" * 5000}).encode()
    with answering(http_answer(200, wrong)) as url:
        with pytest.raises(RemoteError, match=r"malformed result \(text missing or of the wrong type\): .*\(5,0"):
            RemoteCompressor(url, retries=0).compress(CONTEXT, QUERY)
    result = digit_compressor.compress(CONTEXT, QUERY, "needle")
    no_span_fields = {**result.to_dict(), "spans": [{}]}
    slots = [{"result": result.to_dict(), "error": None}, 5, {"error": None}, {"result": no_span_fields}]
    with answering(http_answer(200, json.dumps({"results": slots}).encode())) as url:
        outcomes = RemoteCompressor(url, retries=0).compress_batch([CompressionRequest(CONTEXT, QUERY)] * 4)
    assert outcomes[0] == result
    assert [str(outcome) for outcome in outcomes[1:]] == [
        "the server sent a malformed result (the value missing or of the wrong type): 5",
        "the server sent a malformed result (the value missing or of the wrong type): None",
        f"the server sent a malformed result (spans[0].start missing or of the wrong type): "
        f"{quoted(no_span_fields)}",
    ]


def test_an_endless_or_cut_short_answer_is_refused(digit_compressor: CPRSCompressor) -> None:
    """An endless answer was read until the memory ran out (1.8 GB within 8 s, past any timeout or deadline)."""
    with answering(b"HTTP/1.1 200 OK\r\n\r\n[", endless=b"1," * 65536) as url:
        started = time.monotonic()
        with pytest.raises(RemoteError, match=r"larger than 1,1\d\d,\d\d\d bytes, far more than a cprs") as error:
            RemoteCompressor(url, retries=0).compress(CONTEXT, QUERY)
        assert error.value.kind == "BadResponse" and time.monotonic() - started < 10
    with answering(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n{\"text\":") as url:
        with pytest.raises(RemoteError, match="was cut short: 92 of its bytes never came") as error:
            RemoteCompressor(url, retries=0).compress(CONTEXT, QUERY)
        assert error.value.kind == "ConnectionError"


def test_server_error_texts_are_cut_and_retry_after_is_bounded() -> None:
    """A Retry-After of 1e20 s was an OverflowError from time.sleep; a 5,000-character error type came back whole."""
    long_error = json.dumps({"error": {"type": "X" * 5000, "message": "m"}}).encode()
    with answering(http_answer(400, long_error)) as url:
        with pytest.raises(RemoteError, match=r"\(5,000 characters\) \(HTTP 400\): m$"):
            RemoteCompressor(url, retries=0).compress(CONTEXT, QUERY)
    busy_error = b'{"error": {"type": "ServerBusy", "message": "busy"}}'
    busy = http_answer(503, busy_error, "Retry-After: 99999999999999999999\r\n")
    with answering(busy) as url:
        with pytest.raises(RemoteError, match=r"busy \(gave up: the call's deadline of 5 s would pass before retry"):
            RemoteCompressor(url, retries=1, deadline=5).compress(CONTEXT, QUERY)


def test_an_api_key_travels_as_utf8_and_wrong_client_options_are_named(digit_compressor: CPRSCompressor) -> None:
    """A non-latin-1 key was a UnicodeEncodeError on every call (and 'clé' a 401); retries='3' a TypeError."""
    with BackgroundServer(create_app(digit_compressor, ServerSettings(api_key="clé-€"))) as running:
        assert RemoteCompressor(running.url, api_key="clé-€").compress(CONTEXT, QUERY) == digit_compressor.compress(
            CONTEXT, QUERY
        )
    for options, message in [
        ({"api_key": "key\nX-Injected: 1"}, "api_key holds a line break or another control character"),
        ({"api_key": b"key"}, "api_key must be a string, got bytes"),
        ({"retries": "3"}, "retries must be an integer >= 0, got '3'"),
        ({"backoff": -1}, "backoff must be a positive number of seconds"),
        ({"deadline": float("nan")}, "deadline must be a positive number of seconds"),
    ]:
        with pytest.raises(OptionError, match=message):
            RemoteCompressor("http://gpu-box:8091", **options)
    with pytest.raises(OptionError, match="base_url must be an http:// or https:// URL .* got 'http://127.0.0.1:abc'"):
        RemoteCompressor("http://127.0.0.1:abc")  # was http.client's InvalidURL on the first call
    with pytest.raises(RemoteError, match="cannot call the cprs server at http://127.0.0.1:9/a b: URL can't contain "
                                          "control characters") as error:
        RemoteCompressor("http://127.0.0.1:9/a b").compress(CONTEXT, QUERY)
    assert error.value.kind == "InvalidURL"
