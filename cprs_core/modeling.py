"""The QwenLong-CPRS token critic: a Qwen2 decoder with causal lower layers and bidirectional upper layers.

Parameter names are exactly those of the released checkpoint (``model.embed_tokens``, ``model.layers.N.*``,
``model.norm``, ``lm_head``, ``cls_head``), so ``CPRSForTokenCritic.from_pretrained`` loads
``Tongyi-Zhiwen/QwenLong-CPRS-7B`` as it is. Two heads read the final hidden states:

* ``cls_head`` (hidden -> 4): the BIOE boundary labels upstream's inference decodes into spans;
* ``lm_head`` (the pretrained LM head, the "LM-as-critic"): only the rows of the tag label words (e.g.
  ``needle``, ``fact``, ``outside``) are multiplied, never the full vocabulary.

Window-parallel scoring shares the prompt prefix: in the causal layers the prefix never sees the window, so
its keys and values are computed once and reused by every window; the bidirectional layers then run on
``prefix + window`` as upstream does.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel

from .configuration import CPRSConfig
from .swiglu import fused_swiglu_available, swiglu_projection


class CPRSRMSNorm(nn.Module):
    """Qwen2's RMSNorm: normalise in float32, scale in the input dtype."""

    def __init__(self, hidden_size: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(hidden_size))
        self.variance_epsilon = eps

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        normalised = F.rms_norm(hidden_states.float(), self.weight.shape, eps=self.variance_epsilon)
        return self.weight * normalised.to(hidden_states.dtype)


class CPRSRotaryEmbedding(nn.Module):
    """Default RoPE (no scaling), as Qwen2.5 uses it.

    The inverse frequencies are computed on each call (a few hundred floats) rather than kept in a buffer, so
    they are right however the weights were materialised (``from_pretrained`` builds modules on the meta device).
    """

    def __init__(self, config: CPRSConfig) -> None:
        super().__init__()
        self.dim = config.attention_head_dim
        self.base = config.rope_base

    @torch.no_grad()
    def forward(self, positions: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """cos and sin of shape ``[len(positions), head_dim]`` for 1-D ``positions``."""
        exponents = torch.arange(0, self.dim, 2, dtype=torch.int64, device=positions.device).float() / self.dim
        inv_freq = 1.0 / (self.base**exponents)
        freqs = torch.outer(positions.float(), inv_freq)
        emb = torch.cat((freqs, freqs), dim=-1)
        return emb.cos().to(dtype), emb.sin().to(dtype)


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def _apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    return x * cos + _rotate_half(x) * sin


@torch.no_grad()
def _fuse_linears(*linears: nn.Linear) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Concatenate the weights (and biases) of linears that read the same input; each keeps a view of its rows.

    The parameters stay (same names, same values) so ``state_dict``/``save_pretrained`` are unchanged, but they
    share the fused storage, so fusing costs no extra memory.
    """
    weight = torch.cat([linear.weight for linear in linears])
    has_bias = linears[0].bias is not None
    bias = torch.cat([linear.bias for linear in linears]) if has_bias else None
    row = 0
    for linear in linears:
        rows = linear.out_features
        linear.weight.data = weight[row : row + rows]
        if bias is not None:
            linear.bias.data = bias[row : row + rows]
        row += rows
    return weight, bias


@dataclass
class KeyValue:
    """Keys and values of one layer, ``[batch, kv_heads, seq, head_dim]`` each, rotary already applied."""

    key: torch.Tensor
    value: torch.Tensor


class CPRSAttention(nn.Module):
    """Grouped-query self-attention with Qwen2's biased q/k/v projections, via ``scaled_dot_product_attention``."""

    def __init__(self, config: CPRSConfig) -> None:
        super().__init__()
        self.num_heads = config.num_attention_heads
        self.num_kv_heads = config.num_key_value_heads
        self.head_dim = config.attention_head_dim
        self.q_proj = nn.Linear(config.hidden_size, self.num_heads * self.head_dim, bias=True)
        self.k_proj = nn.Linear(config.hidden_size, self.num_kv_heads * self.head_dim, bias=True)
        self.v_proj = nn.Linear(config.hidden_size, self.num_kv_heads * self.head_dim, bias=True)
        self.o_proj = nn.Linear(self.num_heads * self.head_dim, config.hidden_size, bias=False)
        self.qkv_weight: torch.Tensor | None
        self.qkv_bias: torch.Tensor | None
        self.register_buffer("qkv_weight", None, persistent=False)  # set by fuse_projections
        self.register_buffer("qkv_bias", None, persistent=False)

    def fuse_projections(self) -> None:
        """Compute q, k and v with one GEMM; the three projections' weights become views of the fused tensor."""
        self.qkv_weight, self.qkv_bias = _fuse_linears(self.q_proj, self.k_proj, self.v_proj)

    def _project(self, hidden_states: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        if self.qkv_weight is None:
            return self.q_proj(hidden_states), self.k_proj(hidden_states), self.v_proj(hidden_states)
        fused = F.linear(hidden_states, self.qkv_weight, self.qkv_bias)
        kv_width = self.num_kv_heads * self.head_dim
        return fused.split([self.num_heads * self.head_dim, kv_width, kv_width], dim=-1)

    def forward(
        self,
        hidden_states: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        causal: bool,
        past: KeyValue | None = None,
        key_padding_mask: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, KeyValue]:
        """Attend ``hidden_states`` (after ``past`` positions, if given) and return output and this call's K/V.

        ``key_padding_mask`` (``bool [batch, kv_len]``, True = real token) is only for padded batches.
        """
        batch, q_len, _ = hidden_states.shape
        query, key, value = self._project(hidden_states)
        query = query.reshape(batch, q_len, self.num_heads, self.head_dim).transpose(1, 2)
        key = key.reshape(batch, q_len, self.num_kv_heads, self.head_dim).transpose(1, 2)
        value = value.reshape(batch, q_len, self.num_kv_heads, self.head_dim).transpose(1, 2)
        query, key = _apply_rope(query, cos, sin), _apply_rope(key, cos, sin)
        own = KeyValue(key, value)
        if past is not None:
            key = torch.cat((past.key.expand(batch, -1, -1, -1), key), dim=2)
            value = torch.cat((past.value.expand(batch, -1, -1, -1), value), dim=2)
        kv_len = key.shape[2]
        attn_mask: torch.Tensor | None = None
        is_causal = False
        if key_padding_mask is not None:
            attn_mask = key_padding_mask[:, None, None, :kv_len]
            if causal:
                attn_mask = attn_mask & torch.ones(q_len, kv_len, dtype=torch.bool, device=key.device).tril(
                    kv_len - q_len
                )
        elif causal:
            is_causal = True
            if kv_len > q_len:
                # Queries after cached positions: pad the query rows of the cached positions so the square
                # (upper-left) causal mask of the fused SDPA kernels (flash, cuDNN) applies, then drop those
                # rows. This is the lower-right causal mask at the speed of the plain causal kernel. The padding
                # is laid out token-major, as the projections are, so the output needs no copy for o_proj.
                padding = query.new_zeros(batch, kv_len - q_len, self.num_heads, self.head_dim)
                query = torch.cat((padding, query.transpose(1, 2)), dim=1).transpose(1, 2)
        output = F.scaled_dot_product_attention(
            query, key, value, attn_mask=attn_mask, is_causal=is_causal, enable_gqa=self.num_kv_heads != self.num_heads
        )
        rows = output.shape[2]
        output = self.o_proj(output.transpose(1, 2).reshape(batch, rows, self.num_heads * self.head_dim))
        # Padded query rows are dropped after the projection: slicing before it would copy the attention output.
        return output[:, rows - q_len :], own


class CPRSMLP(nn.Module):
    def __init__(self, config: CPRSConfig) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.up_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.down_proj = nn.Linear(config.intermediate_size, config.hidden_size, bias=False)
        self.gate_up_weight: torch.Tensor | None
        self.register_buffer("gate_up_weight", None, persistent=False)  # set by fuse_projections
        self.fused_swiglu = False

    def fuse_projections(self, fused_swiglu: bool = False) -> None:
        """Compute gate and up with one GEMM; their weights become views of the fused tensor.

        ``fused_swiglu`` applies the SwiGLU in that GEMM's epilogue (:func:`~cprs_core.swiglu.swiglu_projection`).
        """
        self.gate_up_weight, _ = _fuse_linears(self.gate_proj, self.up_proj)
        self.fused_swiglu = fused_swiglu

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.gate_up_weight is None:
            return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))
        if self.fused_swiglu:
            return self.down_proj(swiglu_projection(x, self.gate_up_weight))
        gate, up = F.linear(x, self.gate_up_weight).chunk(2, dim=-1)
        return self.down_proj(F.silu(gate) * up)


class CPRSDecoderLayer(nn.Module):
    """One pre-norm Qwen2 block; ``causal`` fixes whether its attention looks only backwards."""

    def __init__(self, config: CPRSConfig, causal: bool) -> None:
        super().__init__()
        self.causal = causal
        self.self_attn = CPRSAttention(config)
        self.mlp = CPRSMLP(config)
        self.input_layernorm = CPRSRMSNorm(config.hidden_size, config.rms_norm_eps)
        self.post_attention_layernorm = CPRSRMSNorm(config.hidden_size, config.rms_norm_eps)

    def forward(
        self,
        hidden_states: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        past: KeyValue | None = None,
        key_padding_mask: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, KeyValue]:
        attended, kv = self.self_attn(
            self.input_layernorm(hidden_states), cos, sin, self.causal, past, key_padding_mask
        )
        hidden_states = hidden_states + attended
        hidden_states = hidden_states + self.mlp(self.post_attention_layernorm(hidden_states))
        return hidden_states, kv


class CPRSModel(nn.Module):
    """Embeddings, the hybrid decoder stack and the final norm (the ``model.*`` weights)."""

    def __init__(self, config: CPRSConfig) -> None:
        super().__init__()
        first_bi = config.first_bidirectional_layer
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size, config.pad_token_id)
        self.layers = nn.ModuleList(
            CPRSDecoderLayer(config, causal=index < first_bi) for index in range(config.num_hidden_layers)
        )
        self.norm = CPRSRMSNorm(config.hidden_size, config.rms_norm_eps)
        self.rotary_emb = CPRSRotaryEmbedding(config)
        self.first_bidirectional_layer = first_bi


def _run_layer(
    layer: CPRSDecoderLayer, hidden_states: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, past: KeyValue | None
) -> tuple[torch.Tensor, KeyValue]:
    return layer(hidden_states, cos, sin, past=past)


@dataclass
class PrefixState:
    """What the causal layers computed for the shared prompt prefix, reused by every window."""

    past: list[KeyValue]
    hidden_at_first_bidirectional: torch.Tensor
    length: int


@dataclass
class CriticLogits:
    """Head outputs for context positions: ``bioe [batch, len, 4]`` and ``tags [batch, len, n_labels]``."""

    bioe: torch.Tensor
    tags: torch.Tensor | None


class CPRSForTokenCritic(PreTrainedModel):
    """The QwenLong-CPRS critic (checkpoint-compatible with upstream's ``Qwen2ForCausalLMandBIO``)."""

    config_class = CPRSConfig
    base_model_prefix = "model"
    _no_split_modules = ["CPRSDecoderLayer"]
    _supports_sdpa = True
    _tied_weights_keys = {"lm_head.weight": "model.embed_tokens.weight"}

    def __init__(self, config: CPRSConfig) -> None:
        super().__init__(config)
        self.model = CPRSModel(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.cls_head = nn.Linear(config.hidden_size, config.num_critic_labels)
        self._layer_runner = _run_layer
        self.post_init()

    def compile_layers(self, mode: str | None = None, fused_swiglu: bool | None = None) -> None:
        """Fuse the projections and run decoder layers through ``torch.compile`` (GPU inference speed).

        Compilation fuses norms, RoPE and activations; q/k/v and gate/up become single GEMMs
        (:meth:`fuse_projections`; measured slower without compilation, so only done here). All layers share
        one compiled function (the layer is an argument): one graph per layer kind, with sequence lengths
        made dynamic after the first change (``torch.compile``'s default), so new context lengths do not
        recompile. ``mode`` is passed to ``torch.compile`` (e.g. ``"max-autotune-no-cudagraphs"``);
        ``fused_swiglu`` as in :meth:`fuse_projections`.
        """
        self.fuse_projections(fused_swiglu)
        torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 64)
        self._layer_runner = torch.compile(_run_layer, mode=mode)

    def fuse_projections(self, fused_swiglu: bool | None = None) -> None:
        """Fuse q/k/v and gate/up into single GEMMs in every layer (inference speed; call after moving the model).

        Parameter names and values are unchanged, so the fused model still saves in the released format.
        ``fused_swiglu`` computes ``silu(gate) * up`` inside the gate/up GEMM (quack-kernels, Hopper or newer):
        ``None`` does so where it can run (:func:`~cprs_core.swiglu.fused_swiglu_available`), ``True`` requires it.
        """
        available = fused_swiglu_available(self.device, self.dtype)
        if fused_swiglu and not available:
            raise ValueError(
                "fused_swiglu needs quack-kernels (pip install -e '.[gpu]'), a CUDA GPU of compute capability 9.0 "
                f"or newer and a 16-bit dtype; this model is {self.dtype} on {self.device}"
            )
        for layer in self.model.layers:
            layer.self_attn.fuse_projections()
            layer.mlp.fuse_projections(available if fused_swiglu is None else fused_swiglu)

    def get_input_embeddings(self) -> nn.Embedding:
        return self.model.embed_tokens

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.model.embed_tokens = value

    def get_output_embeddings(self) -> nn.Linear:
        return self.lm_head

    def set_output_embeddings(self, value: nn.Linear) -> None:
        self.lm_head = value

    def _heads(self, hidden_states: torch.Tensor, label_token_ids: torch.Tensor | None) -> CriticLogits:
        hidden_states = self.model.norm(hidden_states)
        bioe = self.cls_head(hidden_states).float()
        tags = None
        if label_token_ids is not None:
            tags = F.linear(hidden_states, self.lm_head.weight[label_token_ids]).float()
        return CriticLogits(bioe, tags)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        label_token_ids: torch.Tensor | None = None,
    ) -> CriticLogits:
        """Full-sequence forward, as upstream runs it: ``input_ids [batch, seq]`` with an optional 0/1 padding mask.

        Returns logits for every position; ``label_token_ids`` selects the LM-head rows to score.
        """
        seq_len = input_ids.shape[1]
        positions = torch.arange(seq_len, device=input_ids.device)
        hidden_states = self.model.embed_tokens(input_ids)
        cos, sin = self.model.rotary_emb(positions, hidden_states.dtype)
        key_padding_mask = None if attention_mask is None or bool(attention_mask.all()) else attention_mask.bool()
        for layer in self.model.layers:
            hidden_states, _ = layer(hidden_states, cos, sin, key_padding_mask=key_padding_mask)
        return self._heads(hidden_states, label_token_ids)

    @torch.no_grad()
    def prefill_prefix(self, prefix_ids: torch.Tensor) -> PrefixState:
        """Run the shared prompt prefix (``[1, prefix_len]``) through the causal layers once."""
        prefix_len = prefix_ids.shape[1]
        hidden_states = self.model.embed_tokens(prefix_ids)
        cos, sin = self.model.rotary_emb(torch.arange(prefix_len, device=prefix_ids.device), hidden_states.dtype)
        past: list[KeyValue] = []
        for layer in self.model.layers[: self.model.first_bidirectional_layer]:
            hidden_states, kv = self._layer_runner(layer, hidden_states, cos, sin, None)
            past.append(kv)
        return PrefixState(past=past, hidden_at_first_bidirectional=hidden_states, length=prefix_len)

    @torch.no_grad()
    def score_windows(
        self, prefix: PrefixState, window_ids: torch.Tensor, label_token_ids: torch.Tensor | None = None
    ) -> CriticLogits:
        """Logits for the context positions of ``prefix + window`` for each row of ``window_ids [batch, len]``.

        Exactly equal (up to float rounding) to :meth:`forward` on the concatenated sequence, without
        recomputing the prefix in the causal layers.
        """
        batch, window_len = window_ids.shape
        total = prefix.length + window_len
        device = window_ids.device
        hidden_states = self.model.embed_tokens(window_ids)
        cos, sin = self.model.rotary_emb(torch.arange(total, device=device), hidden_states.dtype)
        first_bi = self.model.first_bidirectional_layer
        window_cos, window_sin = cos[prefix.length :], sin[prefix.length :]
        for layer, past in zip(self.model.layers[:first_bi], prefix.past):
            hidden_states, _ = self._layer_runner(layer, hidden_states, window_cos, window_sin, past)
        if first_bi < len(self.model.layers):
            shared = prefix.hidden_at_first_bidirectional.expand(batch, -1, -1)
            hidden_states = torch.cat((shared, hidden_states), dim=1)
            for layer in self.model.layers[first_bi:]:
                hidden_states, _ = self._layer_runner(layer, hidden_states, cos, sin, None)
            hidden_states = hidden_states[:, prefix.length :]
        return self._heads(hidden_states, label_token_ids)
