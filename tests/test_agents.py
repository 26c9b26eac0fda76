"""JSON pruning, the LangChain agent middleware (create_agent, sync and async) and the LlamaIndex pruned tool."""

from __future__ import annotations

import json
from typing import Any

import pytest
from langchain.agents import create_agent
from langchain_core.language_models.fake_chat_models import GenericFakeChatModel
from langchain_core.messages import AIMessage, HumanMessage, ToolMessage
from langchain_core.tools import tool

from cprs_core import CPRSCompressor, CPRSError, OptionError, QueryError
from cprs_core.structured import prune_json
from cprs_integrations.langchain_middleware import CPRSToolOutputMiddleware
from cprs_integrations.tools import prune_tool_output

QUESTION = "What is the refund code?"
WORDS = ["alpha", "beta", "gamma", "delta", "omega"]


def records() -> dict[str, Any]:
    rows = [{"id": f"row-{WORDS[i % 5]}", "status": "open", "note": "nothing notable here at all"} for i in range(40)]
    rows[23] = {"id": "row-refund", "status": "closed", "note": "refund code 4471"}
    return {"query": "orders", "meta": {"source": "crm", "build": "v7"}, "items": rows}


def test_json_is_pruned_to_valid_json_of_the_same_shape_with_a_note(digit_compressor: CPRSCompressor) -> None:
    pruned = prune_json(digit_compressor, records(), QUESTION, "needle", unit_chars=100)
    assert list(pruned.value) == ["meta", "items"]  # same keys, same order, where kept
    assert pruned.value == {"items": [{"id": "row-refund", "status": "closed", "note": "refund code 4471"}],
                            "meta": {"source": "crm", "build": "v7"}}
    assert json.loads(pruned.text) == pruned.value
    assert pruned.note == "[cprs: JSON pruned for the question; $.items: 1 of 40 entries kept; dropped keys $.query]"
    assert (pruned.kept_units, pruned.total_units) == (2, 42)
    forced = prune_json(digit_compressor, records(), QUESTION, "needle", unit_chars=100, keep=['"orders"'])
    assert forced.value["query"] == "orders" and forced.note.endswith("1 of 40 entries kept]")
    fields = prune_json(digit_compressor, records(), QUESTION, "needle", unit_chars=30)  # records split by key
    assert fields.value == {"meta": {"build": "v7"}, "items": [{"note": "refund code 4471"}]}


def test_tool_output_helpers_prune_json_text_and_objects(digit_compressor: CPRSCompressor) -> None:
    for output in (records(), json.dumps(records())):
        pruned = prune_tool_output(output, QUESTION, digit_compressor, instruction="needle", min_tokens=50)
        kept, note = pruned.rsplit("\n", 1)
        assert json.loads(kept)["items"] == [{"id": "row-refund", "status": "closed", "note": "refund code 4471"}]
        assert note.startswith("[cprs: JSON pruned") and "$.items: 1 of 40 entries kept" in note


@tool
def list_orders(customer: str) -> dict[str, Any]:
    """List a customer's orders."""
    return records()


@tool
def ping(host: str) -> str:
    """Ping a host."""
    return f"{host} is up"


class ToolCallingFakeModel(GenericFakeChatModel):
    """LangChain's fake chat model, accepting ``bind_tools`` as ``create_agent`` asks (it answers from a script)."""

    def bind_tools(self, tools: Any, **kwargs: Any) -> "ToolCallingFakeModel":
        return self


def agent_run(middleware: CPRSToolOutputMiddleware, calls: list[dict[str, Any]]) -> Any:
    model = ToolCallingFakeModel(messages=iter([AIMessage("", tool_calls=calls), AIMessage("The code is 4471.")]))
    return create_agent(model, [list_orders, ping], middleware=[middleware])


CALLS = [{"name": "list_orders", "args": {"customer": "ann"}, "id": "c1"},
         {"name": "ping", "args": {"host": "db"}, "id": "c2"}]


def tool_messages(state: dict[str, Any]) -> dict[str, ToolMessage]:
    return {message.name: message for message in state["messages"] if isinstance(message, ToolMessage)}


def check_pruned(messages: dict[str, ToolMessage]) -> None:
    orders = messages["list_orders"]
    kept = json.loads(orders.content.rsplit("\n", 1)[0])
    assert kept["items"] == [{"id": "row-refund", "status": "closed", "note": "refund code 4471"}]
    assert json.loads(orders.artifact["full_output"]) == records()
    assert orders.artifact["cprs"]["json"]["total_units"] > 40 and orders.artifact["tool_artifact"] is None
    assert messages["ping"].content == "db is up" and messages["ping"].artifact is None  # short: unchanged


def test_middleware_prunes_tool_results_against_the_latest_human_message(digit_compressor: CPRSCompressor) -> None:
    middleware = CPRSToolOutputMiddleware(digit_compressor, instruction="needle", min_tokens=50)
    state = agent_run(middleware, CALLS).invoke({"messages": [HumanMessage(QUESTION)]})
    check_pruned(tool_messages(state))
    assert state["messages"][-1].content == "The code is 4471."


async def test_middleware_works_async(digit_compressor: CPRSCompressor) -> None:
    middleware = CPRSToolOutputMiddleware(digit_compressor, instruction="needle", min_tokens=50)
    state = await agent_run(middleware, CALLS).ainvoke({"messages": [HumanMessage(QUESTION)]})
    check_pruned(tool_messages(state))


def test_middleware_excludes_tools_and_takes_the_question_from_state(digit_compressor: CPRSCompressor) -> None:
    excluded = CPRSToolOutputMiddleware(digit_compressor, instruction="needle", min_tokens=50,
                                        exclude_tools=["list_orders"])
    state = agent_run(excluded, CALLS[:1]).invoke({"messages": [HumanMessage(QUESTION)]})
    assert json.loads(tool_messages(state)["list_orders"].content) == records()
    asked: list[int] = []

    def question(state: dict[str, Any]) -> str:
        asked.append(len(state["messages"]))
        return "What is the code of the refund?"

    custom = CPRSToolOutputMiddleware(digit_compressor, question=question, instruction="needle", min_tokens=50)
    state = agent_run(custom, CALLS[:1]).invoke({"messages": [HumanMessage("hello")]})
    assert asked == [2] and "row-refund" in tool_messages(state)["list_orders"].content
    fixed = CPRSToolOutputMiddleware(digit_compressor, question="What is the code of the refund?",
                                     instruction="needle", min_tokens=50)
    state = agent_run(fixed, CALLS[:1]).invoke({"messages": [HumanMessage("hello")]})
    assert "row-refund" in tool_messages(state)["list_orders"].content


@pytest.mark.parametrize(
    ("arguments", "error", "message"),
    [
        ({"question": 5}, QueryError, "question must be a string or a function returning one, got int"),
        ({"min_tokens": -1}, OptionError, "min_tokens must be an integer >= 0"),
        ({"min_tokens": "5"}, OptionError, "min_tokens must be an integer >= 0"),
        ({"exclude_tools": "calculator"}, OptionError, "a list of tool names, not one string"),
        ({"exclude_tools": None}, OptionError, r"exclude_tools must be a list of tool names \(strings\), got None"),
        ({"question": " "}, QueryError, "question is empty"),  # the middleware and LlamaIndex never pruned
    ],
)
def test_wrong_wrapper_arguments_are_named_when_built(
    digit_compressor: CPRSCompressor, arguments: dict[str, Any], error: type[CPRSError], message: str
) -> None:
    from llama_index.core.tools import FunctionTool

    from cprs_integrations.llamaindex_tools import CPRSPrunedTool
    from cprs_integrations.tools import pruned_tool

    @tool
    def orders(customer: str) -> str:
        """List orders."""
        return json.dumps(records())

    with pytest.raises(error, match=message):
        CPRSToolOutputMiddleware(digit_compressor, **arguments)
    if "exclude_tools" in arguments:
        return
    with pytest.raises(error, match=message):
        pruned_tool(orders, **{"question": QUESTION, **arguments}, compressor=digit_compressor)
    with pytest.raises(error, match=message):
        CPRSPrunedTool(FunctionTool.from_defaults(fn=records, name="orders"), compressor=digit_compressor,
                       **arguments)


def test_a_question_function_returning_no_text_is_named(digit_compressor: CPRSCompressor) -> None:
    """The middleware, pruned_tool and the LlamaIndex tool raised AttributeError ('NoneType' object has no
    attribute 'strip')."""
    from llama_index.core.tools import FunctionTool

    from cprs_integrations.llamaindex_tools import CPRSPrunedTool
    from cprs_integrations.tools import pruned_tool

    def question(_: Any) -> None:
        return None

    message = "the question function question must return a string, got NoneType None"
    middleware = CPRSToolOutputMiddleware(digit_compressor, question=question)
    with pytest.raises(QueryError, match=message):
        middleware.pruned(ToolMessage(content="x", tool_call_id="c1", name="t"), {"messages": []})
    pruned = CPRSPrunedTool(FunctionTool.from_defaults(fn=lambda customer: records(), name="orders"), question,
                            digit_compressor)
    with pytest.raises(QueryError, match=message):
        pruned.call(customer="ann")

    @tool
    def orders(customer: str) -> dict[str, Any]:
        """A customer's orders."""
        return records()

    with pytest.raises(QueryError, match=message):
        pruned_tool(orders, question, digit_compressor, min_tokens=1).invoke({"customer": "ann"})


def test_wrappers_refuse_what_is_not_a_tool_of_their_framework(digit_compressor: CPRSCompressor) -> None:
    from cprs_integrations.llamaindex_tools import CPRSPrunedTool
    from cprs_integrations.tools import pruned_tool

    with pytest.raises(OptionError, match=r"a LangChain tool \(BaseTool\), got function"):
        pruned_tool(records, QUESTION, digit_compressor)  # type: ignore[arg-type]
    with pytest.raises(OptionError, match=r"a LlamaIndex tool \(BaseTool\), got function"):
        CPRSPrunedTool(records, QUESTION, digit_compressor)  # type: ignore[arg-type]


async def test_llamaindex_function_agent_prunes_with_the_user_message(digit_compressor: CPRSCompressor) -> None:
    from llama_index.core.agent.workflow import FunctionAgent
    from llama_index.core.base.llms.types import ChatMessage, MessageRole, ToolCallBlock
    from llama_index.core.llms.mock import MockFunctionCallingLLM
    from llama_index.core.tools import FunctionTool

    from cprs_integrations.llamaindex_tools import CPRSPrunedTool, PrunedOutput

    seen: list[str] = []

    def respond(messages: list[ChatMessage], **kwargs: Any) -> ChatMessage:
        results = [message.content for message in messages if message.role == MessageRole.TOOL]
        if not results:
            call = ToolCallBlock(tool_call_id="t1", tool_name="orders", tool_kwargs={"customer": "ann"})
            return ChatMessage(role=MessageRole.ASSISTANT, blocks=[call])
        seen.extend(results)
        return ChatMessage(role=MessageRole.ASSISTANT, content="The code is 4471.")

    orders = FunctionTool.from_defaults(fn=lambda customer: records(), name="orders", description="List orders.")
    pruned = CPRSPrunedTool(orders, compressor=digit_compressor, instruction="needle", min_tokens=50)
    agent = FunctionAgent(tools=[pruned], llm=MockFunctionCallingLLM(response_generator=respond))
    handler = agent.run(user_msg=QUESTION)
    results = []
    async for event in handler.stream_events():
        if type(event).__name__ == "ToolCallResult":
            results.append(event.tool_output)
    await handler
    assert len(seen) == 1 and "row-refund" in seen[0] and "row-alpha" not in seen[0]
    assert isinstance(results[0].raw_output, PrunedOutput) and results[0].raw_output.full_output == records()
    with pytest.raises(CPRSError, match="without an agent Context"):
        pruned.call(customer="ann")
    fixed = CPRSPrunedTool(orders, QUESTION, digit_compressor, instruction="needle", min_tokens=50)
    assert "row-refund" in fixed.call(customer="ann").content


def test_middleware_prunes_text_blocks_and_leaves_other_content(digit_compressor: CPRSCompressor) -> None:
    middleware = CPRSToolOutputMiddleware(digit_compressor, instruction="needle", min_tokens=50)
    state = {"messages": [HumanMessage(QUESTION)]}
    filler = "Nothing here is a number at all. " * 30
    blocks = [{"type": "text", "text": filler}, {"type": "text", "text": f"The code is 4471. {filler}"}]
    message = ToolMessage(content=blocks, tool_call_id="c1", name="search")  # as an MCP tool answers
    pruned = middleware.pruned(message, state)
    assert pruned.content == "The code is 4471." and pruned.artifact["full_output"] == blocks
    with_image = [*blocks, {"type": "image", "url": "https://example.com/a.png"}]
    image_message = ToolMessage(content=with_image, tool_call_id="c2", name="search")
    assert middleware.pruned(image_message, state) is image_message


def test_without_a_question_results_pass_unless_empty_queries_are_allowed(digit_compressor: CPRSCompressor) -> None:
    from llama_index.core.tools import FunctionTool

    from cprs_integrations.llamaindex_tools import CPRSPrunedTool

    output = "Nothing here is a number at all. " * 30 + "The code is 4471."
    message = ToolMessage(content=output, tool_call_id="c1", name="search")
    no_question: dict[str, Any] = {"messages": []}  # no human message yet: the question is empty
    middleware = CPRSToolOutputMiddleware(digit_compressor, instruction="needle", min_tokens=50)
    assert middleware.pruned(message, no_question) is message
    allowed = CPRSToolOutputMiddleware(digit_compressor, instruction="needle", min_tokens=50, allow_empty_query=True)
    assert allowed.pruned(message, no_question).content == "The code is 4471."
    inner = FunctionTool.from_defaults(fn=lambda topic: output, name="search")
    assert CPRSPrunedTool(inner, lambda arguments: "", digit_compressor, min_tokens=50).call(topic="x").content == output
    # a question of only invisible characters asks nothing either (the core refuses it as a query)
    invisible = {"messages": [HumanMessage("\u200b\ufeff")]}
    assert middleware.pruned(message, invisible) is message
    assert CPRSPrunedTool(inner, lambda arguments: "\u200b", digit_compressor, min_tokens=50).call(
        topic="x").content == output
    pruned = CPRSPrunedTool(inner, lambda arguments: "", digit_compressor, min_tokens=50, allow_empty_query=True)
    assert pruned.call(topic="x").content == "The code is 4471."


def test_llamaindex_content_blocks_and_nodes_prune_as_text_and_images_pass_unchanged(
    digit_compressor: CPRSCompressor,
) -> None:
    """A tool answering content blocks or documents: they were pruned as JSON of their reprs
    (``["block_type='text' text=...``), and an image block was dropped from what the model sees."""
    from llama_index.core import Document
    from llama_index.core.base.llms.types import ImageBlock, TextBlock
    from llama_index.core.tools import FunctionTool

    from cprs_integrations.llamaindex_tools import CPRSPrunedTool, PrunedOutput

    filler = "Nothing here is a number at all. " * 30
    texts = [TextBlock(text=filler), TextBlock(text=f"The code is 4471. {filler}")]
    documents = [Document(text=filler), Document(text=f"The code is 4471. {filler}")]
    for answer in (texts, documents):
        inner = FunctionTool.from_defaults(fn=lambda url, answer=answer: answer, name="page")
        output = CPRSPrunedTool(inner, QUESTION, digit_compressor, instruction="needle", min_tokens=50).call(url="u")
        assert output.content == "The code is 4471." and isinstance(output.raw_output, PrunedOutput)
    with_image = [*texts, ImageBlock(image=b"\x89PNG" * 100, image_mimetype="image/png")]
    inner = FunctionTool.from_defaults(fn=lambda url: with_image, name="page")
    output = CPRSPrunedTool(inner, QUESTION, digit_compressor, instruction="needle", min_tokens=50).call(url="u")
    assert output.blocks == with_image and output.raw_output == with_image
