"""Where the critic's GPU time goes: one batch of windows, attention variants and GEMMs, on the 7B shape.

``python -m benchmarks.gpu_profile`` prints a table; used to choose the engine's attention path.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.nn.attention.bias import causal_lower_right

from cprs_core import CPRSConfig

from .gpu_engine import QWEN25_7B_SHAPE, build_model, median_time

PREFIX, WINDOW, BATCH = 100, 8092, 4


def main() -> None:
    torch._dynamo.config.recompile_limit = 64
    config = CPRSConfig(**QWEN25_7B_SHAPE)
    model = build_model(config)
    prefix_ids = torch.randint(0, 150000, (1, PREFIX), device="cuda")
    window_ids = torch.randint(0, 150000, (BATCH, WINDOW), device="cuda")
    full_ids = torch.cat((prefix_ids.expand(BATCH, -1), window_ids), dim=1)
    label_ids = torch.tensor([100, 200, 300], device="cuda")
    rows: dict[str, float] = {}
    with torch.inference_mode():
        rows["score_windows (shared prefix, eager)"] = median_time(
            lambda: model.score_windows(model.prefill_prefix(prefix_ids), window_ids, label_ids), 5)
        rows["forward on prefix+window (no sharing, eager)"] = median_time(lambda: model(full_ids, label_token_ids=label_ids), 5)
        heads, kv_heads, dim = 28, 4, 128
        q = torch.randn(BATCH, heads, WINDOW, dim, device="cuda", dtype=torch.bfloat16)
        q_full = torch.randn(BATCH, heads, WINDOW + PREFIX, dim, device="cuda", dtype=torch.bfloat16)
        k = torch.randn(BATCH, kv_heads, WINDOW + PREFIX, dim, device="cuda", dtype=torch.bfloat16)
        v = torch.randn_like(k)
        k_rep, v_rep = k.repeat_interleave(7, dim=1), v.repeat_interleave(7, dim=1)
        bias = causal_lower_right(WINDOW, WINDOW + PREFIX)
        rows["attn lower-right causal, gqa"] = median_time(lambda: F.scaled_dot_product_attention(q, k, v, attn_mask=bias, enable_gqa=True), 10)
        rows["attn lower-right causal, repeat_kv"] = median_time(lambda: F.scaled_dot_product_attention(q, k_rep, v_rep, attn_mask=bias), 10)
        rows["attn is_causal square, gqa"] = median_time(lambda: F.scaled_dot_product_attention(q_full, k, v, is_causal=True, enable_gqa=True), 10)
        rows["attn is_causal square, repeat_kv"] = median_time(lambda: F.scaled_dot_product_attention(q_full, k_rep, v_rep, is_causal=True), 10)
        rows["attn full square, gqa"] = median_time(lambda: F.scaled_dot_product_attention(q_full, k, v, enable_gqa=True), 10)
        rows["attn full square, repeat_kv"] = median_time(lambda: F.scaled_dot_product_attention(q_full, k_rep, v_rep), 10)
        layer = model.model.layers[0]
        x = torch.randn(BATCH, WINDOW + PREFIX, config.hidden_size, device="cuda", dtype=torch.bfloat16)
        def linears() -> None:
            layer.self_attn.o_proj(layer.self_attn.q_proj(x))
            layer.self_attn.k_proj(x); layer.self_attn.v_proj(x)
            layer.mlp.down_proj(layer.mlp.gate_proj(x) * layer.mlp.up_proj(x))
        rows["one layer's linears (x28 = all layers)"] = median_time(linears, 10)
        cos, sin = model.model.rotary_emb(torch.arange(WINDOW + PREFIX, device="cuda"), torch.bfloat16)
        rows["one causal layer, eager"] = median_time(lambda: layer(x, cos, sin), 10)
        model.compile_layers()
        rows["score_windows (shared prefix, compiled)"] = median_time(
            lambda: model.score_windows(model.prefill_prefix(prefix_ids), window_ids, label_ids), 5)
        rows["forward (no sharing), compiled layers"] = median_time(
            lambda: model(full_ids, label_token_ids=label_ids), 5)
    flops = 2 * 8192**3
    a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    rate = flops / median_time(lambda: a @ a, 20)
    tokens = BATCH * (WINDOW + PREFIX)
    print(f"{torch.cuda.get_device_name()} torch {torch.__version__}, matmul {rate / 1e12:.0f} TFLOP/s, batch {BATCH}x{WINDOW}+{PREFIX}")
    print(f"linear FLOP bound for the batch: {2 * 6.53e9 * tokens / rate * 1e3:.1f} ms")
    for name, seconds in rows.items():
        print(f"| {name} | {seconds * 1e3:.1f} ms |")


if __name__ == "__main__":
    main()
