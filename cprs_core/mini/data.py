"""Synthetic tasks for the paper's families, planted in real prose.

* ``needle``: RULER-style needles ``One of the special magic numbers for {key} is: {value}.`` (single key,
  distractor keys, several values, several queried keys).
* ``chain``: variable tracking, ``VAR ABCDE = 12345`` then ``VAR FGHIJ = VAR ABCDE`` ...; the query asks
  which variables hold a value. A window cannot see whether a link belongs to the asked chain, so every link
  is relevant, and only the other chains' value assignments are not.
* ``fact``: a fact sentence answering a question (one hop or two) among distractor facts; or (``prose``) a
  real sentence from elsewhere in the haystack, asked about through its rare words.

Each family also makes negatives (the asked key, value or person is absent: nothing relevant but the links).
A :class:`Task` says what to plant; :func:`build_document` plants it into a :class:`~cprs_core.mini.haystack.Haystack`
passage and records the character ranges of the relevant sentences.
"""

from __future__ import annotations

import random
import string
import uuid
from dataclasses import dataclass
from typing import Sequence

from ..prompt import INSTRUCTIONS
from .haystack import Haystack, words_of

FAMILIES = ("needle", "chain", "fact")
NEEDLE_VARIANTS = ("single", "multikey", "multivalue", "multiquery", "absent")
CHAIN_VARIANTS = ("single", "distractors", "absent")
FACT_VARIANTS = ("single", "twohop", "prose", "absent")
VARIANTS = {"needle": NEEDLE_VARIANTS, "chain": CHAIN_VARIANTS, "fact": FACT_VARIANTS}

PARAPHRASED_INSTRUCTIONS: dict[str, tuple[str, ...]] = {
    "needle": (
        "Find the statements that give a special magic value for the key in the question.\n"
        "- tag them with 'magic number'",
        "Extract the key-value needles hidden in the document that answer the question.\n"
        "- tag the needles with 'key-value pair'",
    ),
    "fact": (
        "Select the sentences a reader needs as evidence to answer the question.\n- tag the evidence with 'evidence'",
        "Pick out the supporting sentences for the question from the text.\n"
        "- tag each supporting sentence with 'supporting sentence'",
    ),
    "chain": (
        "Collect every variable assignment that the question's value flows through.\n"
        "- tag the assignments with 'assignment'",
        "Extract the chains of variable assignments 'VAR A = VAR B' needed for the question.\n"
        "- tag them with 'variable'",
    ),
}
"""Rewordings of the upstream presets with other tag words, so the tag words steer the critic."""
GENERIC_INSTRUCTION = "Keep only the parts of the document that are needed to answer the question."
"""An instruction without a tagging rule (its tag is ``keep``): the query alone decides."""


@dataclass(frozen=True)
class Insert:
    """A sentence to plant and whether the critic must keep it."""

    text: str
    relevant: bool


@dataclass(frozen=True)
class Task:
    """What to plant in a haystack, with the query and instruction that ask for it.

    ``ordered``: plant the inserts in the given order (a chain reads top down), else in random order.
    """

    family: str
    variant: str
    query: str
    instruction: str
    inserts: list[Insert]
    ordered: bool = False

    @property
    def gold(self) -> list[str]:
        """The sentences the critic must keep."""
        return [insert.text for insert in self.inserts if insert.relevant]


@dataclass(frozen=True)
class Document:
    """A haystack with a task planted; ``relevant`` holds the ``(start, end)`` character ranges to keep."""

    text: str
    task: Task
    relevant: list[tuple[int, int]]


def pick_instruction(rng: random.Random, family: str, paraphrase: bool) -> str:
    """The family's upstream preset, or (when ``paraphrase``) sometimes a rewording or the generic instruction."""
    if not paraphrase:
        return INSTRUCTIONS[family]
    roll = rng.random()
    if roll < 0.5:
        return INSTRUCTIONS[family]
    if roll < 0.85:
        return rng.choice(PARAPHRASED_INSTRUCTIONS[family])
    return GENERIC_INSTRUCTION


# -- needles -------------------------------------------------------------------------------------------------

_NEEDLE_TYPES = {"numbers": "number", "uuids": "uuid", "words": "word"}
_NEEDLE_FORMATS = (
    "One of the special magic {kind} for {key} is: {value}.",
    "One of the special magic {kind} for {key} is: {value}.",
    "The special magic {one} for {key} is {value}.",
)
_SINGLE_QUERIES = (
    "What is the special magic {one} for {key} mentioned in the provided text?",
    "Which special magic {one} is given for {key}?",
    "Find the special magic {one} for {key}.",
    "{key}: what is its special magic {one}?",
)
_MULTI_QUERIES = (
    "What are all the special magic {kind} for {key} mentioned in the provided text?",
    "List every special magic {one} given for {key}.",
)


def _uuid(rng: random.Random) -> str:
    return str(uuid.UUID(int=rng.getrandbits(128), version=4))


def _needle_value(rng: random.Random, kind: str, vocabulary: Sequence[str]) -> str:
    if kind == "numbers":
        return str(rng.randint(1_000_000, 9_999_999))
    if kind == "uuids":
        return _uuid(rng)
    return rng.choice(vocabulary)


def _needle_key(rng: random.Random, vocabulary: Sequence[str]) -> str:
    roll = rng.random()
    if roll < 0.7:
        return f"{rng.choice(vocabulary)}-{rng.choice(vocabulary)}"
    if roll < 0.85:
        return str(rng.randint(1_000_000, 9_999_999))
    return _uuid(rng)


def needle_task(rng: random.Random, variant: str, vocabulary: Sequence[str], paraphrase: bool) -> Task:
    """A RULER-style needle-in-a-haystack task."""
    kind = rng.choice(list(_NEEDLE_TYPES))
    one = _NEEDLE_TYPES[kind]
    fmt = rng.choice(_NEEDLE_FORMATS)
    keys = list(dict.fromkeys(_needle_key(rng, vocabulary) for _ in range(8)))
    asked = keys[: 3 if variant == "multiquery" and rng.random() < 0.5 else 2 if variant == "multiquery" else 1]
    others = keys[len(asked) :]

    def needle(key: str, relevant: bool) -> Insert:
        return Insert(fmt.format(kind=kind, one=one, key=key, value=_needle_value(rng, kind, vocabulary)), relevant)

    inserts: list[Insert] = []
    if variant == "multivalue":
        inserts += [needle(asked[0], True) for _ in range(rng.randint(2, 4))]
    elif variant != "absent":
        inserts += [needle(key, True) for key in asked]
    n_distractors = {"single": 0, "multikey": rng.randint(1, 4), "absent": rng.randint(0, 3)}.get(variant, rng.randint(0, 2))
    inserts += [needle(key, False) for key in others[:n_distractors]]
    if variant == "multiquery":
        key_text = ", ".join(asked[:-1]) + " and " + asked[-1]
        query = rng.choice(_MULTI_QUERIES).format(kind=kind, one=one, key=key_text)
    elif variant == "multivalue":
        query = rng.choice(_MULTI_QUERIES).format(kind=kind, one=one, key=asked[0])
    else:
        query = rng.choice(_SINGLE_QUERIES).format(one=one, key=asked[0])
    return Task("needle", variant, query, pick_instruction(rng, "needle", paraphrase), inserts)


# -- variable tracking ---------------------------------------------------------------------------------------

_CHAIN_QUERIES = (
    "Find all variables that are assigned the value {value} in the text above.",
    "Which variables are equal to {value}?",
    "List every variable whose value is {value}, directly or through other variables.",
    "Trace the value {value}: which variables end up holding it?",
)


def _chain(names: list[str], value: int, hops: int) -> list[str]:
    statements = [f"VAR {names[0]} = {value}."]
    statements += [f"VAR {names[i]} = VAR {names[i - 1]}." for i in range(1, hops + 1)]
    return statements


def chain_task(rng: random.Random, variant: str, paraphrase: bool) -> Task:
    """A RULER-style variable-tracking task: one asked chain (unless absent) and distractor chains."""
    n_chains = {"single": 1, "distractors": rng.randint(2, 3), "absent": rng.randint(1, 2)}[variant]
    names = list(dict.fromkeys("".join(rng.choices(string.ascii_uppercase, k=5)) for _ in range(40)))
    values = rng.sample(range(10_000, 100_000), n_chains + 1)
    asked = values[0]
    chains = []
    for index in range(n_chains):
        hops = rng.randint(1, 5)
        statements = _chain(names[: hops + 1], values[index] if variant != "absent" else values[index + 1], hops)
        names = names[hops + 1 :]
        is_asked = variant != "absent" and index == 0
        chains.append([Insert(text, is_asked or position > 0) for position, text in enumerate(statements)])
    inserts = _interleave(rng, chains)
    query = rng.choice(_CHAIN_QUERIES).format(value=asked)
    return Task("chain", variant, query, pick_instruction(rng, "chain", paraphrase), inserts, ordered=True)


def _interleave(rng: random.Random, sequences: list[list[Insert]]) -> list[Insert]:
    """Merge sequences in random order, keeping each sequence's own order."""
    queues = [list(sequence) for sequence in sequences]
    merged = []
    while any(queues):
        queue = rng.choice([queue for queue in queues if queue])
        merged.append(queue.pop(0))
    return merged


# -- supporting facts ----------------------------------------------------------------------------------------

_SYLLABLES = ("ka", "lo", "mir", "ven", "tas", "dor", "el", "ri", "qua", "sen", "bel", "tor", "ani", "gus", "fel",
              "mo", "ra", "zin", "ol", "pe", "dra", "nu", "vik", "sa", "hel", "jo", "ter", "wyn", "ca", "lis")
_COLOURS = ("crimson", "teal", "amber", "violet", "olive", "scarlet", "indigo", "ochre", "silver", "turquoise")
_JOBS = ("pharmacist", "carpenter", "software engineer", "violin teacher", "pilot", "architect", "beekeeper",
         "librarian", "marine biologist", "baker", "tax accountant", "firefighter")
_ANIMALS = ("parrot", "tortoise", "greyhound", "ferret", "goldfish", "rabbit", "iguana", "cat")
_OBJECTS = ("brass key", "silver locket", "old map", "train ticket", "notebook", "wooden box", "letter")
_CONTAINERS = ("blue teapot", "piano bench", "garden shed", "flour jar", "attic trunk", "coat lining")
_INSTRUMENTS = ("cello", "oboe", "trumpet", "harp", "bassoon", "viola", "timpani")
_FOODS = ("lentil soup", "mushroom risotto", "lemon tart", "grilled sardines", "pumpkin pie", "dumplings")
_PLACES = ("railway museum", "harbour market", "chess club", "botanical garden", "night school", "ferry terminal")


def _word(rng: random.Random, syllables: int) -> str:
    return "".join(rng.choice(_SYLLABLES) for _ in range(syllables)).capitalize()


def _person(rng: random.Random) -> str:
    return f"{_word(rng, rng.randint(2, 3))} {_word(rng, rng.randint(2, 3))}"


@dataclass(frozen=True)
class Relation:
    """Fact and question templates about a subject ``{s}``; ``{p}`` questions ask through a person living there."""

    facts: tuple[str, ...]
    questions: tuple[str, ...]
    pools: tuple[tuple[str, tuple[str, ...]], ...] = ()
    via_person: tuple[str, ...] = ()

    def make(self, rng: random.Random, subject: str, person: str = "") -> tuple[str, str]:
        """``(fact sentence, question)`` about ``subject`` (asked through ``person`` when given)."""
        values = {name: rng.choice(pool) for name, pool in self.pools}
        values.update(
            year=str(rng.randint(1850, 2015)),
            number=str(rng.randint(120, 9800)),
            river=_word(rng, 3),
            pet_name=_word(rng, 2),
            code=f"{rng.choice(_SYLLABLES)}{rng.randint(100, 999)}{rng.choice(_SYLLABLES)}",
        )
        fact = rng.choice(self.facts).format(s=subject, **values)
        questions = self.via_person if person else self.questions
        return fact, rng.choice(questions).format(s=subject, p=person, **values)


_PERSON_RELATIONS = (
    Relation(("{s}'s favourite colour is {colour}.", "The colour {s} likes best is {colour}."),
             ("What is {s}'s favourite colour?", "Which colour does {s} like best?"), (("colour", _COLOURS),)),
    Relation(("{s} was born in {year}.", "The records show that {s} was born in the year {year}."),
             ("In what year was {s} born?", "When was {s} born?")),
    Relation(("{s} works as a {job}.", "For a living, {s} is a {job}."),
             ("What is {s}'s job?", "What does {s} do for a living?"), (("job", _JOBS),)),
    Relation(("{s} keeps a {animal} called {pet_name}.", "{s} has a pet {animal} named {pet_name}."),
             ("What is the name of {s}'s pet?", "What pet does {s} have?"), (("animal", _ANIMALS),)),
    Relation(("{s} hid the {object} inside the {container}.", "The {object} was hidden by {s} in the {container}."),
             ("Where did {s} hide the {object}?", "Where is the {object} that {s} hid?"),
             (("object", _OBJECTS), ("container", _CONTAINERS))),
    Relation(("{s} plays the {instrument} in a quartet.", "In the evenings {s} practises the {instrument}."),
             ("Which instrument does {s} play?", "What instrument does {s} practise?"), (("instrument", _INSTRUMENTS),)),
    Relation(("{s}'s favourite dish is {food}.", "Nothing pleases {s} more than a plate of {food}."),
             ("What is {s}'s favourite food?", "Which dish does {s} like most?"), (("food", _FOODS),)),
    Relation(("The door code of {s}'s studio is {code}.", "{s} set the studio door code to {code}."),
             ("What is the door code of {s}'s studio?", "Which code opens {s}'s studio?")),
    Relation(("{s} first met the mayor at the {place}.", "It was at the {place} that {s} first met the mayor."),
             ("Where did {s} first meet the mayor?", "At which place did {s} meet the mayor for the first time?"),
             (("place", _PLACES),)),
)
_TOWN_RELATIONS = (
    Relation(("The town of {s} was founded in {year}.", "{s} was founded as a town in {year}."),
             ("When was the town of {s} founded?", "In which year was {s} founded?"), (),
             ("In which year was the town where {p} lives founded?", "When was {p}'s home town founded?")),
    Relation(("The bridge of {s} is {number} metres long.", "{s} has a bridge {number} metres in length."),
             ("How long is the bridge of {s}?", "What is the length of the bridge in {s}?"), (),
             ("How long is the bridge of the town where {p} lives?", "What is the length of the bridge in {p}'s town?")),
    Relation(("The river that runs through {s} is called the {river}.", "{s} lies on the river {river}."),
             ("Which river runs through {s}?", "On what river does {s} lie?"), (),
             ("Which river runs through the town where {p} lives?", "On what river does {p}'s home town lie?")),
)


def _one_hop(rng: random.Random, subjects: list[str], relations: Sequence[Relation]) -> tuple[list[str], str, list[str]]:
    """Gold fact and question about ``subjects[0]``; distractors: same relation for others, other relations for it."""
    relation = rng.choice(relations)
    gold, question = relation.make(rng, subjects[0])
    distractors = [relation.make(rng, other)[0] for other in subjects[1 : 1 + rng.randint(1, 3)]]
    others = [other for other in relations if other is not relation]
    distractors += [other.make(rng, subjects[0])[0] for other in rng.sample(others, rng.randint(0, 2))]
    return [gold], question, distractors


def _two_hop(rng: random.Random, people: list[str]) -> tuple[list[str], str, list[str]]:
    """``{p} lives in the town of {t}.`` plus a fact about the town; the question asks it through the person."""
    town, other_town = _word(rng, 3), _word(rng, 3)
    relation = rng.choice(_TOWN_RELATIONS)
    town_fact, question = relation.make(rng, town, person=people[0])
    distractors = [f"{people[1]} lives in the town of {other_town}.", relation.make(rng, other_town)[0]]
    return [f"{people[0]} lives in the town of {town}.", town_fact], question, distractors


_PROSE_QUESTIONS = (
    "What does the text say about {words}?",
    "Which sentence mentions {words}?",
    "Find the passage about {words}.",
    "What is said of {words}?",
    "{words}?",
)
_STOP_WORDS = frozenset("that this with from they them their there shall have unto which were what when will".split())
MAX_PROSE_FREQUENCY = 20
"""A word names a sentence when it occurs in at most this many verses of the split."""


def _prose(rng: random.Random, haystack: Haystack) -> tuple[list[str], str, list[str]]:
    """A random verse as the fact, asked about through two or three of its rare words."""
    for _ in range(1000):
        verse = rng.choice(haystack.verses)
        rare = [word for word in dict.fromkeys(words_of(verse))
                if word not in _STOP_WORDS and len(word) >= 4 and haystack.verse_frequency[word] <= MAX_PROSE_FREQUENCY]
        if len(rare) >= 2:
            break
    else:
        raise ValueError("the haystack has no verse with two rare words to ask about")
    chosen = rng.sample(rare, min(len(rare), rng.randint(2, 3)))
    words = ", ".join(chosen[:-1]) + " and " + chosen[-1]
    return [verse], rng.choice(_PROSE_QUESTIONS).format(words=words), []


def fact_task(rng: random.Random, variant: str, haystack: Haystack, paraphrase: bool) -> Task:
    """A supporting-fact task (one or two gold sentences) with distractor facts; ``absent`` asks about nobody here."""
    people = list(dict.fromkeys(_person(rng) for _ in range(6)))
    if variant == "prose":
        gold, question, distractors = _prose(rng, haystack)
    elif variant == "twohop":
        gold, question, distractors = _two_hop(rng, people)
    elif rng.random() < 0.75:
        gold, question, distractors = _one_hop(rng, people, _PERSON_RELATIONS)
    else:
        towns = list(dict.fromkeys(_word(rng, 3) for _ in range(5)))
        gold, question, distractors = _one_hop(rng, towns, _TOWN_RELATIONS)
    inserts = [Insert(text, variant != "absent") for text in gold] + [Insert(text, False) for text in distractors]
    if variant == "absent":
        inserts = inserts[1:]
    return Task("fact", variant, question, pick_instruction(rng, "fact", paraphrase), inserts)


def make_task(rng: random.Random, family: str, variant: str, haystack: Haystack, paraphrase: bool) -> Task:
    """A task of ``family``/``variant`` drawing words from ``haystack``; ``paraphrase`` lets the instruction vary."""
    if variant not in VARIANTS.get(family, ()):
        raise ValueError(f"unknown task {family}/{variant}")
    if family == "needle":
        return needle_task(rng, variant, haystack.vocabulary, paraphrase)
    if family == "chain":
        return chain_task(rng, variant, paraphrase)
    return fact_task(rng, variant, haystack, paraphrase)


def build_document(rng: random.Random, task: Task, haystack: Haystack, n_tokens: int) -> Document:
    """Plant ``task``'s inserts between verses of a haystack passage of about ``n_tokens`` tokens.

    The passage holds ``n_tokens`` tokens of prose; the inserts come on top. Inserts go at random verse
    boundaries (in their given order when ``task.ordered``); chapter starts become paragraph breaks.
    """
    verses, breaks = haystack.passage(rng, n_tokens)
    inserts = list(task.inserts) if task.ordered else rng.sample(task.inserts, len(task.inserts))
    slots = sorted(rng.randrange(len(verses) + 1) for _ in inserts)
    pieces: list[tuple[str, bool, bool]] = [(verse, brk, False) for verse, brk in zip(verses, breaks)]
    for offset, (slot, insert) in enumerate(zip(slots, inserts)):
        pieces.insert(slot + offset, (insert.text, False, insert.relevant))
    parts: list[str] = []
    relevant: list[tuple[int, int]] = []
    length = 0
    for index, (text, paragraph, is_relevant) in enumerate(pieces):
        if index:
            separator = "\n\n" if paragraph else " "
            parts.append(separator)
            length += len(separator)
        if is_relevant:
            relevant.append((length, length + len(text)))
        parts.append(text)
        length += len(text)
    return Document("".join(parts), task, relevant)
