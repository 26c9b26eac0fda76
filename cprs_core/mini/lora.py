"""Low-rank adaptation of the backbone's linear layers, and merging an adapter back into plain weights.

An adapter is a flat ``{name: tensor}`` dict (what ships as safetensors):

* ``<linear>.lora_A`` ``[rank, in]`` and ``<linear>.lora_B`` ``[out, rank]`` (scale folded in): the weight update
  ``B @ A`` of a low-rank-adapted linear layer;
* any other name: a full replacement of that parameter (biases, LayerNorms, token type embeddings, the head).
"""

from __future__ import annotations

import math

import torch
from torch import nn

LORA_TARGETS: tuple[str, ...] = (
    "attention.self.query",
    "attention.self.key",
    "attention.self.value",
    "attention.output.dense",
    "intermediate.dense",
    "output.dense",
)
"""Suffixes of the encoder's linear layers that get a low-rank update (all of them, in every layer)."""
_FULLY_TRAINED = ("LayerNorm", "token_type_embeddings", "head.", "relevance.")


class LoRALinear(nn.Module):
    """``base(x) + scale * (x @ A.T) @ B.T`` with ``base`` frozen; ``B`` starts at zero (no change at step 0)."""

    def __init__(self, base: nn.Linear, rank: int, alpha: float, dropout: float = 0.0) -> None:
        super().__init__()
        self.base = base
        self.scale = alpha / rank
        self.lora_A = nn.Parameter(torch.empty(rank, base.in_features))
        self.lora_B = nn.Parameter(torch.zeros(base.out_features, rank))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) + (self.dropout(x) @ self.lora_A.T @ self.lora_B.T) * self.scale


def _is_target(name: str) -> bool:
    return name.startswith("encoder.layer.") and name.endswith(LORA_TARGETS)


def add_lora(model: nn.Module, rank: int, alpha: float, dropout: float = 0.0) -> None:
    """Wrap every target linear of ``model.encoder`` in :class:`LoRALinear` and set which parameters train.

    Trained: the low-rank factors, the targets' biases, every LayerNorm, the token type embeddings and the heads.
    """
    encoder: nn.Module = model.encoder  # type: ignore[assignment]
    for name, module in list(encoder.named_modules()):
        if _is_target(name) and isinstance(module, nn.Linear):
            parent_name, _, child = name.rpartition(".")
            setattr(encoder.get_submodule(parent_name), child, LoRALinear(module, rank, alpha, dropout))
    for name, parameter in model.named_parameters():
        parameter.requires_grad = _is_trained(name)


def _is_trained(name: str) -> bool:
    if ".lora_" in name:
        return True
    if any(part in name for part in _FULLY_TRAINED):
        return True
    return name.endswith(".base.bias")


def adapter_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The trained tensors of a model prepared by :func:`add_lora`, named for the plain (unwrapped) model."""
    state: dict[str, torch.Tensor] = {}
    for name, module in model.named_modules():
        if isinstance(module, LoRALinear):
            state[f"{name}.lora_A"] = module.lora_A.detach().float().cpu().clone()
            state[f"{name}.lora_B"] = (module.lora_B.detach().float() * module.scale).cpu()
    for name, parameter in model.named_parameters():
        if parameter.requires_grad and ".lora_" not in name:
            state[name.replace(".base.", ".")] = parameter.detach().float().cpu().clone()
    return state


@torch.no_grad()
def merge_adapter(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Apply an adapter to a plain model in place: add each ``B @ A`` to its weight, copy every other tensor."""
    parameters = dict(model.named_parameters())
    for name, tensor in state.items():
        if name.endswith(".lora_B"):
            continue
        if name.endswith(".lora_A"):
            linear = name[: -len(".lora_A")]
            weight = parameters[f"{linear}.weight"]
            update = state[f"{linear}.lora_B"].float() @ tensor.float()
            weight.copy_((weight.float() + update).to(weight.dtype))
        elif name in parameters:
            parameters[name].copy_(tensor.to(parameters[name].dtype))
        else:
            raise KeyError(f"the adapter names {name!r}, which the model does not have")
