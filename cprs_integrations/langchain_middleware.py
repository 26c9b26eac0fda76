"""LangChain 1.x agent middleware: prune every tool result against the agent's current question.

Use it with ``langchain.agents.create_agent`` (``pip install -e '.[agents]'``)::

    from langchain.agents import create_agent
    agent = create_agent(model, tools, middleware=[CPRSToolOutputMiddleware(instruction="chain")])
"""

from __future__ import annotations

import asyncio
from collections.abc import Collection
from typing import Any, Awaitable, Callable, Mapping, Sequence

from langchain.agents.middleware import AgentMiddleware
from langchain_core.messages import BaseMessage, HumanMessage, ToolMessage

from cprs_core import Compressor, OptionError
from cprs_core.validation import has_visible_text

from ._shared import CompressorSettings
from .tools import DEFAULT_MIN_TOKENS, asked_question, check_wrapper_options, prune, text_content

StateQuestion = Callable[[Mapping[str, Any]], str]
"""Returns the question to prune against from the agent's state (``state["messages"]``, custom keys, ...)."""


def latest_human_message(state: Mapping[str, Any]) -> str:
    """The text of the latest human message in ``state["messages"]`` (``""`` when there is none)."""
    messages: Sequence[BaseMessage] = state.get("messages", ())
    return next((message.text for message in reversed(messages) if isinstance(message, HumanMessage)), "")


class CPRSToolOutputMiddleware(AgentMiddleware):
    """Compresses each tool result of a ``create_agent`` agent to what its current question needs.

    Each ``ToolMessage`` whose text content is longer than ``min_tokens`` (critic tokens) is replaced by a copy
    whose content is the kept text (JSON text is pruned structure-preserving: the kept JSON, then a line saying
    what was dropped) and whose ``artifact`` is ``{"cprs": summary, "full_output": the original content,
    "tool_artifact": the tool's own artifact}``, so the full output stays retrievable but never reaches the
    model. ``summary`` is that of :func:`cprs_integrations.tools.pruned_tool`. Text content is a string, or a
    list of text blocks (as MCP tools answer), which are joined by newlines and pruned as one text. Short
    results, error results, other content (images, files), ``Command`` results and excluded tools pass
    unchanged. Works with ``invoke`` and
    ``ainvoke`` (the async path compresses in a worker thread).

    Args:
        compressor: any :class:`cprs_core.Compressor`; ``None`` = configured by ``options`` or cprs-mini.
        question: a function of the agent state returning the question (default: the latest human message), or
            a fixed string. A state without a question leaves results unchanged.
        min_tokens: results of at most this many tokens pass unchanged.
        exclude_tools: names of tools whose results are never pruned.
        options: :class:`~cprs_integrations._shared.CompressorSettings` fields (``instruction``,
            ``granularity``, ``target_tokens``, ``keep``, ``budget_tokenizer``, ``server_url``, ...).
    """

    def __init__(
        self,
        compressor: Compressor | None = None,
        *,
        question: StateQuestion | str = latest_human_message,
        min_tokens: int = DEFAULT_MIN_TOKENS,
        exclude_tools: Sequence[str] = (),
        **options: Any,
    ) -> None:
        super().__init__()
        self.settings = CompressorSettings(compressor=compressor, **options)
        check_wrapper_options(question, min_tokens, allow_empty_query=self.settings.allow_empty_query)
        if isinstance(exclude_tools, str):
            raise OptionError("exclude_tools is a list of tool names, not one string")
        if not isinstance(exclude_tools, Collection) or not all(isinstance(name, str) for name in exclude_tools):
            raise OptionError(f"exclude_tools must be a list of tool names (strings), got {exclude_tools!r:.80}")
        self.question: StateQuestion = (lambda state: question) if isinstance(question, str) else question
        self.min_tokens = min_tokens
        self.exclude_tools = frozenset(exclude_tools)

    def wrap_tool_call(self, request: Any, handler: Callable[[Any], Any]) -> Any:
        """Run the tool, then prune its ``ToolMessage``."""
        return self.pruned(handler(request), request.state)

    async def awrap_tool_call(self, request: Any, handler: Callable[[Any], Awaitable[Any]]) -> Any:
        """Run the tool, then prune its ``ToolMessage`` in a worker thread."""
        result = await handler(request)
        return await asyncio.to_thread(self.pruned, result, request.state)

    def pruned(self, result: Any, state: Mapping[str, Any]) -> Any:
        """``result`` with its content pruned against the state's question (see the class docstring)."""
        if not isinstance(result, ToolMessage) or result.status == "error" or result.name in self.exclude_tools:
            return result
        text = text_content(result.content)
        question = asked_question(self.question, state)
        if text is None or not (has_visible_text(question) or self.settings.allow_empty_query):
            return result
        content, summary = prune(text, question, self.settings, self.min_tokens)
        if summary is None:
            return result
        artifact = {"cprs": summary, "full_output": result.content, "tool_artifact": result.artifact}
        return result.model_copy(update={"content": content, "artifact": artifact})
