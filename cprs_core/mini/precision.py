"""The precision ``cprs-mini`` runs in: float32 on CPU by default, int8 linear layers on request, or bfloat16.

With ``dtype="int8"`` (or ``$CPRS_MINI_DTYPE=int8``) the encoders' ``nn.Linear`` layers run as PyTorch dynamic
int8 quantization (weights quantized per output channel at load, activations per batch on the fly); embeddings,
LayerNorms, attention and the small heads stay float32. It is about 1.5x faster on 2 cores (docs/cpu-speed.md),
but not the default: its activation ranges are per forward batch, so a window's scores can shift slightly with
the other windows in its batch, i.e. with whatever else a server batches beside a request. CUDA never uses int8.
"""

from __future__ import annotations

import os
import warnings

import torch
from torch import nn

from ..devices import resolve_dtype
from ..errors import DeviceError

INT8 = "int8"
"""The dtype name that selects int8 linear layers (CPU only)."""
DTYPE_ENV = "CPRS_MINI_DTYPE"
"""Environment variable: the dtype cprs-mini uses on CPU when the caller gives none (``int8`` opts in)."""

Precision = torch.dtype | str
"""A float ``torch.dtype`` or :data:`INT8`."""


def resolve_precision(dtype: str | torch.dtype | None, device: torch.device) -> Precision:
    """The precision to load in: ``dtype``; else on CPU ``$CPRS_MINI_DTYPE`` or float32; else bfloat16 on CUDA.

    Raises:
        DeviceError: an unknown dtype, or int8 on CUDA.
    """
    chosen = dtype if dtype is not None or device.type != "cpu" else (os.environ.get(DTYPE_ENV) or None)
    if chosen is None and device.type == "cpu":
        return torch.float32
    if chosen == INT8:
        if device.type != "cpu":
            raise DeviceError("int8 runs on CPU only; on CUDA use bfloat16 (the default) or float32")
        if not int8_available():
            raise DeviceError("this PyTorch build has no quantized CPU engine for int8; use dtype='float32'")
        return INT8
    return resolve_dtype(chosen, device)


def int8_available() -> bool:
    """Whether this PyTorch build has a quantized CPU engine (fbgemm/x86 on x86-64, qnnpack on Arm)."""
    return any(engine != "none" for engine in torch.backends.quantized.supported_engines)


def quantize_linears(module: nn.Module) -> nn.Module:
    """Swap every ``nn.Linear`` inside ``module`` for a dynamic int8 one, in place (give it the encoder, so the
    tiny heads outside it stay float32).

    Weights are quantized per output channel. Activations are quantized per forward batch (one range for the
    whole input tensor), so a window's scores can shift slightly with the windows batched beside it; they are
    the same for the same batch.
    """
    qconfig = torch.ao.quantization.per_channel_dynamic_qconfig
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.ao.quantization announces its move to torchao; the API still works
        torch.ao.quantization.quantize_dynamic(module, {nn.Linear: qconfig}, inplace=True)
    return module
