"""Where the critic's GPU time goes, on the 7B shape.

``python -m benchmarks.gpu_profile`` times one batch of windows under engine variants, attention paths and GEMMs
(used to choose the engine's attention and fusion paths). With ``--tokenizer DIR`` it also profiles one whole
compiled ``compress`` of a long context with ``torch.profiler``: GPU kernel time by kind, and when the GPU waited
(before its first kernel, between kernels, after its last).
"""

from __future__ import annotations

import argparse
from collections import defaultdict
from typing import Callable

import torch
import torch.nn.functional as F
from torch.nn.attention.bias import causal_lower_right
from transformers import AutoTokenizer

from cprs_core import CPRSCompressor, CPRSConfig, QwenCritic

from .gpu_engine import QWEN25_7B_SHAPE, build_model, linear_params, make_text, matmul_flops_per_s, median_time

KERNEL_KINDS = (
    ("GEMM (cuBLAS)", ("gemm", "nvjet", "xmma", "cutlass")),
    ("attention", ("sdpa", "flash", "fmha", "attention")),
    ("fused elementwise (Triton)", ("triton",)),
)

PREFIX, WINDOW, BATCH = 100, 8092, 4


def kernel_kind(name: str) -> str:
    lowered = name.lower()
    return next((kind for kind, marks in KERNEL_KINDS if any(mark in lowered for mark in marks)), "other")


def busy_time_us(intervals: list[tuple[float, float]]) -> float:
    """Length of the union of ``(start, end)`` intervals."""
    busy, end = 0.0, float("-inf")
    for start, stop in sorted(intervals):
        if stop > end:
            busy += stop - max(start, end)
            end = stop
    return busy


def profile_compress(run: Callable[[], object]) -> None:
    """Print GPU kernel time by kind, and where the GPU waited, for one call of ``run`` (already warm).

    The wait is split into the time before the first kernel (tokenizing the first part, the prompt prefix), the
    gaps between kernels, and the time after the last kernel (copying scores back, span assembly).
    """
    torch.cuda.synchronize()
    activities = [torch.profiler.ProfilerActivity.CPU, torch.profiler.ProfilerActivity.CUDA]
    with torch.profiler.profile(activities=activities) as profiler:
        with torch.profiler.record_function("compress"):
            run()
            torch.cuda.synchronize()
    events = profiler.events()
    call = next(event for event in events if event.name == "compress")
    kernels = [  # GPU-side work; the profiler also mirrors the "compress" label on the GPU timeline: not a kernel
        event for event in events if event.device_type == torch.autograd.DeviceType.CUDA and event.name != "compress"
    ]
    by_kind: dict[str, float] = defaultdict(float)
    by_name: dict[str, float] = defaultdict(float)
    for event in kernels:
        by_kind[kernel_kind(event.name)] += event.device_time_total / 1e3
        by_name[event.name] += event.device_time_total / 1e3
    intervals = [(event.time_range.start, event.time_range.end) for event in kernels]
    busy_ms = busy_time_us(intervals) / 1e3
    first_ms = (min(start for start, _ in intervals) - call.time_range.start) / 1e3
    last_ms = (call.time_range.end - max(end for _, end in intervals)) / 1e3
    wall_ms = call.time_range.elapsed_us() / 1e3
    print("\n| kernel kind | ms |\n|---|---|")
    for kind, ms in sorted(by_kind.items(), key=lambda item: -item[1]):
        print(f"| {kind} | {ms:.0f} |")
    print(f"| GPU busy (union of kernels) | {busy_ms:.0f} |")
    print(f"| GPU idle before the first kernel | {first_ms:.1f} |")
    print(f"| GPU idle between kernels | {wall_ms - first_ms - last_ms - busy_ms:.1f} |")
    print(f"| GPU idle after the last kernel | {last_ms:.1f} |")
    print(f"| wall time of compress, profiled | {wall_ms:.0f} |")
    print("\nlargest kernels:")
    for name, ms in sorted(by_name.items(), key=lambda item: -item[1])[:12]:
        print(f"  {ms:8.1f} ms  {name[:100]}")


def profile_engine(tokenizer_dir: str, tokens: int) -> None:
    """Profile one compiled ``compress`` of a ``tokens``-long context (window 8192)."""
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    model = build_model(CPRSConfig(**QWEN25_7B_SHAPE), outside_bias=6.0)
    model.compile_layers()
    compressor = CPRSCompressor(QwenCritic(model, tokenizer, name="random-7B"), window_size=8192)
    text = make_text(tokenizer, tokens)
    run = lambda: compressor.compress(text, "What is the special magic number?", "needle", granularity="token")  # noqa: E731
    run()
    print(f"\ncompress of {tokens} tokens, compiled: median {median_time(run, 3):.3f} s")
    profile_compress(run)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokenizer", help="a Qwen2 tokenizer directory: also profile a whole compress")
    parser.add_argument("--tokens", type=int, default=131072, help="context length of the profiled compress")
    args = parser.parse_args()
    config = CPRSConfig(**QWEN25_7B_SHAPE)
    model = build_model(config)
    prefix_ids = torch.randint(0, 150000, (1, PREFIX), device="cuda")
    window_ids = torch.randint(0, 150000, (BATCH, WINDOW), device="cuda")
    label_ids = torch.tensor([100, 200, 300], device="cuda")
    rows: dict[str, float] = {}

    def score() -> None:
        model.score_windows(model.prefill_prefix(prefix_ids), window_ids, label_ids)

    with torch.inference_mode():
        rows["score_windows, eager (the default)"] = median_time(score, 5)
        model.fuse_projections()
        rows["score_windows, eager, fused q/k/v and gate/up"] = median_time(score, 5)
        heads, kv_heads, dim = config.num_attention_heads, config.num_key_value_heads, config.attention_head_dim
        q = torch.randn(BATCH, heads, WINDOW, dim, device="cuda", dtype=torch.bfloat16)
        k = torch.randn(BATCH, kv_heads, WINDOW + PREFIX, dim, device="cuda", dtype=torch.bfloat16)
        v = torch.randn_like(k)
        bias = causal_lower_right(WINDOW, WINDOW + PREFIX)

        def padded_queries() -> torch.Tensor:
            padded = torch.cat((q.new_zeros(BATCH, heads, PREFIX, dim), q), 2)
            return F.scaled_dot_product_attention(padded, k, v, is_causal=True, enable_gqa=True)[:, :, PREFIX:]

        rows["attention after prefix: lower-right causal mask"] = median_time(
            lambda: F.scaled_dot_product_attention(q, k, v, attn_mask=bias, enable_gqa=True), 10)
        rows["attention after prefix: padded queries, plain causal kernel (engine)"] = median_time(padded_queries, 10)
        rows["attention, bidirectional on prefix+window"] = median_time(
            lambda: F.scaled_dot_product_attention(torch.cat((q.new_zeros(BATCH, heads, PREFIX, dim), q), 2), k, v,
                                                   enable_gqa=True), 10)
        layer = model.model.layers[0]
        x = torch.randn(BATCH, WINDOW + PREFIX, config.hidden_size, device="cuda", dtype=torch.bfloat16)

        def linears() -> None:
            attention, mlp = layer.self_attn, layer.mlp
            attention.o_proj(F.linear(x, attention.qkv_weight, attention.qkv_bias)[..., : heads * dim])
            mlp.down_proj(F.linear(x, mlp.gate_up_weight)[..., : config.intermediate_size])

        rows["one layer's GEMMs, fused (x28 = all layers)"] = median_time(linears, 10)
        cos, sin = model.model.rotary_emb(torch.arange(WINDOW + PREFIX, device="cuda"), torch.bfloat16)
        rows["one causal layer, eager"] = median_time(lambda: layer(x, cos, sin), 10)
        model.compile_layers()
        rows["score_windows, compiled layers, fused (compile=True)"] = median_time(score, 5)
        model.score_windows(model.prefill_prefix(prefix_ids), window_ids[:, :-500], label_ids)  # a new length
        rows["same, after a second window length (dynamic shapes)"] = median_time(score, 5)
    rate = matmul_flops_per_s()
    tokens = BATCH * (WINDOW + PREFIX)
    print(f"{torch.cuda.get_device_name()} torch {torch.__version__}, matmul {rate / 1e12:.0f} TFLOP/s, "
          f"batch {BATCH}x{WINDOW}+{PREFIX}")
    print(f"linear FLOP bound for the batch: {2 * linear_params(config) * tokens / rate * 1e3:.1f} ms")
    for name, seconds in rows.items():
        print(f"| {name} | {seconds * 1e3:.1f} ms |")
    if args.tokenizer:
        del model
        torch._dynamo.reset()
        torch.cuda.empty_cache()
        profile_engine(args.tokenizer, args.tokens)


if __name__ == "__main__":
    main()
