"""GPU benchmark: the window-parallel engine vs a naive full-length forward vs the FLOP bound.

Builds a randomly initialised critic with the exact QwenLong-CPRS-7B shape (weights do not change the cost) and,
for each context length, measures in one run:

* engine: ``CPRSCompressor.compress`` end to end (tokenize, shared prefix, windows, critic heads, spans);
* naive: one full-length forward of ``transformers``' own Qwen2 body (sdpa, bf16) over the whole context;
* naive hybrid: the same body with the attention of layers 21-27 made bidirectional (``is_causal = False`` on
  those modules, as upstream's released critic runs them), i.e. the released model run without windows;
* bound (the issue's definition): ``(2 * body params * tokens + in-window attention FLOPs) / measured bf16 matmul
  FLOP/s``, body params = 7.07e9 (decoder + embeddings, no LM head);
* strict bound: the same with only the FLOPs the engine must do: linear params (6.53e9, no embeddings) times the
  context tokens plus the prompt prefix re-run by every window;
* sustained bound: the bound's FLOPs over the matmul rate the card holds when it multiplies without pause for
  5 s (an H100 reaches its 700 W power cap within a second and lowers its SM clock from 1,980 MHz), with the SM
  clock, power draw and power-cap state sampled through NVML while the engine runs (``nvidia-ml-py``, where
  installed).

Usage (on a CUDA machine, from the repository root)::

    python -m benchmarks.gpu_engine --tokenizer DIR --out results.json

``DIR`` holds a Qwen2 tokenizer (``python -m benchmarks.save_tokenizer DIR`` writes one offline).
"""

from __future__ import annotations

import argparse
import json
import statistics
import threading
import time
from dataclasses import asdict, dataclass
from typing import Callable

import torch
from transformers import AutoTokenizer, Qwen2Config, Qwen2Model

from cprs_core import BIOE_LABELS, CPRSCompressor, CPRSConfig, CPRSForTokenCritic, QwenCritic
from cprs_core.prompt import parse_tags, resolve_instruction

QWEN25_7B_SHAPE = dict(
    vocab_size=152064,
    hidden_size=3584,
    intermediate_size=18944,
    num_hidden_layers=28,
    num_attention_heads=28,
    num_key_value_heads=4,
    max_position_embeddings=32768,
    rope_theta=1_000_000.0,
    tie_word_embeddings=False,
)
WORDS = (
    "the report said river market ancient signal copper lantern orbit harvest quiet meadow protocol "
    "engine winter garden theory cable silver window narrow thunder paper castle mirror planet"
).split()


@dataclass
class Row:
    tokens: int
    engine_s: float
    engine_peak_gib: float
    naive_s: float | None
    naive_peak_gib: float | None
    naive_hybrid_s: float | None
    bound_s: float
    strict_bound_s: float
    sustained_bound_s: float
    clocks: dict[str, float] | None
    windows: int
    tokenize_s: float
    critic_s: float
    kept_tokens: int

    @property
    def engine_tokens_per_s(self) -> float:
        return self.tokens / self.engine_s


def median_time(fn: Callable[[], object], repeats: int) -> float:
    fn()  # warm-up
    torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def peak_gib(fn: Callable[[], object]) -> float:
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    fn()
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() / 2**30


def matmul_flops_per_s() -> float:
    """bf16 FLOP/s of an 8192^3 matmul: the best of three medians of 30 (clocks vary; the best is the fair bound)."""
    a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    seconds = min(median_time(lambda: a @ b, 30) for _ in range(3))
    return 2 * 8192**3 / seconds


def sustained_seconds(fn: Callable[[], object], seconds: float) -> float:
    """Mean time of ``fn`` run back to back for ``seconds`` (long enough for the card to reach its power cap)."""
    fn()
    torch.cuda.synchronize()
    start, calls = time.perf_counter(), 0
    while time.perf_counter() - start < seconds:
        for _ in range(10):
            fn()
        torch.cuda.synchronize()
        calls += 10
    return (time.perf_counter() - start) / calls


def sustained_matmul_flops_per_s(seconds: float = 5.0) -> float:
    """bf16 FLOP/s of 8192^3 matmuls run back to back for ``seconds``: the rate the card holds under long load."""
    a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    return 2 * 8192**3 / sustained_seconds(lambda: a @ b, seconds)


class ClockSampler:
    """Samples the GPU's SM clock, power draw and power-cap state through NVML in a background thread.

    Use as a context manager around the timed work; :attr:`summary` is ``None`` where NVML is not installed.
    """

    SW_POWER_CAP = 0x4  # NVML clocks-event reason bit: the clock is lowered to hold the power limit

    def __init__(self, interval_s: float = 0.05) -> None:
        self.interval_s = interval_s
        self.samples: list[tuple[int, float, bool]] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> "ClockSampler":
        try:
            import pynvml
        except ImportError:
            return self
        pynvml.nvmlInit()
        handle = pynvml.nvmlDeviceGetHandleByIndex(torch.cuda.current_device())

        def sample() -> None:
            while not self._stop.is_set():
                self.samples.append((
                    pynvml.nvmlDeviceGetClockInfo(handle, pynvml.NVML_CLOCK_SM),
                    pynvml.nvmlDeviceGetPowerUsage(handle) / 1e3,
                    bool(pynvml.nvmlDeviceGetCurrentClocksEventReasons(handle) & self.SW_POWER_CAP),
                ))
                time.sleep(self.interval_s)

        self._thread = threading.Thread(target=sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    @property
    def summary(self) -> dict[str, float] | None:
        if not self.samples:
            return None
        return {
            "sm_clock_mhz": statistics.median(clock for clock, _, _ in self.samples),
            "power_w": statistics.median(power for _, power, _ in self.samples),
            "power_capped_share": sum(capped for _, _, capped in self.samples) / len(self.samples),
        }


def build_model(config: CPRSConfig, outside_bias: float = 0.0) -> CPRSForTokenCritic:
    """A random bf16 critic on CUDA; ``outside_bias`` is added to the head's O logit (a trained critic tags little)."""
    torch.manual_seed(0)
    default = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)
    try:
        with torch.device("cuda"):
            model = CPRSForTokenCritic(config)
    finally:
        torch.set_default_dtype(default)
    with torch.no_grad():
        model.cls_head.bias[BIOE_LABELS.index("O")] += outside_bias
    return model.eval()


def linear_params(config: CPRSConfig) -> int:
    hidden, inter, heads, kv = (config.hidden_size, config.intermediate_size, config.num_attention_heads,
                                config.num_key_value_heads)  # fmt: skip
    head_dim = hidden // heads
    per_layer = 2 * hidden * hidden + 2 * hidden * kv * head_dim + 3 * hidden * inter
    return config.num_hidden_layers * per_layer


def body_params(config: CPRSConfig) -> int:
    """Decoder and embedding parameters (what "7.07e9" counts for Qwen2.5-7B), without the LM head."""
    return linear_params(config) + config.vocab_size * config.hidden_size


def attention_flops(config: CPRSConfig, window_lengths: list[int], prefix: int) -> float:
    """QK^T and PV FLOPs inside windows: causal layers attend to half of prefix+window, bidirectional to all."""
    hidden, layers, first_bi = config.hidden_size, config.num_hidden_layers, config.first_bidirectional_layer
    total = 0.0
    for length in window_lengths:
        full = 4 * (prefix + length) ** 2 * hidden
        total += first_bi * full / 2 + (layers - first_bi) * full
    return total


def set_bidirectional(body: Qwen2Model, first_layer: int, bidirectional: bool) -> None:
    """Make the attention of ``body``'s layers from ``first_layer`` on bidirectional (or causal again)."""
    for layer in body.layers[first_layer:]:
        layer.self_attn.is_causal = not bidirectional


def make_text(tokenizer, tokens: int) -> str:
    words = " ".join(WORDS[(i * 7 + i // 13) % len(WORDS)] for i in range(int(tokens * 1.2)))
    encoding = tokenizer(words, add_special_tokens=False, return_offsets_mapping=True)
    return words[: encoding["offset_mapping"][tokens - 1][1]]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokenizer", required=True)
    parser.add_argument("--lengths", type=int, nargs="+", default=[8192, 32768, 65536, 131072])
    parser.add_argument("--window-size", type=int, default=8192)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--skip-naive", action="store_true")
    parser.add_argument("--compile", action="store_true", help="torch.compile the decoder layers")
    parser.add_argument("--compile-mode", default=None, help="torch.compile mode, e.g. max-autotune-no-cudagraphs")
    parser.add_argument("--fused-swiglu", choices=["auto", "on", "off"], default="auto",
                        help="with --compile: the SwiGLU in the gate/up GEMM's epilogue (quack-kernels); auto = "
                             "where it can run")
    parser.add_argument("--max-batch-tokens", type=int, default=None)
    parser.add_argument("--outside-bias", type=float, default=6.0,
                        help="added to the random head's O logit so that, like a trained critic, it keeps few tokens "
                             "(0 = a uniform random head that tags most tokens; model cost is the same)")
    parser.add_argument("--out", default="gpu_engine.json")
    args = parser.parse_args()

    tokenizer = AutoTokenizer.from_pretrained(args.tokenizer)
    config = CPRSConfig(**QWEN25_7B_SHAPE)
    flops_per_s = matmul_flops_per_s()
    sustained_flops_per_s = sustained_matmul_flops_per_s()
    model = build_model(config, args.outside_bias)
    if args.compile:
        model.compile_layers(args.compile_mode, {"auto": None, "on": True, "off": False}[args.fused_swiglu])
    critic = QwenCritic(model, tokenizer, name="random-7B", max_batch_tokens=args.max_batch_tokens)
    compressor = CPRSCompressor(critic, window_size=args.window_size)
    naive = None
    if not args.skip_naive:
        body_config = Qwen2Config(**QWEN25_7B_SHAPE, max_window_layers=28)
        body_config._attn_implementation = "sdpa"
        torch.set_default_dtype(torch.bfloat16)
        with torch.device("cuda"):
            naive = Qwen2Model(body_config)
        torch.set_default_dtype(torch.float32)
        naive.load_state_dict({k.removeprefix("model."): v for k, v in model.state_dict().items()
                               if k.startswith("model.")})  # fmt: skip
        naive.eval()
    query, instruction = "What is the special magic number for the copper lantern?", "needle"
    rows = []
    for length in args.lengths:
        text = make_text(tokenizer, length)
        run_engine = lambda: compressor.compress(text, query, instruction, granularity="token")  # noqa: E731
        result = run_engine()
        with ClockSampler() as clocks:
            engine_s = median_time(run_engine, args.repeats)
        engine_peak = peak_gib(run_engine)
        prefix_len = len(compressor.critic.encode_prefix(instruction, query))
        capacity = args.window_size - prefix_len
        windows = [min(capacity, length - start) for start in range(0, length, capacity)]
        tokens = critic.tokenize_context(text)
        tokenize_s = median_time(lambda: critic.tokenize_context(text), args.repeats)
        plan = compressor.engine.plan(tokens, resolve_instruction(instruction), query)
        window_ids = [tokens.ids[w.start : w.stop] for w in plan.windows]
        tags = parse_tags(resolve_instruction(instruction))
        critic_s = median_time(lambda: critic.score_windows(plan.prefix_ids, window_ids, tags), args.repeats)
        attention = attention_flops(config, windows, prefix_len)
        bound_flops = 2 * body_params(config) * length + attention
        bound = bound_flops / flops_per_s
        strict_bound = (2 * linear_params(config) * (length + prefix_len * len(windows)) + attention) / flops_per_s
        naive_s = naive_peak = naive_hybrid_s = None
        if naive is not None:
            ids = torch.tensor([tokenizer(text, add_special_tokens=False)["input_ids"]], device="cuda")
            with torch.inference_mode():
                run_naive = lambda: naive(input_ids=ids, use_cache=False)  # noqa: E731
                naive_s = median_time(run_naive, args.repeats)
                naive_peak = peak_gib(run_naive)
                set_bidirectional(naive, config.first_bidirectional_layer, True)
                naive_hybrid_s = median_time(run_naive, args.repeats)
                set_bidirectional(naive, config.first_bidirectional_layer, False)
        rows.append(Row(length, engine_s, engine_peak, naive_s, naive_peak, naive_hybrid_s, bound, strict_bound,
                        bound_flops / sustained_flops_per_s, clocks.summary, result.windows,
                        tokenize_s, critic_s, result.compressed_tokens))
        print(json.dumps({**asdict(rows[-1]), "engine_tok_s": rows[-1].engine_tokens_per_s}), flush=True)

    flops_after = matmul_flops_per_s()
    if flops_after > flops_per_s:  # a faster measurement makes every bound tighter: recompute them with it
        for row in rows:
            row.bound_s *= flops_per_s / flops_after
            row.strict_bound_s *= flops_per_s / flops_after
        flops_per_s = flops_after
    sustained_after = sustained_matmul_flops_per_s()
    if sustained_after > sustained_flops_per_s:
        for row in rows:
            row.sustained_bound_s *= sustained_flops_per_s / sustained_after
        sustained_flops_per_s = sustained_after
    device = torch.cuda.get_device_name()
    summary = {
        "device": device,
        "torch": torch.__version__,
        "matmul_tflops": flops_per_s / 1e12,
        "sustained_matmul_tflops": sustained_flops_per_s / 1e12,
        "linear_params": linear_params(config),
        "body_params": body_params(config),
        "window_size": args.window_size,
        "compiled": args.compile,
        "fused_swiglu": model.model.layers[0].mlp.fused_swiglu,
        "outside_bias": args.outside_bias,
        "max_batch_tokens": critic.max_batch_tokens,
        "rows": [asdict(row) for row in rows],
    }
    with open(args.out, "w") as handle:
        json.dump(summary, handle, indent=2)
    print(f"\n{device}, bf16 matmul {flops_per_s / 1e12:.0f} TFLOP/s (sustained 5 s: "
          f"{sustained_flops_per_s / 1e12:.0f}), window {args.window_size}, fused SwiGLU: {summary['fused_swiglu']}")
    print("| tokens | engine s | tok/s | engine peak GiB | naive s | naive peak GiB | bound s | % of bound "
          "| strict bound s | % of strict | speed-up vs naive | naive hybrid s | speed-up vs hybrid | tokenize s "
          "| critic s | kept tokens |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for row in rows:
        naive_cells = ("-",) * 5 if row.naive_s is None else (
            f"{row.naive_s:.2f}", f"{row.naive_peak_gib:.1f}", f"{row.naive_s / row.engine_s:.2f}x",
            f"{row.naive_hybrid_s:.2f}", f"{row.naive_hybrid_s / row.engine_s:.2f}x")
        print(f"| {row.tokens} | {row.engine_s:.2f} | {row.engine_tokens_per_s:,.0f} | {row.engine_peak_gib:.1f} | "
              f"{naive_cells[0]} | {naive_cells[1]} | {row.bound_s:.2f} | {100 * row.bound_s / row.engine_s:.0f}% | "
              f"{row.strict_bound_s:.2f} | {100 * row.strict_bound_s / row.engine_s:.0f}% | {naive_cells[2]} | "
              f"{naive_cells[3]} | {naive_cells[4]} | {row.tokenize_s:.2f} | {row.critic_s:.2f} | {row.kept_tokens} |")
    print("\n| tokens | engine s | sustained bound s | % of sustained bound | SM clock MHz (median) | power W (median) "
          "| samples power-capped |")
    print("|---|---|---|---|---|---|---|")
    for row in rows:
        clock_cells = ("-",) * 3 if row.clocks is None else (
            f"{row.clocks['sm_clock_mhz']:.0f}", f"{row.clocks['power_w']:.0f}",
            f"{100 * row.clocks['power_capped_share']:.0f}%")
        print(f"| {row.tokens} | {row.engine_s:.2f} | {row.sustained_bound_s:.2f} | "
              f"{100 * row.sustained_bound_s / row.engine_s:.0f}% | {' | '.join(clock_cells)} |")


if __name__ == "__main__":
    main()
