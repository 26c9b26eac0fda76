"""The window-parallel engine end to end on real checkpoints: windows, offsets, batching, budgets, errors."""

from __future__ import annotations

import json
import unicodedata
import shutil
from pathlib import Path

import pytest
import torch

from cprs_core import (
    BudgetError,
    CompressionRequest,
    ContextTooLargeError,
    ContextTypeError,
    CPRSCompressor,
    DeviceError,
    EmptyContextError,
    GranularityError,
    ModelLoadError,
    QwenCritic,
    TextDecodingError,
    WindowSizeError,
)

UNICODE_TEXT = (
    "Ünïcödé façade — naïve café. 東京は晴れ。Emoji 🙂👍🏽 and combining e\u0301 marks.\n\n"
    "Zero-width\u200bjoiner, tabs\tand  double  spaces. Ελληνικά και русский текст. "
) * 30


def test_windows_cover_every_token_once_and_offsets_index_the_text(tiny_compressor: CPRSCompressor) -> None:
    engine = tiny_compressor.engine
    tokens = engine.critic.tokenize_context(UNICODE_TEXT)
    plan = engine.plan(tokens, "fact", "Which city is sunny?")
    covered = [index for window in plan.windows for index in window]
    assert covered == list(range(len(tokens.ids)))
    assert all(len(plan.prefix_ids) + len(window) <= engine.window_size for window in plan.windows)
    assert len(plan.windows) > 5
    # offsets are monotone, inside the text, and re-tokenizing each window's text gives its tokens back
    starts = [start for start, _ in tokens.offsets]
    assert starts == sorted(starts) and tokens.offsets[-1][1] <= len(UNICODE_TEXT)
    for window in plan.windows:
        start, end = tokens.offsets[window.start][0], tokens.offsets[window.stop - 1][1]
        assert engine.critic.tokenize_context(UNICODE_TEXT[start:end]).ids == tokens.ids[window.start : window.stop]
    # token texts tile the whole string in order; only combining marks folded by NFC fall between tokens
    pieces = _distinct(tokens.offsets)
    assert pieces[0][0] == 0 and pieces[-1][1] == len(UNICODE_TEXT)
    for (_, end), (start, _) in zip(pieces, pieces[1:]):
        assert all(unicodedata.category(c).startswith("M") for c in UNICODE_TEXT[end:start])


def _distinct(offsets: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Byte-level BPE can split one character over several tokens that share its offsets."""
    seen: list[tuple[int, int]] = []
    for pair in offsets:
        if not seen or pair[0] >= seen[-1][1]:
            seen.append(pair)
    return seen


def test_spans_never_cut_a_combining_mark(tiny_compressor: CPRSCompressor) -> None:
    context = "Plain words first. " * 20 + "Accented e\u0301 ends here"
    result = tiny_compressor.compress(context, "q", granularity="token", target_ratio=1.0)
    assert result.text.replace("\n", "").startswith("Plain") and "e\u0301" in result.spans[-1].text


def test_prefix_is_upstreams_template(tiny_compressor: CPRSCompressor) -> None:
    critic = tiny_compressor.critic
    prefix = critic.encode_prefix("INSTR", "QUERY")
    text = critic.tokenizer.decode(prefix)
    assert text == "<|im_start|>system\nINSTR<|im_end|>\n<|im_start|>user\nQUERY<|im_end|>\n<|im_start|>context\n"
    im_start = critic.tokenizer.convert_tokens_to_ids("<|im_start|>")
    assert im_start == 151644 and prefix.count(im_start) == 3


@pytest.mark.parametrize("granularity", ["token", "sentence", "paragraph"])
def test_spans_are_exact_slices_in_order(tiny_compressor: CPRSCompressor, granularity: str) -> None:
    result = tiny_compressor.compress(UNICODE_TEXT, "Which city is sunny?", granularity=granularity)
    assert result.spans, "a random critic still tags something on this much text"
    for span in result.spans:
        assert UNICODE_TEXT[span.start : span.end] == span.text and span.text.strip() == span.text
        assert 0.0 <= span.score <= 1.0 and span.tag == "fact"
    assert [s.start for s in result.spans] == sorted(s.start for s in result.spans)
    assert all(a.end <= b.start for a, b in zip(result.spans, result.spans[1:]))
    assert result.text == "\n".join(span.text for span in result.spans)
    assert 0 < result.compressed_tokens <= result.original_tokens


@pytest.mark.slow
def test_results_do_not_depend_on_window_batching(tiny_cprs_dir: Path) -> None:
    one_at_a_time = CPRSCompressor(QwenCritic.from_pretrained(tiny_cprs_dir, device="cpu", max_batch_tokens=1), 256)
    all_at_once = CPRSCompressor(QwenCritic.from_pretrained(tiny_cprs_dir, device="cpu", max_batch_tokens=10**6), 256)
    a = one_at_a_time.compress(UNICODE_TEXT, "Which city?", granularity="token")
    b = all_at_once.compress(UNICODE_TEXT, "Which city?", granularity="token")
    assert a.windows > 3 and [(s.start, s.end, s.tag) for s in a.spans] == [(s.start, s.end, s.tag) for s in b.spans]
    assert [s.score for s in a.spans] == pytest.approx([s.score for s in b.spans], abs=1e-5)


@pytest.mark.slow
def test_batch_of_requests_equals_one_by_one(tiny_compressor: CPRSCompressor) -> None:
    contexts = [UNICODE_TEXT[:3000], UNICODE_TEXT[1000:5000], UNICODE_TEXT]
    batched = tiny_compressor.compress_many(contexts, "Which city?")
    for context, result in zip(contexts, batched):
        single = tiny_compressor.compress(context, "Which city?")
        assert [(s.start, s.end) for s in single.spans] == [(s.start, s.end) for s in result.spans]


@pytest.mark.slow
def test_progress_reports_every_window_and_leaves_results_unchanged(digit_compressor: CPRSCompressor) -> None:
    context = "Plain words and a code 12345 here. " * 400
    calls: list[tuple[int, int]] = []
    with_progress = digit_compressor.compress(context, "codes?", progress=lambda done, total: calls.append((done, total)))
    total = with_progress.windows
    assert total > 16, "the context should need more windows than one progress chunk"
    assert calls[-1] == (total, total)
    assert [done for done, _ in calls] == sorted({done for done, _ in calls})  # strictly increasing
    assert with_progress.to_dict() == digit_compressor.compress(context, "codes?").to_dict()


@pytest.mark.slow
@pytest.mark.parametrize(("granularity", "ratio"), [("token", None), ("sentence", 0.3)])
def test_windows_are_scored_while_the_rest_is_tokenized_with_the_batch_path_result(
    digit_compressor: CPRSCompressor, monkeypatch: pytest.MonkeyPatch, granularity: str, ratio: float | None
) -> None:
    critic, engine = digit_compressor.critic, digit_compressor.engine
    monkeypatch.setattr(critic, "first_part_chars", 3000)
    events: list[str] = []
    parts, submit = critic.tokenize_context_parts, critic.submit_windows

    def recorded_parts(text: str):
        for part in parts(text):
            events.append("tokenized")
            yield part

    def recorded_submit(prefix_ids, windows, tags):
        events.append("submitted")
        return submit(prefix_ids, windows, tags)

    monkeypatch.setattr(critic, "tokenize_context_parts", recorded_parts)
    monkeypatch.setattr(critic, "submit_windows", recorded_submit)
    request = CompressionRequest("Plain words and a code 12345 here. " * 400, "codes?", granularity=granularity,
                                 target_ratio=ratio)  # fmt: skip
    streamed = engine.compress(request)
    assert events[:3] == ["tokenized", "submitted", "tokenized"], "the first windows must go out before the rest"
    assert streamed.to_dict() == engine.compress_batch([request])[0].to_dict()
    assert streamed.windows > 16 and "12345" in streamed.text


def test_a_context_found_too_large_in_a_later_part_is_refused(
    digit_compressor: CPRSCompressor, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(digit_compressor.critic, "first_part_chars", 300)
    first_part = next(digit_compressor.critic.tokenize_context_parts("word " * 2000))
    small = CPRSCompressor(digit_compressor.critic, window_size=128, max_context_tokens=len(first_part.ids) + 10)
    with pytest.raises(ContextTooLargeError, match=f"max_context_tokens={len(first_part.ids) + 10}"):
        small.compress("word " * 2000, "q")


@pytest.mark.slow
def test_compression_is_deterministic(tiny_compressor: CPRSCompressor) -> None:
    first = tiny_compressor.compress(UNICODE_TEXT, "q", granularity="sentence", target_ratio=0.2)
    assert first.to_dict() == tiny_compressor.compress(UNICODE_TEXT, "q", granularity="sentence", target_ratio=0.2).to_dict()


def test_digit_tagger_keeps_exactly_the_numbers_across_window_edges(digit_compressor: CPRSCompressor) -> None:
    filler = "The weather was calm and the sea was quiet. "
    numbers = ["31415926535897932384626433832795", "271828", "1618033988"]
    context = filler * 30 + f"Code {numbers[0]} here. " + filler * 30 + f"Keys {numbers[1]} and {numbers[2]}. " + filler * 5
    result = digit_compressor.compress(
        context, "What are the codes?", "tag the numbers with 'needle'", granularity="token"
    )
    assert [span.text for span in result.spans] == numbers
    assert all(span.tag == "needle" for span in result.spans)  # the LM-head label row names the tag
    assert result.compressed_tokens == sum(len(n) for n in numbers)  # Qwen2 splits digits one per token
    tokens = digit_compressor.critic.tokenize_context(context)
    plan = digit_compressor.engine.plan(tokens, "tag the numbers with 'needle'", "What are the codes?")
    edges = {tokens.offsets[w.start][0] for w in plan.windows[1:]}
    first = result.spans[0]
    assert any(first.start < edge < first.end for edge in edges), "the long number should straddle a window edge"


def test_digit_tagger_by_sentence_and_paragraph(digit_compressor: CPRSCompressor) -> None:
    context = "No digits here. The answer is 42 today! Nothing else.\n\nSecond paragraph without. Also none."
    by_sentence = digit_compressor.compress(context, "answer?", granularity="sentence")
    assert [s.text for s in by_sentence.spans] == ["The answer is 42 today!"]
    by_paragraph = digit_compressor.compress(context, "answer?", granularity="paragraph")
    assert [s.text for s in by_paragraph.spans] == ["No digits here. The answer is 42 today! Nothing else."]


def test_second_tag_from_instruction_is_reported(digit_compressor: CPRSCompressor) -> None:
    instruction = "## tagging rule:\n- tag the names with 'chain'\n- tag the numbers with 'needle'"
    result = digit_compressor.compress("Room 101 is open.", "which room?", instruction, granularity="token")
    assert [(s.text, s.tag) for s in result.spans] == [("101", "needle")]


def test_budgets_are_honoured(digit_compressor: CPRSCompressor) -> None:
    context = "".join(f"Sentence {i} talks about item {i * 7}. Plain words follow here. " for i in range(40))
    by_tokens = digit_compressor.compress(context, "items?", granularity="token", target_tokens=25)
    assert by_tokens.compressed_tokens <= 25 and all(s.text.isdigit() for s in by_tokens.spans)
    by_ratio = digit_compressor.compress(context, "items?", granularity="sentence", target_ratio=0.25)
    assert by_ratio.compressed_tokens <= by_ratio.original_tokens * 0.25
    assert all(any(c.isdigit() for c in s.text) for s in by_ratio.spans)  # digit sentences outrank plain ones
    assert by_ratio.ratio >= 4.0 and by_ratio.keep_ratio <= 0.25


def test_a_share_no_sentence_fits_in_keeps_the_best_sentence_alone(digit_compressor: CPRSCompressor) -> None:
    context = "Plain words come first here. The room is 4471 today. More plain words close it."
    result = digit_compressor.compress(context, "which room?", granularity="sentence", target_ratio=0.05)
    assert [span.text for span in result.spans] == ["The room is 4471 today."]
    assert result.compressed_tokens > result.metadata["budget"]  # over the share, which not one sentence fits in
    with pytest.raises(BudgetError, match="no sentence fits"):  # a token count stays a hard limit
        digit_compressor.compress(context, "which room?", granularity="sentence", target_tokens=2)


def test_budget_errors(tiny_compressor: CPRSCompressor) -> None:
    text = "A fairly long sentence that needs more than three tokens to hold it. " * 5
    with pytest.raises(BudgetError, match="no sentence fits"):
        tiny_compressor.compress(text, "q", granularity="sentence", target_tokens=3)
    with pytest.raises(BudgetError, match="not both"):
        tiny_compressor.compress(text, "q", target_tokens=3, target_ratio=0.5)
    for bad_ratio in (0.0, 1.5, -0.1):
        with pytest.raises(BudgetError):
            tiny_compressor.compress(text, "q", target_ratio=bad_ratio)
    with pytest.raises(BudgetError):
        tiny_compressor.compress(text, "q", target_tokens=0)


def test_bad_inputs_get_clear_errors(tiny_compressor: CPRSCompressor, tiny_cprs_dir: Path) -> None:
    with pytest.raises(EmptyContextError):
        tiny_compressor.compress("", "q")
    with pytest.raises(EmptyContextError):
        tiny_compressor.compress(" \n\t ", "q")
    with pytest.raises(TextDecodingError, match="byte 5"):
        tiny_compressor.compress(b"valid\xff\xfe rest", "q")
    assert tiny_compressor.compress("Café ok.".encode(), "q").original_tokens > 0
    with pytest.raises(ContextTypeError):
        tiny_compressor.compress(12345, "q")  # type: ignore[arg-type]
    with pytest.raises(GranularityError):
        tiny_compressor.compress("text", "q", granularity="word")  # type: ignore[arg-type]
    with pytest.raises(WindowSizeError, match="leaves no room"):
        tiny_compressor.compress("some context", "a very long question " * 80)
    small = CPRSCompressor(tiny_compressor.critic, window_size=256, max_context_tokens=50)
    with pytest.raises(ContextTooLargeError, match="max_context_tokens=50"):
        small.compress("word " * 200, "q")
    with pytest.raises(WindowSizeError, match="32768 positions"):
        CPRSCompressor(tiny_compressor.critic, window_size=40000)


def test_bad_model_paths_devices_and_dtypes(tiny_cprs_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="not a local directory"):
        CPRSCompressor.from_pretrained(tmp_path / "missing")
    with pytest.raises(ModelLoadError, match="Hugging Face cache"):
        CPRSCompressor.from_pretrained("Tongyi-Zhiwen/QwenLong-CPRS-7B")
    with pytest.raises(ModelLoadError, match="is a file"):
        CPRSCompressor.from_pretrained(tiny_cprs_dir / "config.json")
    with pytest.raises(ModelLoadError, match="model path is empty"):
        CPRSCompressor.from_pretrained(" ")
    with pytest.raises(DeviceError, match="unknown dtype"):
        CPRSCompressor.from_pretrained(tiny_cprs_dir, dtype="int8")
    with pytest.raises(DeviceError, match="float16 is not supported on CPU"):
        CPRSCompressor.from_pretrained(tiny_cprs_dir, device="cpu", dtype="float16")
    with pytest.raises(DeviceError, match="unknown device"):
        CPRSCompressor.from_pretrained(tiny_cprs_dir, device="gpu0")
    if not torch.cuda.is_available():
        with pytest.raises(DeviceError, match="no CUDA"):
            CPRSCompressor.from_pretrained(tiny_cprs_dir, device="cuda")
    with pytest.raises(WindowSizeError):
        CPRSCompressor.from_pretrained(tiny_cprs_dir, device="cpu", window_size=10**6)


def test_plain_qwen2_without_critic_head_is_refused(tiny_cprs_dir: Path, tmp_path: Path) -> None:
    from safetensors.torch import load_file, save_file

    plain = tmp_path / "plain-qwen2"
    shutil.copytree(tiny_cprs_dir, plain)
    weights = {k: v for k, v in load_file(plain / "model.safetensors").items() if not k.startswith("cls_head")}
    save_file(weights, plain / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ModelLoadError, match="no cls_head"):
        CPRSCompressor.from_pretrained(plain, device="cpu")
    config = json.loads((plain / "config.json").read_text())
    (plain / "config.json").write_text(json.dumps({**config, "model_type": "bert"}))
    with pytest.raises(ModelLoadError, match="'bert'"):
        QwenCritic.from_pretrained(plain, device="cpu")
    for broken, problem in (("{not json", "not a readable JSON file"), ("[1, 2]", "a JSON list, not an object")):
        (plain / "config.json").write_text(broken)
        with pytest.raises(ModelLoadError, match=problem):
            CPRSCompressor.from_pretrained(plain, device="cpu")
    (plain / "config.json").write_bytes(b'{"model_type": "\xff"}')
    with pytest.raises(ModelLoadError, match="not a readable JSON file"):
        CPRSCompressor.from_pretrained(plain, device="cpu")


def test_checkpoint_without_lm_head_still_compresses(digit_tagger_dir: Path, tmp_path: Path) -> None:
    from safetensors.torch import load_file, save_file

    headless = tmp_path / "no-lm-head"
    shutil.copytree(digit_tagger_dir, headless)
    weights = {k: v for k, v in load_file(headless / "model.safetensors").items() if k != "lm_head.weight"}
    save_file(weights, headless / "model.safetensors", metadata={"format": "pt"})
    compressor = CPRSCompressor.from_pretrained(headless, device="cpu", window_size=128)
    result = compressor.compress("Code 777 only.", "code?", "tag the codes with 'chain'", granularity="token")
    assert [(s.text, s.tag) for s in result.spans] == [("777", "chain")]


def test_compress_batch_isolates_errors(tiny_compressor: CPRSCompressor) -> None:
    outcomes = tiny_compressor.compress_batch(
        [CompressionRequest("Good text here.", "q"), CompressionRequest("", "q"), CompressionRequest(b"\xff", "q")]
    )
    assert outcomes[0].original_tokens > 0  # type: ignore[union-attr]
    assert isinstance(outcomes[1], EmptyContextError) and isinstance(outcomes[2], TextDecodingError)
