"""The critic model: released checkpoint format, exact Qwen2 arithmetic, hybrid attention, prefix sharing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from transformers import Qwen2Config, Qwen2Model

from cprs_core import CPRSConfig, CPRSForTokenCritic
from cprs_core.swiglu import fused_swiglu_available, swiglu_projection

from .tiny_checkpoint import RELEASED_FORMAT_CONFIG


def _small_config(**overrides: object) -> CPRSConfig:
    base = dict(
        vocab_size=300,
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        rope_theta=1_000_000.0,
    )
    return CPRSConfig(**{**base, **overrides})


def test_released_config_loads_with_upstream_layer_split(tiny_cprs_dir: Path) -> None:
    config = CPRSConfig.from_pretrained(tiny_cprs_dir)
    assert config.model_type == "qwen2"
    assert config.num_hidden_layers == 28
    assert config.first_bidirectional_layer == 21  # upstream's BiLLM_START_INDEX
    assert config.rope_base == RELEASED_FORMAT_CONFIG["rope_theta"]
    assert config.bi_label_type == "BIOE"  # training keys survive as attributes


def test_weight_names_are_the_released_ones(tiny_cprs_dir: Path) -> None:
    with safe_open(str(tiny_cprs_dir / "model.safetensors"), "pt") as weights:
        names = set(weights.keys())
    expected_per_layer = {
        "self_attn.q_proj.weight", "self_attn.q_proj.bias", "self_attn.k_proj.weight", "self_attn.k_proj.bias",
        "self_attn.v_proj.weight", "self_attn.v_proj.bias", "self_attn.o_proj.weight",
        "mlp.gate_proj.weight", "mlp.up_proj.weight", "mlp.down_proj.weight",
        "input_layernorm.weight", "post_attention_layernorm.weight",
    }  # fmt: skip
    expected = {f"model.layers.{i}.{name}" for i in range(28) for name in expected_per_layer}
    expected |= {"model.embed_tokens.weight", "model.norm.weight", "lm_head.weight", "cls_head.weight", "cls_head.bias"}
    assert names == expected


def test_save_and_reload_round_trip(tmp_path: Path) -> None:
    torch.manual_seed(1)
    model = CPRSForTokenCritic(_small_config()).eval()
    model.save_pretrained(tmp_path)
    reloaded = CPRSForTokenCritic.from_pretrained(tmp_path).eval()
    ids = torch.randint(0, 300, (2, 40))
    assert torch.equal(model(ids).bioe, reloaded(ids).bioe)
    assert json.loads((tmp_path / "config.json").read_text())["bidirectional_start_layer"] == 3


def _transformers_body(ours: CPRSForTokenCritic) -> Qwen2Model:
    """transformers' own Qwen2 body (SDPA) holding ``ours``'s decoder weights; all its layers causal."""
    config = Qwen2Config(**{k: v for k, v in ours.config.to_dict().items() if k != "bidirectional_start_layer"})
    config._attn_implementation = "sdpa"  # its kernels take each module's is_causal; eager ignores it
    reference = Qwen2Model(config)
    reference.load_state_dict({k.removeprefix("model."): v for k, v in ours.state_dict().items() if k.startswith("model.")})
    return reference.eval()


def test_all_causal_stack_is_exactly_transformers_qwen2() -> None:
    torch.manual_seed(2)
    ours = CPRSForTokenCritic(_small_config(bidirectional_start_layer=-1)).eval()
    reference = _transformers_body(ours)
    ids = torch.randint(0, 300, (2, 50))
    with torch.no_grad():
        expected = ours.cls_head(reference(ids).last_hidden_state)
    torch.testing.assert_close(ours(ids).bioe, expected, rtol=1e-5, atol=1e-5)


def test_hybrid_stack_is_transformers_qwen2_with_the_upper_layers_unmasked() -> None:
    """Upstream's hybrid: transformers' Qwen2 whose attention modules from layer 21 on (here 3) are not causal."""
    torch.manual_seed(3)
    config = _small_config()
    ours = CPRSForTokenCritic(config).eval()
    reference = _transformers_body(ours)
    ids = torch.randint(0, 300, (2, 50))
    with torch.no_grad():
        all_causal = ours.cls_head(reference(ids).last_hidden_state)
        for layer in reference.layers[config.first_bidirectional_layer :]:
            layer.self_attn.is_causal = False
        hybrid = ours.cls_head(reference(ids).last_hidden_state)
    torch.testing.assert_close(ours(ids).bioe, hybrid, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(all_causal, hybrid, atol=1e-3)


def _layer_outputs(model: CPRSForTokenCritic, ids: torch.Tensor) -> list[torch.Tensor]:
    captured: list[torch.Tensor] = []
    hooks = [layer.register_forward_hook(lambda _m, _i, out: captured.append(out[0])) for layer in model.model.layers]
    try:
        with torch.no_grad():
            model(ids)
    finally:
        for hook in hooks:
            hook.remove()
    return captured


def test_bidirectional_layers_see_future_tokens_and_causal_layers_do_not() -> None:
    torch.manual_seed(3)
    model = CPRSForTokenCritic(_small_config()).eval()  # layers 0-2 causal, layer 3 bidirectional
    ids = torch.randint(0, 300, (1, 30))
    changed = ids.clone()
    changed[0, -1] = (ids[0, -1] + 1) % 300
    before, after = _layer_outputs(model, ids), _layer_outputs(model, changed)
    for layer in range(3):  # causal: earlier positions ignore a change at the end
        torch.testing.assert_close(before[layer][0, :-1], after[layer][0, :-1], rtol=0, atol=0)
    assert not torch.allclose(before[3][0, :-1], after[3][0, :-1])  # bidirectional: they see it
    assert not torch.allclose(model(ids).bioe[0, :-1], model(changed).bioe[0, :-1])


def test_a_causal_only_model_fails_the_future_token_check() -> None:
    torch.manual_seed(3)
    model = CPRSForTokenCritic(_small_config(bidirectional_start_layer=-1)).eval()
    ids = torch.randint(0, 300, (1, 30))
    changed = ids.clone()
    changed[0, -1] = (ids[0, -1] + 1) % 300
    torch.testing.assert_close(model(ids).bioe[0, :-1], model(changed).bioe[0, :-1], rtol=0, atol=0)


@pytest.mark.parametrize("bidirectional_start_layer", [0, 2, 4])
def test_shared_prefix_scoring_equals_full_forward(bidirectional_start_layer: int) -> None:
    torch.manual_seed(4)
    model = CPRSForTokenCritic(_small_config(bidirectional_start_layer=bidirectional_start_layer)).eval()
    prefix, windows = torch.randint(0, 300, (1, 9)), torch.randint(0, 300, (3, 25))
    labels = torch.tensor([7, 8, 9])
    with torch.no_grad():
        full = model(torch.cat((prefix.expand(3, -1), windows), dim=1), label_token_ids=labels)
    shared = model.score_windows(model.prefill_prefix(prefix), windows, labels)
    torch.testing.assert_close(shared.bioe, full.bioe[:, 9:], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(shared.tags, full.tags[:, 9:], rtol=1e-5, atol=1e-5)


def test_padding_mask_hides_padded_keys() -> None:
    torch.manual_seed(5)
    model = CPRSForTokenCritic(_small_config()).eval()
    ids = torch.randint(0, 300, (1, 20))
    padded = torch.cat((ids, torch.zeros(1, 6, dtype=torch.long)), dim=1)
    mask = torch.cat((torch.ones(1, 20), torch.zeros(1, 6)), dim=1)
    with torch.no_grad():
        torch.testing.assert_close(model(padded, attention_mask=mask).bioe[:, :20], model(ids).bioe, rtol=1e-5, atol=1e-5)


def test_fused_projections_compute_the_same_and_save_the_released_format(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = CPRSForTokenCritic(_small_config()).eval()
    ids = torch.randint(0, 300, (2, 40))
    labels = torch.tensor([5, 7])
    before = model(ids, label_token_ids=labels)
    model.fuse_projections()
    attention = model.model.layers[0].self_attn
    assert attention.q_proj.weight.data_ptr() == attention.qkv_weight.data_ptr()  # views: no extra memory
    after = model(ids, label_token_ids=labels)
    torch.testing.assert_close(after.bioe, before.bioe)
    torch.testing.assert_close(after.tags, before.tags)
    model.save_pretrained(tmp_path)
    reloaded = CPRSForTokenCritic.from_pretrained(tmp_path).eval()
    assert reloaded.state_dict().keys() == model.state_dict().keys()
    torch.testing.assert_close(reloaded(ids, label_token_ids=labels).bioe, before.bioe)


def test_fused_swiglu_is_off_where_it_cannot_run_and_refused_when_required() -> None:
    model = CPRSForTokenCritic(_small_config()).eval()
    model.fuse_projections()  # auto: no quack kernel on CPU, so the MLP keeps the GEMM + elementwise product
    assert not any(layer.mlp.fused_swiglu for layer in model.model.layers)
    with pytest.raises(ValueError, match="quack-kernels.*compute capability 9.0"):
        model.fuse_projections(fused_swiglu=True)


def test_fused_swiglu_op_traces_to_the_product_shape() -> None:
    # torch.compile traces the custom op with fake tensors: its output must have the intermediate width.
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode():
        product = swiglu_projection(torch.empty(2, 5, 64), torch.empty(2 * 96, 64))
    assert product.shape == (2, 5, 96)


@pytest.mark.skipif(
    not torch.cuda.is_available() or not fused_swiglu_available(torch.device("cuda"), torch.bfloat16),
    reason="needs quack-kernels and a CUDA GPU of compute capability 9.0+",
)
def test_fused_swiglu_scores_like_the_unfused_mlp_on_gpu() -> None:
    torch.manual_seed(0)
    config = _small_config(hidden_size=256, intermediate_size=512, num_attention_heads=4, num_key_value_heads=2)
    model = CPRSForTokenCritic(config).to("cuda", torch.bfloat16).eval()
    ids = torch.randint(0, 300, (2, 128), device="cuda")
    model.fuse_projections(fused_swiglu=False)
    with torch.no_grad():
        unfused = model(ids).bioe
        model.fuse_projections(fused_swiglu=True)
        fused = model(ids).bioe
    assert model.model.layers[0].mlp.fused_swiglu
    assert ((fused - unfused).norm() / unfused.norm()).item() < 2e-2
