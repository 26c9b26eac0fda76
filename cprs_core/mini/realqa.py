"""Real reading-comprehension questions for training and evaluating ``cprs-mini`` (never imported at run time).

Sources, all shipped inside the PyPI package ``bigbench`` (its sdist; only the data files are read):

* SQuAD v1.1 dev (``squad_shifts/squaddev_v1.1.json``): crowd questions on Wikipedia paragraphs, answers with
  character offsets. The other files of that folder (SQuADShifts) are reserved for independent evaluation and
  are refused here.
* CoQA (``coqa_conversational_question_answering/coqa.test.json``): questions on stories from news (CNN),
  Reddit, exams (RACE), fiction (Gutenberg, MCTest), science and Wikipedia, each with a rationale span.
  Only questions that stand on their own are used: the first turn, and later turns of seven words or more
  that use no pronoun pointing back into the conversation.
* MultiRC (``natural_instructions/subtask049_multirc_questions_needed_to_answer/task.json``, optional): questions
  on paragraphs of news, fiction, science, history, law and Wikipedia that need several sentences, with the
  numbers of those sentences; every evidence sentence must be kept.
* Natural Questions contexts (``contextual_parametric_knowledge_conflicts/task.json``, optional): real search
  queries (lower case, no question mark) on Wikipedia paragraphs whose answer entity was swapped for another
  one; used where that answer occurs exactly once.

The two optional sources come tokenized (``Phineas 's``, ```` bust ''``); their text is detokenized, and a
passage sharing eight consecutive words with any SQuAD or CoQA passage is dropped, so that no held-out article
or story reaches training through them.

Every passage belongs to a *group* (a SQuAD article, a CoQA story, a MultiRC paragraph, an NQ query), and groups
are split by a hash of their name into ``train`` (70%), ``tune`` (10%: picking the keep threshold) and ``test``
(20%: the reported evaluation), so no paragraph of a held-out article is ever trained on.

A :class:`RealDocument` puts one or two gold passages among passages of other groups of the same source, like
a retriever's long context, and records where each answer and its evidence sentences landed.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import lzma
import random
import re
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Callable, Iterable, Sequence

from tokenizers import Tokenizer

from ..text_units import lower_words, sentence_ranges, strip_range

SPLITS = ("train", "tune", "test")
RESERVED_NAMES = ("new_wiki", "nyt", "reddit", "amazon_reviews")
"""SQuADShifts files: reserved for evaluation by others; never trained, tuned or selected on."""
SQUAD_FILE = "squaddev_v1.1.json"
COQA_FILE = "coqa.test.json"
MULTIRC_FILE = "multirc_questions_needed_to_answer.json"
"""bigbench's ``natural_instructions/subtask049_multirc_questions_needed_to_answer/task.json``, renamed."""
NQ_FILE = "contextual_parametric_knowledge_conflicts.json"
"""bigbench's ``contextual_parametric_knowledge_conflicts/task.json``, renamed."""
DEFAULT_SOURCES = ("squad", "coqa")
SHINGLE_WORDS = 8
MIN_LATER_TURN_WORDS = 7
_ANAPHORA = frozenset("he she it they him her them his hers its their theirs this that these those there".split())
PASSAGE_SEPARATOR = "\n\n"


@dataclass(frozen=True)
class Question:
    """A question on a passage: the character ranges in the passage that must be kept to answer it (the answer
    span; MultiRC: each evidence sentence) and its evidence sentences (the relevant ones for training)."""

    text: str
    answers: tuple[tuple[int, int], ...]
    evidence: tuple[tuple[int, int], ...]


@dataclass(frozen=True)
class Passage:
    """A paragraph or story, the group (article, story) and source it comes from, and its questions."""

    source: str
    group: str
    text: str
    questions: tuple[Question, ...]


def family_of(source: str) -> str:
    """The family a source belongs to: ``coqa`` for CoQA's domains (``coqa-cnn``, ...), else the source itself."""
    return "coqa" if source.startswith("coqa-") else source


def split_of(group: str) -> str:
    """``train``, ``tune`` or ``test``, from a stable hash of the group's name."""
    bucket = int(hashlib.sha256(group.encode("utf-8")).hexdigest(), 16) % 10
    return "test" if bucket < 2 else "tune" if bucket == 2 else "train"


def _read_json(path: Path) -> dict:
    """The JSON of a built-in source's file (refusing the reserved SQuADShifts files)."""
    if any(name in path.name for name in RESERVED_NAMES):
        raise ValueError(f"{path.name} is a SQuADShifts file, reserved for independent evaluation")
    return _read_any_json(path)


_OPENERS: dict[str, Callable[..., IO[str]]] = {".xz": lzma.open, ".gz": gzip.open}
"""How a compressed file is opened, by its last suffix; any other is read as plain text."""


def _read_any_json(path: Path) -> Any:
    """The JSON value of ``path`` (``.xz`` or ``.gz`` compressed or not), or with ``.jsonl`` the list of its lines'."""
    unpacked = path.with_suffix("") if path.suffix in _OPENERS else path
    with _OPENERS.get(path.suffix, open)(path, "rt", encoding="utf-8") as handle:
        return _json_lines(handle) if unpacked.suffix == ".jsonl" else json.load(handle)


def _json_lines(lines: Iterable[str]) -> list:
    """The JSON value of each non-blank line (``ValueError`` naming the first line that is not JSON)."""
    values = []
    for number, line in enumerate(lines, 1):
        if line.strip():
            try:
                values.append(json.loads(line))
            except json.JSONDecodeError as error:
                raise ValueError(f"line {number}: {error}") from error
    return values


def _evidence(text: str, answer: tuple[int, int]) -> tuple[tuple[int, int], ...]:
    """The sentences of ``text`` that overlap ``answer`` (at least the one holding its start)."""
    low, high = answer
    chosen = tuple((start, end) for start, end in sentence_ranges(text) if start < max(high, low + 1) and end > low)
    return chosen or ((low, high),)


def load_squad(path: Path) -> list[Passage]:
    """SQuAD v1.1 paragraphs (source ``wikipedia-squad``), one passage each, grouped by article."""
    return _squad_passages(_read_json(path)["data"], "wikipedia-squad", "squad")


UNANSWERABLE = "unanswerable (no answer text, or is_impossible)"
MISPLACED = "whose answer text is not at its answer_start"
"""Why a SQuAD question is left out (the keys of :func:`load_own_squad`'s ``left_out``)."""


class _LeftOut(Exception):
    """A question that cannot be asked; its message is the reason (:data:`UNANSWERABLE` or :data:`MISPLACED`)."""


def _first_answer(text: str, qa: dict) -> tuple[int, int]:
    """The character range of the first answer of SQuAD question ``qa`` in its paragraph ``text``, without the
    answer's leading and trailing whitespace.

    Raises:
        _LeftOut: the question has no answer with text (SQuAD v2's unanswerable, also written as an empty answer at
            ``answer_start`` -1), or that text is not at its ``answer_start``.
    """
    answers = qa.get("answers")
    if not answers or qa.get("is_impossible") or not answers[0]["text"].strip():
        raise _LeftOut(UNANSWERABLE)
    start, answer = answers[0]["answer_start"], answers[0]["text"]
    if start < 0 or text[start : start + len(answer)] != answer:
        raise _LeftOut(MISPLACED)
    return strip_range(text, start, start + len(answer))  # type: ignore[return-value]  # not blank: checked above


def _squad_passages(articles: list[dict], source: str, prefix: str, left_out: Counter[str] | None = None) -> list[Passage]:
    """The paragraphs of SQuAD-format ``articles`` with their answerable questions, each question answered by its
    first answer (:func:`_first_answer`), grouped by article as ``prefix:title``; ``left_out`` counts the questions
    left out by reason."""
    passages = []
    for number, article in enumerate(articles):
        for paragraph in article["paragraphs"]:
            text = paragraph["context"]
            questions = []
            for qa in paragraph["qas"]:
                try:
                    span = _first_answer(text, qa)
                except _LeftOut as reason:
                    if left_out is not None:
                        left_out[str(reason)] += 1
                    continue
                questions.append(Question(qa["question"].strip(), (span,), _evidence(text, span)))
            if questions:
                group = f"{prefix}:{article.get('title') or number}"
                passages.append(Passage(source, group, text, tuple(questions)))
    return passages


def _squad_articles(payload: object) -> list:
    """The articles of a SQuAD-format JSON value: ``{"data": [...]}``, or that list alone, or a list of flat
    question rows (:func:`_articles_of_rows`)."""
    articles = payload["data"] if isinstance(payload, dict) else payload
    if isinstance(articles, list) and articles and all(isinstance(row, dict) and "question" in row for row in articles):
        return _articles_of_rows(articles)
    return articles  # type: ignore[return-value]  # anything else fails in _squad_passages, naming the problem


def _articles_of_rows(rows: list[dict]) -> list[dict]:
    """Flat question rows, as Hugging Face's ``squad`` datasets write them (``title``, ``context``, ``question``,
    ``answers``: ``{"text": [...], "answer_start": [...]}`` or SQuAD's list), as SQuAD articles: by title (a row
    without one: by its context), then by context."""
    articles: dict[str, dict[str, list[dict]]] = defaultdict(dict)
    for row in rows:
        answers = row.get("answers") or []
        if isinstance(answers, dict):
            answers = [{"text": text, "answer_start": start}
                       for text, start in zip(answers["text"], answers["answer_start"])]
        articles[row.get("title") or row["context"]].setdefault(row["context"], []).append({**row, "answers": answers})
    return [{"title": title, "paragraphs": [{"context": context, "qas": qas} for context, qas in paragraphs.items()]}
            for title, paragraphs in articles.items()]


OWN_SUFFIXES = (".json", ".jsonl")
"""What a question file of one's own is named: ``.json`` (one value) or ``.jsonl`` (one per line), each of them
optionally compressed (``.xz``, ``.gz``)."""


def own_source_name(path: str | Path) -> str:
    """The source name of a question file given by a user: its file name without :data:`OWN_SUFFIXES` and
    compression suffixes."""
    name = Path(path).name
    for suffixes in (tuple(_OPENERS), OWN_SUFFIXES):
        name = next((name.removesuffix(suffix) for suffix in suffixes if name.endswith(suffix)), name)
    return name


def load_own_squad(path: str | Path, left_out: Counter[str] | None = None) -> list[Passage]:
    """Every answerable question of a SQuAD-format file of one's own, as passages of the source
    :func:`own_source_name` grouped by article. Unlike the built-in sources it is not split: all of it is for
    evaluation.

    The file holds SQuAD v1.1 or v2 (whose unanswerable questions are left out) as ``{"data": [...]}``, or that list
    of articles alone, or flat question rows as Hugging Face's ``squad`` datasets write them; as one JSON value
    (``.json``) or one per line (``.jsonl``: articles or question rows), compressed (``.xz``, ``.gz``) or not.
    ``left_out`` counts the questions left out, by reason (:data:`UNANSWERABLE`, :data:`MISPLACED`).

    Raises:
        ValueError: the file cannot be read as such JSON, or is not in SQuAD format, or holds no answerable question.
    """
    path = Path(path)
    source = own_source_name(path)
    left_out = Counter() if left_out is None else left_out
    try:
        payload = _read_any_json(path)
    except (OSError, EOFError, ValueError, lzma.LZMAError) as error:  # ValueError: JSON, UTF-8, a .jsonl line
        raise ValueError(f"cannot read {path}: {error}{_reading_hint(error)}") from error
    try:
        passages = _squad_passages(_squad_articles(payload), source, source, left_out)
    except (KeyError, TypeError, AttributeError, IndexError) as error:
        raise ValueError(
            f"{path} is not in SQuAD format (data > paragraphs > context and qas > question and answers > text and "
            f"answer_start): {type(error).__name__}: {error}"
        ) from error
    if not passages:
        raise ValueError(f"{path} has no answerable question whose answer text lies at its answer_start "
                         f"({describe_left_out(left_out) if left_out else 'it has no question'})")
    return passages


def _reading_hint(error: Exception) -> str:
    """What to do about a file that could not be read, where the error suggests it."""
    if isinstance(error, UnicodeDecodeError):
        return " (save it as UTF-8)"
    if isinstance(error, json.JSONDecodeError) and error.msg == "Extra data":
        return " (one JSON value per line? name it .jsonl)"
    return ""


def describe_left_out(left_out: Counter[str]) -> str:
    """``left out: 5 unanswerable (...), 2 whose answer text is not at its answer_start`` (what
    :func:`load_own_squad` counted)."""
    return "left out: " + ", ".join(f"{count} {reason}" for reason, count in sorted(left_out.items()))


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
            questions.append(Question(_as_question(query), ((start, end),), _evidence(text, (start, end))))
        if questions:
            passages.append(Passage("coqa-" + story["source"], "coqa:" + story["id"], text, tuple(questions)))
    return passages


def _stands_alone(words: list[str]) -> bool:
    """Whether a later conversational turn can be asked without the turns before it."""
    bare = {word.strip("?,.!'\"").lower() for word in words}
    return len(words) >= MIN_LATER_TURN_WORDS and not bare & _ANAPHORA


def _as_question(text: str) -> str:
    """``text`` ending in a question mark (the query splitter cuts several questions there)."""
    text = text.strip()
    return text if text.endswith("?") else text + "?"


_DETOKENIZE = (
    (re.compile(r"``\s*|\s*''"), '"'),
    (re.compile(r"\s+([,.;:!?%)\]]|'s\b|n't\b|'re\b|'ve\b|'ll\b|'d\b|'m\b)"), r"\1"),
    (re.compile(r"([(\[$])\s+"), r"\1"),
    (re.compile(r"(\w) - (?=\w)"), r"\1-"),
)


def detokenize(text: str) -> str:
    """Undo Penn-Treebank-style tokenization (``girl 's``, ``( a )``, ````x''``, ``year - old``) as far as it is
    unambiguous, and collapse runs of spaces."""
    text = " ".join(text.split())
    for pattern, replacement in _DETOKENIZE:
        text = pattern.sub(replacement, text)
    return text


def _task_examples(path: Path) -> list[dict]:
    return _read_json(path)["examples"]


_MULTIRC_SENTENCE = re.compile(r"Sent \d+:\s*")


def load_multirc(path: Path) -> list[Passage]:
    """MultiRC paragraphs (source ``multirc``), each with its questions; every evidence sentence is an answer."""
    by_text: dict[str, list[Question]] = defaultdict(list)
    for example in _task_examples(path):
        body, _, question = example["input"].partition("Question:")
        pieces = [detokenize(piece) for piece in _MULTIRC_SENTENCE.split(body.split("Paragraph-", 1)[-1])[1:]]
        targets = example["target"] if isinstance(example["target"], list) else [example["target"]]
        numbers = {int(n) for target in targets for n in re.findall(r"\d+", target)}
        if not pieces or not question.strip() or not numbers or not numbers <= set(range(1, len(pieces) + 1)):
            continue
        text, ranges = "", []
        for piece in pieces:
            text += (" " if text else "") + piece
            ranges.append((len(text) - len(piece), len(text)))
        evidence = tuple(ranges[n - 1] for n in sorted(numbers))
        query = detokenize(question)
        by_text[text].append(Question(_as_question(query[:-1] if query.endswith("?.") else query), evidence, evidence))
    return [Passage("multirc", "multirc:" + hashlib.sha256(text.encode("utf-8")).hexdigest()[:16], text,
                    tuple(questions)) for text, questions in by_text.items()]


def load_nq_conflicts(path: Path) -> list[Passage]:
    """Natural Questions queries on their Wikipedia paragraphs (source ``nq``), each paragraph with the answer
    entity swapped for another; kept where that answer occurs exactly once. Grouped by query."""
    passages = []
    for example in _task_examples(path):
        question, _, context = example["input"].partition("Context:")
        text, answer = detokenize(context), detokenize(example["target"])
        question = detokenize(question.replace("Question:", ""))
        if not answer or text.count(answer) != 1 or not question:
            continue
        start = text.index(answer)
        span = (start, start + len(answer))
        passages.append(Passage("nq", "nq:" + question.lower(), text,
                                (Question(_as_question(question), (span,), _evidence(text, span)),)))
    return passages


_LOADERS: dict[str, tuple[str, Callable[[Path], list[Passage]]]] = {
    "squad": (SQUAD_FILE, load_squad),
    "coqa": (COQA_FILE, load_coqa),
    "multirc": (MULTIRC_FILE, load_multirc),
    "nq": (NQ_FILE, load_nq_conflicts),
}
SOURCES = tuple(_LOADERS)


def _shingles(text: str) -> set[str]:
    words = lower_words(text)
    return {" ".join(words[i : i + SHINGLE_WORDS]) for i in range(len(words) - SHINGLE_WORDS + 1)}


def load_passages(data_dir: str | Path, sources: Sequence[str] = DEFAULT_SOURCES) -> list[Passage]:
    """Every passage of ``sources`` (of :data:`SOURCES`) found in ``data_dir`` (plain ``.json`` or ``.json.xz``).

    SQuAD and CoQA must be there in any case: passages of the other sources that share eight consecutive words
    with one of theirs are dropped.
    """
    unknown = [name for name in sources if name not in _LOADERS]
    if unknown or not sources:
        raise ValueError(f"sources must be some of {SOURCES}, got {list(sources)}")
    directory = Path(data_dir)
    loaded: dict[str, list[Passage]] = {}
    for name in dict.fromkeys([*DEFAULT_SOURCES, *sources]):
        file_name, loader = _LOADERS[name]
        found = [directory / file_name, directory / (file_name + ".xz")]
        path = next((candidate for candidate in found if candidate.is_file()), None)
        if path is None:
            raise FileNotFoundError(f"{directory} has neither {file_name} nor {file_name}.xz (see cprs_core.mini.realqa)")
        loaded[name] = loader(path)
    passages = [passage for name in DEFAULT_SOURCES if name in sources for passage in loaded[name]]
    extra = [name for name in sources if name not in DEFAULT_SOURCES]
    if extra:
        reference = set().union(*(_shingles(p.text) for name in DEFAULT_SOURCES for p in loaded[name]))
        passages.extend(p for name in extra for p in loaded[name] if not _shingles(p.text) & reference)
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
    """The character ranges that must be kept: each question's answers (see :class:`Question`)."""
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
        families: dict[str, list[str]] = defaultdict(list)
        for source in self.sources:
            families[family_of(source)].append(source)
        self.families = dict(families)

    def sample_gold(
        self, rng: random.Random, source: str | None = None, count: int = 1, by_family: bool = False
    ) -> list[tuple[int, Question]]:
        """``count`` (passage index, question) pairs from distinct groups of one source: ``source``, or else one
        drawn uniformly among the pool's sources, or with ``by_family``, among the sources of a family drawn
        uniformly (so CoQA's seven domains together weigh as much as SQuAD)."""
        if source is None and by_family:
            source = rng.choice(self.families[rng.choice(sorted(self.families))])
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
        self, rng: random.Random, gold: Sequence[tuple[int, Question]], n_tokens: int, near: int = 0,
        with_gold: bool = True, ranked: Sequence[int] | None = None,
    ) -> RealDocument:
        """The gold passages among distractors of the same source from other groups, ~``n_tokens`` in all.

        Distractors come from the gold's source first; if it runs out, from the other sources. ``near`` > 0
        first adds up to that many other passages of the gold's own groups (hard negatives, for training).
        ``with_gold=False`` leaves the gold passages out (the same distractors, and more in their place; the
        questions are still asked, and the document has no answers): a context without what the query asks for.
        ``ranked`` (passage indices, best first, e.g. as a retriever ranks them for the query) takes the source's
        distractors in that order instead of at random.
        """
        source = self.passages[gold[0][0]].source
        pieces = [index for index, _ in gold]
        gold_groups = {self.passages[index].group for index in pieces}
        siblings = [i for group in sorted(gold_groups) for i in self.by_group[group] if i not in pieces]
        same = [i for i in self.by_source[source] if self.passages[i].group not in gold_groups]
        other = [i for i in range(len(self.passages)) if self.passages[i].source != source]
        for candidates in (siblings, same, other):
            rng.shuffle(candidates)
        if ranked is not None:  # after the shuffles above, so the random draws (and every other query) stay the same
            allowed = set(same)
            same = [index for index in ranked if index in allowed]
        if not with_gold:
            pieces = []
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
            if index not in offsets:
                continue  # left out (``with_gold=False``)
            base = offsets[index]
            answers.extend((base + start, base + end) for start, end in question.answers)
            relevant.extend((base + start, base + end) for start, end in question.evidence)
        query = " ".join(question.text for _, question in gold)
        return RealDocument("".join(parts), query, source, tuple(answers), tuple(sorted(relevant)))
