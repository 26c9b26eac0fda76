"""RemoteCompressor against a real server on loopback: same results and same errors as the local compressor."""

from __future__ import annotations

import socket
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Iterator

import pytest

from cprs_core import (
    BudgetError,
    CompressionRequest,
    Compressor,
    CPRSCompressor,
    EmptyContextError,
    GranularityError,
    TextDecodingError,
    WindowSizeError,
)
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
