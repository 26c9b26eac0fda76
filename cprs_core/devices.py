"""Checking a requested device and dtype before any weights are loaded."""

from __future__ import annotations

import torch

from .errors import DeviceError

_DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
    "half": torch.float16,
}
DTYPE_NAMES = sorted(set(_DTYPES))
"""The dtype names every critic accepts."""


def resolve_device(device: str | torch.device | None) -> torch.device:
    """A usable ``torch.device`` (``None`` = CUDA when present, else CPU), or :class:`DeviceError`."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError) as error:
        raise DeviceError(f"unknown device {device!r}: use 'cpu', 'cuda' or 'cuda:N'") from error
    if resolved.type == "cuda":
        if not torch.cuda.is_available():
            raise DeviceError(f"device {device!r} was asked for, but this PyTorch sees no CUDA GPU; use device='cpu'")
        if resolved.index is not None and resolved.index >= torch.cuda.device_count():
            raise DeviceError(f"device {device!r} does not exist: {torch.cuda.device_count()} CUDA device(s) visible")
    elif resolved.type != "cpu":
        raise DeviceError(f"device type {resolved.type!r} is not supported; use 'cpu' or 'cuda'")
    return resolved


def resolve_dtype(dtype: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    """The compute dtype (``None`` = bfloat16 on CUDA, float32 on CPU), or :class:`DeviceError`."""
    if dtype is None:
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if isinstance(dtype, str):
        if dtype not in _DTYPES:
            raise DeviceError(f"unknown dtype {dtype!r}: use one of {DTYPE_NAMES}")
        dtype = _DTYPES[dtype]
    if dtype not in _DTYPES.values():
        raise DeviceError(f"dtype {dtype} is not supported: use float32, bfloat16 or float16")
    if device.type == "cpu" and dtype == torch.float16:
        raise DeviceError("float16 is not supported on CPU; use float32 (or bfloat16)")
    return dtype
