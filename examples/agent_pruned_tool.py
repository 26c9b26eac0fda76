"""An agent loop whose tool output is pruned by CPRS against the agent's question before it enters the messages.

The tool ``read_book`` returns the first three chapters of a book of the King James Bible (about 3,000
tokens); in Mark a chain of variable assignments is planted, with a distractor assignment. The tool is wrapped
with :func:`pruned_tool`, which reads the agent's current question from the conversation and keeps only what
the critic tags for it ("chain" instruction). LangChain's ``GenericFakeChatModel`` plays the tool-calling
model. Runs offline on the embedded cprs-mini critic::

    python examples/agent_pruned_tool.py
"""

from __future__ import annotations

from kjv_corpus import Chapter, chapters, plant
from langchain_core.language_models.fake_chat_models import GenericFakeChatModel
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage
from langchain_core.tools import tool

from cprs_integrations.tools import pruned_tool

QUESTION = "Which variables are assigned the value 48213?"
CHAIN = {0.2: "VAR QXKZT = 48213.", 0.5: "VAR HRMLP = VAR QXKZT.", 0.8: "VAR WBNDE = VAR HRMLP."}
DISTRACTOR = {0.65: "VAR JLOPS = 90517."}


@tool
def read_book(book: str) -> str:
    """Return the full text of the first three chapters of a book of the King James Bible."""
    passage = Chapter(book, " ".join(chapter.text for chapter in chapters(book)[:3]))
    if book == "Mark":
        for at, sentence in {**CHAIN, **DISTRACTOR}.items():
            passage = plant(passage, [sentence], at=at)
    return passage.text


def current_question(messages: list[BaseMessage]) -> str:
    """The agent's current question: the latest human message."""
    return next(message.text for message in reversed(messages) if isinstance(message, HumanMessage))


def main() -> None:
    messages: list[BaseMessage] = [HumanMessage(QUESTION)]
    model = GenericFakeChatModel(
        messages=iter(
            [
                AIMessage("", tool_calls=[{"name": "read_book", "args": {"book": "Mark"}, "id": "call_1"}]),
                AIMessage("QXKZT, HRMLP and WBNDE all hold 48213."),
            ]
        )
    )
    tools = {read_book.name: pruned_tool(read_book, lambda arguments: current_question(messages), instruction="chain")}
    print(f"question: {QUESTION}")
    while True:
        reply = model.invoke(messages)
        messages.append(reply)
        if not reply.tool_calls:
            break
        for call in reply.tool_calls:
            message = tools[call["name"]].invoke(call)
            messages.append(message)
            cprs = message.artifact["cprs"]
            print(f"tool {call['name']}({call['args']}) returned {cprs['original_tokens']} tokens; pruned to "
                  f"{cprs['compressed_tokens']} ({cprs['ratio']:.1f}x) before entering the context:")
            print("  " + message.text.replace("\n", "\n  "))
    print(f"answer: {messages[-1].text}")
    print(f"context: {sum(len(message.text) for message in messages)} characters in {len(messages)} messages")


if __name__ == "__main__":
    main()
