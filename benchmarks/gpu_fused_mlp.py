"""Does a GEMM with the SwiGLU in its epilogue make the critic's MLP faster? (See docs/performance.md for the figures.)

The engine computes the MLP as one cuBLAS GEMM for gate and up, a compiled elementwise ``silu(gate) * up``
(memory-bound: ~4% of a 128K-token compress) and the down GEMM. This script times, on the 7B shape with a batch
of four 8,192-token windows:

* the engine's way: cuBLAS gate/up GEMM + compiled SiLU·up;
* quack-kernels' gated GEMM (``cprs_core.swiglu.swiglu_projection``, what ``fused_swiglu`` uses), with its
  default tile configuration and a few others, checked against the engine's result (where quack is installed);
* a persistent Triton GEMM (TMA loads) that computes gate and up tiles together and writes only
  ``silu(gate) * up``, over a few tile configurations, checked against the engine's result;
* whole MLPs (gate/up, SiLU·up, down) run back to back for several seconds, as a compress runs them (the card
  then sits at its power cap): the engine's way, quack's fused GEMM, the best Triton fusion, and
  ``torch.compile``'s ``max-autotune`` on unfused gate and up (Inductor may pick Triton GEMM templates and fuse
  the product into one).

Usage (on a CUDA machine with Triton, from the repository root; ``--skip-triton`` leaves out the Triton kernel and
``max-autotune``)::

    python -m benchmarks.gpu_fused_mlp [--skip-triton]
"""

from __future__ import annotations

import argparse
import importlib.util
from typing import Callable

import torch
import torch.nn.functional as F
import triton
import triton.language as tl
from triton.tools.tensor_descriptor import TensorDescriptor

from cprs_core.swiglu import quack_swiglu, swiglu_projection

from .gpu_engine import QWEN25_7B_SHAPE, sustained_seconds

TOKENS = 4 * 8192
HIDDEN = QWEN25_7B_SHAPE["hidden_size"]
INTERMEDIATE = QWEN25_7B_SHAPE["intermediate_size"]
CONFIGS = (  # BLOCK_M, BLOCK_N, BLOCK_K, GROUP_M, num_warps, num_stages
    (128, 128, 64, 8, 8, 3),
    (128, 128, 64, 8, 8, 4),
    (128, 128, 128, 8, 8, 2),
    (256, 64, 64, 8, 8, 3),
    (128, 64, 64, 8, 8, 5),
    (64, 128, 64, 8, 4, 4),
)
QUACK_CONFIGS = (  # tile_m, tile_n (gate and up columns together), pingpong, cluster_m, cluster_n
    (128, 192, True, 1, 2),
    (256, 192, False, 2, 1),
    (128, 256, False, 2, 1),
)


@triton.jit
def _swiglu_gemm_kernel(
    x_desc, gate_desc, up_desc, out_desc, M, N, K,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr, NUM_SMS: tl.constexpr,
):  # fmt: skip
    num_pid_m = tl.cdiv(M, BLOCK_M)
    num_pid_n = tl.cdiv(N, BLOCK_N)
    group_width = GROUP_M * num_pid_n
    for tile in tl.range(tl.program_id(0), num_pid_m * num_pid_n, NUM_SMS, flatten=True):
        first_m = tile // group_width * GROUP_M
        rows_in_group = min(num_pid_m - first_m, GROUP_M)
        row = (first_m + (tile % group_width) % rows_in_group) * BLOCK_M
        col = (tile % group_width) // rows_in_group * BLOCK_N
        gate = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        up = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        for k in range(0, K, BLOCK_K):
            x = x_desc.load([row, k])
            gate = tl.dot(x, gate_desc.load([col, k]).T, gate)
            up = tl.dot(x, up_desc.load([col, k]).T, up)
        gate = gate.to(tl.bfloat16).to(tl.float32)  # round like the engine's bf16 GEMM outputs
        up = up.to(tl.bfloat16).to(tl.float32)
        out_desc.store([row, col], (gate * tl.sigmoid(gate) * up).to(tl.bfloat16))


def fused_swiglu(x: torch.Tensor, gate_weight: torch.Tensor, up_weight: torch.Tensor, config: tuple) -> torch.Tensor:
    """``silu(x @ gate_weight.T) * (x @ up_weight.T)`` in one Triton GEMM (shapes must divide the blocks)."""
    block_m, block_n, block_k, group_m, warps, stages = config
    out = torch.empty(x.shape[0], gate_weight.shape[0], device=x.device, dtype=x.dtype)
    sms = torch.cuda.get_device_properties(x.device).multi_processor_count
    tiles = triton.cdiv(x.shape[0], block_m) * triton.cdiv(out.shape[1], block_n)
    _swiglu_gemm_kernel[(min(sms, tiles),)](
        TensorDescriptor.from_tensor(x, [block_m, block_k]),
        TensorDescriptor.from_tensor(gate_weight, [block_n, block_k]),
        TensorDescriptor.from_tensor(up_weight, [block_n, block_k]),
        TensorDescriptor.from_tensor(out, [block_m, block_n]),
        x.shape[0], out.shape[1], x.shape[1],
        BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_K=block_k, GROUP_M=group_m, NUM_SMS=sms,
        num_warps=warps, num_stages=stages,
    )  # fmt: skip
    return out


def pinned_quack_swiglu(x: torch.Tensor, gate_up: torch.Tensor, config: tuple) -> torch.Tensor:
    """quack's gated GEMM pinned to one tile configuration (``swiglu_projection`` uses quack's default)."""
    from quack.gemm_config import GemmConfig

    tile_m, tile_n, pingpong, cluster_m, cluster_n = config
    pinned = GemmConfig(tile_m=tile_m, tile_n=tile_n, pingpong=pingpong, cluster_m=cluster_m, cluster_n=cluster_n,
                        is_dynamic_persistent=False)  # fmt: skip
    return quack_swiglu(x, gate_up, pinned)


def relative_error(out: torch.Tensor, reference: torch.Tensor) -> float:
    return ((out.float() - reference).norm() / reference.norm()).item()


def burst_seconds(fn: Callable[[], object]) -> float:
    return triton.testing.do_bench(fn, warmup=100, rep=400, return_mode="median") / 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--skip-triton", action="store_true", help="leave out the Triton kernel and max-autotune")
    args = parser.parse_args()
    torch.manual_seed(0)
    x = torch.randn(TOKENS, HIDDEN, device="cuda", dtype=torch.bfloat16)
    gate_up = torch.randn(2 * INTERMEDIATE, HIDDEN, device="cuda", dtype=torch.bfloat16) * 0.02
    gate, up = gate_up[:INTERMEDIATE], gate_up[INTERMEDIATE:]
    down = torch.randn(HIDDEN, INTERMEDIATE, device="cuda", dtype=torch.bfloat16) * 0.02
    silu_product = torch.compile(lambda both: F.silu(both[..., :INTERMEDIATE]) * both[..., INTERMEDIATE:])
    engine_swiglu = lambda: silu_product(F.linear(x, gate_up))  # noqa: E731
    reference = engine_swiglu().float()
    flops = 2 * TOKENS * HIDDEN * 2 * INTERMEDIATE
    print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}, Triton {triton.__version__}; "
          f"gate/up of {TOKENS} tokens: {flops / 1e12:.1f} TFLOP")  # fmt: skip
    gemm_s = burst_seconds(lambda: F.linear(x, gate_up))
    engine_s = burst_seconds(engine_swiglu)
    print(f"| cuBLAS gate/up GEMM | {gemm_s * 1e3:.2f} ms | {flops / gemm_s / 1e12:.0f} TFLOP/s |")
    print(f"| cuBLAS gate/up + compiled SiLU·up (engine) | {engine_s * 1e3:.2f} ms | {flops / engine_s / 1e12:.0f} |")
    engine_mlp = lambda: F.linear(engine_swiglu(), down)  # noqa: E731
    mlps = {"engine (cuBLAS + compiled SiLU·up)": engine_mlp}
    if importlib.util.find_spec("quack") is not None:
        variants = {"quack gated GEMM, default config (fused_swiglu)": lambda: swiglu_projection(x, gate_up)}
        for config in QUACK_CONFIGS:
            variants[f"quack gated GEMM {config}"] = lambda config=config: pinned_quack_swiglu(x, gate_up, config)
        for name, variant in variants.items():
            try:
                error = relative_error(variant(), reference)
            except Exception as failure:  # a tile shape quack rejects for this GEMM: report it and go on
                print(f"| {name} | failed: {type(failure).__name__}: {failure} |")
                continue
            seconds = burst_seconds(variant)
            print(f"| {name} | {seconds * 1e3:.2f} ms | {flops / seconds / 1e12:.0f} | rel. error {error:.1e} |")
        quack_mlp = lambda: F.linear(swiglu_projection(x, gate_up), down)  # noqa: E731
        mlp_error = relative_error(quack_mlp(), engine_mlp().float())
        print(f"whole MLP, quack fused vs the engine's way: rel. error {mlp_error:.1e}")
        mlps["quack fused (fused_swiglu)"] = quack_mlp
    if not args.skip_triton:
        timed = []
        for config in CONFIGS:
            error = relative_error(fused_swiglu(x, gate, up, config), reference)
            seconds = burst_seconds(lambda: fused_swiglu(x, gate, up, config))
            timed.append((seconds, config))
            rate = flops / seconds / 1e12
            print(f"| Triton fused, {config} | {seconds * 1e3:.2f} ms | {rate:.0f} | rel. error {error:.1e} |")
        best = min(timed)[1]
        unfused_gate, unfused_up = gate.contiguous(), up.contiguous()
        autotuned = torch.compile(
            lambda x: F.linear(F.silu(F.linear(x, unfused_gate)) * F.linear(x, unfused_up), down),
            mode="max-autotune-no-cudagraphs",
        )
        mlps[f"Triton fused {best}"] = lambda: F.linear(fused_swiglu(x, gate, up, best), down)
        mlps["torch.compile max-autotune, unfused gate and up"] = lambda: autotuned(x)
    print("\nwhole MLPs back to back for 4 s each (twice, interleaved):")
    for name, mlp in [*mlps.items(), *mlps.items()]:
        print(f"| {name} | {sustained_seconds(mlp, 4.0) * 1e3:.2f} ms per MLP |", flush=True)


if __name__ == "__main__":
    main()
