"""Agent tool-output pruning: compress a tool's long output against the agent's question before it enters the context.

:func:`prune_tool_output` is a plain function for any agent framework; :func:`pruned_tool` wraps a LangChain
tool (LangChain is imported only when it is called).
"""

import asyncio
import json
from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence

from cprs_core import CompressionResult, Compressor
from cprs_core.errors import OptionError, QueryError
from cprs_core.structured import (
    DEFAULT_UNIT_CHARS,
    MAX_JSON_DEPTH,
    json_depth,
    parse_json_container,
    plain_json_text,
    prune_json_with,
)
from cprs_core.validation import check_int, check_query

from ._shared import CompressorSettings

if TYPE_CHECKING:
    from langchain_core.tools import BaseTool

DEFAULT_MIN_TOKENS = 1024
"""Outputs of at most this many tokens (in the critic's tokenizer) enter the context unchanged."""

NOTHING_KEPT = "[cprs: nothing in this tool output ({tokens} tokens) was relevant to the question]"
"""Returned instead of an empty string when no part of a long output was kept."""

ToolInput = str | Mapping[str, Any]
"""A tool's input: its arguments, or the one string a single-input ``Tool`` takes."""

Question = str | Callable[[ToolInput], str]
"""The question to prune against: a fixed string, or a function of the tool's input that returns it."""


def check_wrapper_options(
    question: Any, min_tokens: Any, question_may_be_none: bool = False, allow_empty_query: bool = False
) -> None:
    """What every tool wrapper checks when it is built: ``question`` a non-empty string (empty only with
    ``allow_empty_query``) or a function returning one (or ``None`` where the wrapper reads it from the agent),
    ``min_tokens`` an integer >= 0.

    Raises:
        QueryError: a ``question`` of another type, or an empty one. OptionError: a wrong ``min_tokens``.
    """
    if not (isinstance(question, str) or callable(question) or (question is None and question_may_be_none)):
        raise QueryError(
            f"question must be a string or a function returning one, got {type(question).__name__} {question!r:.60}"
        )
    if isinstance(question, str):
        check_query(question, allow_empty_query, name="question")
    check_int("min_tokens", min_tokens, 0)


def asked_question(question: Callable[[Any], Any], argument: Any) -> str:
    """``question(argument)``: what a wrapper's question function returns for the state or tool arguments.

    Raises:
        QueryError: the function returned something other than a string (``None``, a message object, ...).
    """
    asked = question(argument)
    if not isinstance(asked, str):
        name = getattr(question, "__name__", type(question).__name__)
        raise QueryError(f"the question function {name} must return a string, got {type(asked).__name__} {asked!r:.60}")
    return asked


def text_content(content: Any) -> str | None:
    """A tool result's content as text: a string, or a non-empty list of only text blocks (strings or
    ``{"type": "text", "text": ...}``) joined by newlines; ``None`` for anything else (images, files)."""
    if isinstance(content, str):
        return content
    if not isinstance(content, list) or not content:
        return None
    texts = [block if isinstance(block, str) else
             block.get("text") if isinstance(block, dict) and block.get("type") == "text" else None
             for block in content]
    return "\n".join(texts) if all(isinstance(text, str) for text in texts) else None


def content_blocks(output: Any, block_types: Sequence[str]) -> bool:
    """Whether LangChain sends ``output`` to the model as message content blocks (dicts whose ``"type"`` is in
    ``block_types``, and strings) rather than as its JSON text: a list holding at least one such dict."""
    return (isinstance(output, list) and any(isinstance(block, dict) for block in output)
            and all(isinstance(block, str) or (isinstance(block, dict) and block.get("type") in block_types)
                    for block in output))


def prune(
    output: Any, question: str, settings: CompressorSettings, min_tokens: int = DEFAULT_MIN_TOKENS,
    unit_chars: int = DEFAULT_UNIT_CHARS,
) -> tuple[Any, dict[str, Any] | None]:
    """The content to put in the agent's context for ``output``, and the compression summary (``None``: unpruned).

    A string is compressed as text, unless it is a JSON object or array; JSON (a dict, list or tuple, or such a
    string; values JSON cannot hold, such as dates or sets, count as their ``str()``) is pruned
    structure-preserving (:func:`cprs_core.structured.prune_json`): the content is the kept JSON followed by a
    line noting what was dropped, and the summary has a ``"json"`` entry (``kept_units``,
    ``total_units``, ``note``). JSON nested deeper than :data:`~cprs_core.structured.MAX_JSON_DEPTH` levels is
    compressed as text, and so is JSON when ``keep_spans`` are set: they are offsets into the output's text (the
    string, or a dict or list's JSON text). Outputs of at most ``min_tokens`` tokens and empty ones come back unchanged; a
    long output from which nothing was kept becomes the :data:`NOTHING_KEPT` note.

    Any other value (a number, ``None``, an object) is passed through unpruned: there is no text to select from.

    Raises:
        OptionError: ``min_tokens`` is not a non-negative integer.
        QueryError: ``question`` is not a string or is empty (unless the settings allow an empty query).
        ContextTypeError: a dict or list nested too deeply to write as JSON text.
    """
    check_query(question, settings.allow_empty_query, name="question")
    check_int("min_tokens", min_tokens, 0)
    if isinstance(output, str):
        if not output.strip():
            return output, None
        value, text = parse_json_container(output), output
    elif isinstance(output, (dict, list, tuple)) and output:
        text = plain_json_text(output)
        value = json.loads(text)
        if json_depth(value) > MAX_JSON_DEPTH:
            value = None  # too deep to prune by its structure: pruned as its JSON text
    else:
        return output, None
    compressor = settings.resolve_compressor()
    count_tokens = getattr(compressor, "count_tokens", None)
    if count_tokens is not None and count_tokens(text) <= min_tokens:
        return output, None
    if value is not None and value and not settings.keep_spans:  # keep_spans are offsets into the text
        return _prune_json(output, value, question, settings, min_tokens, unit_chars)
    result = settings.compress(text, question)
    if result.original_tokens <= min_tokens:
        return output, None
    return (result.text if result.spans else NOTHING_KEPT.format(tokens=result.original_tokens)), _summary(result)


def _prune_json(
    output: Any, value: Any, question: str, settings: CompressorSettings, min_tokens: int, unit_chars: int
) -> tuple[Any, dict[str, Any] | None]:
    line_settings = settings.model_copy(update={"granularity": "line"})
    pruned = prune_json_with(lambda lines: line_settings.compress(lines, question), value, unit_chars)
    if pruned.result.original_tokens <= min_tokens:
        return output, None
    summary = {**_summary(pruned.result),
               "json": {"kept_units": pruned.kept_units, "total_units": pruned.total_units, "note": pruned.note}}
    if not pruned.kept_units:
        return NOTHING_KEPT.format(tokens=pruned.result.original_tokens), summary
    return pruned.text + (f"\n{pruned.note}" if pruned.note else ""), summary


def prune_tool_output(
    output: Any,
    question: str,
    compressor: Compressor | None = None,
    *,
    min_tokens: int = DEFAULT_MIN_TOKENS,
    **options: Any,
) -> Any:
    """Keep the parts of a tool's ``output`` relevant to the agent's ``question``; short outputs pass unchanged.

    Args:
        output: what the tool returned: text, or JSON (a dict/list, or JSON text), which is pruned
            structure-preserving (the kept JSON, then a line noting what was dropped).
        question: the agent's current question (the user's request or the step being worked on).
        compressor: any :class:`cprs_core.Compressor`; ``None`` = configured by ``options`` (``server_url``,
            ``model``, ...) or the embedded cprs-mini.
        min_tokens: outputs of at most this many tokens are returned as they are.
        options: :class:`~cprs_integrations._shared.CompressorSettings` fields (``instruction``,
            ``granularity`` (default ``"sentence"``), ``target_ratio``, ``target_tokens``, ``keep``,
            ``budget_tokenizer``, ``server_url``, ...).

    Returns:
        The kept text or JSON, the output itself when short, or the :data:`NOTHING_KEPT` note.

    Raises:
        cprs_core.CPRSError: a wrong argument, named (an empty ``question``, a bad option), before any model
            loads.
    """
    return prune(output, question, CompressorSettings(compressor=compressor, **options), min_tokens)[0]


def pruned_tool(
    tool: "BaseTool",
    question: Question,
    compressor: Compressor | None = None,
    *,
    min_tokens: int = DEFAULT_MIN_TOKENS,
    **options: Any,
) -> "BaseTool":
    """A LangChain tool that runs ``tool`` and prunes its string output against the question (sync and async).

    The wrapper has ``tool``'s name, description, argument schema and ``return_direct``, so an agent sees the
    same tool (a ``StructuredTool``, or a ``Tool`` when ``tool`` is a single-string-input ``Tool``). It answers
    in ``content_and_artifact`` format: the content is the pruned output (see :func:`prune_tool_output`), the
    artifact ``{"cprs": summary}`` with the compression's ``original_tokens``, ``compressed_tokens``,
    ``ratio``, ``keep_ratio``, ``windows``, ``granularity`` and ``spans`` (``None`` when the output was not
    pruned; a ``"json"`` entry for JSON outputs). When invoked with a tool call the agent gets a ``ToolMessage``
    carrying both; the artifact is not sent to the model. JSON outputs (dicts, lists, or JSON text) are pruned
    structure-preserving; a list of LangChain content blocks is not JSON: text blocks are pruned as one text (as
    :class:`~cprs_integrations.CPRSToolOutputMiddleware` does), blocks with images or files pass unchanged;
    other non-string outputs pass through unchanged; an inner tool's own artifact is not carried over.

    Args:
        tool: the tool to wrap.
        question: the agent's question, or a function of the tool's input that returns it: the input is the
            arguments dict (as in a tool call), or the string the tool was invoked with. E.g.
            ``lambda args: state["question"]`` reads the agent's current question, ``lambda args: args["query"]``
            uses the tool's own query argument.
        compressor, min_tokens, options: as for :func:`prune_tool_output`.
    """
    from langchain_core.runnables import RunnableConfig
    from langchain_core.tools import BaseTool, StructuredTool, Tool
    from langchain_core.tools.base import TOOL_MESSAGE_BLOCK_TYPES

    if not isinstance(tool, BaseTool):
        raise OptionError(
            f"tool must be a LangChain tool (BaseTool), got {type(tool).__name__}; make one from a function with "
            "langchain_core.tools.tool or StructuredTool.from_function"
        )
    settings = CompressorSettings(compressor=compressor, **options)
    check_wrapper_options(question, min_tokens, allow_empty_query=settings.allow_empty_query)

    # This module has no ``from __future__ import annotations``: StructuredTool finds the ``config`` parameter
    # of ``run``/``arun`` by its evaluated annotation, RunnableConfig, imported here so LangChain stays optional.

    def pruned(output: Any, tool_input: ToolInput) -> tuple[Any, dict[str, Any]]:
        text = text_content(output) if content_blocks(output, TOOL_MESSAGE_BLOCK_TYPES) else output
        if text is None:  # images, files: not text to select from (as JSON text they would reach the model)
            return output, {"cprs": None}
        asked = asked_question(question, tool_input) if callable(question) else question
        content, summary = prune(text, asked, settings, min_tokens)
        return (output if summary is None else content), {"cprs": summary}

    def run(*args: str, config: RunnableConfig, **arguments: Any) -> tuple[Any, dict[str, Any]]:
        tool_input = args[0] if args else arguments
        return pruned(tool.invoke(tool_input, config), tool_input)

    async def arun(*args: str, config: RunnableConfig, **arguments: Any) -> tuple[Any, dict[str, Any]]:
        tool_input = args[0] if args else arguments
        output = await tool.ainvoke(tool_input, config)
        return await asyncio.to_thread(pruned, output, tool_input)

    fields = {
        "name": tool.name,
        "description": tool.description,
        "func": run,
        "coroutine": arun,
        "return_direct": tool.return_direct,
        "response_format": "content_and_artifact",
        "tags": tool.tags,
        "metadata": tool.metadata,
    }
    if tool.args_schema is None:
        return Tool(**fields)
    return StructuredTool(args_schema=tool.args_schema, **fields)


def _summary(result: CompressionResult) -> dict[str, Any]:
    summary = result.to_dict()
    del summary["text"], summary["metadata"]
    return summary
