"""The MLP's gate/up GEMM with the SwiGLU in its epilogue, through quack-kernels (Hopper or newer GPUs).

The critic's MLP computes ``down(silu(x @ gate.T) * (x @ up.T))``. With cuBLAS the gate/up product is written to
memory (``[tokens, 2 * 18944]`` for the 7B critic) and read back by a separate ``silu(gate) * up`` kernel: a
memory-bound pass worth ~4% of a compress on an H100. quack-kernels (CuTe DSL GEMMs by the FlashAttention
authors) applies the SwiGLU to the fp32 accumulators and writes only the product. It is an optional dependency
(``pip install -e '.[gpu]'``); without it, or on CPU, the MLP keeps cuBLAS plus the elementwise product.
"""

from __future__ import annotations

import importlib.util

import torch


def fused_swiglu_available(device: torch.device, dtype: torch.dtype) -> bool:
    """Whether :func:`swiglu_projection` can run here: quack-kernels installed, a CUDA GPU of compute
    capability 9.0 or newer (Hopper, Blackwell) and a 16-bit dtype."""
    return (
        device.type == "cuda"
        and dtype in (torch.bfloat16, torch.float16)
        and torch.cuda.get_device_capability(device)[0] >= 9
        and importlib.util.find_spec("quack") is not None
    )


def quack_swiglu(rows: torch.Tensor, gate_up_weight: torch.Tensor, config: object | None = None) -> torch.Tensor:
    """quack's gated GEMM for ``rows [tokens, hidden]`` and ``gate_up_weight = cat(gate, up)`` (``[2I, hidden]``).

    ``config`` pins a ``quack.gemm_config.GemmConfig`` tile (benchmarks); ``None`` takes quack's default untuned.
    """
    from quack.gemm_interface import gemm_gated

    _, product = gemm_gated(
        rows, gate_up_weight.T, activation="swiglu", store_preact=False, tuned=False, config=config,
        concat_layout=("B",),  # the weight's output rows are [gate; up], not interleaved
    )  # fmt: skip
    return product


@torch.library.custom_op("cprs::swiglu_projection", mutates_args=(), device_types="cuda")
def swiglu_projection(x: torch.Tensor, gate_up_weight: torch.Tensor) -> torch.Tensor:
    """``silu(x @ gate.T) * (x @ up.T)`` in one GEMM, for ``gate_up_weight = cat(gate, up)`` (``[2I, hidden]``).

    A custom op, so ``torch.compile`` keeps it whole (quack compiles and caches its own kernel on first use).
    """
    product = quack_swiglu(x.reshape(-1, x.shape[-1]), gate_up_weight)
    return product.reshape(*x.shape[:-1], product.shape[-1])


@swiglu_projection.register_fake
def _(x: torch.Tensor, gate_up_weight: torch.Tensor) -> torch.Tensor:
    return x.new_empty(*x.shape[:-1], gate_up_weight.shape[0] // 2)
