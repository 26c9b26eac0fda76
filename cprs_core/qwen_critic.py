"""The QwenLong-CPRS critic: a :class:`CPRSForTokenCritic` checkpoint plus its Qwen2 tokenizer."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np
import torch
from transformers import AutoTokenizer, PreTrainedTokenizerBase

from .batching import plan_batches
from .critic import TokenizedText, WindowScores
from .devices import resolve_device, resolve_dtype
from .errors import ModelLoadError
from .modeling import CPRSForTokenCritic
from .prompt import OUTSIDE_TAG, build_prefix
from .tokenizing import splits_before_spaced_words, tokenize_in_chunks, tokenize_in_parts

logger = logging.getLogger(__name__)

UPSTREAM_WINDOW_SIZE = 8192
CPU_BATCH_TOKENS = 16384
GPU_MAX_BATCH_TOKENS = 32768
"""Cap on tokens per GPU batch: on an H100, batches beyond four 8K windows were no faster (128K tokens: 3.37 s with
one 17-window batch, 3.40 s with 4-window batches) but took 2.4x the memory (45.6 vs 18.8 GiB peak)."""
_GPU_MEMORY_FRACTION = 0.6
FIRST_PART_CHARS = 65_536
"""Characters tokenized before the first windows go to the device (about 16K tokens of English: two 8K windows,
~0.4 s of H100 time, while the rest of a 128K-token context tokenizes in ~0.1 s)."""


class QwenCritic:
    """Scores windows with the hybrid-attention Qwen2 critic.

    Implements :class:`~cprs_core.critic.StreamingTokenCritic`: windows are scored asynchronously on the device,
    so the engine tokenizes the rest of a long context while the first windows are scored.

    Args:
        model: the loaded critic (eval mode, on its device).
        tokenizer: its Qwen2 tokenizer (a fast tokenizer: offsets are needed).
        name: shown in results.
        use_lm_head_tags: score tag words with the LM head (False when the checkpoint has no ``lm_head``).
        max_batch_tokens: tokens per forward batch; ``None`` sizes it from free GPU memory, at most
            :data:`GPU_MAX_BATCH_TOKENS` (CPU: 16384).
    """

    suffix_tokens = 0
    first_part_chars = FIRST_PART_CHARS

    def __init__(
        self,
        model: CPRSForTokenCritic,
        tokenizer: PreTrainedTokenizerBase,
        name: str = "cprs-qwen2",
        use_lm_head_tags: bool = True,
        max_batch_tokens: int | None = None,
    ) -> None:
        if not tokenizer.is_fast:
            raise ModelLoadError("the critic needs a fast tokenizer (tokenizer.json) for character offsets")
        self.model = model
        self.tokenizer = tokenizer
        self.name = name
        self.use_lm_head_tags = use_lm_head_tags
        self.max_positions = int(model.config.max_position_embeddings)
        self.default_window_size = min(UPSTREAM_WINDOW_SIZE, self.max_positions)
        self.max_batch_tokens = max_batch_tokens or self._default_batch_tokens()
        self._chunked_tokenizing = splits_before_spaced_words(tokenizer.backend_tokenizer)

    @classmethod
    def from_pretrained(
        cls,
        path: str | Path,
        device: str | torch.device | None = None,
        dtype: str | torch.dtype | None = None,
        max_batch_tokens: int | None = None,
        compile: bool = False,
    ) -> "QwenCritic":
        """Load a QwenLong-CPRS checkpoint directory (config.json, safetensors weights, tokenizer files).

        ``compile=True`` fuses projections and ``torch.compile``s the layers (CUDA; the first call compiles).
        """
        directory = Path(path)
        torch_device = resolve_device(device)
        torch_dtype = resolve_dtype(dtype, torch_device)
        config_file = directory / "config.json"
        if not config_file.is_file():
            raise ModelLoadError(f"{directory} has no config.json: not a model directory")
        model_type = _model_type(config_file)
        if model_type != "qwen2":
            raise ModelLoadError(f"{directory} holds a {model_type!r} model; a QwenLong-CPRS critic is 'qwen2'")
        try:
            tokenizer = AutoTokenizer.from_pretrained(directory)
            model, info = CPRSForTokenCritic.from_pretrained(directory, dtype=torch_dtype, output_loading_info=True)
        except (OSError, ValueError) as error:
            raise ModelLoadError(f"could not load the critic from {directory}: {error}") from error
        missing = set(info["missing_keys"])
        if {"cls_head.weight", "cls_head.bias"} & missing:
            raise ModelLoadError(
                f"{directory} has no cls_head weights: it is a plain Qwen2 model, not a QwenLong-CPRS critic"
            )
        body_missing = sorted(key for key in missing if key.startswith("model."))
        if body_missing:
            raise ModelLoadError(f"{directory} is missing decoder weights, e.g. {body_missing[:3]}")
        has_lm_head = "lm_head.weight" not in missing or bool(model.config.tie_word_embeddings)
        if not has_lm_head:
            logger.warning("%s has no lm_head weights: spans get the instruction's first tag", directory)
        model.to(torch_device).eval()
        if compile:
            model.compile_layers()
        return cls(model, tokenizer, name=str(path), use_lm_head_tags=has_lm_head, max_batch_tokens=max_batch_tokens)

    @property
    def device(self) -> torch.device:
        return self.model.device

    def _default_batch_tokens(self) -> int:
        if self.device.type != "cuda":
            return CPU_BATCH_TOKENS
        config = self.model.config
        free_bytes, _ = torch.cuda.mem_get_info(self.device)
        bytes_per_token = (6 * config.hidden_size + 3 * config.intermediate_size) * self.model.dtype.itemsize
        fits = int(free_bytes * _GPU_MEMORY_FRACTION / bytes_per_token)
        return max(UPSTREAM_WINDOW_SIZE, min(fits, GPU_MAX_BATCH_TOKENS))

    def tokenize_context(self, text: str) -> TokenizedText:
        if self._chunked_tokenizing:
            return tokenize_in_chunks(self.tokenizer.backend_tokenizer, text)
        encoding = self.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        return TokenizedText(list(encoding["input_ids"]), [tuple(pair) for pair in encoding["offset_mapping"]])

    def tokenize_context_parts(self, text: str) -> Iterator[TokenizedText]:
        if self._chunked_tokenizing:
            yield from tokenize_in_parts(self.tokenizer.backend_tokenizer, text, self.first_part_chars)
        else:
            yield self.tokenize_context(text)

    def count_tokens(self, text: str) -> int:
        return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def encode_prefix(self, instruction: str, query: str) -> list[int]:
        return list(self.tokenizer(build_prefix(instruction, query), add_special_tokens=False)["input_ids"])

    def label_token_ids(self, tags: Sequence[str]) -> list[int]:
        """LM-head rows of the label words: the first token of each tag, then ``outside`` (upstream's choice)."""
        return [self.tokenizer.convert_tokens_to_ids(self.tokenizer.tokenize(word)[0]) for word in [*tags, OUTSIDE_TAG]]

    def score_windows(
        self, prefix_ids: list[int], windows: Sequence[list[int]], tags: Sequence[str]
    ) -> list[WindowScores]:
        return self.submit_windows(prefix_ids, windows, tags)()

    @torch.inference_mode()
    def submit_windows(
        self, prefix_ids: list[int], windows: Sequence[list[int]], tags: Sequence[str]
    ) -> Callable[[], list[WindowScores]]:
        device = self.device
        batches = plan_batches([len(window) for window in windows], self.max_batch_tokens)
        # Every batch's ids go to the device before any forward and results come back after the last one, so
        # the GPU never waits on a host copy or a sync between batches; the copies are asynchronous, so a
        # submission made while earlier windows are being scored queues behind them without waiting for them.
        batch_ids = [_to_device(np.array([windows[index] for index in batch]), device) for batch in batches]
        label_ids = _to_device(np.array(self.label_token_ids(tags)), device) if self.use_lm_head_tags else None
        prefix = self.model.prefill_prefix(_to_device(np.array([prefix_ids]), device))
        outputs = []
        for ids in batch_ids:
            logits = self.model.score_windows(prefix, ids, label_ids)
            tag_index = None if logits.tags is None else logits.tags[..., : len(tags)].argmax(-1)
            outputs.append((torch.softmax(logits.bioe, dim=-1), tag_index))

        def collect() -> list[WindowScores]:
            results: list[WindowScores | None] = [None] * len(windows)
            for batch, (bioe, tag_index) in zip(batches, outputs):
                bioe_rows = bioe.cpu().numpy()
                tag_rows = None if tag_index is None else tag_index.cpu().numpy()
                for row, index in enumerate(batch):
                    results[index] = WindowScores(bioe_rows[row], None if tag_rows is None else tag_rows[row])
            return results  # type: ignore[return-value]

        return collect


def _to_device(ids: np.ndarray, device: torch.device) -> torch.Tensor:
    """``ids`` as a tensor on ``device``; to a GPU through pinned memory, without waiting for queued GPU work.

    A copy from ordinary (pageable) host memory makes the host wait until the GPU has finished everything queued
    before it, which would leave the GPU idle while the host then queues the next kernels.
    """
    tensor = torch.from_numpy(ids)
    if device.type != "cuda":
        return tensor.to(device)
    return tensor.pin_memory().to(device, non_blocking=True)


def _model_type(config_file: Path) -> object:
    """``model_type`` of a ``config.json``; a file that is not a JSON object is a :class:`ModelLoadError`."""
    try:
        config = json.loads(config_file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:  # ValueError: bad JSON or bytes that are not UTF-8
        raise ModelLoadError(f"{config_file} is not a readable JSON file: {error}") from error
    if not isinstance(config, dict):
        raise ModelLoadError(f"{config_file} holds a JSON {type(config).__name__}, not an object")
    return config.get("model_type")
