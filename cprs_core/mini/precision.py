"""The precision ``cprs-mini`` runs in on CPU by default: bfloat16 where the CPU multiplies bfloat16 matrices in
hardware (AMX tiles), else int8 (float32 where PyTorch has no quantized engine); float32 or any of them on
request; bfloat16 on CUDA.

int8 means PyTorch dynamic quantization of the encoders' ``nn.Linear`` layers (weights quantized per output
channel at load, activations on the fly), after their activations are smoothed when the checkpoint has ranges
for it (:mod:`cprs_core.mini.smoothing`); embeddings, LayerNorms, attention and the small heads stay float32.
The critic quantizes each window's activations on their own (:class:`PerWindowLinear`), so a window's scores
never depend on the windows batched beside it, e.g. other requests on a server; the sentence embedder, whose
batches hold one request's sentences, quantizes whole batches. On 2 cores at 32K tokens int8 is 1.2-1.8x faster
than float32 where the CPU has no AMX; on a CPU with AMX int8 gains only 1.1-1.2x, and bfloat16 (which shares no
activation range across a batch either) is 2.8-3.1x faster and kept answers as float32 does on held-out real
questions (docs/cpu-speed.md). ``dtype="float32"`` (or ``$CPRS_MINI_DTYPE=float32``) is the opt-out. CUDA never
uses int8.
"""

from __future__ import annotations

import os
import warnings

import torch
from torch import nn

from ..devices import DTYPE_NAMES, resolve_dtype
from ..errors import DeviceError

INT8 = "int8"
"""The dtype name that selects int8 linear layers (CPU only)."""
DTYPE_ENV = "CPRS_MINI_DTYPE"
"""Environment variable: the dtype cprs-mini uses on CPU when the caller gives none (``float32`` opts out of int8)."""

Precision = torch.dtype | str
"""A float ``torch.dtype`` or :data:`INT8`."""


def resolve_precision(dtype: str | torch.dtype | None, device: torch.device) -> Precision:
    """The precision to load in: ``dtype``; else on CPU ``$CPRS_MINI_DTYPE``, or :func:`default_cpu_precision`;
    else bfloat16 on CUDA.

    Raises:
        DeviceError: an unknown dtype, or int8 on CUDA, or int8 asked for without a quantized engine.
    """
    source = "dtype"
    if dtype is torch.int8:
        dtype = INT8
    if dtype is None and device.type == "cpu":
        source, dtype = f"${DTYPE_ENV}", os.environ.get(DTYPE_ENV) or default_cpu_precision()
    if isinstance(dtype, str) and dtype != INT8 and dtype not in DTYPE_NAMES:
        raise DeviceError(f"unknown dtype {dtype!r} ({source}): cprs-mini takes one of {[*DTYPE_NAMES, INT8]} "
                          f"({INT8!r} on CPU only)")
    if dtype == INT8:
        if device.type != "cpu":
            raise DeviceError("int8 runs on CPU only; on CUDA use bfloat16 (the default) or float32")
        if not int8_available():
            raise DeviceError("this PyTorch build has no quantized CPU engine for int8; use dtype='float32'")
        return INT8
    return resolve_dtype(dtype, device)


def default_cpu_precision() -> str:
    """``"bfloat16"`` on a CPU with AMX tiles, else ``"int8"`` where PyTorch has a quantized engine, else
    ``"float32"``: the fastest of them on that CPU among those measured to keep answers as float32 does."""
    if amx_available():
        return "bfloat16"
    return INT8 if int8_available() else "float32"


def amx_available() -> bool:
    """Whether this CPU has AMX tiles, which PyTorch's bfloat16 matrix products use (Intel Xeon since Sapphire
    Rapids); ``False`` where this PyTorch cannot tell."""
    probe = getattr(torch.cpu, "_is_amx_tile_supported", None)
    return bool(probe is not None and probe())


def int8_available() -> bool:
    """Whether this PyTorch build has a quantized CPU engine (fbgemm/x86 on x86-64, qnnpack on Arm)."""
    return any(engine != "none" for engine in torch.backends.quantized.supported_engines)


class PerWindowLinear(nn.Module):
    """A dynamic int8 linear layer that quantizes each batch row (one window) with its own activation range.

    PyTorch's dynamic quantization takes one range for its whole input, which would make a window's output depend
    on the windows batched with it. Calling the layer once per row keeps every window's result its own, at a
    small cost (docs/cpu-speed.md).
    """

    def __init__(self, quantized: nn.Module) -> None:
        super().__init__()
        self.quantized = quantized

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() < 3 or x.shape[0] == 1:
            return self.quantized(x)
        return torch.cat([self.quantized(row) for row in x.split(1)])


def quantize_linears(module: nn.Module, per_window: bool = True) -> nn.Module:
    """Swap every ``nn.Linear`` inside ``module`` for a dynamic int8 one, in place (give it the encoder, so the
    tiny heads outside it stay float32).

    Weights are quantized per output channel. Activations are quantized per batch row with ``per_window`` (each
    window's scores are independent of its batch), else with one range for the whole input tensor (faster on
    many short rows: the sentence embedder, whose batches hold one request's sentences only).
    """
    qconfig = torch.ao.quantization.per_channel_dynamic_qconfig
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.ao.quantization announces its move to torchao; the API still works
        torch.ao.quantization.quantize_dynamic(module, {nn.Linear: qconfig}, inplace=True)
    if per_window:
        _wrap_quantized(module)
    return module


def _wrap_quantized(module: nn.Module) -> None:
    for name, child in module.named_children():
        if isinstance(child, torch.ao.nn.quantized.dynamic.Linear):
            setattr(module, name, PerWindowLinear(child))
        else:
            _wrap_quantized(child)
