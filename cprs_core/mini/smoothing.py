"""Activation smoothing before int8 (SmoothQuant, Xiao et al. 2023) for cprs-mini's BERT encoders.

Dynamic int8 quantization takes one range for a linear layer's whole input (one window's activations). MiniLM's
activations have a few outlier channels, up to ~15x the typical channel's magnitude, so every other channel gets
only a few of the 256 int8 levels. Smoothing divides each input channel ``j`` by ``s_j`` and multiplies the
weight's column ``j`` by it: exact in float arithmetic, but the activations reaching int8 are flat and the
weights, quantized per output channel, absorb the outliers. ``s_j = a_j ** alpha / w_j ** (1 - alpha)``, with
``a_j`` the channel's largest magnitude measured on training text (the checkpoint's ``int8_ranges.safetensors``)
and ``w_j`` the largest weight magnitude in column ``j``.

Four inputs per layer are smoothed: the attention's (one scale shared by query, key and value), the attention
output's (folded into the value projection, so it costs nothing at run time), the feed-forward's and its output
layer's. The attention and feed-forward inputs are also the residual stream, so there the division happens in a
forward pre-hook on the module that reads them (three multiplications per layer: 2-9% of the int8 path's time in
our measurements, docs/cpu-speed.md).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn
from transformers import BertModel

ATTENTION_INPUT, ATTENTION_OUTPUT_INPUT, FEED_FORWARD_INPUT, FEED_FORWARD_OUTPUT_INPUT = (
    "attention.self", "attention.output", "intermediate", "output"
)
SITES = (ATTENTION_INPUT, ATTENTION_OUTPUT_INPUT, FEED_FORWARD_INPUT, FEED_FORWARD_OUTPUT_INPUT)
"""Where a layer's linear inputs are smoothed; a range's key is ``layer.{i}.{site}``."""
SITE_LINEARS = {
    ATTENTION_INPUT: ("attention.self.query", "attention.self.key", "attention.self.value"),
    ATTENTION_OUTPUT_INPUT: ("attention.output.dense",),
    FEED_FORWARD_INPUT: ("intermediate.dense",),
    FEED_FORWARD_OUTPUT_INPUT: ("output.dense",),
}
"""The linear layers (paths inside a ``BertLayer``) that read each site's input."""
_FLOOR = 1e-5


def range_key(layer: int, site: str) -> str:
    """The key of one layer's site in a ranges mapping."""
    return f"layer.{layer}.{site}"


def smooth_for_int8(encoder: BertModel, input_ranges: Mapping[str, torch.Tensor], alpha: float) -> None:
    """Migrate activation outliers into the weights of every layer of ``encoder`` (float32, in place), before
    its linear layers are quantized; the float32 output is unchanged up to rounding.

    Args:
        encoder: the BERT encoder, float32.
        input_ranges: per-channel largest input magnitude of every site of every layer (see :data:`SITES`).
        alpha: how much of the outliers moves into the weights (0: none, 1: all).

    Raises:
        KeyError: a site's range is missing.
    """
    for index, layer in enumerate(encoder.encoder.layer):
        scales = {
            site: _scale(input_ranges[range_key(index, site)], [layer.get_submodule(p) for p in SITE_LINEARS[site]], alpha)
            for site in SITES
        }
        for site, scale in scales.items():
            for path in SITE_LINEARS[site]:
                layer.get_submodule(path).weight.data.mul_(scale)
        value = layer.attention.self.value  # its outputs are the attention output's inputs (attention mixes rows)
        value.weight.data.div_(scales[ATTENTION_OUTPUT_INPUT][:, None])
        value.bias.data.div_(scales[ATTENTION_OUTPUT_INPUT])
        _divide_first_input(layer.attention.self, scales[ATTENTION_INPUT])
        _divide_first_input(layer.intermediate, scales[FEED_FORWARD_INPUT])
        _divide_first_input(layer.output, scales[FEED_FORWARD_OUTPUT_INPUT], in_place=True)


def _scale(input_range: torch.Tensor, linears: list[nn.Linear], alpha: float) -> torch.Tensor:
    weight_range = torch.stack([linear.weight.detach().abs().amax(dim=0) for linear in linears]).amax(dim=0)
    scale = input_range.float().clamp(min=_FLOOR).pow(alpha) / weight_range.clamp(min=_FLOOR).pow(1 - alpha)
    return scale.clamp(min=_FLOOR)


def _divide_first_input(module: nn.Module, scale: torch.Tensor, in_place: bool = False) -> None:
    """Make ``module`` see its first input (``hidden_states``) divided by ``scale`` channel-wise; ``in_place``
    overwrites that input (the feed-forward's activations, which nothing reads after its output layer: it saves
    a copy of the layer's largest tensor)."""
    module.register_buffer("int8_input_scale", scale.reciprocal())

    def divide(hidden: torch.Tensor) -> torch.Tensor:
        return hidden.mul_(module.int8_input_scale) if in_place else hidden * module.int8_input_scale

    def hook(_: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        if args:
            return (divide(args[0]), *args[1:]), kwargs
        return args, {**kwargs, "hidden_states": divide(kwargs["hidden_states"])}

    module.register_forward_pre_hook(hook, with_kwargs=True)


class InputRanges:
    """Records the per-channel largest input magnitude of every site while ``encoder`` runs (for calibration).

    Use as a context manager around float32 forward passes; :attr:`ranges` then holds one tensor per site.
    """

    def __init__(self, encoder: BertModel) -> None:
        self.encoder = encoder
        self.ranges: dict[str, torch.Tensor] = {}
        self._handles: list[torch.utils.hooks.RemovableHandle] = []

    def __enter__(self) -> "InputRanges":
        for index, layer in enumerate(self.encoder.encoder.layer):
            for site in SITES:
                linear = layer.get_submodule(SITE_LINEARS[site][0])
                self._handles.append(linear.register_forward_hook(self._recorder(range_key(index, site))))
        return self

    def __exit__(self, *exc: object) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def _recorder(self, key: str):
        def record(module: nn.Module, args: tuple, output: torch.Tensor) -> None:
            inputs = args[0].detach().float()
            largest = inputs.abs().reshape(-1, inputs.shape[-1]).amax(dim=0).cpu()
            self.ranges[key] = torch.maximum(self.ranges[key], largest) if key in self.ranges else largest

        return record
