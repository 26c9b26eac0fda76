"""Time to first result on the GPU: loading a 7B-shaped checkpoint in the released format, then compressing.

Saves a randomly initialised critic of the exact QwenLong-CPRS-7B shape with ``save_pretrained`` (safetensors,
config and tokenizer: the released layout), then, in fresh processes, loads it with
``QwenCritic.from_pretrained(device="cuda", dtype="bfloat16")`` (eager, and ``compile=True``) and compresses a
16K-token context twice. Reports load time, the first compress (CUDA / cuDNN set-up, and compilation when
compiled), the second, the process's peak anonymous host memory during the load (its own tensor copies, sampled
every 5 ms), its peak resident memory (which also counts the memory-mapped checkpoint's pages) and the GPU
memory the weights take. The checkpoint was just written, so it is read from the page cache, as after a first
load.

Usage (on a CUDA machine, from the repository root)::

    python -m benchmarks.gpu_load --tokenizer DIR
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import threading
import time
from pathlib import Path

import torch
from transformers import AutoTokenizer

from cprs_core import CPRSCompressor, CPRSConfig, QwenCritic

from .gpu_engine import QWEN25_7B_SHAPE, build_model, make_text


class AnonymousMemoryPeak:
    """Samples this process's anonymous resident memory (``RssAnon``) in a thread; ``peak_gib`` is the highest."""

    def __init__(self, interval_s: float = 0.005) -> None:
        self.peak_gib = 0.0
        self._interval_s = interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.is_set():
            with open("/proc/self/status") as status:
                kib = next(int(line.split()[1]) for line in status if line.startswith("RssAnon:"))
            self.peak_gib = max(self.peak_gib, kib / 2**20)
            time.sleep(self._interval_s)

    def __enter__(self) -> "AnonymousMemoryPeak":
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join()


def save_checkpoint(tokenizer_dir: str, directory: Path) -> None:
    model = build_model(CPRSConfig(**QWEN25_7B_SHAPE), outside_bias=6.0)
    model.save_pretrained(directory)
    AutoTokenizer.from_pretrained(tokenizer_dir).save_pretrained(directory)


def timed(fn):
    start = time.perf_counter()
    value = fn()
    torch.cuda.synchronize()
    return value, time.perf_counter() - start


def load_and_compress(directory: Path, compile: bool) -> dict[str, float | int | bool]:
    with AnonymousMemoryPeak() as anonymous:
        critic, load_s = timed(lambda: QwenCritic.from_pretrained(directory, "cuda", "bfloat16", compile=compile))
    weights_gib = torch.cuda.memory_allocated() / 2**30
    compressor = CPRSCompressor(critic)
    text = make_text(critic.tokenizer, 16384)
    compress = lambda: compressor.compress(text, "What is the special magic number?", "needle", granularity="token")  # noqa: E731
    result, first_s = timed(compress)
    _, second_s = timed(compress)
    return {
        "compiled": compile,
        "load_s": load_s,
        "first_compress_s": first_s,
        "second_compress_s": second_s,
        "peak_anonymous_gib": anonymous.peak_gib,
        "peak_resident_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
        "gpu_weights_gib": weights_gib,
        "windows": result.windows,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokenizer", help="Qwen2 tokenizer directory (to save the checkpoint)")
    parser.add_argument("--dir", type=Path, default=Path("/tmp/cprs-7b-random"))
    parser.add_argument("--load", choices=["eager", "compiled"], help="internal: load once in this process")
    args = parser.parse_args()
    if args.load:
        print(json.dumps(load_and_compress(args.dir, args.load == "compiled")))
        return
    start = time.perf_counter()
    save_checkpoint(args.tokenizer, args.dir)
    print(f"saved in {time.perf_counter() - start:.1f} s", flush=True)
    rows = []
    for mode in ["eager", "compiled", "eager", "compiled"]:
        output = subprocess.run([sys.executable, "-m", "benchmarks.gpu_load", "--dir", str(args.dir), "--load", mode],
                                check=True, capture_output=True, text=True).stdout  # fmt: skip
        rows.append(json.loads(output.strip().splitlines()[-1]))
        print(json.dumps(rows[-1]), flush=True)
    print_table(torch.cuda.get_device_name(), rows)


def print_table(device: str, rows: list[dict]) -> None:
    """One row per process, in run order: each mode's first process meets cold kernel and compile caches."""
    print(f"\n{device}, bf16, one fresh process per row, in run order")
    print("| layers | caches | load s | first compress s | second compress s | peak anonymous host GiB "
          "| peak resident GiB | GPU weights GiB |\n|---|---|---|---|---|---|---|---|")
    seen: set[bool] = set()
    for row in rows:
        caches = "warm" if row["compiled"] in seen else "cold"
        seen.add(row["compiled"])
        print(f"| {'compile=True' if row['compiled'] else 'eager'} | {caches} | {row['load_s']:.1f} | "
              f"{row['first_compress_s']:.1f} | {row['second_compress_s']:.2f} | {row['peak_anonymous_gib']:.1f} | "
              f"{row['peak_resident_gib']:.1f} | {row['gpu_weights_gib']:.1f} |")

if __name__ == "__main__":
    main()
