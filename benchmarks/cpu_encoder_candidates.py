"""The MiniLM encoder alone on CPU under each speed-up we considered for cprs-mini, against float32.

One forward pass over 4,096 tokens of windows (8 x 512 by default) per candidate; the candidates take turns,
repeat after repeat, and the table gives medians, so load from other processes hits them alike:

* ``float32``: the un-adapted encoder as it loads (PyTorch's fused SDPA attention), the baseline;
* ``int8 batched``: PyTorch dynamic int8 linear layers, one activation range per batch (batch-dependent scores);
* ``int8 per window``: the same with each window quantized on its own (cprs-mini's CPU default without AMX);
* ``int8 per window, 384 / 256-token windows``: the same tokens in shorter windows (less attention work; the
  query prefix, not counted here, would then repeat more often);
* ``bfloat16`` (and in 256-token windows): the whole encoder in bfloat16, fast only on CPUs with bfloat16 dot
  products (AVX512-BF16 or AMX; elsewhere it can be slower than float32); the CPU default with AMX;
* ``onnxruntime ...``: only when ``onnxruntime`` and ``onnx`` are installed (they are not cprs dependencies): the
  encoder exported to ONNX, optimized with ONNX Runtime's BERT fusions (fused attention, GELU, skip-LayerNorm),
  float32 and dynamic int8 (per-channel weights), one window per run.

A second table times the encoder's 36 linear layers alone on the same tokens (float32, int8 per window and per
batch, bfloat16), with their share of the float32 pass: the most any change of the linears' precision can give
the whole encoder is ``1 / (1 - share + share / speed-up of the linears)`` (Amdahl's law).

Usage (from the repository root)::

    python -m benchmarks.cpu_encoder_candidates --threads 2 --repeats 6
"""

from __future__ import annotations

import argparse
import copy
import statistics
import tempfile
import time
import warnings
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from transformers import BertModel

from cprs_core.mini.backbone import backbone_dir
from cprs_core.mini.precision import quantize_linears


def onnx_candidates(model: BertModel, ids: np.ndarray, threads: int, workdir: Path) -> dict[str, Callable[[], object]]:
    """ONNX Runtime float32 and int8 sessions of ``model`` (fused BERT graph), run one window at a time."""
    import onnx
    import onnxruntime
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from onnxruntime.transformers import optimizer

    class Encoder(torch.nn.Module):
        def __init__(self, bert: BertModel) -> None:
            super().__init__()
            self.bert = bert

        def forward(self, ids: torch.Tensor, mask: torch.Tensor, types: torch.Tensor) -> torch.Tensor:
            return self.bert(input_ids=ids, attention_mask=mask, token_type_ids=types).last_hidden_state

    eager = copy.deepcopy(model)
    eager.set_attn_implementation("eager")  # the attention pattern ONNX Runtime's fusion recognises
    sample = torch.tensor(ids[:1])
    axes = {"b": 0, "s": 1}
    exported, fused, quantized = workdir / "encoder.onnx", workdir / "fused.onnx", workdir / "int8.onnx"
    torch.onnx.export(
        Encoder(eager), (sample, torch.ones_like(sample), torch.zeros_like(sample)), str(exported),
        input_names=["ids", "mask", "types"], output_names=["hidden"], opset_version=17, dynamo=False,
        dynamic_axes={name: {index: label for label, index in axes.items()} for name in ("ids", "mask", "types", "hidden")},
    )
    config = model.config
    optimizer.optimize_model(
        str(exported), model_type="bert", num_heads=config.num_attention_heads, hidden_size=config.hidden_size
    ).save_model_to_file(str(fused))
    quantize_dynamic(str(fused), str(quantized), weight_type=QuantType.QInt8, per_channel=True,
                     extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT})
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = threads, 1

    def per_window(path: Path) -> Callable[[], object]:
        session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        feeds = [{"ids": row[None], "mask": np.ones_like(row[None]), "types": np.zeros_like(row[None])} for row in ids]
        return lambda: [session.run(None, feed) for feed in feeds]

    return {"onnxruntime float32, fused": per_window(fused), "onnxruntime int8, fused": per_window(quantized)}


def linear_layers(model: torch.nn.Module, windows: int, dtype: torch.dtype = torch.float32) -> Callable[[], object]:
    """Every linear layer of the encoder ``model`` (``nn.Linear`` or its int8 replacement), each on ``windows`` x
    512 tokens of ``dtype``."""
    suffixes = ("query", "key", "value", "dense")
    layers = [module for name, module in model.named_modules()
              if name.startswith("encoder.") and name.endswith(suffixes)]

    def width(layer: torch.nn.Module) -> int:
        return int(getattr(layer, "quantized", layer).in_features)

    inputs = {size: torch.randn(windows, 512, size, dtype=dtype) for size in {width(layer) for layer in layers}}
    return lambda: [layer(inputs[width(layer)]) for layer in layers]


def timed(candidates: dict[str, Callable[[], object]], repeats: int) -> dict[str, float]:
    """Median seconds of each candidate over ``repeats`` interleaved repeats, after one warm-up each."""
    seconds: dict[str, list[float]] = {name: [] for name in candidates}
    with torch.inference_mode():
        for run in candidates.values():
            run()
        for _ in range(repeats):
            for name, run in candidates.items():
                started = time.perf_counter()
                run()
                seconds[name].append(time.perf_counter() - started)
    return {name: statistics.median(values) for name, values in seconds.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=6)
    parser.add_argument("--windows", type=int, default=8, help="512-token windows per forward (4,096 tokens at 8)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    warnings.simplefilter("ignore")
    model = BertModel.from_pretrained(backbone_dir()).eval()
    batched = quantize_linears(copy.deepcopy(model), per_window=False)
    per_window = quantize_linears(copy.deepcopy(model))
    bfloat16 = copy.deepcopy(model).to(torch.bfloat16)
    tokens = args.windows * 512
    ids = np.random.default_rng(0).integers(1000, 20000, size=(args.windows, 512))

    def shaped(length: int) -> torch.Tensor:
        return torch.tensor(ids.reshape(-1)[: tokens - tokens % length].reshape(-1, length))

    candidates: dict[str, Callable[[], object]] = {
        "float32": lambda: model(input_ids=shaped(512)),
        "int8 batched": lambda: batched(input_ids=shaped(512)),
        "int8 per window": lambda: per_window(input_ids=shaped(512)),
        "int8 per window, 384-token windows": lambda: per_window(input_ids=shaped(384)),
        "int8 per window, 256-token windows": lambda: per_window(input_ids=shaped(256)),
        "bfloat16": lambda: bfloat16(input_ids=shaped(512)),
        "bfloat16, 256-token windows": lambda: bfloat16(input_ids=shaped(256)),
    }
    with tempfile.TemporaryDirectory() as workdir:
        try:
            candidates.update(onnx_candidates(model, ids, args.threads, Path(workdir)))
        except ImportError:
            print("(onnxruntime/onnx not installed: ONNX Runtime rows left out)")
        seconds = timed(candidates, args.repeats)
    base = seconds["float32"]
    print(f"MiniLM-L6 encoder, {tokens:,} tokens per pass, {args.threads} threads, torch {torch.__version__}; "
          f"medians of {args.repeats} interleaved repeats")
    print("| candidate | s per pass | tokens/s | vs float32 |\n|---|---|---|---|")
    for name, median in seconds.items():
        print(f"| {name} | {median:.3f} | {tokens / median:,.0f} | {base / median:.2f}x |")
    linears = timed({
        "float32": linear_layers(model, args.windows),
        "int8 per window": linear_layers(per_window, args.windows),
        "int8 batched": linear_layers(batched, args.windows),
        "bfloat16": linear_layers(bfloat16, args.windows, torch.bfloat16),
    }, args.repeats)
    share = linears["float32"] / base
    print(f"\nThe 36 linear layers alone, same tokens: {share:.0%} of the float32 encoder pass")
    print("| linears in | s | vs float32 | most the whole encoder can gain |\n|---|---|---|---|")
    for name, median in linears.items():
        speedup = linears["float32"] / median
        print(f"| {name} | {median:.3f} | {speedup:.2f}x | {1 / (1 - share + share / speedup):.2f}x |")


if __name__ == "__main__":
    main()
