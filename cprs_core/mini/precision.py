"""The precision ``cprs-mini`` runs in: on CPU by default a float32 critic with an int8 sentence embedder; all of
it in float32, int8 or bfloat16 on request.

int8 means PyTorch dynamic quantization of the encoders' ``nn.Linear`` layers (weights quantized per output
channel at load, activations on the fly); embeddings, LayerNorms, attention and the small heads stay float32.
The critic quantizes each window's activations on their own (:class:`PerWindowLinear`), so a window's scores
never depend on the windows batched beside it, e.g. other requests on a server. A critic in int8 is about 1.5x
faster on 2 cores but not the default: on 400 held-out real questions it kept 1.5 points fewer answers without a
budget, its probabilities moving across the keep threshold (docs/cpu-speed.md). The sentence embedder only ranks,
so the default runs it in int8. An explicit ``dtype`` (or ``$CPRS_MINI_DTYPE``) applies to both. CUDA never
uses int8: bfloat16 by default.
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
    chosen = _chosen(dtype, device)
    if chosen is None and device.type == "cpu":
        return torch.float32
    if chosen == INT8:
        if device.type != "cpu":
            raise DeviceError("int8 runs on CPU only; on CUDA use bfloat16 (the default) or float32")
        if not int8_available():
            raise DeviceError("this PyTorch build has no quantized CPU engine for int8; use dtype='float32'")
        return INT8
    return resolve_dtype(chosen, device)


def similarity_precision(dtype: str | torch.dtype | None, critic: Precision, device: torch.device) -> Precision:
    """The sentence embedder's precision: int8 on CPU when the caller chose none (no ``dtype``, no
    ``$CPRS_MINI_DTYPE``) and int8 is available, else the critic's ``critic`` precision.

    The embedder only ranks sentences (its cosines never meet a threshold): in int8 it moved one of 600 answers on
    the tune split (docs/cpu-speed.md), and in float32 it takes a quarter to a third of the CPU time at 32K.
    """
    if _chosen(dtype, device) is None and device.type == "cpu" and int8_available():
        return INT8
    return critic


def _chosen(dtype: str | torch.dtype | None, device: torch.device) -> str | torch.dtype | None:
    """The precision the caller chose: ``dtype``, else on CPU ``$CPRS_MINI_DTYPE``; ``None``: none chosen."""
    if dtype is not None or device.type != "cpu":
        return dtype
    return os.environ.get(DTYPE_ENV) or None


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
