"""Real reading-comprehension questions for training and evaluating ``cprs-mini`` (never imported at run time).

Sources, both shipped inside the PyPI package ``bigbench`` (its sdist; only the data files are read):

* SQuAD v1.1 dev (``squad_shifts/squaddev_v1.1.json``): crowd questions on Wikipedia paragraphs, answers with
  character offsets. The other files of that folder (SQuADShifts) are reserved for independent evaluation and
  are refused here.
* CoQA (``coqa_conversational_question_answering/coqa.test.json``): questions on stories from news (CNN),
  Reddit, exams (RACE), fiction (Gutenberg, MCTest), science and Wikipedia, each with a rationale span.
  Only questions that stand on their own are used: the first turn, and later turns of seven words or more
  that use no pronoun pointing back into the conversation.

Every passage belongs to a *group* (a SQuAD article, a CoQA story), and groups are split by a hash of their
name into ``train`` (70%), ``tune`` (10%: picking the keep threshold) and ``test`` (20%: the reported
evaluation), so no paragraph of a held-out article is ever trained on.

A :class:`RealDocument` puts one or two gold passages among passages of other groups of the same source, like
a retriever's long context, and records where each answer and its evidence sentences landed.
"""

from __future__ import annotations

import hashlib
import json
import lzma
import random
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

from tokenizers import Tokenizer

from ..text_units import sentence_ranges, strip_range

SPLITS = ("train", "tune", "test")
RESERVED_NAMES = ("new_wiki", "nyt", "reddit", "amazon_reviews")
"""SQuADShifts files: reserved for evaluation by others; never trained, tuned or selected on."""
SQUAD_FILE = "squaddev_v1.1.json"
COQA_FILE = "coqa.test.json"
MIN_LATER_TURN_WORDS = 7
_ANAPHORA = frozenset("he she it they him her them his hers its their theirs this that these those there".split())
PASSAGE_SEPARATOR = "\n\n"


@dataclass(frozen=True)
class Question:
    """A question on a passage: the answer's and the evidence sentences' character ranges in the passage."""

    text: str
    answer: tuple[int, int]
    evidence: tuple[tuple[int, int], ...]


@dataclass(frozen=True)
class Passage:
    """A paragraph or story, the group (article, story) and source it comes from, and its questions."""

    source: str
    group: str
    text: str
    questions: tuple[Question, ...]


def split_of(group: str) -> str:
    """``train``, ``tune`` or ``test``, from a stable hash of the group's name."""
    bucket = int(hashlib.sha256(group.encode("utf-8")).hexdigest(), 16) % 10
    return "test" if bucket < 2 else "tune" if bucket == 2 else "train"


def _read_json(path: Path) -> dict:
    if any(name in path.name for name in RESERVED_NAMES):
        raise ValueError(f"{path.name} is a SQuADShifts file, reserved for independent evaluation")
    opener = lzma.open if path.suffix == ".xz" else open
    with opener(path, "rt", encoding="utf-8") as handle:
        return json.load(handle)


def _evidence(text: str, answer: tuple[int, int]) -> tuple[tuple[int, int], ...]:
    """The sentences of ``text`` that overlap ``answer`` (at least the one holding its start)."""
    low, high = answer
    chosen = tuple((start, end) for start, end in sentence_ranges(text) if start < max(high, low + 1) and end > low)
    return chosen or ((low, high),)


def load_squad(path: Path) -> list[Passage]:
    """SQuAD v1.1 paragraphs (source ``wikipedia-squad``), one passage each, grouped by article."""
    passages = []
    for article in _read_json(path)["data"]:
        for paragraph in article["paragraphs"]:
            text = paragraph["context"]
            questions = []
            for qa in paragraph["qas"]:
                answer = qa["answers"][0]
                span = (answer["answer_start"], answer["answer_start"] + len(answer["text"]))
                if text[span[0] : span[1]] != answer["text"]:
                    continue
                questions.append(Question(qa["question"].strip(), span, _evidence(text, span)))
            if questions:
                passages.append(Passage("wikipedia-squad", "squad:" + article["title"], text, tuple(questions)))
    return passages


def load_coqa(path: Path) -> list[Passage]:
    """CoQA stories (source ``coqa-<domain>``) with their stand-alone questions; the rationale is the answer span."""
    passages = []
    for story in _read_json(path)["data"]:
        text = story["story"]
        questions = []
        for question, answer in zip(story["questions"], story["answers"]):
            words = question["input_text"].split()
            if question["turn_id"] > 1 and not _stands_alone(words):
                continue
            span = strip_range(text, answer["span_start"], answer["span_end"])
            if span is None or answer["span_start"] < 0:
                continue
            start, end = span
            query = " ".join(words)
            questions.append(Question(query if query.endswith("?") else query + "?", (start, end), _evidence(text, (start, end))))
        if questions:
            passages.append(Passage("coqa-" + story["source"], "coqa:" + story["id"], text, tuple(questions)))
    return passages


def _stands_alone(words: list[str]) -> bool:
    """Whether a later conversational turn can be asked without the turns before it."""
    bare = {word.strip("?,.!'\"").lower() for word in words}
    return len(words) >= MIN_LATER_TURN_WORDS and not bare & _ANAPHORA


def load_passages(data_dir: str | Path) -> list[Passage]:
    """Every passage of the SQuAD and CoQA files found in ``data_dir`` (plain ``.json`` or ``.json.xz``)."""
    directory = Path(data_dir)
    passages: list[Passage] = []
    for name, loader in ((SQUAD_FILE, load_squad), (COQA_FILE, load_coqa)):
        found = [directory / name, directory / (name + ".xz")]
        path = next((candidate for candidate in found if candidate.is_file()), None)
        if path is None:
            raise FileNotFoundError(f"{directory} has neither {name} nor {name}.xz (see cprs_core.mini.realqa)")
        passages.extend(loader(path))
    return passages


def passages_of(passages: Iterable[Passage], split: str) -> list[Passage]:
    """The passages whose group falls in ``split``."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    return [passage for passage in passages if split_of(passage.group) == split]


@dataclass(frozen=True)
class RealDocument:
    """A long context of passages with one or two questions asked of it, and where their answers lie."""

    text: str
    query: str
    source: str
    answers: tuple[tuple[int, int], ...]
    relevant: tuple[tuple[int, int], ...]


class PassagePool:
    """Passages of one split, indexed by source, with their token counts, to build documents from."""

    def __init__(self, passages: Sequence[Passage], tokenizer: Tokenizer) -> None:
        self.passages = list(passages)
        counts = tokenizer.encode_batch([passage.text for passage in self.passages], add_special_tokens=False)
        self.tokens = [len(encoding.ids) for encoding in counts]
        self.by_source: dict[str, list[int]] = defaultdict(list)
        self.by_group: dict[str, list[int]] = defaultdict(list)
        for index, passage in enumerate(self.passages):
            self.by_source[passage.source].append(index)
            self.by_group[passage.group].append(index)
        self.sources = sorted(self.by_source)

    def sample_gold(self, rng: random.Random, source: str | None = None, count: int = 1) -> list[tuple[int, Question]]:
        """``count`` (passage index, question) pairs from distinct groups of one source."""
        source = source or rng.choice(self.sources)
        if len({self.passages[index].group for index in self.by_source[source]}) < count:
            raise ValueError(f"{source} has fewer than {count} groups in this pool")
        chosen: list[tuple[int, Question]] = []
        groups: set[str] = set()
        while len(chosen) < count:
            index = rng.choice(self.by_source[source])
            if self.passages[index].group in groups:
                continue
            groups.add(self.passages[index].group)
            chosen.append((index, rng.choice(self.passages[index].questions)))
        return chosen

    def document(
        self, rng: random.Random, gold: Sequence[tuple[int, Question]], n_tokens: int, near: int = 0
    ) -> RealDocument:
        """The gold passages among distractors of the same source from other groups, ~``n_tokens`` in all.

        Distractors come from the gold's source first; if it runs out, from the other sources. ``near`` > 0
        first adds up to that many other passages of the gold's own groups (hard negatives, for training).
        """
        source = self.passages[gold[0][0]].source
        pieces = [index for index, _ in gold]
        gold_groups = {self.passages[index].group for index in pieces}
        siblings = [i for group in sorted(gold_groups) for i in self.by_group[group] if i not in pieces]
        same = [i for i in self.by_source[source] if self.passages[i].group not in gold_groups]
        other = [i for i in range(len(self.passages)) if self.passages[i].source != source]
        for candidates in (siblings, same, other):
            rng.shuffle(candidates)
        total = sum(self.tokens[index] for index in pieces)
        for index in siblings[:near] + same + other:
            if total >= n_tokens:
                break
            pieces.append(index)
            total += self.tokens[index]
        rng.shuffle(pieces)
        return self._assemble(pieces, gold, source)

    def _assemble(self, pieces: list[int], gold: Sequence[tuple[int, Question]], source: str) -> RealDocument:
        offsets: dict[int, int] = {}
        parts: list[str] = []
        length = 0
        for index in pieces:
            if parts:
                parts.append(PASSAGE_SEPARATOR)
                length += len(PASSAGE_SEPARATOR)
            offsets[index] = length
            parts.append(self.passages[index].text)
            length += len(self.passages[index].text)
        answers, relevant = [], []
        for index, question in gold:
            base = offsets[index]
            answers.append((base + question.answer[0], base + question.answer[1]))
            relevant.extend((base + start, base + end) for start, end in question.evidence)
        query = " ".join(question.text for _, question in gold)
        return RealDocument("".join(parts), query, source, tuple(answers), tuple(sorted(relevant)))
