"""The precision ``cprs-mini`` runs in: int8 linear layers on CPU by default, or a plain float dtype.

On CPU the encoder is dense linear algebra, so its ``nn.Linear`` layers run as PyTorch dynamic int8 quantization
(int8 weights quantized per output channel at load, activations quantized per batch on the fly); embeddings,
LayerNorms, attention and the small heads outside the encoder stay float32. ``dtype="float32"`` (or
``$CPRS_MINI_DTYPE=float32``) opts out. CUDA never uses int8: it runs bfloat16 by default as before.
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
"""Environment variable: the dtype cprs-mini uses on CPU when the caller gives none (``float32`` opts out)."""

Precision = torch.dtype | str
"""A float ``torch.dtype`` or :data:`INT8`."""


def resolve_precision(dtype: str | torch.dtype | None, device: torch.device) -> Precision:
    """The precision to load in: ``dtype``; else on CPU ``$CPRS_MINI_DTYPE`` or int8; else bfloat16 on CUDA.

    Raises:
        DeviceError: an unknown dtype, or int8 on CUDA.
    """
    chosen = dtype if dtype is not None or device.type != "cpu" else (os.environ.get(DTYPE_ENV) or None)
    if chosen is None and device.type == "cpu":
        return INT8 if int8_available() else torch.float32
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


def quantize_encoder_linears(model: nn.Module) -> nn.Module:
    """Swap every ``nn.Linear`` inside ``model.encoder`` for a dynamic int8 one, in place; other layers keep float.

    Weights are quantized per output channel. Activations are quantized per forward batch (one range for the
    whole input tensor), so a window's scores can shift slightly with the windows batched beside it; they are
    the same for the same batch. The heads (outside the encoder) are tiny, so they stay float32.
    """
    encoder: nn.Module = model.encoder  # type: ignore[assignment]
    qconfig = torch.ao.quantization.per_channel_dynamic_qconfig
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.ao.quantization announces its move to torchao; the API still works
        torch.ao.quantization.quantize_dynamic(encoder, {nn.Linear: qconfig}, inplace=True)
    return model
