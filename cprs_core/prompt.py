"""The QwenLong-CPRS control prompt: instruction presets, tag parsing and the prompt template.

The template is upstream's, token for token::

    <|im_start|>system\\n{instruction}<|im_end|>\\n
    <|im_start|>user\\n{query}<|im_end|>\\n
    <|im_start|>context\\n{context window}

Every window of a long context is prefixed with the same system + user + ``context`` header.
"""

from __future__ import annotations

import re

INSTRUCTIONS: dict[str, str] = {
    "needle": (
        "You are an expert for information extraction, your task is to extract the 'needles' in the format of "
        " 'One of the special magic {type_needle_v} for {key} is: {value}.' from the documents to answer "
        "user's question.\n## tagging rule:\n- tag the needles with 'needle'"
    ),
    "fact": (
        "You are an expert for information extraction, your task is to extract some sentences from the "
        "documents as the supporting facts of the user's question.\n## tagging rule:\n"
        "- tag the supporting facts with 'fact'"
    ),
    "chain": (
        "You are an expert for information extraction, your task is to extract the assigment chains like "
        "'VAR XXX1 = XXX2' from the documents to answer the question of the user.\n## tagging rule:\n"
        "- tag the assignment chains with 'chain'"
    ),
}
"""The three control prompts published with QwenLong-CPRS (needles, supporting facts, variable chains).

Line breaks are real newlines. This is the default because it is the prompt as written: the markdown-style
``## tagging rule:`` heading and ``- tag ...`` item only read as such on their own lines, and the chat template
around the prompt uses real newlines too.
"""

_FIRST_BREAK_AS_TYPED = {"needle": "\\N"}
"""Upstream's README types the needle prompt's first line break as ``\\N``."""

LITERAL_INSTRUCTIONS: dict[str, str] = {
    f"{name}-literal": text.replace("\n", _FIRST_BREAK_AS_TYPED.get(name, "\\n"), 1).replace("\n", "\\n")
    for name, text in INSTRUCTIONS.items()
}
"""The same prompts as upstream's README hands them to ``infer.py``: inside bash double quotes, so the model gets
a literal backslash and ``n`` (and, in the needle prompt's first break, ``\\N``) instead of each newline. Which form
the model was trained with is not published; pick ``needle-literal``, ``fact-literal`` or ``chain-literal`` to send
exactly what upstream's documented commands send."""

DEFAULT_INSTRUCTION = INSTRUCTIONS["fact"]

OUTSIDE_TAG = "outside"
"""The label word the LM-as-critic uses for tokens outside every tagged span."""

_TAG_RULE = re.compile(r"\btag\b[^\n]*?\bwith\s+['\"]([^'\"]+)['\"]", re.IGNORECASE)


def resolve_instruction(instruction: str | None) -> str:
    """Return the instruction text: a preset name (``needle``/``fact``/``chain``, or one of them with ``-literal``),
    free text, or the default."""
    if instruction is None or not instruction.strip():
        return DEFAULT_INSTRUCTION
    name = instruction.strip()
    return INSTRUCTIONS.get(name) or LITERAL_INSTRUCTIONS.get(name, instruction)


def parse_tags(instruction: str) -> list[str]:
    """Tag names named by the instruction's tagging rule (``tag the X with 'name'``), in order, deduplicated.

    An instruction without a tagging rule yields ``["keep"]``.
    """
    tags: list[str] = []
    for name in _TAG_RULE.findall(instruction):
        if name not in tags:
            tags.append(name)
    return tags or ["keep"]


def build_prefix(instruction: str, query: str) -> str:
    """The prompt prefix that precedes every context window."""
    return (
        "<|im_start|>system\n" + instruction + "<|im_end|>\n"
        "<|im_start|>user\n" + query + "<|im_end|>\n"
        "<|im_start|>context\n"
    )
