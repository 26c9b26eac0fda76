"""Ray on several GPUs of one host: ``cprs batch`` and Ray Serve with 1 vs N GPUs, and a GPU worker killed mid-run.

One run, one local Ray instance, three phases (``--phases``), each written to ``OUT/ray_gpu_scaling.json`` as
soon as it is done (so a run cut short still leaves the finished phases):

* **batch**: :func:`cprs_integrations.ray_batch.compress_jsonl` (what ``cprs batch`` runs) over a corpus of
  ``--records`` records of ``--tokens`` tokens, each with its own planted needle and query, with
  ``num_gpus=1`` and then ``num_gpus=N`` (``--gpus``), each into a fresh output. Per run: job time (Ray Data
  start, a model load in every actor, merge included) and the steady rate between the first and the last
  committed block, as records/s and context tokens/s, the scaling factor N GPUs / 1 GPU of both, and each
  card's mean utilisation (NVML) over the steady part.
* **kill**: the first ``--kill-records`` records on N GPUs; after the first committed block one GPU actor is
  SIGKILLed. Checks every input id is in the output exactly once, in order, without errors, and counts the
  results identical to the uninterrupted N-GPU run's.
* **serve**: :func:`cprs_integrations.ray_serve.run_serve` with 1 and then N replicas (one GPU each) under a
  bounded load from this host (loopback): ``--serve-requests`` documents of ``--serve-tokens`` tokens sent by
  ``--serve-concurrency`` client threads (:class:`cprs_core.remote.RemoteCompressor`) after a warm-up burst.
  Requests/s, context tokens/s, p50/p95 latency, answers received (none may be lost) and GPU utilisation.

The model is a critic of the QwenLong-CPRS-7B shape (``--layers`` of its 28 decoder layers; random bf16
weights with the O logit raised so that, like a trained critic, it keeps little) saved in the released format
(``config.json`` as released, safetensors, the tokenizer), which every actor loads from disk as it would the
real checkpoint. ``--toy`` runs the same phases on CPU actors (one CPU each instead of one GPU) with the tiny
released-format checkpoint of the tests: the smoke test of this script.

Usage (from the repository root; Ray from ``benchmarks/ray_pack.py`` where it is not installed)::

    python -m benchmarks.ray_gpu_scaling --tokenizer DIR --out OUT            # 7B-shaped, 1 vs 2 GPUs
    python -m benchmarks.ray_gpu_scaling --toy --out OUT                      # CPU smoke test

``DIR`` holds a Qwen2 tokenizer (``python -m benchmarks.save_tokenizer DIR``; the Ray pack carries one).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import statistics
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# Ray's memory monitor kills workers above 95% of the memory it reads; the GPU hosts report a MemTotal that
# grows only as memory is used, and a 15 GB checkpoint in /dev/shm counts as used. Read when Ray starts.
os.environ.setdefault("RAY_memory_monitor_refresh_ms", "0")

import ray  # noqa: E402
import ray.data  # noqa: E402
import torch  # noqa: E402
from ray import serve  # noqa: E402
from transformers import AutoTokenizer  # noqa: E402

from cprs_core import CPRSConfig  # noqa: E402
from cprs_core.remote import RemoteCompressor  # noqa: E402
from cprs_core.errors import CPRSError  # noqa: E402
from cprs_integrations.ray_batch import compress_jsonl  # noqa: E402
from cprs_integrations.ray_serve import run_serve  # noqa: E402
from cprs_integrations.server import ServerSettings  # noqa: E402
from tests.ray_actors import MapWorkerKiller  # noqa: E402
from tests.tiny_checkpoint import RELEASED_FORMAT_CONFIG, write_tiny_checkpoint  # noqa: E402

from .gpu_engine import QWEN25_7B_SHAPE, WORDS, build_model  # noqa: E402
from .server_load import free_port  # noqa: E402

RESULTS = "ray_gpu_scaling.json"
GRANULARITY = "sentence"
INSTRUCTION = "needle"
WIDTHS = ("hidden_size", "intermediate_size", "num_attention_heads", "num_key_value_heads")


@dataclass(frozen=True)
class Setup:
    """Where the model and inputs are, and how each actor runs: ``units`` GPUs, or CPU actors with ``toy``."""

    model: Path
    workdir: Path
    toy: bool
    window_size: int | None
    batch_size: int

    def actors(self, units: int) -> dict[str, Any]:
        """``compress_jsonl`` options for ``units`` GPUs (or, with ``toy``, ``units`` one-CPU actors)."""
        return {"num_actors": units} if self.toy else {"num_gpus": units}


class GpuSampler:
    """Samples every GPU's utilisation (%) through NVML in a thread; empty where NVML or GPUs are missing."""

    def __init__(self, interval_s: float = 0.2) -> None:
        self.interval_s = interval_s
        self.samples: list[tuple[float, list[int]]] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> "GpuSampler":
        try:
            import pynvml
        except ImportError:
            return self
        try:
            pynvml.nvmlInit()
            handles = [pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(pynvml.nvmlDeviceGetCount())]
        except pynvml.NVMLError:  # no driver: nothing to sample
            return self

        def sample() -> None:
            while not self._stop.is_set():
                utilisation = [pynvml.nvmlDeviceGetUtilizationRates(handle).gpu for handle in handles]
                self.samples.append((time.perf_counter(), utilisation))
                time.sleep(self.interval_s)

        self._thread = threading.Thread(target=sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def mean_utilisation(self, start: float, end: float) -> list[float] | None:
        """Each GPU's mean utilisation (%) over samples taken between ``start`` and ``end`` (perf_counter)."""
        inside = [values for moment, values in self.samples if start <= moment <= end]
        if not inside:
            return None
        return [round(statistics.fmean(column), 1) for column in zip(*inside)]


def write_checkpoint(directory: Path, tokenizer_dir: str, layers: int) -> Path:
    """A 7B-shaped random critic with ``layers`` decoder layers, in the released format (as on the hub)."""
    raw = {**RELEASED_FORMAT_CONFIG, **{key: QWEN25_7B_SHAPE[key] for key in WIDTHS}, "num_hidden_layers": layers}
    model = build_model(CPRSConfig(**raw), outside_bias=6.0)
    model.save_pretrained(directory)
    del model
    torch.cuda.empty_cache()
    AutoTokenizer.from_pretrained(tokenizer_dir).save_pretrained(directory)
    (directory / "config.json").write_text(json.dumps(raw, indent=2), encoding="utf-8")
    return directory


def document(tokenizer: Any, tokens: int, rng: random.Random, needle: str) -> str:
    """About ``tokens`` tokens of word-salad sentences with ``needle`` planted among the first 80%."""
    sentences, words = [], 0
    while words < tokens * 1.1:
        length = rng.randrange(8, 17)
        sentences.append(" ".join(rng.choice(WORDS) for _ in range(length)).capitalize() + ".")
        words += length
    text = " ".join(sentences)
    offsets = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
    cut = text[: offsets[min(tokens, len(offsets)) - 1][1]].split(". ")
    cut.insert(rng.randrange(1, max(2, int(len(cut) * 0.8))), needle)
    return ". ".join(cut)


def write_corpus(path: Path, tokenizer: Any, records: int, tokens: int, seed: int) -> list[str]:
    """``records`` JSONL records ``{"id", "text", "q"}``, each with its own needle and question; returns the ids."""
    rng = random.Random(seed)
    ids = []
    with path.open("w", encoding="utf-8") as file:
        for index in range(records):
            needle = f"The special magic number for record {index} is {rng.randrange(10**6, 10**7)}"
            row = {"id": f"rec-{index:05d}", "text": document(tokenizer, tokens, rng, needle),
                   "q": f"What is the special magic number for record {index}?"}
            file.write(json.dumps(row) + "\n")
            ids.append(row["id"])
    return ids


def read_lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def batch_run(setup: Setup, source: Path, output: Path, units: int) -> dict[str, Any]:
    """One ``compress_jsonl`` job on ``units`` GPUs (or CPU actors): rates, GPU utilisation, output checks."""
    commits: list[tuple[float, int]] = []

    def on_commit(done: int, total: int) -> None:
        commits.append((time.perf_counter(), done))

    with GpuSampler() as gpus:
        summary = compress_jsonl(
            source, output, query_field="q", instruction=INSTRUCTION, granularity=GRANULARITY, model=str(setup.model),
            window_size=setup.window_size, batch_size=setup.batch_size, progress=on_commit,
            **setup.actors(units),
        )
    lines = read_lines(output)
    tokens = sum(line["result"]["original_tokens"] for line in lines if line["result"])
    (first_time, first_done), (last_time, last_done) = commits[1], commits[-1]
    steady_s = last_time - first_time
    steady_records = last_done - first_done
    return {
        "units": units,
        "records": summary.records,
        "errors": summary.errors,
        "blocks": summary.blocks,
        "context_tokens": tokens,
        "job_s": round(summary.seconds, 2),
        "job_records_per_s": round(summary.records / summary.seconds, 3),
        "job_tokens_per_s": round(tokens / summary.seconds),
        "steady_s": round(steady_s, 2),
        "steady_records": steady_records,
        "steady_records_per_s": round(steady_records / steady_s, 3) if steady_s > 0 else None,
        "steady_tokens_per_s": round(steady_records * tokens / summary.records / steady_s) if steady_s > 0 else None,
        "first_block_s": round(first_time - commits[0][0], 2),
        "gpu_utilisation_pct": gpus.mean_utilisation(first_time, last_time),
    }


def batch_phase(setup: Setup, source: Path, units: int) -> dict[str, Any]:
    runs = [batch_run(setup, source, setup.workdir / f"batch-{count}.jsonl", count) for count in (1, units)]
    one, many = runs
    return {
        "runs": runs,
        "job_scaling": round(many["job_records_per_s"] / one["job_records_per_s"], 3),
        "steady_scaling": round(many["steady_records_per_s"] / one["steady_records_per_s"], 3)
        if one["steady_records_per_s"] and many["steady_records_per_s"] else None,
        "identical_results": same_results(setup.workdir / "batch-1.jsonl", setup.workdir / f"batch-{units}.jsonl"),
    }


def same_results(first: Path, second: Path) -> int:
    """Records whose ``result`` is the same in both outputs (bf16 batches of other shapes may differ slightly)."""
    results = {line["id"]: line["result"] for line in read_lines(first)}
    return sum(results.get(line["id"]) == line["result"] for line in read_lines(second))


def kill_phase(setup: Setup, source: Path, ids: list[str], records: int, units: int) -> dict[str, Any]:
    subset = setup.workdir / "kill-input.jsonl"
    with source.open(encoding="utf-8") as full, subset.open("w", encoding="utf-8") as part:
        for _ in range(records):
            part.write(full.readline())
    output = setup.workdir / "kill.jsonl"
    with MapWorkerKiller() as killer:
        run = batch_run(setup, subset, output, units)
    out_ids = [line["id"] for line in read_lines(output)]
    reference = setup.workdir / f"batch-{units}.jsonl"
    return {
        "run": run,
        "killed_pid": killer.pid,
        "exactly_once_in_order": out_ids == ids[:records],
        "missing": len(set(ids[:records]) - set(out_ids)),
        "duplicated": len(out_ids) - len(set(out_ids)),
        "identical_to_uninterrupted": same_results(reference, output) if reference.exists() else None,
    }


def serve_phase(setup: Setup, tokenizer: Any, args: argparse.Namespace) -> dict[str, Any]:
    rng = random.Random(args.seed + 1)
    documents = []
    for index in range(args.serve_requests + args.serve_concurrency):
        needle = f"The special magic number for request {index} is {rng.randrange(10**6)}"
        documents.append((document(tokenizer, args.serve_tokens, rng, needle),
                          f"What is the special magic number for request {index}?"))
    warm_up, measured = documents[: args.serve_concurrency], documents[args.serve_concurrency :]
    runs = [serve_run(setup, count, warm_up, measured, args.serve_concurrency) for count in (1, args.gpus)]
    return {
        "runs": runs,
        "scaling": round(runs[1]["requests_per_s"] / runs[0]["requests_per_s"], 3),
    }


def serve_run(
    setup: Setup, replicas: int, warm_up: list[tuple[str, str]], measured: list[tuple[str, str]], concurrency: int
) -> dict[str, Any]:
    """Serve ``replicas`` replicas, send a warm-up burst, then ``measured`` from ``concurrency`` client threads."""
    port = free_port()
    settings = ServerSettings(max_batch_requests=8, max_wait_ms=5.0, max_queue=4 * len(measured),
                              request_timeout_s=900.0, model_name="random-7B-shape")
    started = time.perf_counter()
    run_serve(str(setup.model), replicas, 0 if setup.toy else 1, settings, port=port, blocking=False,
              window_size=setup.window_size, num_cpus_per_replica=1)
    ready_s = time.perf_counter() - started
    client = RemoteCompressor(f"http://127.0.0.1:{port}", timeout=900.0)
    try:
        with ThreadPoolExecutor(concurrency) as pool:
            list(pool.map(lambda job: send(client, job), warm_up))
        outcomes: list[tuple[float, Any]] = [None] * len(measured)  # type: ignore[list-item]

        def client_loop(first: int) -> None:
            for index in range(first, len(measured), concurrency):
                outcomes[index] = send(client, measured[index])

        with GpuSampler() as gpus, ThreadPoolExecutor(concurrency) as pool:
            start = time.perf_counter()
            list(pool.map(client_loop, range(concurrency)))
            wall = time.perf_counter() - start
    finally:
        serve.shutdown()
    answered = [result for _, result in outcomes if not isinstance(result, Exception)]
    failures = [f"{type(result).__name__}: {result}" for _, result in outcomes if isinstance(result, Exception)]
    latencies = sorted(latency for latency, _ in outcomes)
    return {
        "replicas": replicas,
        "ready_s": round(ready_s, 1),
        "sent": len(measured),
        "answered": len(answered),
        "lost": len(measured) - len(answered),
        "failures": failures[:5],
        "wall_s": round(wall, 2),
        "requests_per_s": round(len(answered) / wall, 3),
        "tokens_per_s": round(sum(result.original_tokens for result in answered) / wall),
        "p50_s": round(statistics.median(latencies), 3),
        "p95_s": round(latencies[min(len(latencies) - 1, round(0.95 * (len(latencies) - 1)))], 3),
        "gpu_utilisation_pct": gpus.mean_utilisation(start, start + wall),
    }


def send(client: RemoteCompressor, job: tuple[str, str]) -> tuple[float, Any]:
    """(latency, result or the exception raised) of one request."""
    start = time.perf_counter()
    try:
        result: Any = client.compress(job[0], job[1], INSTRUCTION, granularity=GRANULARITY)
    except CPRSError as error:
        result = error
    return time.perf_counter() - start, result


def default_workdir() -> Path:
    """A scratch folder in memory (/dev/shm) where it has room for a 7B checkpoint, else on disk."""
    shm = Path("/dev/shm")
    parent = shm if shm.is_dir() and shutil.disk_usage(shm).free > 40 * 2**30 else None
    return Path(tempfile.mkdtemp(prefix="cprs-ray-", dir=parent))


def cell(value: Any) -> str:
    return "-" if value is None else f"{value:,}" if isinstance(value, int) else str(value)


def print_tables(results: dict[str, Any]) -> None:
    """The phases' figures as markdown tables."""
    if "batch" in results:
        print("\n| GPUs | records | context tokens | job s | job records/s | job tokens/s | steady records/s "
              "| steady tokens/s | GPU utilisation % (steady) |")
        print("|---|---|---|---|---|---|---|---|---|")
        for run in results["batch"]["runs"]:
            keys = ("units", "records", "context_tokens", "job_s", "job_records_per_s", "job_tokens_per_s",
                    "steady_records_per_s", "steady_tokens_per_s", "gpu_utilisation_pct")
            print("| " + " | ".join(cell(run[key]) for key in keys) + " |")
        print(f"scaling: job {results['batch']['job_scaling']}x, steady {results['batch']['steady_scaling']}x")
    if "kill" in results:
        kill = results["kill"]
        print(f"\nkilled worker {kill['killed_pid']}: {kill['run']['records']} records, exactly once in order: "
              f"{kill['exactly_once_in_order']} (missing {kill['missing']}, duplicated {kill['duplicated']}, "
              f"errors {kill['run']['errors']}), job {kill['run']['job_s']} s")
    if "serve" in results:
        print("\n| replicas | requests | answered | lost | requests/s | tokens/s | p50 s | p95 s | GPU utilisation % |")
        print("|---|---|---|---|---|---|---|---|---|")
        for run in results["serve"]["runs"]:
            keys = ("replicas", "sent", "answered", "lost", "requests_per_s", "tokens_per_s", "p50_s", "p95_s",
                    "gpu_utilisation_pct")
            print("| " + " | ".join(cell(run[key]) for key in keys) + " |")
        print(f"scaling: {results['serve']['scaling']}x requests/s")


SIZES = {
    # option: (7B-shaped default, --toy default)
    "records": (96, 12),
    "tokens": (32768, 400),
    "batch_size": (4, 2),
    "kill_records": (16, 8),
    "serve_requests": (48, 12),
    "serve_tokens": (16384, 300),
    "serve_concurrency": (16, 4),
}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="folder for ray_gpu_scaling.json")
    parser.add_argument("--tokenizer", help="Qwen2 tokenizer folder (not with --toy)")
    parser.add_argument("--toy", action="store_true", help="CPU actors and the tiny test checkpoint: a smoke test")
    parser.add_argument("--gpus", type=int, default=2, help="GPUs (CPU actors with --toy) of the larger runs (2)")
    parser.add_argument("--layers", type=int, default=28, help="decoder layers of the 7B-shaped critic (28)")
    helps = {
        "records": "records in the corpus", "tokens": "context tokens per record",
        "batch_size": "records per block (one compress_batch call, one commit)",
        "kill_records": "records of the kill phase (the corpus' first)", "serve_requests": "measured requests",
        "serve_tokens": "context tokens per request", "serve_concurrency": "client threads",
    }
    for name, (large, toy) in SIZES.items():
        parser.add_argument(f"--{name.replace('_', '-')}", type=int,
                            help=f"{helps[name]} (default {large}; {toy} with --toy)")
    parser.add_argument("--phases", nargs="+", choices=["batch", "kill", "serve"], default=["batch", "kill", "serve"])
    parser.add_argument("--workdir", type=Path,
                        help="scratch folder, kept afterwards (default: a temporary one in /dev/shm or $TMPDIR)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if not args.toy and not args.tokenizer:
        parser.error("--tokenizer is needed without --toy")
    for name, defaults in SIZES.items():
        if getattr(args, name) is None:
            setattr(args, name, defaults[args.toy])
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the phases; returns (and writes to ``OUT/ray_gpu_scaling.json``) their results."""
    args = parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    workdir = args.workdir or default_workdir()
    workdir.mkdir(parents=True, exist_ok=True)
    command = " ".join(["python -m benchmarks.ray_gpu_scaling", *(sys.argv[1:] if argv is None else argv)])
    results: dict[str, Any] = {"command": command}

    def save(phase: str, value: Any) -> None:
        results[phase] = value
        (args.out / RESULTS).write_text(json.dumps(results, indent=2), encoding="utf-8")
        print(f"[{time.strftime('%H:%M:%S')}] {phase}: {json.dumps(value)}", flush=True)

    started = time.perf_counter()
    if args.toy:
        setup = Setup(write_tiny_checkpoint(workdir / "model"), workdir, True, 256, args.batch_size)
    else:
        setup = Setup(write_checkpoint(workdir / "model", args.tokenizer, args.layers), workdir, False, None,
                      args.batch_size)
    tokenizer = AutoTokenizer.from_pretrained(setup.model)
    source = workdir / "corpus.jsonl"
    ids = write_corpus(source, tokenizer, args.records, args.tokens, args.seed)
    owns_ray = not ray.is_initialized()
    if owns_ray:
        # --toy: one CPU per actor or replica stands for one GPU, and no more CPUs, so a phase that left an actor
        # holding its unit would make the next one wait, as it would with GPUs
        ray.init(num_cpus=args.gpus if args.toy else None, include_dashboard=False)
    ray.data.DataContext.get_current().enable_progress_bars = False
    try:
        save("setup", {
            "seconds": round(time.perf_counter() - started, 1), "workdir": str(workdir), "ray": ray.__version__,
            "torch": torch.__version__, "resources": ray.cluster_resources(), "cpu_count": os.cpu_count(),
            "gpus": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())],
            "layers": RELEASED_FORMAT_CONFIG["num_hidden_layers"] if args.toy else args.layers,
            **{name: getattr(args, name) for name in SIZES},
        })
        if "batch" in args.phases:
            save("batch", batch_phase(setup, source, args.gpus))
        if "kill" in args.phases:
            save("kill", kill_phase(setup, source, ids, min(args.kill_records, args.records), args.gpus))
        if "serve" in args.phases:
            save("serve", serve_phase(setup, tokenizer, args))
        save("total_s", round(time.perf_counter() - started, 1))
    finally:
        if owns_ray:
            ray.shutdown()
        if args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)
    print_tables(results)
    return results


if __name__ == "__main__":
    main()
