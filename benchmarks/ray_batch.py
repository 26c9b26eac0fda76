"""Throughput of ``cprs batch`` (:func:`cprs_integrations.ray_batch.compress_jsonl`) on a local Ray instance.

Builds a JSONL corpus of King James Bible passages (``--tokens`` cprs-mini tokens each, one planted needle per
record, one query per record), then compresses it with cprs-mini on CPU actors in several layouts
(``ACTORSxCPUS``: actors, each with that many CPUs and torch threads), each run into a fresh output. Reports
the wall time of the whole job (Ray Data start, model load in every actor, merge) and the steady rate between
the first and the last committed block (the part that more actors or GPUs speed up).

Usage (from the repository root; needs ``pip install -e ".[all]"``)::

    python -m benchmarks.ray_batch --records 96 --tokens 1000 --layouts 1x1 2x1 1x2
"""

from __future__ import annotations

import argparse
import json
import os
import random
import tempfile
import time
from pathlib import Path

import ray
import torch

from cprs_core import CPRSCompressor
from cprs_core.mini.haystack import Haystack
from cprs_integrations.ray_batch import compress_jsonl


def write_corpus(path: Path, records: int, tokens: int) -> None:
    """``records`` passages of about ``tokens`` tokens, each with a numbered needle and its question."""
    haystack = Haystack.load("eval", CPRSCompressor.from_pretrained(device="cpu").critic.tokenizer)
    rng = random.Random(0)
    with path.open("w", encoding="utf-8") as file:
        for index in range(records):
            verses, _ = haystack.passage(rng, tokens)
            verses.insert(len(verses) // 2, f"The secret number of vault {index} is {rng.randrange(10**6)}.")
            row = {"id": f"rec-{index}", "text": " ".join(verses), "q": f"What is the secret number of vault {index}?"}
            file.write(json.dumps(row) + "\n")


def measure(source: Path, output: Path, actors: int, cpus: int, batch_size: int) -> tuple[float, float, int]:
    """(job seconds, steady records/s, records) of one run."""
    commits: list[tuple[float, int]] = []
    summary = compress_jsonl(
        source, output, query_field="q", num_actors=actors, cpus_per_actor=cpus, batch_size=batch_size,
        progress=lambda done, total: commits.append((time.perf_counter(), done)),
    )
    (first_time, first_done), (last_time, last_done) = commits[1], commits[-1]
    steady = (last_done - first_done) / (last_time - first_time) if last_time > first_time else float("nan")
    return summary.seconds, steady, summary.records


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", type=int, default=96)
    parser.add_argument("--tokens", type=int, default=1000, help="context tokens per record")
    parser.add_argument("--batch-size", type=int, default=4, help="records per block")
    parser.add_argument("--layouts", nargs="+", default=["1x1", "2x1", "1x2"], help="ACTORSxCPUS per run")
    args = parser.parse_args()
    layouts = [tuple(int(part) for part in layout.split("x")) for layout in args.layouts]
    cpus = max(actors * per_actor for actors, per_actor in layouts)
    with tempfile.TemporaryDirectory() as scratch:
        source = Path(scratch) / "corpus.jsonl"
        write_corpus(source, args.records, args.tokens)
        ray.init(num_cpus=cpus, include_dashboard=False, log_to_driver=False)
        print(f"cprs-mini, {args.records} records x ~{args.tokens} tokens, blocks of {args.batch_size}; "
              f"Ray {ray.__version__}, torch {torch.__version__}, {os.cpu_count()} cores")
        print("| actors x CPUs | job s | job records/s | steady records/s |")
        print("|---|---|---|---|")
        for run, (actors, per_actor) in enumerate(layouts):
            seconds, steady, records = measure(source, Path(scratch) / f"out-{run}.jsonl", actors, per_actor, args.batch_size)
            print(f"| {actors} x {per_actor} | {seconds:.1f} | {records / seconds:.2f} | {steady:.2f} |", flush=True)
        ray.shutdown()


if __name__ == "__main__":
    main()
