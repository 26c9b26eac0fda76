"""The ``cprs serve`` app on Ray Serve: 2 replicas on a local Ray instance answer exactly as the plain server."""

from __future__ import annotations

import json
import socket
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Iterator

import pytest

pytestmark = pytest.mark.slow  # a local Ray instance per module: minutes on 2 cores

ray = pytest.importorskip("ray", reason="Ray is not installed: pip install -e '.[ray]'")
pytest.importorskip("fastapi", reason="the server extra is not installed: pip install -e '.[server]'")
httpx = pytest.importorskip("httpx")

from ray import serve  # noqa: E402

from cprs_core import CPRSCompressor  # noqa: E402
from cprs_integrations.ray_serve import APP_NAME, run_serve  # noqa: E402
from cprs_integrations.server import BackgroundServer, ServerSettings, create_app  # noqa: E402

WINDOW = 128
SETTINGS = ServerSettings(max_wait_ms=5.0, model_name="digit-tagger")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def serve_url(digit_tagger_dir: Path) -> Iterator[str]:
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    port = free_port()
    run_serve(str(digit_tagger_dir), num_replicas=2, settings=SETTINGS, port=port, blocking=False, window_size=WINDOW)
    yield f"http://127.0.0.1:{port}"
    serve.shutdown()
    ray.shutdown()


@pytest.fixture(scope="module")
def plain_url(digit_compressor: CPRSCompressor) -> Iterator[str]:
    with BackgroundServer(create_app(digit_compressor, SETTINGS)) as server:
        yield server.url


def compress_body(index: int) -> dict[str, Any]:
    return {"context": f"Order {index} shipped 3 boxes to dock {index * 7}. Nothing else happened. " * 6,
            "query": "Which numbers?", "granularity": "sentence"}


UPSTREAM_BODY = {
    "header": {"request_id": "r-1"},
    "payload": {
        "input": {"messages": [
            {"role": "system", "content": "needle"},
            {"role": "user", "content": "What is the code?"},
            {"role": "context", "content": "The code is 4417. The sky is blue. Room 12 is empty."},
        ]},
        "parameters": {"min_keyword_len": 0, "return_offset": True},
    },
}


def answer(url: str, path: str, body: Any) -> tuple[int, Any]:
    content = json.dumps(body)  # ASCII-escaped, so a lone surrogate travels as JSON allows
    response = httpx.post(url + path, content=content, headers={"Content-Type": "application/json"}, timeout=60)
    return response.status_code, response.json()


def test_two_replicas_are_running(serve_url: str) -> None:
    deployments = serve.status().applications[APP_NAME].deployments
    assert [deployment.replica_states for deployment in deployments.values()] == [{"RUNNING": 2}]
    assert httpx.get(serve_url + "/readiness", timeout=10).json() == "success"
    assert httpx.get(serve_url + "/health", timeout=10).json()["model"] == "digit-tagger"


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v1/compress", compress_body(1)),
        ("/v1/compress", {"context": "   ", "query": "q"}),
        ("/v1/compress", {"context": "x", "unknown": 1}),
        ("/v1/compress_batch", {"requests": [compress_body(2), {"context": "", "query": "q"}, compress_body(3)]}),
        ("/qwen_long_compress_server", UPSTREAM_BODY),
        ("/v1/compress", {"context": "x", "query": "q", "target_ratio": "0.5"}),
        ("/v1/compress", {"context": "x \ud800", "query": "q"}),
        ("/qwen_long_compress_server", {**UPSTREAM_BODY, "payload": {**UPSTREAM_BODY["payload"], "input": {
            "messages": UPSTREAM_BODY["payload"]["input"]["messages"][::-1]}}}),
    ],
    ids=["compress", "empty-context", "bad-field", "batch", "upstream", "string-number", "lone-surrogate",
         "upstream-roles"],
)
def test_replicas_answer_as_the_plain_server(serve_url: str, plain_url: str, path: str, body: Any) -> None:
    """Same answers, refusals included (the replicas run the same app, so the same strictness)."""
    assert answer(serve_url, path, body) == answer(plain_url, path, body)


def test_concurrent_requests_all_get_their_own_answer(serve_url: str, plain_url: str) -> None:
    bodies = [compress_body(index) for index in range(12)]
    with ThreadPoolExecutor(max_workers=12) as pool:
        served = list(pool.map(lambda body: answer(serve_url, "/v1/compress", body), bodies))
    assert served == [answer(plain_url, "/v1/compress", body) for body in bodies]
