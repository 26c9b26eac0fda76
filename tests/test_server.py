"""The HTTP service on a real uvicorn server on loopback, with the digit-tagging critic (it keeps the numbers)."""

from __future__ import annotations

import gzip
import json
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from random import Random
from typing import Any, Callable, Iterator

import httpx
import pytest
import torch
from fastapi.responses import StreamingResponse

from cprs_core import BudgetTokenizerError, CompressionRequest, CompressionResult, CPRSCompressor, QwenCritic
from cprs_core.remote import RemoteCompressor
from cprs_integrations.server import BackgroundServer, ServerSettings, create_app

CONTEXT = "The year was 1984. Nothing else matters here.\n\nWe counted 42 cats and 7 dogs. Then we left."
QUERY = "Which numbers appear?"
MAX_BODY = 64 * 1024


def upstream_body(context: str = CONTEXT, **parameters: Any) -> dict[str, Any]:
    """A request exactly as upstream's examples/infer.py builds it."""
    messages = [
        {"role": "system", "content": "needle"},
        {"role": "user", "content": QUERY},
        {"role": "context", "content": context},
    ]
    return {"header": {"request_id": "1111abca"}, "payload": {"input": {"messages": messages}, "parameters": parameters}}


def long_context(phrases: int) -> str:
    """About ten tokens per phrase, with a number in each (so the digit tagger keeps something everywhere)."""
    return " ".join(f"Entry {i} of the ledger was read aloud." for i in range(phrases))


@pytest.fixture(scope="module")
def serve(digit_compressor: CPRSCompressor) -> Iterator[Callable[..., BackgroundServer]]:
    """Starts real servers over the digit compressor with the given settings; stops them after the module."""
    servers: list[BackgroundServer] = []

    def start(**settings: Any) -> BackgroundServer:
        server = BackgroundServer(create_app(digit_compressor, ServerSettings(model_name="digit-tagger", **settings)))
        servers.append(server.__enter__())
        return server

    yield start
    for server in servers:
        server.__exit__(None, None, None)


@pytest.fixture(scope="module")
def url(serve: Callable[..., BackgroundServer]) -> str:
    return serve(max_wait_ms=50, max_body_bytes=MAX_BODY, request_timeout_s=60, step_windows=4).url


def post(url: str, path: str, body: Any, headers: dict[str, str] | None = None, **kwargs: Any) -> httpx.Response:
    """POST ``body`` (JSON unless bytes) as ``application/json`` unless ``headers`` say otherwise."""
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    headers = {"Content-Type": "application/json", **(headers or {})}
    return httpx.post(url + path, content=content, headers=headers, timeout=60, **kwargs)


def wait_for(url: str, condition: Callable[[dict[str, Any]], bool], timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition(httpx.get(url + "/health").json()):
        assert time.monotonic() < deadline, "the server never reached the expected state"
        time.sleep(0.005)


def assert_still_serves(url: str, digit_compressor: CPRSCompressor) -> None:
    response = post(url, "/v1/compress", {"context": CONTEXT, "query": QUERY, "instruction": "needle"})
    assert response.status_code == 200
    assert response.json()["text"] == digit_compressor.compress(CONTEXT, QUERY, "needle").text


def test_upstream_endpoint_answers_upstreams_json(url: str, digit_compressor: CPRSCompressor) -> None:
    body = upstream_body(min_keyword_len=1, complete_sentence=False, batch_size=1, chunk_size=8192)
    response = httpx.post(url + "/qwen_long_compress_server", content=json.dumps(body), timeout=60)  # no content type
    assert response.status_code == 200
    local = digit_compressor.compress(CONTEXT, QUERY, "needle", granularity="token", min_span_tokens=2)
    expected = json.loads(json.dumps(body))
    expected["payload"]["output"] = {"text": ["1984", "42"]}  # "7" is one token: not more than min_keyword_len
    expected["payload"]["usage"] = {"input_tokens": local.original_tokens}
    expected["header"].update(status_code=200, status_name="Success", status_message="Success", finished=True)
    assert response.json() == expected
    assert [span.text for span in local.spans] == ["1984", "42"]


@pytest.mark.parametrize("content_type", ["application/x-www-form-urlencoded", "text/plain", "application/json"])
def test_upstream_endpoint_reads_json_whatever_the_declared_type(url: str, content_type: str) -> None:
    """As upstream's endpoint (``await request.json()``), whatever ``curl -d`` or a client declares."""
    body = upstream_body(min_keyword_len=1)
    response = post(url, "/qwen_long_compress_server", body, headers={"Content-Type": content_type})
    assert response.status_code == 200 and response.json()["payload"]["output"]["text"] == ["1984", "42"]
    broken = post(url, "/qwen_long_compress_server", b"min_keyword_len=1", headers={"Content-Type": content_type})
    assert broken.status_code == 400 and broken.json()["header"]["status_name"] == "MalformedJSON"


def test_upstream_defaults_offsets_and_sentences(url: str) -> None:
    def output(**parameters: Any) -> list[Any]:
        response = post(url, "/qwen_long_compress_server", upstream_body(**parameters))
        assert response.status_code == 200
        return response.json()["payload"]["output"]["text"]

    assert output() == []  # default min_keyword_len 4: spans need 5+ tokens, and no number here has 5 digits
    with_offsets = output(min_keyword_len=0, return_offset=True)
    assert [item[0] for item in with_offsets] == ["1984", "42", "7"]
    assert all(CONTEXT[start:end] == text for text, start, end in with_offsets)
    # upstream widens each span on its own: "42" reaches back to the newline and on to "dogs."; "7" starts inside
    # that widened span, so it does not move left, and comes out again as "7 dogs." (overlap, as upstream answers)
    assert output(min_keyword_len=0, complete_sentence=True) == [
        "The year was 1984.", "We counted 42 cats and 7 dogs.", "7 dogs."
    ]
    assert output(min_keyword_len=0, complete_sentence=True, return_offset=True) == [
        ["The year was 1984.", 0, 18], ["We counted 42 cats and 7 dogs.", 47, 77], ["7 dogs.", 70, 77]
    ]


def test_richer_endpoint_returns_spans_and_offsets(url: str, digit_compressor: CPRSCompressor) -> None:
    body = {"context": CONTEXT, "query": QUERY, "instruction": "needle", "granularity": "sentence", "separator": " | "}
    response = post(url, "/v1/compress", body)
    assert response.status_code == 200
    local = digit_compressor.compress(CONTEXT, QUERY, "needle", granularity="sentence", separator=" | ")
    assert response.json() == json.loads(json.dumps(local.to_dict()))
    assert response.json()["text"] == "The year was 1984. | We counted 42 cats and 7 dogs."


def test_batch_endpoint_answers_each_slot(url: str, digit_compressor: CPRSCompressor) -> None:
    requests = [
        {"context": CONTEXT, "query": QUERY, "instruction": "needle"},
        {"context": "   ", "query": QUERY},
        {"context": CONTEXT, "query": QUERY, "granularity": "chapter"},
        {"context": "Room 101.", "query": QUERY, "instruction": "needle", "granularity": "token", "target_tokens": 2},
    ]
    response = post(url, "/v1/compress_batch", {"requests": requests})
    assert response.status_code == 200
    results = response.json()["results"]
    local = digit_compressor.compress_batch([CompressionRequest(**request) for request in requests])
    assert results[0] == {"result": json.loads(json.dumps(local[0].to_dict())), "error": None}
    assert results[1] == {"result": None, "error": {"type": "EmptyContextError", "message": str(local[1])}}
    assert results[2]["error"]["type"] == "GranularityError" and "chapter" in results[2]["error"]["message"]
    assert results[3]["result"]["text"] == local[3].text


def test_fifty_concurrent_clients_all_get_their_answer_in_shared_batches(
    url: str, digit_compressor: CPRSCompressor
) -> None:
    contexts = [f"Client {i} ordered {i * 37 + 5} apples and {i} pears. " + CONTEXT for i in range(50)]
    expected = [result.to_dict() for result in digit_compressor.compress_many(contexts, QUERY, "needle")]
    before = httpx.get(url + "/health").json()
    start = threading.Barrier(len(contexts))

    def call(context: str) -> dict[str, Any]:
        start.wait()
        response = post(url, "/v1/compress", {"context": context, "query": QUERY, "instruction": "needle"})
        assert response.status_code == 200, response.text
        return response.json()

    with ThreadPoolExecutor(len(contexts)) as pool:
        answers = list(pool.map(call, contexts))
    assert answers == json.loads(json.dumps(expected))
    health = httpx.get(url + "/health").json()
    assert health["requests"] - before["requests"] == len(contexts)
    assert health["max_batch_size"] > 1  # requests of different clients shared compress_batch calls
    assert health["batches"] - before["batches"] < len(contexts)


BAD_BODIES = [
    pytest.param(b'{"context": "abc", ', 400, "MalformedJSON", "not valid JSON", id="malformed-json"),
    pytest.param(b"", 400, "MalformedJSON", "empty", id="empty-body"),
    pytest.param(b'{"context": ' + b"[" * 5000 + b"]" * 5000 + b"}", 400, "MalformedJSON", "nested too deeply",
                 id="deeply-nested"),
    pytest.param(b'{"context": "abc", "target_tokens": ' + b"9" * 5000 + b"}", 400, "MalformedJSON",
                 "digits", id="integer-of-5000-digits"),
    pytest.param(b'{"context": "caf\xe9"}', 400, "TextDecodingError", "not valid UTF-8: byte 16", id="latin-1"),
    pytest.param(b'{"context": "abc", "target_ratio": NaN}', 400, "MalformedJSON", "NaN is not a JSON number",
                 id="nan"),  # upstream's answer echoed it back, and NaN cannot be written as JSON: it was a 500
    pytest.param(b'{"timeout_s": -Infinity}', 400, "MalformedJSON", "-Infinity is not a JSON number", id="infinity"),
    pytest.param(b"x" * (MAX_BODY + 1), 413, "RequestTooLarge", f"limit of {MAX_BODY} bytes", id="oversize"),
]


@pytest.mark.parametrize(("body", "status", "kind", "message"), BAD_BODIES)
def test_bad_bodies_get_a_clear_4xx_and_the_server_keeps_serving(
    url: str, digit_compressor: CPRSCompressor, body: bytes, status: int, kind: str, message: str
) -> None:
    response = post(url, "/v1/compress", body)
    assert response.status_code == status
    assert response.json()["error"]["type"] == kind and message in response.json()["error"]["message"]
    upstream = post(url, "/qwen_long_compress_server", body)
    assert upstream.status_code == status
    header = upstream.json()["header"]
    assert header["status_code"] == status and header["status_name"] == kind and message in header["status_message"]
    assert upstream.json()["payload"]["output"] == {"is_match": False}
    assert_still_serves(url, digit_compressor)


def test_a_backtracking_keep_regex_is_a_400_and_does_not_stall_the_server(
    url: str, digit_compressor: CPRSCompressor
) -> None:
    body = {"context": CONTEXT + " " + "a" * 40 + "b", "query": QUERY, "keep_regex": ["(a|aa)+$"]}
    slowest = 0.0
    with ThreadPoolExecutor(1) as pool:
        pending = pool.submit(post, url, "/v1/compress", body)
        while not pending.done():  # the pattern needs hours to fail; meanwhile the server must answer
            started = time.monotonic()
            assert httpx.get(url + "/health", timeout=60).status_code == 200
            slowest = max(slowest, time.monotonic() - started)
            time.sleep(0.05)
        response = pending.result()
    assert response.status_code == 400 and response.json()["error"]["type"] == "KeepError"
    assert "(a|aa)+$" in response.json()["error"]["message"] and slowest < 1.0
    recursing = post(url, "/v1/compress", {"context": CONTEXT, "query": QUERY, "keep_regex": ["(?R)"]})  # was a 500
    assert recursing.status_code == 400 and "'(?R)' ran out of memory" in recursing.json()["error"]["message"]
    too_many = post(url, "/v1/compress", {"context": CONTEXT, "query": QUERY, "keep": ["x"] * 257})
    assert too_many.status_code == 422 and "keep: List should have at most 256 items" in too_many.text
    too_long = post(url, "/v1/compress", {"context": CONTEXT, "query": QUERY, "keep_regex": ["a" * 1001]})
    assert too_long.status_code == 422 and "keep_regex.0: String should have at most 1000 characters" in too_long.text
    assert_still_serves(url, digit_compressor)


def test_missing_and_wrong_fields_are_named(url: str, digit_compressor: CPRSCompressor) -> None:
    missing = post(url, "/v1/compress", {"query": QUERY})
    assert missing.status_code == 422
    assert missing.json()["error"] == {"type": "ValidationError", "message": "invalid request: context: Field required"}
    typo = post(url, "/v1/compress", {"context": CONTEXT, "target_ration": 0.5})
    assert typo.status_code == 422 and "target_ration: Extra inputs are not permitted" in typo.text
    long = post(url, "/v1/compress", {"context": CONTEXT, "k" * 5_000: 1, "granularity": ["g" * 5_000]})
    assert long.status_code == 422 and len(long.text) < 1_000, long.text[:200]  # the client's text was echoed whole
    assert "'kkkk" in long.text and "... (5,000 characters): Extra inputs are not permitted" in long.text
    not_object = post(url, "/v1/compress", [1, 2])
    assert not_object.status_code == 422
    body = upstream_body()
    body["payload"]["input"]["messages"] = body["payload"]["input"]["messages"][:2]
    short = post(url, "/qwen_long_compress_server", body)
    assert short.status_code == 422
    assert short.json()["header"]["request_id"] == "1111abca"
    assert "payload.input.messages: List should have at least 3 items" in short.json()["header"]["status_message"]
    no_payload = post(url, "/qwen_long_compress_server", {"header": {"request_id": "r"}})
    assert no_payload.status_code == 422 and "payload: Field required" in no_payload.json()["header"]["status_message"]
    assert_still_serves(url, digit_compressor)


def test_compression_errors_are_400_with_their_type(url: str) -> None:
    response = post(url, "/v1/compress", {"context": CONTEXT, "query": QUERY, "target_ratio": 2.0})
    assert response.status_code == 400
    assert response.json()["error"]["type"] == "BudgetError"
    upstream = post(url, "/qwen_long_compress_server", upstream_body(context=" \n "))
    assert upstream.status_code == 400
    assert upstream.json()["header"]["status_name"] == "EmptyContextError"


def test_health_and_probes(url: str) -> None:
    health = httpx.get(url + "/health").json()
    assert health["status"] == "ok" and health["model"] == "digit-tagger"
    assert health["settings"]["max_body_bytes"] == MAX_BODY and health["settings"]["api_key"] is False
    assert httpx.get(url + "/readiness").json() == "success"
    assert httpx.get(url + "/liveness").json() == "success"
    assert httpx.get(url + "/nowhere").status_code == 404
    wrong_method = httpx.get(url + "/v1/compress")
    assert wrong_method.status_code == 405 and wrong_method.headers["allow"] == "POST"


def test_full_queue_answers_503(serve: Callable[..., BackgroundServer], digit_compressor: CPRSCompressor) -> None:
    url = serve(max_batch_requests=1, max_wait_ms=0, max_queue=1).url
    long_body = {"context": long_context(500), "query": QUERY, "instruction": "needle"}
    short_body = {"context": CONTEXT, "query": QUERY, "instruction": "needle"}
    with ThreadPoolExecutor(2) as pool:
        computing = pool.submit(post, url, "/v1/compress", long_body)
        wait_for(url, lambda health: health["in_flight"] == 1)
        waiting = pool.submit(post, url, "/v1/compress", short_body)
        wait_for(url, lambda health: health["queue_depth"] == 1)
        refused = post(url, "/v1/compress", short_body)
        assert refused.status_code == 503 and refused.headers["retry-after"] == "1"
        assert refused.json()["error"]["type"] == "ServerBusy" and "max_queue=1" in refused.json()["error"]["message"]
        upstream = post(url, "/qwen_long_compress_server", upstream_body())
        assert upstream.status_code == 503 and upstream.json()["header"]["status_name"] == "ServerBusy"
        assert computing.result().status_code == 200
        assert waiting.result().json()["text"] == digit_compressor.compress(CONTEXT, QUERY, "needle").text
    assert_still_serves(url, digit_compressor)


def test_request_timeout_answers_504(serve: Callable[..., BackgroundServer], digit_compressor: CPRSCompressor) -> None:
    url = serve(request_timeout_s=0.5).url
    response = post(url, "/v1/compress", {"context": long_context(1500), "query": QUERY, "instruction": "needle"})
    assert response.status_code == 504
    assert response.json()["error"]["type"] == "Timeout" and "0.5 s" in response.json()["error"]["message"]
    wait_for(url, lambda health: health["in_flight"] == 0)
    assert_still_serves(url, digit_compressor)


def test_api_key_is_required_when_set(serve: Callable[..., BackgroundServer]) -> None:
    url = serve(api_key="s3cret").url
    body = {"context": CONTEXT, "query": QUERY}
    refused = post(url, "/v1/compress", body)
    assert refused.status_code == 401 and refused.json()["error"]["type"] == "Unauthorized"
    assert post(url, "/v1/compress", body, headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert post(url, "/v1/compress", body, headers={"Authorization": "Bearer s3cret"}).status_code == 200
    assert post(url, "/v1/compress", body, headers={"Authorization": "bearer s3cret"}).status_code == 200
    assert post(url, "/v1/compress", body, headers={"Authorization": "Basic s3cret"}).status_code == 401
    assert post(url, "/v1/compress", body, headers={"Authorization": "s3cret"}).status_code == 401
    assert httpx.get(url + "/health").json()["settings"]["api_key"] is True


def test_a_non_ascii_api_key_matches_its_utf8_bytes(serve: Callable[..., BackgroundServer]) -> None:
    url = serve(api_key="clé-ключ").url
    body = {"context": CONTEXT, "query": QUERY}
    assert post(url, "/v1/compress", body, headers={"Authorization": "Bearer clé-ключ".encode()}).status_code == 200
    assert post(url, "/v1/compress", body, headers={"Authorization": "Bearer cl".encode()}).status_code == 401


def metric(url: str, name: str) -> float:
    """The value of one sample line of ``/metrics`` (0 when absent)."""
    for line in httpx.get(url + "/metrics").text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[-1])
    return 0.0


def test_bad_text_fails_only_its_own_request_among_concurrent_ones(
    url: str, digit_compressor: CPRSCompressor
) -> None:
    good = [{"context": f"Ticket {i} cost {i * 13 + 2} coins. " + CONTEXT, "query": QUERY, "instruction": "needle"}
            for i in range(9)]
    bad = [
        ({"context": "x \ud800 y", "query": QUERY}, "context holds a lone surrogate (U+D800) at character 2"),
        ({"context": CONTEXT, "query": "nul\x00here"}, "query holds a NUL character (U+0000) at character 3"),
        ({"context": CONTEXT, "query": QUERY, "separator": "\udfff"}, "separator holds a lone surrogate"),
    ]
    bodies = good[:3] + [body for body, _ in bad] + good[3:]
    expected = digit_compressor.compress_many([body["context"] for body in good], QUERY, "needle")
    with ThreadPoolExecutor(len(bodies)) as pool:
        singles = list(pool.map(lambda body: post(url, "/v1/compress", body), bodies))
        batch = pool.submit(post, url, "/v1/compress_batch", {"requests": bodies})
        upstream = pool.submit(post, url, "/qwen_long_compress_server", upstream_body(context="a \ud800 b"))
    answers = singles[:3] + singles[6:]
    assert [answer.status_code for answer in answers] == [200] * len(good)
    assert [answer.json() for answer in answers] == [json.loads(json.dumps(result.to_dict())) for result in expected]
    for answer, (_, message) in zip(singles[3:6], bad):
        assert answer.status_code == 400 and answer.json()["error"]["type"] == "TextDecodingError"
        assert message in answer.json()["error"]["message"]
    slots = batch.result().json()["results"]
    assert [slot["result"]["text"] for slot in slots[:3] + slots[6:]] == [result.text for result in expected]
    assert [slot["error"]["type"] for slot in slots[3:6]] == ["TextDecodingError"] * 3
    header = upstream.result().json()["header"]
    assert upstream.result().status_code == 400 and header["status_name"] == "TextDecodingError"
    assert upstream.result().json()["payload"]["input"]["messages"][2]["content"] == "a \ud800 b"  # echoed, escaped
    assert metric(url, 'cprs_errors_total{kind="TextDecodingError"}') >= 7


STRICT_BODIES = [
    pytest.param({"context": CONTEXT, "target_ratio": "0.5"}, "target_ratio: Input should be a valid number", id="str-float"),
    pytest.param({"context": CONTEXT, "target_ratio": True}, "target_ratio: Input should be a valid number", id="bool-float"),
    pytest.param({"context": CONTEXT, "target_tokens": 2.0}, "target_tokens: Input should be a valid integer", id="float-int"),
    pytest.param({"context": CONTEXT, "timeout_s": 0}, "timeout_s: Input should be greater than 0", id="zero-timeout"),
]


@pytest.mark.parametrize(("body", "message"), STRICT_BODIES)
def test_types_are_strict(url: str, body: dict[str, Any], message: str) -> None:
    response = post(url, "/v1/compress", body)
    assert response.status_code == 422 and message in response.json()["error"]["message"]


def test_content_type_and_header_limits(url: str, digit_compressor: CPRSCompressor) -> None:
    body = {"context": CONTEXT, "query": QUERY}
    plain = post(url, "/v1/compress", body, headers={"Content-Type": "text/plain"})
    assert plain.status_code == 415 and plain.json()["error"]["type"] == "UnsupportedMediaType"
    assert "text/plain" in plain.json()["error"]["message"]
    bare = httpx.post(url + "/v1/compress", content=json.dumps(body), timeout=60)
    assert bare.status_code == 415 and "no content type" in bare.json()["error"]["message"]
    huge = post(url, "/v1/compress", body, headers={"X-Padding": "p" * 1_000_000})
    assert huge.status_code == 431 and "limit of 16384 bytes" in huge.json()["error"]["message"]
    many = post(url, "/v1/compress", body, headers={f"X-H{i}": "1" for i in range(100)})
    assert many.status_code == 431 and "limit of 64" in many.json()["error"]["message"]
    assert_still_serves(url, digit_compressor)


def test_upstream_message_roles_are_checked(url: str) -> None:
    body = upstream_body()
    messages = body["payload"]["input"]["messages"]
    body["payload"]["input"]["messages"] = [messages[1], messages[0], messages[2]]
    response = post(url, "/qwen_long_compress_server", body)
    assert response.status_code == 422
    header = response.json()["header"]
    assert header["status_code"] == 422 and header["request_id"] == "1111abca"
    assert "message roles must be ['system', 'user', 'context'] in this order, got ['user', 'system', 'context']" in (
        header["status_message"]
    )


def test_request_ids_log_lines_and_metrics(url: str, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level("INFO", logger="cprs.server.requests"):
        mine = post(url, "/v1/compress", {"context": CONTEXT, "query": QUERY}, headers={"X-Request-ID": "job-7"})
        fresh = post(url, "/v1/compress", {"context": CONTEXT, "query": QUERY})
    assert mine.headers["x-request-id"] == "job-7" and len(fresh.headers["x-request-id"]) == 32
    lines = [json.loads(record.getMessage()) for record in caplog.records if record.name == "cprs.server.requests"]
    line = next(line for line in lines if line["id"] == "job-7")
    assert line["status"] == 200 and line["path"] == "/v1/compress" and line["requests"] == 1 and line["errors"] == []
    assert line["tokens"] > 0 and line["windows"] == 1
    assert 0 <= line["queue_wait_s"] <= line["total_s"] and 0 <= line["compute_s"] <= line["total_s"]
    text = httpx.get(url + "/metrics").text
    assert 'cprs_request_seconds_bucket{endpoint="/v1/compress",le="0.5"}' in text
    assert metric(url, 'cprs_http_requests_total{endpoint="/v1/compress",status="200"}') >= 2
    assert metric(url, "cprs_windows_scored_total") >= 2 and "cprs_queue_depth" in text


def test_deadline_and_disconnect_stop_the_remaining_windows(
    serve: Callable[..., BackgroundServer], digit_compressor: CPRSCompressor
) -> None:
    url = serve(step_windows=1).url
    long_body = {"context": long_context(3000), "query": QUERY, "instruction": "needle"}

    def windows_stop_growing() -> float:
        wait_for(url, lambda health: health["in_flight"] == 0)
        scored = metric(url, "cprs_windows_scored_total")
        time.sleep(0.3)
        assert metric(url, "cprs_windows_scored_total") == scored
        return scored

    timed_out = post(url, "/v1/compress", {**long_body, "timeout_s": 0.5})
    assert timed_out.status_code == 504 and "0.5 s" in timed_out.json()["error"]["message"]
    after_timeout = windows_stop_growing()
    total = digit_compressor.compress(**long_body).windows
    assert after_timeout < total / 2
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(url + "/v1/compress", json=long_body, timeout=1.0)
    assert windows_stop_growing() - after_timeout < total / 2
    assert metric(url, 'cprs_cancelled_requests_total{reason="disconnect"}') == 1
    assert metric(url, 'cprs_cancelled_requests_total{reason="timeout"}') == 1
    assert_still_serves(url, digit_compressor)


def test_a_body_that_trickles_in_gets_408_and_does_not_hold_the_connection(
    serve: Callable[..., BackgroundServer], digit_compressor: CPRSCompressor
) -> None:
    server = serve(body_timeout_s=1.0)
    host, port = server.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as slow:
        slow.sendall(b"POST /v1/compress HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Content-Length: 1000\r\n\r\n" + b'{"context": "')  # and then nothing more
        started = time.monotonic()
        assert_still_serves(server.url, digit_compressor)  # others are served meanwhile
        answer = b""
        while b"\r\n\r\n" not in answer or not answer.rstrip().endswith(b"}"):
            chunk = slow.recv(4096)
            if not chunk:
                break
            answer += chunk
        waited = time.monotonic() - started
        assert answer.startswith(b"HTTP/1.1 408") and b'"type":"RequestTimeout"' in answer, answer
        assert b"did not arrive within 1 s (13 bytes came)" in answer and 0.5 < waited < 5
        assert slow.recv(4096) == b""  # the server closed the connection
    assert_still_serves(server.url, digit_compressor)


def test_a_keep_regex_that_does_not_compile_fails_only_its_own_batch_slot(
    url: str, digit_compressor: CPRSCompressor
) -> None:
    good = {"context": CONTEXT, "query": QUERY, "instruction": "needle"}
    response = post(url, "/v1/compress_batch", {"requests": [good, {**good, "keep_regex": ["("]}, good]})
    assert response.status_code == 200
    slots = response.json()["results"]
    expected = digit_compressor.compress(CONTEXT, QUERY, "needle").text
    assert [slot["result"]["text"] for slot in (slots[0], slots[2])] == [expected, expected]
    assert slots[1]["result"] is None and slots[1]["error"]["type"] == "KeepError"
    assert "keep_regex '(' is not a valid regular expression" in slots[1]["error"]["message"]
    alone = post(url, "/v1/compress_batch", {"requests": [{**good, "keep_regex": ["("]}]})
    assert alone.status_code == 200 and alone.json()["results"][0]["error"]["type"] == "KeepError"


def test_keep_spans_are_limited(url: str) -> None:
    """Each span costs preparation time: an unbounded list held a preparation thread for minutes."""
    body = {"context": CONTEXT, "query": QUERY, "keep_spans": [[0, 4]] * 10_001}
    response = post(url, "/v1/compress", json.dumps(body, separators=(",", ":")).encode())  # within MAX_BODY
    assert response.status_code == 422 and "keep_spans: List should have at most 10000 items" in response.text


@pytest.mark.parametrize("pattern", ["a{100000}", "((a{100}){100}){10}", r"(?:a|b{1000}){1000}", r"\p{L}{2000}"])
def test_a_keep_regex_whose_counted_repeats_compile_too_large_is_a_422(
    url: str, digit_compressor: CPRSCompressor, pattern: str
) -> None:
    """``regex`` writes counted repeats out when it compiles: ``a{1000000000}`` (13 characters) took the server's
    memory until the process was killed. These smaller ones cost 13-240 MB each, and were compiled."""
    response = post(url, "/v1/compress", {"context": CONTEXT, "query": QUERY, "keep_regex": [r"\d{4}", pattern]})
    assert response.status_code == 422, response.text[:300]
    message = response.json()["error"]["message"]
    assert message.startswith(f"invalid request: keep_regex.1: Value error, {pattern!r} has counted repeats")
    assert "limit of 1000" in message
    usual = [r"\d{4}-\d{2}-\d{2}", "[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", r"(\d{1,3}\.){3}\d{1,3}",
             r"\w{1,100000}", r"\p{Lu}{3}", "x" * 1000]
    kept = post(url, "/v1/compress", {"context": CONTEXT, "query": QUERY, "keep_regex": usual})
    assert kept.status_code == 200 and "1984" in kept.json()["text"]
    assert_still_serves(url, digit_compressor)


def test_compiling_many_keep_regexes_does_not_stall_the_other_clients(serve: Callable[..., BackgroundServer]) -> None:
    """Validating and compiling a batch's patterns took about a second per 256 of them on the event loop, so
    every other client (health checks included) waited for all of them."""
    server = serve(max_body_bytes=8 * 1024 * 1024)
    random = Random(0)
    letters = [chr(code) for code in range(97, 123)]
    body = {"requests": [
        {"context": CONTEXT, "query": QUERY, "keep_regex": ["".join(random.choices(letters, k=1000)) for _ in range(256)]}
        for _ in range(8)  # all different: regex caches what it compiled
    ]}
    slowest = 0.0
    with ThreadPoolExecutor(1) as pool:
        pending = pool.submit(post, server.url, "/v1/compress_batch", body)
        while not pending.done():
            started = time.monotonic()
            assert httpx.get(server.url + "/health", timeout=60).status_code == 200
            slowest = max(slowest, time.monotonic() - started)
            time.sleep(0.05)
        response = pending.result()
    assert response.status_code == 200 and all(slot["result"] for slot in response.json()["results"])
    assert slowest < 1.5


def test_upstream_echo_of_a_deeply_nested_field_is_never_a_500(url: str) -> None:
    """Upstream's answer echoes the request; a field nested just below the reader's limit could not be written."""
    answers = set()
    for depth in range(930, 1000):
        body = json.dumps(upstream_body(context="Room 101."))[:-1] + ', "x": ' + "[" * depth + "]" * depth + "}"
        response = post(url, "/qwen_long_compress_server", body.encode())
        assert response.status_code in (200, 400) and "x-request-id" in response.headers, response.text[:300]
        if response.status_code == 400:  # answered without the echo (a 200 holds it: too deep for this test to read)
            header = response.json()["header"]
            assert header["status_name"] == "MalformedJSON" and "nested too deeply" in header["status_message"]
        answers.add(response.status_code)
    assert answers == {200, 400}


def test_metrics_are_labelled_by_route_not_by_the_clients_path(url: str) -> None:
    """A 431 is answered before routing: labelled by its own path, every new path was a new series kept for ever."""
    for i in range(3):
        refused = httpx.get(f"{url}/made-up-{i}", headers={f"X-H{j}": "1" for j in range(70)})
        assert refused.status_code == 431
    assert httpx.get(url + "/v1/compress").status_code == 405
    text = httpx.get(url + "/metrics").text
    assert "made-up" not in text and metric(url, 'cprs_http_requests_total{endpoint="other",status="431"}') >= 3
    assert metric(url, 'cprs_http_requests_total{endpoint="/v1/compress",status="405"}') >= 1


def test_a_client_that_disconnects_while_sending_its_body_is_a_499_not_a_500(
    url: str, digit_compressor: CPRSCompressor, caplog: pytest.LogCaptureFixture
) -> None:
    host, port = url.removeprefix("http://").split(":")
    with caplog.at_level("INFO", logger="cprs.server.requests"):
        with socket.create_connection((host, int(port)), timeout=10) as gone:
            gone.sendall(b"POST /v1/compress HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                         b"X-Request-ID: gone-1\r\nContent-Length: 1000\r\n\r\n" + b'{"context": "')
            time.sleep(0.2)  # the server is reading the body
        deadline = time.monotonic() + 10
        while not (lines := [json.loads(record.getMessage()) for record in caplog.records
                             if record.name == "cprs.server.requests" and "gone-1" in record.getMessage()]):
            assert time.monotonic() < deadline, "no log line for the abandoned request"
            time.sleep(0.05)
    assert lines[0]["status"] == 499 and lines[0]["errors"] == ["ClientClosedRequest"]
    assert_still_serves(url, digit_compressor)


@pytest.mark.parametrize(("field", "value"), [
    ("max_wait_ms", float("nan")), ("max_wait_ms", float("inf")), ("max_wait_ms", -1.0),
    ("request_timeout_s", float("nan")), ("request_timeout_s", float("inf")), ("body_timeout_s", 0.0),
])
def test_server_settings_refuse_times_no_clock_can_keep(field: str, value: float) -> None:
    with pytest.raises(ValueError, match=field):
        ServerSettings(**{field: value})


@pytest.fixture
def nan_compressor(digit_tagger_dir: Path) -> CPRSCompressor:
    """The digit tagger with one weight NaN (as a float16 overflow leaves it): every score it gives is NaN."""
    critic = QwenCritic.from_pretrained(digit_tagger_dir, device="cpu")
    with torch.no_grad():
        critic.model.cls_head.weight[1, 0] = float("nan")
    return CPRSCompressor(critic, window_size=128)


def test_a_critic_giving_nan_scores_fails_each_request_by_name_not_the_whole_batch(
    nan_compressor: CPRSCompressor,
) -> None:
    """NaN scores cannot be written as JSON: they failed the whole ``/v1/compress_batch`` answer with a bare 500."""
    with BackgroundServer(create_app(nan_compressor)) as server:
        answer = post(server.url, "/v1/compress", {"context": CONTEXT, "query": QUERY, "instruction": "needle"})
        assert answer.status_code == 500 and answer.json()["error"]["type"] == "CompressionFailedError"
        assert "not finite numbers (NaN or infinity)" in answer.json()["error"]["message"]
        batch = post(server.url, "/v1/compress_batch", {"requests": [
            {"context": CONTEXT, "query": QUERY}, {"context": "", "query": QUERY}]})
        assert batch.status_code == 200
        first, second = batch.json()["results"]
        assert first["error"]["type"] == "CompressionFailedError" and second["error"]["type"] == "EmptyContextError"
        upstream_answer = post(server.url, "/qwen_long_compress_server", upstream_body())
        assert upstream_answer.json()["header"]["status_code"] == 500


def test_an_unexpected_failure_is_a_500_with_its_request_id_and_other_requests_are_served(
    digit_compressor: CPRSCompressor, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Answered outside the request guard, it was a 500 without ``X-Request-ID``, logged with status 0, whose
    message held the exception's text. The failure is injected where no request's compression can cause it:
    writing ``/v1/compress``'s answer (upstream's endpoint does not use ``to_dict``)."""
    def broken_to_dict(self: CompressionResult) -> dict:
        raise RuntimeError("an injected bug in writing the answer")

    monkeypatch.setattr(CompressionResult, "to_dict", broken_to_dict)
    failing = {"context": CONTEXT, "query": QUERY, "instruction": "needle"}
    with BackgroundServer(create_app(digit_compressor)) as server, \
            caplog.at_level("INFO", logger="cprs.server.requests"):
        with ThreadPoolExecutor(8) as pool:
            failed = [pool.submit(post, server.url, "/v1/compress", failing, headers={"X-Request-ID": f"bug-{i}"})
                      for i in range(4)]
            others = [pool.submit(post, server.url, "/qwen_long_compress_server", upstream_body()) for _ in range(4)]
        for i, answer in enumerate(future.result() for future in failed):
            assert answer.status_code == 500 and answer.headers["x-request-id"] == f"bug-{i}"
            assert answer.json() == {"error": {"type": "InternalError", "message": (
                "the server failed unexpectedly while answering this request; its log has the details under "
                f"request id bug-{i}")}}
        assert [answer.result().json()["header"]["status_code"] for answer in others] == [200] * 4
        text = httpx.get(server.url + "/metrics").text
        assert metric(server.url, 'cprs_http_requests_total{endpoint="/v1/compress",status="500"}') == 4
        assert metric(server.url, 'cprs_errors_total{kind="InternalError"}') == 4 and 'status="0"' not in text
    lines = [json.loads(record.getMessage()) for record in caplog.records if record.name == "cprs.server.requests"]
    error = next(line for line in lines if line["event"] == "error" and line["id"] == "bug-0")
    assert error["path"] == "/v1/compress" and "an injected bug in writing the answer" in error["traceback"]
    request = next(line for line in lines if line["event"] == "request" and line["id"] == "bug-0")
    assert request["status"] == 500 and request["errors"] == ["InternalError"]


def test_a_failure_after_the_answer_began_closes_the_connection_and_is_logged(
    digit_compressor: CPRSCompressor, caplog: pytest.LogCaptureFixture
) -> None:
    """The one thing the guard cannot answer: a second status. A test-only streaming route on a real app fails
    after its first chunk."""
    app = create_app(digit_compressor)

    def chunks() -> Iterator[bytes]:
        yield b"first chunk"
        raise RuntimeError("the stream broke")

    app.add_api_route("/test-only/broken-stream", lambda: StreamingResponse(chunks()), methods=["GET"])
    with BackgroundServer(app) as server, caplog.at_level("INFO", logger="cprs.server.requests"):
        with pytest.raises(httpx.RemoteProtocolError):
            httpx.get(server.url + "/test-only/broken-stream", headers={"X-Request-ID": "broken-1"}, timeout=10)
        assert_still_serves(server.url, digit_compressor)
    lines = [json.loads(record.getMessage()) for record in caplog.records if "broken-1" in record.getMessage()]
    assert [line["event"] for line in lines] == ["error", "request"] and "the stream broke" in lines[0]["error"]
    assert lines[1]["status"] == 200 and lines[1]["errors"] == ["InternalError"]


def test_a_budget_tokenizer_the_server_cannot_load_says_what_a_remote_client_can_send(
    url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The core's message suggested passing a tokenizer object, which no HTTP client can send."""
    tiktoken = pytest.importorskip("tiktoken")
    unloaded = next(name for name in tiktoken.list_encoding_names() if name not in tiktoken.registry.ENCODINGS)
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path))  # not cached here, and not downloadable (no proxy)
    for variable in ("HTTPS_PROXY", "https_proxy"):
        monkeypatch.setenv(variable, "http://127.0.0.1:9")
    for variable in ("NO_PROXY", "no_proxy"):
        monkeypatch.delenv(variable, raising=False)
    body = {"context": CONTEXT, "query": QUERY, "target_tokens": 5}
    unknown = post(url, "/v1/compress", {**body, "budget_tokenizer": "o200k"})
    assert unknown.status_code == 400 and unknown.json()["error"]["type"] == "BudgetTokenizerError"
    message = unknown.json()["error"]["message"]
    assert message.startswith("budget_tokenizer 'o200k' is not a tiktoken encoding name; the names are gpt2, ")
    assert "o200k_base" in message and "leave budget_tokenizer out" in message and "object" not in message
    batch = post(url, "/v1/compress_batch", {"requests": [body, {**body, "budget_tokenizer": unloaded}]})
    slots = batch.json()["results"]
    assert slots[0]["error"] is None and slots[1]["error"]["type"] == "BudgetTokenizerError"
    assert slots[1]["error"]["message"].startswith(
        f"budget_tokenizer {unloaded!r} names a tiktoken encoding this server cannot load (ProxyError); "
    )
    assert "TIKTOKEN_CACHE_DIR" in slots[1]["error"]["message"] and "object" not in slots[1]["error"]["message"]
    with pytest.raises(BudgetTokenizerError, match="the names are gpt2"):
        RemoteCompressor(url).compress(CONTEXT, QUERY, target_tokens=5, budget_tokenizer="cl100k")


@pytest.mark.parametrize("encoding", ["gzip", "br, gzip"])
def test_a_compressed_body_is_a_415_not_a_utf8_error(url: str, encoding: str) -> None:
    """Read as it came, a gzipped body was a 400 saying it was not valid UTF-8."""
    body = gzip.compress(json.dumps({"context": CONTEXT, "query": QUERY}).encode())
    answer = post(url, "/v1/compress", body, headers={"Content-Encoding": encoding})
    assert answer.status_code == 415 and answer.json()["error"] == {"type": "UnsupportedMediaType", "message": (
        f"this server does not decode 'Content-Encoding: {encoding}': send the body uncompressed")}
    upstream = post(url, "/qwen_long_compress_server", body, headers={"Content-Encoding": encoding})
    assert upstream.status_code == 415 and upstream.json()["header"]["status_name"] == "UnsupportedMediaType"
    identity = post(url, "/v1/compress", {"context": CONTEXT, "query": QUERY}, headers={"Content-Encoding": "identity"})
    assert identity.status_code == 200


@pytest.mark.parametrize("key", ["", "   ", " s3cret", "s3cret\n", "s3\x00cret"])
def test_server_settings_refuse_an_api_key_no_client_can_send(key: str) -> None:
    """An empty key served without one (``cprs serve --api-key ""``); a padded key could never match."""
    with pytest.raises(ValueError, match=r"api_key \(--api-key, \$CPRS_API_KEY\) must be a non-empty key") as refused:
        ServerSettings(api_key=key)
    assert key.strip() == "" or key.strip() not in str(refused.value)  # the key itself is not shown
