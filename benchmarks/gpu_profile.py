"""Where the critic's GPU time goes: one batch of windows on the 7B shape, engine variants, attention and GEMMs.

``python -m benchmarks.gpu_profile`` prints a table; used to choose the engine's attention and fusion paths.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.nn.attention.bias import causal_lower_right

from cprs_core import CPRSConfig

from .gpu_engine import QWEN25_7B_SHAPE, build_model, linear_params, matmul_flops_per_s, median_time

PREFIX, WINDOW, BATCH = 100, 8092, 4


def main() -> None:
    config = CPRSConfig(**QWEN25_7B_SHAPE)
    model = build_model(config)
    prefix_ids = torch.randint(0, 150000, (1, PREFIX), device="cuda")
    window_ids = torch.randint(0, 150000, (BATCH, WINDOW), device="cuda")
    label_ids = torch.tensor([100, 200, 300], device="cuda")
    rows: dict[str, float] = {}

    def score() -> None:
        model.score_windows(model.prefill_prefix(prefix_ids), window_ids, label_ids)

    with torch.inference_mode():
        rows["score_windows, eager (the default)"] = median_time(score, 5)
        model.fuse_projections()
        rows["score_windows, eager, fused q/k/v and gate/up"] = median_time(score, 5)
        heads, kv_heads, dim = config.num_attention_heads, config.num_key_value_heads, config.attention_head_dim
        q = torch.randn(BATCH, heads, WINDOW, dim, device="cuda", dtype=torch.bfloat16)
        k = torch.randn(BATCH, kv_heads, WINDOW + PREFIX, dim, device="cuda", dtype=torch.bfloat16)
        v = torch.randn_like(k)
        bias = causal_lower_right(WINDOW, WINDOW + PREFIX)

        def padded_queries() -> torch.Tensor:
            padded = torch.cat((q.new_zeros(BATCH, heads, PREFIX, dim), q), 2)
            return F.scaled_dot_product_attention(padded, k, v, is_causal=True, enable_gqa=True)[:, :, PREFIX:]

        rows["attention after prefix: lower-right causal mask"] = median_time(
            lambda: F.scaled_dot_product_attention(q, k, v, attn_mask=bias, enable_gqa=True), 10)
        rows["attention after prefix: padded queries, flash causal (engine)"] = median_time(padded_queries, 10)
        rows["attention, bidirectional on prefix+window"] = median_time(
            lambda: F.scaled_dot_product_attention(torch.cat((q.new_zeros(BATCH, heads, PREFIX, dim), q), 2), k, v,
                                                   enable_gqa=True), 10)
        layer = model.model.layers[0]
        x = torch.randn(BATCH, WINDOW + PREFIX, config.hidden_size, device="cuda", dtype=torch.bfloat16)

        def linears() -> None:
            attention, mlp = layer.self_attn, layer.mlp
            attention.o_proj(F.linear(x, attention.qkv_weight, attention.qkv_bias)[..., : heads * dim])
            mlp.down_proj(F.linear(x, mlp.gate_up_weight)[..., : config.intermediate_size])

        rows["one layer's GEMMs, fused (x28 = all layers)"] = median_time(linears, 10)
        cos, sin = model.model.rotary_emb(torch.arange(WINDOW + PREFIX, device="cuda"), torch.bfloat16)
        rows["one causal layer, eager"] = median_time(lambda: layer(x, cos, sin), 10)
        model.compile_layers()
        rows["score_windows, compiled layers, fused (compile=True)"] = median_time(score, 5)
        model.score_windows(model.prefill_prefix(prefix_ids), window_ids[:, :-500], label_ids)  # a new length
        rows["same, after a second window length (dynamic shapes)"] = median_time(score, 5)
    rate = matmul_flops_per_s()
    tokens = BATCH * (WINDOW + PREFIX)
    print(f"{torch.cuda.get_device_name()} torch {torch.__version__}, matmul {rate / 1e12:.0f} TFLOP/s, "
          f"batch {BATCH}x{WINDOW}+{PREFIX}")
    print(f"linear FLOP bound for the batch: {2 * linear_params(config) * tokens / rate * 1e3:.1f} ms")
    for name, seconds in rows.items():
        print(f"| {name} | {seconds * 1e3:.1f} ms |")


if __name__ == "__main__":
    main()
