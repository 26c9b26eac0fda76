"""Activation smoothing before int8: exact in float32, closer to float32 in int8, read from the checkpoint."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import BertConfig, BertModel

from cprs_core.errors import ModelLoadError
from cprs_core.mini import MiniCritic, load_mini_critic
from cprs_core.mini.checkpoint import CONFIG_FILE, INT8_RANGES_FILE, SHIPPED_DIR, copy_checkpoint
from cprs_core.mini.precision import int8_available, quantize_linears
from cprs_core.mini.smoothing import SITES, InputRanges, smooth_for_int8

pytestmark = pytest.mark.skipif(not int8_available(), reason="this PyTorch build has no quantized CPU engine")

OUTLIER = 5
"""The hidden channel the tiny encoder carries outliers in, as MiniLM does in a few of its channels."""


@pytest.fixture(scope="module")
def encoder_with_outliers() -> BertModel:
    torch.manual_seed(0)
    config = BertConfig(vocab_size=200, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=64, max_position_embeddings=64, initializer_range=0.3)
    encoder = BertModel(config, add_pooling_layer=False).eval()
    with torch.no_grad():
        for norm in [encoder.embeddings.LayerNorm] + [
            module for layer in encoder.encoder.layer for module in (layer.attention.output.LayerNorm, layer.output.LayerNorm)
        ]:
            norm.weight[OUTLIER] = 25.0
    return encoder


def batches(seed: int, count: int = 3) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return [torch.randint(1, 200, (2, 48), generator=generator) for _ in range(count)]


def ranges_of(encoder: BertModel) -> dict[str, torch.Tensor]:
    with torch.no_grad(), InputRanges(encoder) as recorder:
        for ids in batches(seed=1):
            encoder(input_ids=ids)
    return recorder.ranges


def outputs(encoder: BertModel) -> torch.Tensor:
    with torch.no_grad():
        return torch.cat([encoder(input_ids=ids).last_hidden_state for ids in batches(seed=2)])


def test_ranges_cover_every_site_of_every_layer(encoder_with_outliers: BertModel) -> None:
    ranges = ranges_of(encoder_with_outliers)
    assert sorted(ranges) == sorted(f"layer.{i}.{site}" for i in range(2) for site in SITES)
    attention_input = ranges["layer.0.attention.self"]
    assert attention_input.shape == (32,) and attention_input.argmax() == OUTLIER
    assert ranges["layer.1.output"].shape == (64,)


def test_smoothing_is_exact_in_float32(encoder_with_outliers: BertModel) -> None:
    smoothed = copy.deepcopy(encoder_with_outliers)
    smooth_for_int8(smoothed, ranges_of(encoder_with_outliers), alpha=1.0)
    query = smoothed.encoder.layer[0].attention.self.query.weight
    assert not torch.allclose(query, encoder_with_outliers.encoder.layer[0].attention.self.query.weight)
    torch.testing.assert_close(outputs(smoothed), outputs(encoder_with_outliers), rtol=1e-4, atol=1e-4)


def test_smoothing_brings_int8_closer_to_float32(encoder_with_outliers: BertModel) -> None:
    reference = outputs(encoder_with_outliers)
    plain = quantize_linears(copy.deepcopy(encoder_with_outliers))
    smoothed = copy.deepcopy(encoder_with_outliers)
    smooth_for_int8(smoothed, ranges_of(encoder_with_outliers), alpha=1.0)
    quantize_linears(smoothed)
    plain_error = (outputs(plain) - reference).abs().mean()
    smoothed_error = (outputs(smoothed) - reference).abs().mean()
    assert smoothed_error < 0.5 * plain_error


def smoothed_sites(critic: MiniCritic) -> int:
    return sum(hasattr(module, "int8_input_scale") for module in critic.model.encoder.modules())


def test_the_shipped_int8_critic_is_smoothed_and_closer_to_float32(tmp_path: Path) -> None:
    shipped = load_mini_critic(dtype="int8")
    assert smoothed_sites(shipped) == 3 * 6
    assert sum(hasattr(module, "int8_input_scale") for module in shipped.embedder.encoder.modules()) == 3 * 6
    assert smoothed_sites(load_mini_critic(dtype="float32")) == 0  # float32 runs the weights as trained
    plain = load_mini_critic(copy_checkpoint(SHIPPED_DIR, tmp_path / "plain", int8_ranges=False), dtype="int8")
    assert smoothed_sites(plain) == 0
    exact = load_mini_critic(dtype="float32")
    text = " ".join(f"Paragraph {i} says the river town {i} traded salt, copper and wool." for i in range(60))
    prefix = exact.encode_prefix("fact", "Which town traded copper?")
    windows = [exact.tokenize_context(text).ids[:400]]
    relevance = {name: critic.score_windows(prefix, windows, ["fact"])[0].relevance
                 for name, critic in (("exact", exact), ("plain", plain), ("smoothed", shipped))}
    plain_error = np.abs(relevance["plain"] - relevance["exact"]).mean()
    assert np.abs(relevance["smoothed"] - relevance["exact"]).mean() < 0.75 * plain_error


def test_a_checkpoint_without_ranges_loads_plain_int8_and_broken_ranges_are_refused(tmp_path: Path) -> None:
    plain = copy_checkpoint(SHIPPED_DIR, tmp_path / "plain", int8_ranges=False)
    assert smoothed_sites(load_mini_critic(plain, dtype="int8")) == 0
    broken = copy_checkpoint(SHIPPED_DIR, tmp_path / "broken")
    from safetensors.torch import load_file, save_file

    ranges = load_file(str(broken / INT8_RANGES_FILE))
    del ranges["critic.layer.3.output"]
    save_file(ranges, str(broken / INT8_RANGES_FILE))
    with pytest.raises(ModelLoadError, match="layer.3.output"):
        load_mini_critic(broken, dtype="int8")
    config = json.loads((broken / CONFIG_FILE).read_text())
    config["int8_smoothing"] = None  # smoothing switched off: the ranges are not read
    (broken / CONFIG_FILE).write_text(json.dumps(config))
    assert smoothed_sites(load_mini_critic(broken, dtype="int8")) == 0
