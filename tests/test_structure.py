"""Structure-safe units (markdown, code, chat, CJK), force-keep and budgets in the reader's tokens."""

from __future__ import annotations

import json
import re
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cprs_core import BudgetError, BudgetTokenizerError, CompressionRequest, CPRSCompressor, KeepError
from cprs_core.keep import join_patterns
from cprs_core.remote import RemoteCompressor
from cprs_core.text_units import paragraph_starts, segment
from cprs_integrations.cli import main

from .live_server import serve
from .tiny_checkpoint import build_qwen2_tokenizer

QUESTION = "What is the code?"
FILLER = "Nothing here is a number at all. " * 6
CONTEXT = f"{FILLER}The code is 4471. {FILLER}Keep this line. {FILLER}"

MARKDOWN_PIECES = st.sampled_from([
    "# Title", "## Section two", "Plain sentence. Another one!", "- item one. still item", "1. numbered item",
    "  continued line", "| a | b |", "|---|---|", "| 1. x | 2 |", "```python", "```", "x = 1  # code. line",
    "", "User: hello there. How are you?", "Assistant: fine. Thanks!", "你好。再见！「好的。」他说", "  ",
])


@settings(max_examples=200, deadline=None)
@given(lines=st.lists(MARKDOWN_PIECES, max_size=14), kind=st.sampled_from(["sentence", "paragraph", "line"]))
def test_every_unit_is_a_trimmed_substring_at_its_offsets_in_order(lines: list[str], kind: str) -> None:
    text = "\n".join(lines)
    units = segment(text, kind)  # type: ignore[arg-type]
    for index, unit in enumerate(units):
        piece = text[unit.start : unit.end]
        assert piece and piece == piece.strip()
        assert all(anchor != index and 0 <= anchor < len(units) for anchor in unit.anchors)
    assert all(first.end <= second.start for first, second in zip(units, units[1:]))
    covered = "".join(text[unit.start : unit.end] for unit in units)
    assert re.sub(r"\s", "", covered) == re.sub(r"\s", "", text)  # no text is lost between units


def test_paragraph_starts_follow_blank_lines_even_with_spaces_on_them() -> None:
    text = "One. Two.\n \t\nThree.\nFour.\r\n\r\nFive."
    ranges = [(unit.start, unit.end) for unit in segment(text, "sentence")]
    assert [text[a:b] for a, b in ranges] == ["One.", "Two.", "Three.", "Four.", "Five."]
    assert paragraph_starts(text, ranges) == [True, False, True, False, True]
    assert paragraph_starts(text, []) == []


@settings(max_examples=50, deadline=None)
@given(code=st.lists(st.sampled_from(["a = 1", "b = a. c", "print(b)  # done. really", "", "z = 'x. y'"]),
                     min_size=1, max_size=8))
def test_code_block_lines_are_whole_units_and_kept_text_is_whole_lines(code: list[str]) -> None:
    text = "Intro sentence. More.\n\n```\n" + "\n".join(code) + "\n```\nAfter."
    lines = {line.strip() for line in code if line.strip()}
    for kind in ("sentence", "paragraph"):
        inside = [text[u.start : u.end] for u in segment(text, kind) if text.index("```") <= u.start < text.rindex("```")]
        if kind == "sentence":
            assert set(inside) - {"```"} == lines
        else:
            assert inside == [text[text.index("```") : text.rindex("```") + 3]]


def test_markdown_headings_fences_and_tables_are_kept_with_what_they_head(digit_compressor: CPRSCompressor) -> None:
    text = ("# Manual\n\nIntro words.\n\n## Codes\n\nNothing in this part.\n\n```ini\nname = alpha\ncode = 4471\n"
            "mode = beta\n```\n\n## Table\n\n| key | value |\n|-----|-------|\n| alpha | beta |\n| gamma | 982 |\n\n"
            f"{FILLER}")
    result = digit_compressor.compress(text, QUESTION, "needle", granularity="sentence")
    assert [line for line in result.text.split("\n") if line] == [  # neighbouring units form one span
        "# Manual", "## Codes", "```ini", "code = 4471", "```", "## Table", "| key | value |", "|-----|-------|",
        "| gamma | 982 |",
    ]
    paragraphs = digit_compressor.compress(text, QUESTION, "needle", granularity="paragraph").text
    assert "```ini\nname = alpha\ncode = 4471\nmode = beta\n```" in paragraphs and "| alpha | beta |" not in paragraphs


def test_chat_turns_keep_their_speaker(digit_compressor: CPRSCompressor) -> None:
    chat = (f"User: I lost my code. {FILLER}\nAssistant: {FILLER} Your code is 4471. {FILLER}\n"
            f"User: Thanks. {FILLER}")
    sentences = digit_compressor.compress(chat, QUESTION, "needle", granularity="sentence").text
    assert sentences == "Assistant:\nYour code is 4471."
    turns = digit_compressor.compress(chat, QUESTION, "needle", granularity="paragraph").text
    assert turns.startswith("Assistant: ") and "User:" not in turns


def test_cjk_sentences_split_without_spaces(digit_compressor: CPRSCompressor) -> None:
    text = "今天天气很好。我们去公园散步！密码是4471。「明天见。」他说"
    assert [text[u.start : u.end] for u in segment(text, "sentence")] == [
        "今天天气很好。", "我们去公园散步！", "密码是4471。", "「明天见。」", "他说"
    ]
    assert digit_compressor.compress(text, QUESTION, "needle", granularity="sentence").text == "密码是4471。"


def test_line_granularity_keeps_whole_lines(digit_compressor: CPRSCompressor) -> None:
    code = "def f():\n    name = 'alpha'\n    code = 4471  # the. code\n    return code\n"
    assert digit_compressor.compress(code, QUESTION, "needle", granularity="line").text == "code = 4471  # the. code"


def test_force_keep_literal_regex_and_spans_add_to_the_critics_choice(digit_compressor: CPRSCompressor) -> None:
    start = CONTEXT.index("Keep this")
    for keep in ({"keep": ["Keep this line."]}, {"keep": [re.compile(r"keep THIS \w+", re.I)]},
                 {"keep_spans": [(start, start + 9)]}):
        result = digit_compressor.compress(CONTEXT, QUESTION, "needle", granularity="sentence", **keep)
        assert result.text == "The code is 4471.\nKeep this line.", keep
        assert result.metadata["forced_tokens"] > 0
    plain = digit_compressor.compress(CONTEXT, QUESTION, "needle", granularity="sentence")
    assert plain.text == "The code is 4471." and plain.metadata["forced_tokens"] == 0
    tokens = digit_compressor.compress(CONTEXT, QUESTION, "needle", granularity="token", keep=["Keep"])
    assert [span.text for span in tokens.spans] == ["4471", "Keep"]


def test_force_keep_counts_against_the_budget_first(digit_compressor: CPRSCompressor) -> None:
    forced = digit_compressor.count_tokens("Keep this line.")
    needle = digit_compressor.count_tokens(" The code is 4471.")
    both = digit_compressor.compress(CONTEXT, QUESTION, "needle", granularity="sentence",
                                     target_tokens=forced + needle + 1, keep=["Keep this"])
    assert both.text == "The code is 4471.\nKeep this line."
    only_forced = digit_compressor.compress(CONTEXT, QUESTION, "needle", granularity="sentence",
                                            target_tokens=forced + 1, keep=["Keep this"])
    assert only_forced.text == "Keep this line."
    with pytest.raises(BudgetError, match="force-kept text .* does not fit in the budget of"):
        digit_compressor.compress(CONTEXT, QUESTION, "needle", granularity="sentence", target_tokens=forced + 1,
                                  keep=["Keep this", "code is"])


@pytest.mark.parametrize(("options", "message"), [
    ({"keep": "Keep"}, "not a single string"),
    ({"keep": [""]}, "non-empty strings"),
    ({"keep": [re.compile("x*")]}, "matches the empty string"),
    ({"keep_spans": [(5, 2)]}, "start < end"),
    ({"keep_spans": [(0, 10**6)]}, "context's length"),
    ({"keep": None}, "keep must be a list .* got NoneType"),
    ({"keep": (word for word in ["Keep"])}, "keep must be a list .* got generator"),
    ({"keep_spans": None}, "keep_spans must be a list of .* got NoneType"),
    ({"keep_spans": (0, 5)}, r"keep_spans entries are \(start, end\) .* got 0"),
])
def test_bad_keep_options_are_clear_errors(digit_compressor: CPRSCompressor, options: dict, message: str) -> None:
    with pytest.raises(KeepError, match=message):
        digit_compressor.compress(CONTEXT, QUESTION, "needle", granularity="sentence", **options)


def test_budget_in_a_transformers_tokenizer_and_a_counter(digit_compressor: CPRSCompressor) -> None:
    reader = build_qwen2_tokenizer()
    for budget_tokenizer, count in ((reader, lambda text: len(reader.encode(text, add_special_tokens=False))),
                                    (len, len)):
        result = digit_compressor.compress(CONTEXT, QUESTION, "needle", granularity="token", target_tokens=12,
                                           budget_tokenizer=budget_tokenizer)
        counts = result.metadata["budget_tokenizer"]
        assert counts["original_tokens"] == count(CONTEXT)
        assert counts["compressed_tokens"] == count(result.text) <= 12
        assert "4471" in result.text
        assert result.original_tokens == digit_compressor.count_tokens(CONTEXT)  # both counts are reported
    by_chars = digit_compressor.compress(CONTEXT, QUESTION, "needle", granularity="sentence", target_ratio=0.1,
                                         budget_tokenizer=len)
    assert len(by_chars.text) <= int(len(CONTEXT) * 0.1) and "The code is 4471." in by_chars.text
    tiny_share = digit_compressor.compress(CONTEXT, QUESTION, "needle", granularity="sentence", target_ratio=0.001,
                                           budget_tokenizer=len)  # a share no sentence fits in: the best one alone
    assert tiny_share.text == "The code is 4471." and len(tiny_share.text) > int(len(CONTEXT) * 0.001)


def test_budget_in_a_tiktoken_encoding(digit_compressor: CPRSCompressor, monkeypatch: pytest.MonkeyPatch) -> None:
    tiktoken = pytest.importorskip("tiktoken")
    encoding = tiktoken.Encoding("bytes_test", pat_str=r"\S+|\s+", mergeable_ranks={bytes([i]): i for i in range(256)},
                                 special_tokens={})
    monkeypatch.setitem(tiktoken.registry.ENCODINGS, "bytes_test", encoding)
    result = digit_compressor.compress(CONTEXT, QUESTION, "needle", granularity="sentence", target_tokens=20,
                                       budget_tokenizer="bytes_test")
    assert result.text == "The code is 4471." and result.metadata["budget_tokenizer"]["name"] == "bytes_test"
    assert result.metadata["budget_tokenizer"]["compressed_tokens"] == len(result.text.encode())
    with pytest.raises(BudgetTokenizerError, match="not a tiktoken encoding name"):
        digit_compressor.compress(CONTEXT, QUESTION, "needle", target_tokens=5, budget_tokenizer="no_such_encoding")
    with pytest.raises(BudgetTokenizerError, match="must be a transformers tokenizer"):
        digit_compressor.compress(CONTEXT, QUESTION, "needle", target_tokens=5, budget_tokenizer=42)
    with pytest.raises(BudgetTokenizerError, match="int >= 0"):
        digit_compressor.compress(CONTEXT, QUESTION, "needle", target_tokens=5, budget_tokenizer=lambda text: "3")
    with pytest.raises(BudgetTokenizerError, match="failed on a text: TypeError: .*take one str"):  # was a
        digit_compressor.compress(CONTEXT, QUESTION, "needle", target_tokens=5,  # CompressionFailedError
                                  budget_tokenizer=lambda text, model: len(text))
    with pytest.raises(BudgetError, match="no kept text fits in 2 tokens"):
        digit_compressor.compress(CONTEXT, QUESTION, "needle", granularity="paragraph", target_tokens=2,
                                  budget_tokenizer=len)


def test_a_backtracking_keep_regex_is_stopped_without_holding_other_threads(digit_compressor: CPRSCompressor) -> None:
    [pattern] = join_patterns([], ["(a|aa)+$"])  # as a server or the CLI compiles a keep_regex
    ticks: list[float] = []
    done = threading.Event()

    def tick() -> None:
        while not done.is_set():
            ticks.append(time.monotonic())
            time.sleep(0.01)

    ticker = threading.Thread(target=tick)
    ticker.start()
    try:
        with pytest.raises(KeepError, match=r"took more than .* simplify it"):
            digit_compressor.compress(CONTEXT + " " + "a" * 40 + "b", QUESTION, "needle", keep=[pattern])
    finally:
        done.set()
        ticker.join()
    assert max(later - earlier for earlier, later in zip(ticks, ticks[1:])) < 1.0  # matched without the lock
    ordinary = join_patterns([], ["^Nothing"])
    kept = digit_compressor.compress(CONTEXT, QUESTION, "needle", granularity="sentence", keep=ordinary)
    assert kept.text.startswith("Nothing here is a number at all.")  # ordinary patterns work as before
    with pytest.raises(KeepError, match=r"'\(\?R\)' ran out of memory matching"):  # was a
        digit_compressor.compress(CONTEXT, QUESTION, "needle", keep=join_patterns([], ["(?R)"]))  # 500 on a server
    with pytest.raises(KeepError, match=r"writes out to about 1000000000 items, more than 100000"):  # compiling
        join_patterns([], ["((a{1000}){1000}){1000}"])  # it took the process's memory


def test_a_keep_regex_fails_before_its_windows_join_the_models_batches(digit_compressor: CPRSCompressor) -> None:
    critic = digit_compressor.critic
    scored: list[int] = []
    score_windows = critic.score_windows
    critic.score_windows = lambda prefix, windows, tags: scored.append(len(windows)) or score_windows(prefix, windows, tags)
    good = CompressionRequest(CONTEXT, QUESTION, "needle", granularity="sentence")
    try:
        digit_compressor.compress_batch([good])
        alone = sum(scored)
        bad = CompressionRequest(CONTEXT + " " + "a" * 40 + "b", QUESTION, keep=join_patterns([], ["(a|aa)+$"]))
        failed, done = digit_compressor.compress_batch([bad, good])
    finally:
        del critic.score_windows
    assert isinstance(failed, KeepError) and "The code is 4471." in done.text
    assert alone > 0 and sum(scored) == 2 * alone  # the good request's windows again, none of the bad one's


def test_a_keep_regex_fails_before_a_single_request_scores_its_windows(
    digit_compressor: CPRSCompressor, monkeypatch: pytest.MonkeyPatch
) -> None:
    critic = digit_compressor.critic
    submitted: list[int] = []
    submit = critic.submit_windows
    monkeypatch.setattr(critic, "submit_windows",
                        lambda prefix, windows, tags: submitted.append(len(windows)) or submit(prefix, windows, tags))
    with pytest.raises(KeepError, match="took more than"):  # the streaming path: windows scored while tokenizing
        digit_compressor.compress(CONTEXT + " " + "a" * 40 + "b", QUESTION, keep=join_patterns([], ["(a|aa)+$"]))
    assert submitted == []
    assert "4471" in digit_compressor.compress(CONTEXT, QUESTION, "needle", keep=["Keep this"]).text and submitted


def test_keep_and_budget_tokenizer_through_the_server_and_the_cli(
    digit_compressor: CPRSCompressor, digit_tagger_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with serve(digit_compressor) as url:
        remote = RemoteCompressor(url)
        result = remote.compress(CONTEXT, QUESTION, "needle", granularity="sentence",
                                 keep=[re.compile(r"keep THIS", re.I)], keep_spans=[(0, 7)])
        assert result.text == "Nothing here is a number at all.\nThe code is 4471.\nKeep this line."
        body = json.dumps({"context": CONTEXT, "query": QUESTION, "keep_regex": ["("]}).encode()
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(urllib.request.Request(f"{url}/v1/compress", data=body, method="POST", headers={"Content-Type": "application/json"}))
        assert refused.value.code == 400 and json.loads(refused.value.read())["error"]["type"] == "KeepError"
        with pytest.raises(BudgetTokenizerError, match="tiktoken encoding name only"):
            remote.compress(CONTEXT, QUESTION, target_tokens=5, budget_tokenizer=len)
    text_file = tmp_path / "context.txt"
    text_file.write_text(CONTEXT)
    argv = ["compress", "-q", QUESTION, "-i", "needle", "--model", str(digit_tagger_dir), "--granularity", "sentence",
            "--keep", "Keep this", "--format", "json", str(text_file)]
    assert main([*argv[:-1], "--keep-regex", "^Nothing", str(text_file)]) == 0
    output = json.loads(capsys.readouterr().out)
    assert output["text"] == "Nothing here is a number at all.\nThe code is 4471.\nKeep this line."
    assert main([*argv[:-1], "--keep-regex", "(", str(text_file)]) == 1
    assert "not a valid regular expression" in capsys.readouterr().err
