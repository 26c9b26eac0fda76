"""LlamaIndex agents: :class:`CPRSPrunedTool`, a tool wrapper that prunes a tool's output against the question.

LlamaIndex agents (``FunctionAgent``, ``ReActAgent``, ``AgentWorkflow``) take tools; wrap the long-output ones::

    agent = FunctionAgent(tools=[CPRSPrunedTool(search_tool, instruction="chain")], llm=llm)

The wrapper is a ``FunctionTool`` that asks for the workflow ``Context``, so by default it prunes against the
latest user message in the agent's memory.
"""

# No ``from __future__ import annotations``: FunctionTool finds the Context parameter by its evaluated annotation.

import asyncio
from dataclasses import dataclass
from typing import Any, Callable, Dict, Optional, Union

from llama_index.core.base.llms.types import MessageRole, TextBlock
from llama_index.core.tools import AsyncBaseTool, BaseTool, FunctionTool, ToolOutput, adapt_to_async_tool
from llama_index.core.workflow import Context

from cprs_core import Compressor, OptionError, QueryError
from cprs_core.validation import has_visible_text

from ._shared import CompressorSettings
from .tools import DEFAULT_MIN_TOKENS, asked_question, check_wrapper_options, prune

Question = Union[str, Callable[[Dict[str, Any]], str]]
"""A fixed question, or a function of the tool's keyword arguments that returns it."""


@dataclass(frozen=True)
class PrunedOutput:
    """``ToolOutput.raw_output`` of a pruned call: the inner tool's full output and the compression summary."""

    full_output: Any
    cprs: Optional[Dict[str, Any]]


def _context_signature(ctx: Context, **arguments: Any) -> None:
    """Gives the wrapper the signature by which LlamaIndex agents pass their workflow ``Context`` to a tool."""


async def latest_user_message(ctx: Context) -> str:
    """The text of the latest user message in the agent's memory (``""`` when there is none)."""
    memory = await ctx.store.get("memory", default=None)
    messages = await memory.aget() if memory is not None else []
    return next((message.content or "" for message in reversed(messages) if message.role == MessageRole.USER), "")


class CPRSPrunedTool(FunctionTool):
    """Runs ``tool`` and prunes its text output against the agent's question (JSON structure-preserving).

    The wrapper has ``tool``'s metadata (name, description, argument schema). Its ``ToolOutput`` content is the
    kept text (see :func:`cprs_integrations.tools.prune_tool_output`); ``raw_output`` is a
    :class:`PrunedOutput` holding the inner tool's full ``raw_output`` (``full_output``) and the compression
    summary (``cprs``; ``None`` when the output was short and passed unchanged). A dict or list output is pruned
    structure-preserving; one of text blocks or nodes is pruned as its text (the blocks joined by newlines). Error
    outputs and outputs with other blocks (images, audio, documents) pass unchanged.

    Args:
        tool: the LlamaIndex tool to wrap.
        question: ``None`` (default): the latest user message in the agent's memory, read from the workflow
            ``Context`` an agent passes (a call without one must give ``question``); or a fixed string, or a
            function of the tool's keyword arguments.
        compressor, min_tokens, options: as for :func:`cprs_integrations.tools.prune_tool_output`.
    """

    def __init__(
        self,
        tool: BaseTool,
        question: Optional[Question] = None,
        compressor: Optional[Compressor] = None,
        *,
        min_tokens: int = DEFAULT_MIN_TOKENS,
        **options: Any,
    ) -> None:
        if not isinstance(tool, BaseTool):
            raise OptionError(
                f"tool must be a LlamaIndex tool (BaseTool), got {type(tool).__name__}; make one from a function "
                "with FunctionTool.from_defaults(fn)"
            )
        settings = CompressorSettings(compressor=compressor, **options)
        check_wrapper_options(question, min_tokens, question_may_be_none=True,
                              allow_empty_query=settings.allow_empty_query)
        super().__init__(fn=_context_signature, metadata=tool.metadata)
        self.inner: AsyncBaseTool = adapt_to_async_tool(tool)
        self.question = question
        self.settings = settings
        self.min_tokens = min_tokens

    def call(self, *args: Any, **kwargs: Any) -> ToolOutput:
        """Run the tool and prune its output (``question`` must be given: there is no agent memory here)."""
        kwargs.pop(self.ctx_param_name, None)
        return self._pruned(self.inner.call(*args, **kwargs), self._fixed_question(kwargs))

    async def acall(self, *args: Any, **kwargs: Any) -> ToolOutput:
        """Run the tool and prune its output in a worker thread, against the question (see the class docstring)."""
        ctx = kwargs.pop(self.ctx_param_name, None)
        output = await self.inner.acall(*args, **kwargs)
        question = await latest_user_message(ctx) if self.question is None and ctx is not None else None
        if question is None:
            question = self._fixed_question(kwargs)
        return await asyncio.to_thread(self._pruned, output, question)

    def _fixed_question(self, arguments: Dict[str, Any]) -> str:
        if self.question is None:
            raise QueryError(
                f"{self.metadata.get_name()} was called without an agent Context, so there is no agent memory to "
                "read the question from: give CPRSPrunedTool(question=...)"
            )
        return asked_question(self.question, arguments) if callable(self.question) else self.question

    def _pruned(self, output: ToolOutput, question: str) -> ToolOutput:
        if output.is_error or not (has_visible_text(question) or self.settings.allow_empty_query):
            return output
        if not all(isinstance(block, TextBlock) for block in output.blocks):  # images, files: no text to select
            return output
        raw = output.raw_output
        # a dict or list the tool wrote as its str() is pruned as JSON; content blocks and nodes as their text
        as_json = isinstance(raw, (dict, list)) and output.content == str(raw)
        content, summary = prune(raw if as_json else output.content, question, self.settings, self.min_tokens)
        if summary is None:
            return output
        return ToolOutput(content=content, tool_name=output.tool_name, raw_input=output.raw_input,
                          raw_output=PrunedOutput(raw, summary))
