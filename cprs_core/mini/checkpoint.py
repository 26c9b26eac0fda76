"""The ``cprs-mini`` checkpoint format: ``config.json`` (with a marker) plus ``adapter.safetensors``, and optionally
``int8_ranges.safetensors`` (activation ranges for smoothing before int8, :mod:`cprs_core.mini.smoothing`)."""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from ..critic import BIOE_LABELS
from ..errors import ModelLoadError
from .backbone import BACKBONE_NAME
from .inputs import MAX_PREFIX_TOKENS

MARKER_KEY, MARKER_VALUE = "cprs_critic", "mini"
CONFIG_FILE, ADAPTER_FILE, INT8_RANGES_FILE = "config.json", "adapter.safetensors", "int8_ranges.safetensors"
CRITIC_RANGES, EMBEDDER_RANGES = "critic.", "embedder."
"""Key prefixes in ``int8_ranges.safetensors``: the adapted critic's encoder and the un-adapted sentence embedder."""
SHIPPED_DIR = Path(__file__).resolve().parent / "weights"
"""The weights that ship inside the package."""


@dataclass(frozen=True)
class MiniConfig:
    """What ``config.json`` of a ``cprs-mini`` checkpoint records."""

    lora_rank: int
    lora_alpha: float
    cprs_critic: str = MARKER_VALUE
    backbone: str = BACKBONE_NAME
    labels: list[str] = field(default_factory=lambda: list(BIOE_LABELS))
    max_window: int = 512
    max_prefix_tokens: int = MAX_PREFIX_TOKENS
    input_format: str = "[CLS] tags: query [SEP] window [SEP]"
    relevance_head: bool = False
    relevance_threshold: float | None = None
    """Probability at or above which a sentence is kept without a budget (chosen on the ``tune`` split)."""
    similarity_weight: float | None = None
    """Weight of the un-adapted backbone's query–sentence cosine (z-scored) in the sentence ranking; ``None``: unused."""
    similarity_per_question_z: bool = False
    """For a query of several questions, z-score each question's cosines before taking a sentence's best."""
    rank_without_budget: bool = False
    """Without a budget, keep as many tokens as the threshold rule would, chosen by the budget ranking."""
    similarity_shortlist: float | None = None
    """Under a budget, the similarity is computed for the critic's best sentences covering this many times the
    budget's tokens only; ``None``: for every sentence."""
    neighbour_weight: float | None = None
    """Where the similarity ranks, each sentence gains this weight times its best neighbour's score in the same
    paragraph; ``None``: sentences are ranked alone."""
    int8_smoothing: float | None = None
    """SmoothQuant's ``alpha`` for the int8 path, used with ``int8_ranges.safetensors``; ``None``: plain int8."""
    training: dict[str, Any] = field(default_factory=dict)


def is_mini_checkpoint(path: str | Path) -> bool:
    """Whether ``path`` is a directory whose ``config.json`` carries ``"cprs_critic": "mini"``."""
    config_file = Path(path) / CONFIG_FILE
    if not config_file.is_file():
        return False
    try:
        config = json.loads(config_file.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(config, dict) and config.get(MARKER_KEY) == MARKER_VALUE


def save_checkpoint(directory: str | Path, config: MiniConfig, adapter: dict[str, torch.Tensor]) -> None:
    """Write ``config.json`` and ``adapter.safetensors`` (float16) into ``directory``."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    write_config(directory, config)
    tensors = {name: tensor.to(torch.float16).contiguous() for name, tensor in sorted(adapter.items())}
    save_file(tensors, str(directory / ADAPTER_FILE), metadata={MARKER_KEY: MARKER_VALUE})


def write_config(directory: str | Path, config: MiniConfig) -> None:
    """Write ``config.json`` into the checkpoint ``directory``."""
    (Path(directory) / CONFIG_FILE).write_text(json.dumps(asdict(config), indent=2) + "\n", encoding="utf-8")


def save_int8_ranges(directory: str | Path, critic: dict[str, torch.Tensor], embedder: dict[str, torch.Tensor]) -> None:
    """Write the critic's and the sentence embedder's activation ranges into ``directory/int8_ranges.safetensors``."""
    tensors = {CRITIC_RANGES + key: value for key, value in critic.items()}
    tensors.update({EMBEDDER_RANGES + key: value for key, value in embedder.items()})
    tensors = {key: value.float().contiguous() for key, value in sorted(tensors.items())}
    save_file(tensors, str(Path(directory) / INT8_RANGES_FILE), metadata={MARKER_KEY: MARKER_VALUE})


def read_int8_ranges(directory: str | Path) -> dict[str, dict[str, torch.Tensor]]:
    """The activation ranges by encoder (keyed :data:`CRITIC_RANGES`, :data:`EMBEDDER_RANGES`; an encoder with none
    is left out, and a checkpoint without the file gives an empty mapping)."""
    path = Path(directory) / INT8_RANGES_FILE
    if not path.is_file():
        return {}
    tensors = load_file(str(path))
    by_encoder = {
        prefix: {key[len(prefix):]: value for key, value in tensors.items() if key.startswith(prefix)}
        for prefix in (CRITIC_RANGES, EMBEDDER_RANGES)
    }
    return {prefix: ranges for prefix, ranges in by_encoder.items() if ranges}


def read_config(directory: str | Path) -> MiniConfig:
    """The ``config.json`` of the checkpoint ``directory`` (unknown keys ignored), or raise :class:`ModelLoadError`."""
    directory = Path(directory)
    if not is_mini_checkpoint(directory):
        raise ModelLoadError(f"{directory} is not a cprs-mini checkpoint (no config.json with \"cprs_critic\": \"mini\")")
    raw = json.loads((directory / CONFIG_FILE).read_text(encoding="utf-8"))
    known = set(MiniConfig.__dataclass_fields__)
    config = MiniConfig(**{key: value for key, value in raw.items() if key in known})
    if tuple(config.labels) != BIOE_LABELS:
        raise ModelLoadError(f"{directory} uses labels {config.labels}; cprs expects {list(BIOE_LABELS)}")
    return config


def read_checkpoint(directory: str | Path) -> tuple[MiniConfig, dict[str, torch.Tensor]]:
    """Read a checkpoint written by :func:`save_checkpoint`, or raise :class:`ModelLoadError`."""
    directory = Path(directory)
    config = read_config(directory)
    adapter_file = directory / ADAPTER_FILE
    if not adapter_file.is_file():
        raise ModelLoadError(f"{directory} has no {ADAPTER_FILE}")
    return config, load_file(str(adapter_file))


def copy_checkpoint(source: str | Path, destination: str | Path, int8_ranges: bool = True) -> Path:
    """Copy the checkpoint ``source`` into ``destination`` (created if missing; ``__pycache__`` left out) and
    return ``destination``; with ``int8_ranges=False`` the copy has no ``int8_ranges.safetensors``, so it loads
    in int8 without activation smoothing."""
    skipped = ("__pycache__",) if int8_ranges else ("__pycache__", INT8_RANGES_FILE)
    shutil.copytree(source, destination, dirs_exist_ok=True, ignore=shutil.ignore_patterns(*skipped))
    return Path(destination)
