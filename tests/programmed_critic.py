"""A CPRS checkpoint with hand-set weights whose behaviour is known: it tags every digit token.

All attention and MLP outputs are zeroed, so each position's final state is its own embedding. Digit tokens'
embeddings carry a large value in dimension 0, which ``cls_head`` reads as I(nside); everything else is O.
The LM head's row for the first tag word also reads dimension 0, so digits get that tag from the LM-as-critic.
"""

from __future__ import annotations

from pathlib import Path

import torch

from cprs_core import CPRSForTokenCritic

from .tiny_checkpoint import build_qwen2_tokenizer, write_tiny_checkpoint

DIGIT_SIGNAL = 100.0


def write_digit_tagger(directory: Path, tag_words: tuple[str, ...] = ("needle", "chain")) -> Path:
    """Write the digit-tagging checkpoint; digits get ``tag_words[0]``, via the LM-head label rows."""
    write_tiny_checkpoint(directory)
    tokenizer = build_qwen2_tokenizer()
    model = CPRSForTokenCritic.from_pretrained(directory)
    digit_ids = [tokenizer.convert_tokens_to_ids(str(d)) for d in range(10)]
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
        embeddings = model.model.embed_tokens.weight
        embeddings[:, 0] = 0.0
        embeddings[digit_ids, 0] = DIGIT_SIGNAL
        model.cls_head.weight.zero_()
        model.cls_head.bias.copy_(torch.tensor([0.0, 0.0, 1.0, 0.0]))
        model.cls_head.weight[1, 0] = 1.0  # I(nside) grows with dimension 0
        model.lm_head.weight.zero_()
        first_tag_row = tokenizer.convert_tokens_to_ids(tokenizer.tokenize(tag_words[0])[0])
        model.lm_head.weight[first_tag_row, 0] = 1.0
    model.save_pretrained(directory)
    return directory
