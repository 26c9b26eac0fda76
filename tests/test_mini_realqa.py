"""Real-question data for cprs-mini's training and evaluation, on small SQuAD/CoQA-format files made here."""

from __future__ import annotations

import json
import random
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

from cprs_core.mini.backbone import backbone_dir, load_tokenizer
from cprs_core.mini.checkpoint import SHIPPED_DIR
from cprs_core.mini.examples import sentence_units
from cprs_core.mini.realeval import bootstrap_interval, covered, unpunctuated
from cprs_core.mini.realqa import (
    MULTIRC_FILE, NQ_FILE, SOURCES, PassagePool, detokenize, load_passages, load_squad, passages_of, split_of,
)
from cprs_core.mini.similarity import questions_of
from cprs_core.mini.train import collate, relevance_loss, sentence_logits
from cprs_core.mini.examples import WindowExample
from cprs_core.text_units import lower_words


def _squad(articles: int, paragraphs: int) -> dict:
    data = []
    for a in range(articles):
        paras = []
        for p in range(paragraphs):
            answer = f"Answer{a}x{p}"
            context = f"Article {a} paragraph {p} opens here. The key fact is {answer} indeed. It closes now."
            paras.append({"context": context, "qas": [
                {"question": f"What is the key fact of {a} {p}?", "id": f"{a}-{p}",
                 "answers": [{"answer_start": context.index(answer), "text": answer}]}]})
        data.append({"title": f"Title_{a}", "paragraphs": paras})
    return {"data": data}


def _coqa() -> dict:
    story = "Tom went to the market. He bought apples there. Then he went home."
    return {"data": [{
        "source": "cnn", "id": "s1", "story": story,
        "questions": [{"input_text": "Where did Tom go?", "turn_id": 1},
                      {"input_text": "what did he buy?", "turn_id": 2},
                      {"input_text": "Which fruit did Tom buy at the market stall?", "turn_id": 3}],
        "answers": [{"span_start": 0, "span_end": 23, "span_text": "", "input_text": "", "turn_id": 1},
                    {"span_start": 24, "span_end": 48, "span_text": "", "input_text": "", "turn_id": 2},
                    {"span_start": 24, "span_end": 48, "span_text": "", "input_text": "", "turn_id": 3}],
    }]}


@pytest.fixture()
def data_dir(tmp_path: Path) -> Path:
    (tmp_path / "squaddev_v1.1.json").write_text(json.dumps(_squad(40, 3)))
    (tmp_path / "coqa.test.json").write_text(json.dumps(_coqa()))
    return tmp_path


def test_squadshifts_files_are_refused(tmp_path: Path) -> None:
    for name in ("nyt_v1.0.json", "reddit_v1.0.json", "amazon_reviews_v1.0.json", "new_wiki_v1.0.json"):
        (tmp_path / name).write_text(json.dumps(_squad(1, 1)))
        with pytest.raises(ValueError, match="reserved"):
            load_squad(tmp_path / name)


def test_passages_keep_answers_and_evidence_sentences(data_dir: Path) -> None:
    passages = load_passages(data_dir)
    squad = [p for p in passages if p.source == "wikipedia-squad"]
    assert len(squad) == 120 and {p.group for p in squad} == {f"squad:Title_{a}" for a in range(40)}
    for passage in squad:
        question = passage.questions[0]
        [(start, end)] = question.answers
        assert passage.text[start:end].startswith("Answer")
        assert [passage.text[s:e] for s, e in question.evidence] == [passage.text.split(". ")[1] + "."]
    coqa = next(p for p in passages if p.source == "coqa-cnn")
    # the pronoun-bound later turn is dropped; the stand-alone one is kept
    assert [q.text for q in coqa.questions] == ["Where did Tom go?", "Which fruit did Tom buy at the market stall?"]


def _multirc_task(paragraphs: int) -> dict:
    examples = []
    for index in range(paragraphs):
        sentences = [f"Lena{index} bought a kite in Oslo .", "It was red , with a long tail .",
                     f"She flew it {index + 2} times that day .", "The town 's market closed early ."]
        paragraph = "Paragraph- " + " ".join(f"Sent {n}: {text}" for n, text in enumerate(sentences, 1))
        examples.append({"input": f"{paragraph} \nQuestion: What colour was the kite Lena{index} bought?.",
                         "target": ["1, 2."]})
    examples.append({"input": "Paragraph- Sent 1: Only one sentence . \nQuestion: Which one?.", "target": ["3."]})
    return {"examples": examples}


def _nq_task() -> dict:
    return {"examples": [
        {"input": "\nQuestion: who does candace like in phineas and ferb\nContext: Candace has a crush on "
                  "Jeremy Johnson , and `` he liked her back '' . Her mother 's name is Linda .", "target": "Jeremy Johnson"},
        {"input": "\nQuestion: who sang the song\nContext: Ana sang it . Ana wrote it .", "target": "Ana"},
        {"input": "\nQuestion: what is the key fact\nContext: Article 0 paragraph 0 opens here. The key fact is "
                  "Answer0x0 indeed.", "target": "Answer0x0"},
    ]}


def test_multirc_and_nq_questions_are_detokenized_and_located(data_dir: Path) -> None:
    assert detokenize("a girl 's ( red ) `` kite '' , fifteen - year - old") == 'a girl\'s (red) "kite", fifteen-year-old'
    (data_dir / MULTIRC_FILE).write_text(json.dumps(_multirc_task(3)))
    (data_dir / NQ_FILE).write_text(json.dumps(_nq_task()))
    passages = load_passages(data_dir, SOURCES)
    multirc = [p for p in passages if p.source == "multirc"]
    assert len(multirc) == 3 and len({p.group for p in multirc}) == 3  # the malformed example (Sent 3 of 1) is dropped
    question = multirc[0].questions[0]
    assert question.text == "What colour was the kite Lena0 bought?"
    assert [multirc[0].text[s:e] for s, e in question.answers] == ["Lena0 bought a kite in Oslo.", "It was red, with a long tail."]
    assert question.evidence == question.answers and multirc[0].text.endswith("The town's market closed early.")
    # the ambiguous answer (Ana twice) and the paragraph copied from SQuAD are dropped
    [nq] = [p for p in passages if p.source == "nq"]
    [question] = nq.questions
    assert question.text == "who does candace like in phineas and ferb?" and nq.group == "nq:" + question.text[:-1]
    assert nq.text == 'Candace has a crush on Jeremy Johnson, and "he liked her back". Her mother\'s name is Linda.'
    [(start, end)] = question.answers
    assert nq.text[start:end] == "Jeremy Johnson" and [nq.text[s:e] for s, e in question.evidence] == [nq.text.split(" Her")[0]]
    assert {p.source for p in load_passages(data_dir, ["multirc"])} == {"multirc"}
    with pytest.raises(ValueError, match="sources must be"):
        load_passages(data_dir, ["squad", "quac"])
    (data_dir / NQ_FILE).unlink()
    with pytest.raises(FileNotFoundError, match=NQ_FILE):
        load_passages(data_dir, ["nq"])


def test_splits_are_by_group_stable_and_disjoint(data_dir: Path) -> None:
    passages = load_passages(data_dir)
    by_split = {split: passages_of(passages, split) for split in ("train", "tune", "test")}
    groups = [{p.group for p in chosen} for chosen in by_split.values()]
    assert not (groups[0] & groups[1] or groups[0] & groups[2] or groups[1] & groups[2])
    assert sum(len(chosen) for chosen in by_split.values()) == len(passages)
    assert split_of("squad:Title_3") == split_of("squad:Title_3")
    shares = Counter(split_of(f"group-{i}") for i in range(5000))
    assert abs(shares["train"] / 5000 - 0.7) < 0.03 and abs(shares["test"] / 5000 - 0.2) < 0.03


def test_documents_place_answers_at_their_offsets_among_other_groups(data_dir: Path) -> None:
    tokenizer = load_tokenizer(backbone_dir())
    pool = PassagePool([p for p in load_passages(data_dir) if p.source == "wikipedia-squad"], tokenizer)
    rng = random.Random(0)
    gold = pool.sample_gold(rng, "wikipedia-squad", 2)
    assert gold[0][0] != gold[1][0] and pool.passages[gold[0][0]].group != pool.passages[gold[1][0]].group
    document = pool.document(rng, gold, 600, near=1)
    assert len(document.answers) == 2 and questions_of(document.query) == [q.text for _, q in gold]
    for (start, end), (index, question) in zip(document.answers, gold):
        passage = pool.passages[index]
        [(low, high)] = question.answers
        assert document.text[start:end] == passage.text[low:high]
    assert all(document.text[s:e].startswith("The key fact is") for s, e in document.relevant)
    assert len(tokenizer.encode(document.text).ids) >= 600
    bare = unpunctuated(document)  # the stress test's contexts: no sentence ends, answers where they were
    assert len(bare.text) == len(document.text) and not re.search(r"[.!?;]\s", bare.text)
    assert all(lower_words(bare.text[s:e]) == lower_words(document.text[s:e]) for s, e in document.answers)
    with pytest.raises(ValueError, match="fewer than 2 groups"):
        PassagePool([pool.passages[0]], tokenizer).sample_gold(rng, "wikipedia-squad", 2)


def test_sentence_units_follow_the_engines_token_ownership() -> None:
    text = "First one here. Second is the gold. Third."
    offsets = [(0, 5), (6, 9), (10, 15), (16, 22), (23, 25), (26, 29), (30, 35), (36, 42)]
    unit_of, labels = sentence_units(text, offsets, [(16, 35)])
    assert unit_of.tolist() == [0, 0, 0, 1, 1, 1, 1, 2]
    assert labels.tolist() == [0.0, 1.0, 0.0]


def test_relevance_loss_ranks_and_never_yields_nan_gradients() -> None:
    examples = [
        WindowExample([1, 2, 3, 4], [0, 1, 1, 1], [-100, 2, 2, 2], [-1, 0, 0, 1], [1.0, 0.0]),
        WindowExample([1, 2, 3], [0, 1, 1], [-100, 2, 2], [-1, 0, 1], [0.0, 0.0]),
        WindowExample([1, 2], [0, 1], [-100, 2], [-1, -1], []),
    ]
    batch = collate(examples)
    assert batch["unit_ids"].tolist() == [[-1, 0, 0, 1], [-1, 2, 3, -1], [-1, -1, -1, -1]]
    assert batch["unit_rows"].tolist() == [0, 0, 1, 1]
    relevance = torch.zeros(3, 4, requires_grad=True)
    units = sentence_logits(relevance, batch["unit_ids"], 4)
    loss = relevance_loss(units, batch["unit_labels"], batch["unit_rows"], 3)
    loss.backward()
    assert torch.isfinite(relevance.grad).all()
    assert relevance.grad[0, 1] < 0 and relevance.grad[0, 3] > 0  # raise the relevant sentence, lower the other
    better = relevance_loss(torch.tensor([3.0, -3.0, -3.0, -3.0]), batch["unit_labels"], batch["unit_rows"], 3)
    assert better < loss


def test_evaluation_helpers() -> None:
    assert covered([(0, 10), (20, 30)], (22, 30)) and not covered([(0, 10), (11, 30)], (5, 15))
    low, high = bootstrap_interval(np.array([1.0] * 90 + [0.0] * 10), np.random.default_rng(0))
    assert 0.8 < low < 0.9 < high < 0.97
    assert questions_of("Who won? When was it?") == ["Who won?", "When was it?"]


def _coqa_stories(count: int, sources: tuple[str, ...] = ("cnn",)) -> dict:
    stories = []
    for index in range(count):
        story = f"Mia{index} walked to the harbour at dawn. She counted {index + 3} red boats there. Then she slept."
        rationale = story.index("She counted")
        stories.append({
            "source": sources[index % len(sources)], "id": f"story{index}", "story": story,
            "questions": [{"input_text": f"How many red boats did Mia{index} count at the harbour?", "turn_id": 1}],
            "answers": [{"span_start": rationale, "span_end": story.index(" Then"), "span_text": "", "input_text": "",
                         "turn_id": 1}],
        })
    return {"data": stories}


def test_the_real_question_evaluation_runs_end_to_end_with_every_baseline(tmp_path: Path) -> None:
    from cprs_core.mini import realeval

    (tmp_path / "squaddev_v1.1.json").write_text(json.dumps(_squad(40, 3)))
    (tmp_path / "coqa.test.json").write_text(json.dumps(_coqa_stories(60)))
    output = tmp_path / "results.json"
    shipped_weight = json.loads((SHIPPED_DIR / "config.json").read_text())["similarity_weight"]
    realeval.main([
        "--real-data", str(tmp_path), "--split", "test", "--tokens", "400", "--questions", "1", "2", "--samples", "4",
        "--per-question-z", "--thresholds", "0.5", "--shortlists", "0", "--other-keep-rule",
        "--weights", str(shipped_weight),
        "--neighbour-weights", "0.25", "--json", str(output), "--markdown", str(tmp_path / "table.md"), "--by-source",
    ])

    results = json.loads(output.read_text())["results"]
    one, two = results["400/1"], results["400/2"]
    assert {"cprs-mini@none/t=0.5", "cprs-mini@none/rwb", "cprs-mini@10%/s=0", "embed@5%", "bm25@10%"} <= set(one)
    for budget in ("10%", "5%", "none"):  # the shipped settings as variants: the same choices (one critic pass shared)
        for variant in (one[f"cprs-mini@{budget}/w={shipped_weight:g}"], one[f"cprs-mini@{budget}/n=0.25"]):
            shipped = one[f"cprs-mini@{budget}"]
            assert [variant[key] for key in ("kept", "ratio", "answers")] == [shipped[key] for key in ("kept", "ratio", "answers")]
    ranked, threshold = one["cprs-mini@none"]["ratio"], one["cprs-mini@none/rwb"]["ratio"]
    assert threshold <= ranked <= 1.05 * threshold  # the ranking fills the threshold's size (whole sentences: <=)
    assert not any(name.startswith(("embed-max", "embed-zmax")) or name.endswith("/pqz") for name in one)
    assert {"embed-max@5%", "embed-zmax@10%", "cprs-mini@5%/pqz", "cprs-mini@10%/pqz"} <= set(two)
    assert one["cprs-mini@5%"]["answers"] == 4 and two["cprs-mini@5%"]["answers"] == 4  # 2 queries x 2 answers
    for row in (*one.values(), *two.values()):
        assert 0.0 <= row["low"] <= row["kept"] <= row["high"] <= 1.0
    assert one["cprs-mini@10%"]["ratio"] >= 5  # a 10% budget keeps about a tenth of the tokens
    table = (tmp_path / "table.md").read_text()
    assert "| embed-zmax |" in table and table.count("\n| 400 | 2 |") == 3 + 3 * 2  # + a row per budget and source
    for name, row in one.items():  # per source: the same figures, split (queries alternate SQuAD and CoQA)
        parts = row["by_source"]
        assert {source: part["queries"] for source, part in parts.items()} == {"coqa-cnn": 2, "wikipedia-squad": 2}
        assert sum(part["kept"] * part["queries"] for part in parts.values()) / 4 == pytest.approx(row["kept"])
        assert parts["wikipedia-squad"]["kept"] == pytest.approx(row["kept_wikipedia"])
        ratios = [part["ratio"] for part in parts.values()]  # a ratio of sums lies between its parts' ratios
        assert min(ratios) - 1e-9 <= row["ratio"] <= max(ratios) + 1e-9
        if "gap" in row:
            assert sum(part["gap"] for part in parts.values()) / 2 == pytest.approx(row["gap"])
            assert all(part["gap_low"] <= part["gap"] <= part["gap_high"] for part in parts.values())
    assert "| 400 | 1 | 5% | coqa-cnn | 2 |" in table
    assert f"| 400 | 1 | none ({one['cprs-mini@none']['by_source']['coqa-cnn']['ratio']:.0f}x) | coqa-cnn | 2 |" in table


def test_evaluation_queries_take_turns_over_the_pools_source_families(data_dir: Path) -> None:
    from cprs_core.mini.realeval import query_document

    (data_dir / "coqa.test.json").write_text(json.dumps(_coqa_stories(6)))
    (data_dir / MULTIRC_FILE).write_text(json.dumps(_multirc_task(4)))
    tokenizer = load_tokenizer(backbone_dir())
    standard = PassagePool(load_passages(data_dir), tokenizer)
    assert [query_document(standard, 1, 300, 1, i).source for i in range(4)] == ["wikipedia-squad", "coqa-cnn"] * 2
    multirc = PassagePool(load_passages(data_dir, ["multirc"]), tokenizer)
    document = query_document(multirc, 1, 300, 2, 0)
    assert document.source == "multirc" and len(document.answers) == 4  # two questions, two evidence sentences each
    assert [document.text[s:e] for s, e in document.answers[1::2]] == ["It was red, with a long tail."] * 2


def test_training_windows_of_multirc_mark_every_evidence_sentence(data_dir: Path) -> None:
    from cprs_core.mini.train import GeneratorSettings, real_document

    (data_dir / MULTIRC_FILE).write_text(json.dumps(_multirc_task(6)))
    pool = PassagePool(load_passages(data_dir, ["squad", "multirc"]), load_tokenizer(backbone_dir()))
    rng = random.Random(3)
    settings = GeneratorSettings("train", real_fraction=1.0, two_questions=0.0)
    documents = [real_document(rng, settings, pool) for _ in range(12)]
    multirc = [document for document in documents if "colour was the kite" in document.task.query]
    assert multirc and len(multirc) < len(documents)  # both sources are drawn
    for document in multirc:
        kept = [document.text[start:end] for start, end in document.relevant]
        assert len(kept) == 2 and kept[0].startswith("Lena") and kept[1] == "It was red, with a long tail."


def test_family_balanced_draws_weigh_coqas_domains_together_as_much_as_squad(data_dir: Path) -> None:
    (data_dir / "coqa.test.json").write_text(json.dumps(_coqa_stories(6, sources=("cnn", "race", "reddit"))))
    pool = PassagePool(load_passages(data_dir), load_tokenizer(backbone_dir()))
    assert pool.families == {"coqa": ["coqa-cnn", "coqa-race", "coqa-reddit"], "wikipedia-squad": ["wikipedia-squad"]}

    def squad_share(by_family: bool) -> float:
        rng = random.Random(0)
        draws = [pool.passages[pool.sample_gold(rng, by_family=by_family)[0][0]].source for _ in range(2000)]
        return draws.count("wikipedia-squad") / len(draws)

    assert abs(squad_share(by_family=False) - 1 / 4) < 0.04  # one source of four
    assert abs(squad_share(by_family=True) - 1 / 2) < 0.04  # one family of two


def test_calibration_writes_ranges_that_the_int8_loader_smooths_with(tmp_path: Path) -> None:
    from safetensors.torch import load_file

    from cprs_core.mini import calibrate, load_mini_critic
    from cprs_core.mini.checkpoint import INT8_RANGES_FILE, SHIPPED_DIR, copy_checkpoint, read_config

    data = tmp_path / "data"
    data.mkdir()
    (data / "squaddev_v1.1.json").write_text(json.dumps(_squad(40, 3)))
    (data / "coqa.test.json").write_text(json.dumps(_coqa_stories(60)))
    checkpoint = tmp_path / "ckpt"
    copy_checkpoint(SHIPPED_DIR, checkpoint, int8_ranges=False)
    calibrate.main(["--checkpoint", str(checkpoint), "--real-data", str(data), "--documents", "2", "--tokens", "300",
                    "--alpha", "0.8"])

    ranges = load_file(str(checkpoint / INT8_RANGES_FILE))
    assert len(ranges) == 2 * 6 * 4  # critic and embedder, 6 layers, 4 sites each
    assert ranges["critic.layer.0.attention.self"].shape == (384,) and ranges["embedder.layer.5.output"].shape == (1536,)
    assert all(bool((value > 0).all()) for value in ranges.values())
    config = read_config(checkpoint)
    assert config.int8_smoothing == 0.8 and "2 train-split documents" in config.training["int8_calibration"]
    assert config.relevance_threshold == 0.007  # the rest of the configuration is kept
    critic = load_mini_critic(checkpoint, dtype="int8")
    assert sum(hasattr(module, "int8_input_scale") for module in critic.model.encoder.modules()) == 3 * 6
    with pytest.raises(SystemExit, match="alpha"):
        calibrate.main(["--checkpoint", str(checkpoint), "--real-data", str(data), "--alpha", "1.5"])


def _reviews(products: int) -> dict:
    """A SQuAD v2-format file of product reviews: one answerable question per product, plus an unanswerable one
    and one whose answer text is not at its offset (both left out)."""
    data = []
    for index in range(products):
        context = (f"I bought the kettle model K{index} last spring. The lid broke after {index + 2} weeks of use. "
                   "Otherwise it boils water fast.")
        answer = f"after {index + 2} weeks"
        data.append({"title": f"K{index}", "paragraphs": [{"context": context, "qas": [
            {"question": f"When did the lid of K{index} break?", "id": f"q{index}",
             "answers": [{"text": answer, "answer_start": context.index(answer)}]},
            {"question": "Is it dishwasher safe?", "id": f"u{index}", "answers": [], "is_impossible": True},
            {"question": "How fast does it boil?", "id": f"m{index}", "answers": [{"text": "fast", "answer_start": 0}]},
        ]}]})
    return {"version": "v2.0", "data": data}


def test_own_squad_format_files_are_loaded_whole_as_a_source_named_by_the_file(tmp_path: Path) -> None:
    import lzma

    from cprs_core.mini.realqa import load_own_squad, own_source_name

    plain = tmp_path / "kettle_reviews.json"
    plain.write_text(json.dumps(_reviews(5)))
    packed = tmp_path / "packed.json.xz"
    packed.write_bytes(lzma.compress(json.dumps(_reviews(3)).encode()))
    passages = load_own_squad(plain)
    assert [p.group for p in passages] == [f"kettle_reviews:K{i}" for i in range(5)]  # every article, no split
    assert {p.source for p in passages} == {"kettle_reviews"} == {own_source_name(plain)}
    for passage in passages:
        [question] = passage.questions  # the unanswerable and the misplaced answer are left out
        [(start, end)] = question.answers
        assert passage.text[start:end].startswith("after ") and question.text.startswith("When did the lid")
    assert own_source_name(packed) == "packed" and len(load_own_squad(packed)) == 3


@pytest.mark.parametrize(("content", "problem"), [
    ("{not json", "cannot read"),
    ('{"version": "1.1"}', "not in SQuAD format.*KeyError.*data"),
    ('{"data": [{"title": "a", "paragraphs": [{"context": "x", "qas": [{"question": "q", "answers": [{"text": "x", '
     '"answer_start": "0"}]}]}]}]}', "not in SQuAD format.*TypeError"),
    ('{"data": [{"title": "a", "paragraphs": []}]}', "no answerable question"),
])
def test_own_squad_files_that_cannot_be_used_are_refused_naming_the_problem(
    tmp_path: Path, content: str, problem: str
) -> None:
    from cprs_core.mini.realqa import load_own_squad

    path = tmp_path / "mine.json"
    path.write_text(content)
    with pytest.raises(ValueError, match=problem):
        load_own_squad(path)


def test_the_evaluation_runs_on_own_squad_files_and_says_when_contexts_are_short(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from cprs_core.mini import realeval

    reviews = tmp_path / "kettle_reviews.json"
    reviews.write_text(json.dumps(_reviews(30)))
    output = tmp_path / "results.json"
    realeval.main(["--squad-file", str(reviews), "--tokens", "400", "2000", "--questions", "1", "2", "--samples", "4",
                   "--json", str(output), "--by-source"])

    printed = capsys.readouterr().out
    results = json.loads(output.read_text())["results"]
    for setting in ("400/1", "400/2", "2K/1", "2K/2"):
        for name in ("cprs-mini@10%", "embed@5%", "bm25@none"):
            row = results[setting][name]
            assert set(row["by_source"]) == {"kettle_reviews"} and 0.0 <= row["kept"] <= 1.0
    assert results["400/2"]["cprs-mini@5%"]["answers"] == 4  # 2 queries x 2 questions, from two products each
    assert 380 <= results["400/1"]["cprs-mini@none"]["context_tokens"] < 500
    full = results["2K/1"]["cprs-mini@none"]["context_tokens"]  # 30 short reviews make ~1,000 tokens, not 2,000
    assert full < 1800 and f"contexts of 1 question(s) averaged {full:.0f} tokens, not 2000" in printed
    assert "not 400" not in printed  # contexts of the size asked for get no note
    assert "| 2K | 1 | 5% | kettle_reviews | 4 |" in printed and f"files {reviews}" in printed


@pytest.mark.parametrize(("arguments", "problem"), [
    ([], "either --real-data"),
    (["--real-data", "DATA", "--squad-file", "OWN"], "either --real-data"),
    (["--squad-file", "OWN", "OWN"], "share a name"),
    (["--squad-file", "missing.json"], "no such file: missing.json"),
    (["--squad-file", "BAD"], "--squad-file: .*not in SQuAD format"),
])
def test_the_evaluation_refuses_wrong_question_sources_naming_the_problem(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], arguments: list[str],
    problem: str,
) -> None:
    from cprs_core.mini import realeval

    monkeypatch.chdir(tmp_path)
    (tmp_path / "own.json").write_text(json.dumps(_reviews(2)))
    (tmp_path / "bad.json").write_text('{"data": 5}')
    names = {"DATA": str(tmp_path), "OWN": "own.json", "BAD": "bad.json"}
    with pytest.raises(SystemExit) as stopped:
        realeval.parse_args([names.get(argument, argument) for argument in arguments])
    assert stopped.value.code == 2 and re.search(problem, capsys.readouterr().err)


def test_a_document_without_its_gold_passages_asks_the_same_questions_of_other_passages(data_dir: Path) -> None:
    from cprs_core.mini.realeval import query_document

    (data_dir / "coqa.test.json").write_text(json.dumps(_coqa_stories(30)))
    pool = PassagePool(load_passages(data_dir), load_tokenizer(backbone_dir()))
    for questions in (1, 2):
        for sample in range(4):
            present = query_document(pool, 1, 300, questions, sample)
            absent = query_document(pool, 1, 300, questions, sample, with_gold=False)
            assert absent.query == present.query and absent.source == present.source
            assert absent.answers == absent.relevant == () and len(present.answers) == questions
            gold = [present.text[start:end] for start, end in present.answers]
            assert not any(answer in absent.text for answer in gold)  # each answer is unique to its passage
            assert len(absent.text) >= 0.7 * len(present.text)  # other passages fill the size


def test_retrieved_distractors_are_the_passages_the_retriever_ranks_first(data_dir: Path) -> None:
    from cprs_core.mini.realeval import query_document

    (data_dir / "coqa.test.json").write_text(json.dumps(_coqa_stories(30)))
    pool = PassagePool(load_passages(data_dir), load_tokenizer(backbone_dir()))
    asked: list[tuple[str, str]] = []

    def backwards(query: str, source: str) -> list[int]:  # a retriever that ranks the source's last passage first
        asked.append((query, source))
        return pool.by_source[source][::-1]

    for sample in range(4):
        random_pick = query_document(pool, 1, 300, 1, sample, with_gold=False)
        retrieved = query_document(pool, 1, 300, 1, sample, with_gold=False, retriever=backwards)
        assert asked[-1] == (retrieved.query, retrieved.source) and retrieved.query == random_pick.query
        gold_group = next(pool.passages[i].group for i in pool.by_source[retrieved.source]
                          if any(question.text == retrieved.query for question in pool.passages[i].questions))
        first = next(pool.passages[i] for i in pool.by_source[retrieved.source][::-1]
                     if pool.passages[i].group != gold_group)
        assert first.text in retrieved.text  # the best-ranked passage of another group comes first
        assert retrieved.answers == ()


@pytest.mark.parametrize("distractors", ["random", "retrieved"])
def test_the_no_answer_evaluation_says_how_often_nothing_is_kept(tmp_path: Path, distractors: str) -> None:
    from cprs_core.mini import realeval

    (tmp_path / "squaddev_v1.1.json").write_text(json.dumps(_squad(40, 3)))
    (tmp_path / "coqa.test.json").write_text(json.dumps(_coqa_stories(60)))
    output, table = tmp_path / "results.json", tmp_path / "table.md"
    no_answer = ["--no-answer"] if distractors == "random" else ["--no-answer", "retrieved"]
    realeval.main(["--real-data", str(tmp_path), "--split", "test", "--tokens", "400", "--questions", "1",
                   "--samples", "4", *no_answer, "--other-keep-rule", "--json", str(output), "--markdown", str(table)])
    assert f"Without the answer (other passages: {distractors}):" in table.read_text()

    results = json.loads(output.read_text())["results"]["400/1"]
    absent = results["cprs-mini@none/no-answer"]
    assert absent["queries"] == 4 and absent["answers"] == 4 and 0.0 <= absent["kept"] <= 1.0
    assert "gap" not in absent and results["cprs-mini@none"]["answers"] == 4
    assert absent["ratio"] >= 1.0 and 350 <= absent["context_tokens"] < 500
    assert f"| 400 | 1 | {results['cprs-mini@none']['kept']:.1%} at " in table.read_text()
    assert f"{absent['kept']:.1%} [{absent['low']:.1%}, {absent['high']:.1%}] of 4 |" in table.read_text()
    cutoffs = absent["relevance_cutoffs"]
    assert list(cutoffs) == ["0.1", "0.2", "0.3", "0.5", "0.7", "0.9"]
    for low, high in zip(list(cutoffs.values()), list(cutoffs.values())[1:]):  # a higher cut-off passes fewer
        assert low["with"] >= high["with"] and low["without"] >= high["without"]
    assert "| best relevance >= 0.5: with / without |" in table.read_text()
    assert "| embedding filter's best cosine, median with / without, AUC |" in table.read_text()
    for signal in ("best_scores", "best_relevance", "best_cosine"):
        assert -1.0 <= absent[f"{signal}_median"] <= 1.0 and -1.0 <= results["cprs-mini@none"][f"{signal}_median"] <= 1.0
        assert 0.0 <= absent[f"{signal}_auc"] <= 1.0 and f", {absent[f'{signal}_auc']:.3f} |" in table.read_text()


def test_the_score_auc_is_the_chance_that_a_context_with_the_answer_scores_higher() -> None:
    from cprs_core.mini.realeval import score_auc

    assert score_auc([0.9, 0.8], [0.1, 0.2, 0.0]) == 1.0
    assert score_auc([0.1], [0.9, 0.2]) == 0.0
    assert score_auc([0.5, 0.5], [0.5]) == 0.5  # ties count half
    assert score_auc([0.3, 0.7], [0.5]) == 0.5


def _write_reviews(path: Path, products: int) -> Path:
    path.write_text(json.dumps(_reviews(products)))
    return path


def test_own_files_with_fewer_titles_than_a_querys_questions_are_refused_before_the_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from cprs_core.mini import realeval

    single = _write_reviews(tmp_path / "single.json", 1)
    with pytest.raises(SystemExit) as stopped:  # the default --questions 1 2: two questions ask about two titles
        realeval.parse_args(["--squad-file", str(single)])
    assert stopped.value.code == 2
    assert re.search(r"single.json has questions on 1 title; a query of 2 questions needs 2.*--questions 1",
                     capsys.readouterr().err)
    assert realeval.parse_args(["--squad-file", str(single), "--questions", "1"]).questions == [1]


def test_own_files_unanswerable_as_an_empty_answer_is_left_out_and_answers_are_trimmed(tmp_path: Path) -> None:
    from cprs_core.mini.realqa import load_own_squad

    context = "The kettle K1 broke after two weeks. It boils water fast."
    qas = [
        {"question": "Is it safe?", "answers": [{"text": "", "answer_start": -1}]},  # converted SQuAD v2 style
        {"question": "Is it blue?", "answers": [{"text": " ", "answer_start": 3}]},
        {"question": "When did it break?", "answers": [{"text": " after two weeks", "answer_start": 19}]},
    ]
    [passage] = load_own_squad(_write(tmp_path / "own.json", {"data": [{"title": "K1", "paragraphs": [
        {"context": context, "qas": qas}]}]}))
    [question] = passage.questions
    [(start, end)] = question.answers
    assert question.text == "When did it break?" and context[start:end] == "after two weeks"


def _write(path: Path, payload: object) -> Path:
    path.write_text(json.dumps(payload))
    return path


def test_the_evaluation_says_how_many_questions_of_each_file_it_uses_and_leaves_out(tmp_path: Path) -> None:
    from cprs_core.mini import realeval

    reviews = _write_reviews(tmp_path / "kettle_reviews.json", 5)
    args = realeval.parse_args(["--squad-file", str(reviews), "--samples", "8"])
    assert args.notes == [
        "kettle_reviews.json: 5 questions on 5 paragraphs of 5 titles; left out: 5 unanswerable (no answer text, "
        "or is_impossible), 5 whose answer text is not at its answer_start",
        "(kettle_reviews.json has 5 questions: with --samples 8 some are asked more than once, each time in another "
        "context, and the intervals are narrower than 5 questions warrant)",
    ]


def _flat_rows(squad: dict) -> list[dict]:
    """The questions of a SQuAD file as the flat rows Hugging Face's ``squad`` dataset writes."""
    return [{"id": qa["id"], "title": article["title"], "context": paragraph["context"], "question": qa["question"],
             "answers": {"text": [a["text"] for a in qa["answers"]], "answer_start": [a["answer_start"] for a in qa["answers"]]}}
            for article in squad["data"] for paragraph in article["paragraphs"] for qa in paragraph["qas"]]


def test_own_squad_files_may_be_gzipped_a_bare_list_json_lines_or_flat_question_rows(tmp_path: Path) -> None:
    import gzip

    from cprs_core.mini.realqa import load_own_squad, own_source_name

    squad = _reviews(4)
    expected = load_own_squad(_write(tmp_path / "nested.json", squad))
    rows = _flat_rows(squad)
    (tmp_path / "packed.json.gz").write_bytes(gzip.compress(json.dumps(squad).encode()))
    (tmp_path / "articles.jsonl").write_text("".join(json.dumps(article) + "\n" for article in squad["data"]))
    (tmp_path / "rows.jsonl.gz").write_bytes(gzip.compress("\n".join(json.dumps(row) for row in rows).encode()))
    files = [tmp_path / "packed.json.gz", _write(tmp_path / "bare.json", squad["data"]), tmp_path / "articles.jsonl",
             _write(tmp_path / "rows.json", rows), tmp_path / "rows.jsonl.gz"]
    for path in files:
        passages = load_own_squad(path)
        assert [(p.text, p.questions, p.group.split(":", 1)[1]) for p in passages] == [
            (p.text, p.questions, p.group.split(":", 1)[1]) for p in expected], path.name
        assert passages[0].source == own_source_name(path) == path.name.split(".")[0]
    (tmp_path / "lines.json").write_text("\n".join(json.dumps(article) for article in squad["data"]))
    with pytest.raises(ValueError, match=r"cannot read .*lines.json: Extra data.*one JSON value per line\? name it \.jsonl"):
        load_own_squad(tmp_path / "lines.json")
    (tmp_path / "broken.jsonl").write_text(json.dumps(squad["data"][0]) + "\n{oops\n")
    with pytest.raises(ValueError, match="cannot read .*broken.jsonl: line 2: "):
        load_own_squad(tmp_path / "broken.jsonl")


@pytest.mark.parametrize(("arguments", "problem"), [
    (["--squad-file", "FOLDER"], r"--squad-file: .*folder is a folder; give the files in it"),
    (["--squad-file", "OWN", "--samples", "0"], "--samples: 0 is not a positive whole number"),
    (["--squad-file", "OWN", "--tokens", "-8000"], "--tokens: -8000 is not a positive whole number"),
    (["--squad-file", "OWN", "--questions", "0"], "--questions: 0 is not a positive whole number"),
])
def test_the_evaluation_refuses_folders_and_counts_below_one_naming_the_problem(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], arguments: list[str], problem: str
) -> None:
    from cprs_core.mini import realeval

    (tmp_path / "folder").mkdir()
    names = {"FOLDER": str(tmp_path / "folder"), "OWN": str(_write_reviews(tmp_path / "own.json", 3))}
    with pytest.raises(SystemExit) as stopped:
        realeval.parse_args([names.get(argument, argument) for argument in arguments])
    assert stopped.value.code == 2 and re.search(problem, capsys.readouterr().err)


def test_one_sample_sizes_under_1000_tokens_and_long_passages_are_run_and_reported(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from cprs_core.mini import realeval

    squad = _reviews(6)
    long_text = " ".join(f"Sentence {n} of the long manual says nothing about lids." for n in range(60))
    squad["data"][0]["paragraphs"][0]["context"] += " " + long_text  # ~800 tokens: longer than the contexts asked
    reviews = _write(tmp_path / "manuals.json", squad)
    output = tmp_path / "results.json"
    realeval.main(["--squad-file", str(reviews), "--tokens", "300", "--samples", "1", "--json", str(output)])

    printed = capsys.readouterr().out
    results = json.loads(output.read_text())["results"]
    assert set(results) == {"300/1", "300/2"} and results["300/2"]["cprs-mini@5%"]["answers"] == 2
    assert "| 300 | 2 | 5% | 2 |" in printed and printed.startswith("manuals.json: 6 questions")
    assert re.search(r"contexts of 1 question\(s\) averaged \d+ tokens, not 300: some passages are longer", printed)


def test_cpu_workers_share_the_cores_instead_of_each_taking_all_of_them(monkeypatch: pytest.MonkeyPatch) -> None:
    import argparse
    import multiprocessing

    from cprs_core.mini import realeval

    loaded: list[str] = []
    threads: list[int] = []
    monkeypatch.setattr(realeval, "_load", lambda args, device: loaded.append(device))
    monkeypatch.setattr(multiprocessing, "current_process", lambda: argparse.Namespace(_identity=(3,)))
    monkeypatch.setattr(torch, "get_num_threads", lambda: 16)
    monkeypatch.setattr(torch, "set_num_threads", threads.append)
    realeval._init_worker(argparse.Namespace(workers=8), ["cpu"])
    realeval._init_worker(argparse.Namespace(workers=2), ["cuda:0", "cuda:1"])
    assert loaded == ["cpu", "cuda:0"] and threads == [2]  # 16 cores among 8 workers; GPUs are left alone
