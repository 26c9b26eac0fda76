"""What upstream's endpoint returns, cprs returns too: span reading, sentence windows, truncation, prompt variants.

Every expected value here was worked out by hand from upstream's documented and observed behaviour
(``src/api_utils/run_api.py``, ``dataset.py``, README), on small hand-written texts; no upstream code is run.
"""

from __future__ import annotations

import warnings

import pytest
import torch

from cprs_core import (
    BudgetError,
    CompressionRequest,
    CompressionResult,
    ContextTooLargeError,
    ContextTruncatedWarning,
    CPRSCompressor,
    GranularityError,
    KeepError,
)
from cprs_core.prompt import LITERAL_INSTRUCTIONS, parse_tags, resolve_instruction
from cprs_core.sentence_windows import has_cjk, sentence_ends, sentence_windows
from cprs_core.upstream_spans import upstream_spans
from cprs_integrations.server import upstream
from cprs_integrations.server.schemas import UpstreamRequest

QUERY = "Which numbers appear?"

# "Alpha beta. Gamma delta epsilon. Zeta" as a byte-level BPE tokenizer cuts it: a leading space belongs to the word.
WORDS_TEXT = "Alpha beta. Gamma delta epsilon. Zeta"
WORDS_OFFSETS = [(0, 5), (5, 10), (10, 11), (11, 17), (17, 23), (23, 31), (31, 32), (32, 37)]


def read(text: str, offsets: list[tuple[int, int]], token_spans: list[tuple[int, int]], min_tokens: int, widen: bool):
    return [(s.char_start, s.char_end) for s in upstream_spans(text, offsets, token_spans, min_tokens, widen)]


def test_upstream_offsets_are_unstripped() -> None:
    # start = the first token's start (its leading space included); end = the next token's start
    assert read(WORDS_TEXT, WORDS_OFFSETS, [(1, 2), (3, 5)], 1, widen=False) == [(5, 10), (11, 23)]
    assert WORDS_TEXT[5:10] == " beta" and WORDS_TEXT[11:23] == " Gamma delta"
    # the last token's span ends at the end of the text
    assert read(WORDS_TEXT, WORDS_OFFSETS, [(7, 8)], 1, widen=False) == [(32, 37)]


def test_complete_sentence_widens_each_span_on_its_own() -> None:
    # " beta" widens left to the text start and right through "."; " delta" widens left to the end of the
    # previous widened span (11) and right through "epsilon."
    assert read(WORDS_TEXT, WORDS_OFFSETS, [(1, 2), (4, 5)], 1, widen=True) == [(0, 11), (11, 32)]
    # two spans in one sentence: the second starts inside the first's widened range, so it keeps its start
    # and the two overlap (upstream answers both)
    assert read(WORDS_TEXT, WORDS_OFFSETS, [(3, 4), (5, 6)], 1, widen=True) == [(11, 32), (23, 32)]


def test_a_dropped_span_still_bounds_the_next_widening() -> None:
    text = "one two three four five."
    offsets = [(0, 3), (3, 7), (7, 13), (13, 18), (18, 23), (23, 24)]
    # " two" (1 token) is dropped by min 2 tokens, but its end (7) stops " four five" from widening past it
    assert read(text, offsets, [(1, 2), (3, 5)], 2, widen=True) == [(7, 24)]
    assert read(text, offsets, [(3, 5)], 2, widen=True) == [(0, 24)]


def test_widening_reaches_the_end_of_a_text_without_delimiter() -> None:
    # deliberate difference: upstream stops one character short here ("alpha bet")
    assert read("alpha beta", [(0, 5), (5, 10)], [(0, 1)], 1, widen=True) == [(0, 10)]


def test_cjk_detection_is_upstreams_range() -> None:
    assert has_cjk("the capital is 東京")
    assert not has_cjk("plain English. ひらがな 한국어")  # kana and hangul are outside U+4E00..U+9FFF


def test_sentence_ends_follow_upstreams_marks() -> None:
    text = "你好。我们走吧！”他说. Next\n\nline|x"
    # 。 ends at 3; ！” counts as one mark (9); ". " takes its space (13); "\n\n" (19); | (24); the rest (25)
    assert sentence_ends(text) == [3, 9, 13, 19, 24, 25]
    assert sentence_ends("no mark at all") == [14]


def test_sentence_windows_pack_whole_sentences(digit_compressor: CPRSCompressor) -> None:
    critic = digit_compressor.critic
    text = "号12345。" * 7  # 7 tokens per sentence, alone or together
    tokens, windows = sentence_windows(text, critic.tokenize_context, critic.count_tokens, capacity=20)
    assert [(w.start, w.stop) for w in windows] == [(0, 14), (14, 28), (28, 42), (42, 49)]  # 2 sentences each
    assert tokens.ids == critic.tokenize_context(text).ids
    assert [tokens.offsets[w.start][0] for w in windows] == [0, 14, 28, 42]  # every window starts a sentence
    # one sentence longer than a window is cut into full windows instead of truncated
    _, long_windows = sentence_windows("号" + "1" * 30 + "。", critic.tokenize_context, critic.count_tokens, 20)
    assert [(w.start, w.stop) for w in long_windows] == [(0, 20), (20, 32)]


def test_engine_cuts_cjk_contexts_at_sentences_by_default(digit_compressor: CPRSCompressor) -> None:
    engine = digit_compressor.engine
    capacity = engine.window_size - len(engine.critic.encode_prefix(resolve_instruction("needle"), QUERY))
    per_window = capacity // 7  # whole 7-token sentences
    count = 3 * per_window + 1
    context = "号12345。" * count
    default = digit_compressor.compress(context, QUERY, "needle", granularity="token")
    fixed = digit_compressor.compress(context, QUERY, "needle", granularity="token", sentence_windows=False)
    assert default.windows == 4
    assert fixed.windows == -(-7 * count // capacity)
    assert fixed.windows < default.windows
    assert default.text == fixed.text == "\n".join(["12345"] * count)
    english = "Room 12345. " * count
    assert digit_compressor.compress(english, QUERY, "needle", granularity="token").windows == -(
        -len(engine.critic.tokenize_context(english).ids) // capacity
    )


def test_upstream_reading_through_the_engine(digit_compressor: CPRSCompressor) -> None:
    context = "The year was 1984. We counted 42 cats and 7 dogs"
    request = CompressionRequest(context, QUERY, "needle", granularity="sentence", upstream_spans=True)
    result = digit_compressor.compress_batch([request])[0]
    assert [span.text for span in result.spans] == ["The year was 1984.", " We counted 42 cats and 7 dogs", "7 dogs"]
    assert all(context[span.start : span.end] == span.text for span in result.spans)
    for granularity in ("paragraph", "line"):  # "line" was silently read as "token"
        with pytest.raises(GranularityError, match=f"upstream_spans.*not '{granularity}'"):
            digit_compressor.engine.compress(
                CompressionRequest(context, QUERY, granularity=granularity, upstream_spans=True))
    with pytest.raises(BudgetError, match="upstream_spans"):
        digit_compressor.engine.compress(CompressionRequest(context, QUERY, target_ratio=0.5, upstream_spans=True))
    with pytest.raises(KeepError, match="upstream_spans"):  # was silently ignored
        digit_compressor.engine.compress(CompressionRequest(context, QUERY, keep=["cats"], upstream_spans=True))


def test_window_edge_inside_a_multi_token_character_keeps_labels_aligned(digit_compressor: CPRSCompressor) -> None:
    engine = digit_compressor.engine
    critic = engine.critic
    capacity = engine.window_size - len(critic.encode_prefix(resolve_instruction("needle"), QUERY))
    context = ""
    for words in range(capacity):  # "a a a ..." is one token per word; 𠀀 is three byte-level tokens
        candidate = "a" + " a" * words + "\n𠀀123 then 45"
        offsets = critic.tokenize_context(candidate).offsets
        at_edge = offsets[capacity - 1 : capacity + 1]
        if len(at_edge) == 2 and at_edge[0] == at_edge[1] and candidate[slice(*at_edge[1])] == "𠀀":
            context = candidate
            break
    assert context, "no padding puts a window edge inside the character"
    result = digit_compressor.compress(context, QUERY, "needle", granularity="token", sentence_windows=False)
    assert result.windows >= 2
    assert [(span.text, span.start) for span in result.spans] == [("123", context.index("123")), ("45", len(context) - 2)]


def test_over_long_contexts_are_refused_unless_truncation_is_asked_for(digit_compressor: CPRSCompressor) -> None:
    context = "Room 1 is left. Room 2 is right. Room 3 is up. Room 4 is down."
    tokens = digit_compressor.critic.tokenize_context(context)
    limit = next(i for i, (start, _) in enumerate(tokens.offsets) if context[start:].startswith(" is up"))
    strict = CPRSCompressor(digit_compressor.critic, window_size=128, max_context_tokens=limit)
    with pytest.raises(ContextTooLargeError, match="truncate_over_length"):
        strict.compress(context, QUERY, "needle", granularity="token")
    lenient = CPRSCompressor(digit_compressor.critic, window_size=128, max_context_tokens=limit, truncate_over_length=True)
    for compress in (
        lambda: lenient.compress(context, QUERY, "needle", granularity="token"),  # the streaming path
        lambda: lenient.compress_batch([CompressionRequest(context, QUERY, "needle", granularity="token")])[0],
        lambda: lenient.compress(context, QUERY, "needle", granularity="token", sentence_windows=True),
    ):
        with pytest.warns(ContextTruncatedWarning, match=f"first {limit} tokens"):
            result = compress()
        assert result.text == "1\n2\n3"  # "Room 3" is inside the first `limit` tokens, "Room 4" is not
        assert result.original_tokens == limit and result.metadata["truncated"] is True
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert lenient.compress("Room 5.", QUERY, "needle", granularity="token").metadata["truncated"] is False


def test_keep_spans_past_the_cut_of_a_truncated_context_are_cut_with_it(digit_compressor: CPRSCompressor) -> None:
    """``keep_spans`` are checked against the whole context; a truncated one keeps what of them is left (a span past
    the cut under a budget was a ``CompressionFailedError`` wrapping an ``IndexError``)."""
    context = "Room 1 is left. Room 2 is right. Room 3 is up. Room 4 is down."
    tokens = digit_compressor.critic.tokenize_context(context)
    limit = next(i for i, (start, _) in enumerate(tokens.offsets) if context[start:].startswith(" is up"))
    lenient = CPRSCompressor(digit_compressor.critic, window_size=128, max_context_tokens=limit, truncate_over_length=True)
    across, past = (context.index("Room 3"), context.index(" is up") + 3), (context.index("Room 4"), len(context))
    options = {"granularity": "token", "target_tokens": limit, "keep_spans": [across, past]}
    for compress in (
        lambda: lenient.compress(context, QUERY, "needle", **options),  # the streaming path
        lambda: lenient.compress_batch([CompressionRequest(context, QUERY, "needle", **options)])[0],
    ):
        with pytest.warns(ContextTruncatedWarning):
            result = compress()
        assert isinstance(result, CompressionResult) and result.metadata["truncated"] is True
        assert "Room 3" in result.text and "Room 4" not in result.text


def test_literal_presets_are_what_upstreams_readme_sends() -> None:
    # the README's CPRS_PROMPT strings as bash passes them on (inside double quotes \n and \N stay two characters)
    assert LITERAL_INSTRUCTIONS["needle-literal"] == (
        "You are an expert for information extraction, your task is to extract the 'needles' in the format of  "
        "'One of the special magic {type_needle_v} for {key} is: {value}.' from the documents to answer user's "
        "question.\\N## tagging rule:\\n- tag the needles with 'needle'"
    )
    assert LITERAL_INSTRUCTIONS["fact-literal"] == (
        "You are an expert for information extraction, your task is to extract some sentences from the documents "
        "as the supporting facts of the user's question.\\n## tagging rule:\\n- tag the supporting facts with 'fact'"
    )
    assert LITERAL_INSTRUCTIONS["chain-literal"] == (
        "You are an expert for information extraction, your task is to extract the assigment chains like "
        "'VAR XXX1 = XXX2' from the documents to answer the question of the user.\\n## tagging rule:\\n"
        "- tag the assignment chains with 'chain'"
    )
    for name in ("needle", "fact", "chain"):
        literal = resolve_instruction(f"{name}-literal")
        assert "\n" not in literal and parse_tags(literal) == parse_tags(resolve_instruction(name))


def test_upstream_endpoint_maps_split_with_sent() -> None:
    def request(**parameters: object) -> CompressionRequest:
        messages = [{"role": "system", "content": "needle"}, {"role": "user", "content": QUERY},
                    {"role": "context", "content": "号12345。"}]
        body = {"payload": {"input": {"messages": messages}, "parameters": parameters}}
        return upstream.to_request(UpstreamRequest.model_validate(body))

    assert request().sentence_windows is None  # upstream's default: sentence windows when the text holds CJK
    assert request(split_with_sent=False).sentence_windows is False
    assert request(complete_sentence=True).granularity == "sentence" and request().upstream_spans


@pytest.mark.skipif(not torch.cuda.is_available(), reason="float16 runs on CUDA only")
def test_float16_on_gpu_tags_like_float32(digit_tagger_dir: object, digit_compressor: CPRSCompressor) -> None:
    half = CPRSCompressor.from_pretrained(digit_tagger_dir, device="cuda", dtype="float16", window_size=128)
    assert half.critic.model.dtype == torch.float16
    context = "The year was 1984. We counted 42 cats and 7 dogs. 号12345。"
    for sentence_windows in (False, True):
        expected = digit_compressor.compress(context, QUERY, "needle", granularity="token", sentence_windows=sentence_windows)
        got = half.compress(context, QUERY, "needle", granularity="token", sentence_windows=sentence_windows)
        assert [(s.start, s.end) for s in got.spans] == [(s.start, s.end) for s in expected.spans]
