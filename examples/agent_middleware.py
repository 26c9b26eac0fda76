"""A LangChain 1.x agent (``create_agent``) whose JSON tool result is pruned by CPRS middleware before the model sees it.

The tool ``search_orders`` returns 300 order records as JSON (about 16,000 critic tokens); one of them answers the user.
:class:`CPRSToolOutputMiddleware` compresses the result against the latest human message: the model receives
valid JSON with the same shape holding the records that matter, plus a note of what was dropped; the full output
stays in the ``ToolMessage.artifact``. A scripted fake chat model plays the tool-calling LLM. Runs offline on the
embedded cprs-mini critic::

    python examples/agent_middleware.py
"""

from __future__ import annotations

import json
from typing import Any

from langchain.agents import create_agent
from langchain_core.language_models.fake_chat_models import GenericFakeChatModel
from langchain_core.messages import AIMessage, HumanMessage, ToolMessage
from langchain_core.tools import tool

from cprs_integrations.langchain_middleware import CPRSToolOutputMiddleware

QUESTION = "Which order was delivered to Lisbon, and what is its tracking number?"
CITIES = ["Oslo", "Berlin", "Madrid", "Vienna", "Dublin", "Prague", "Warsaw", "Athens", "Zurich", "Helsinki"]
ITEMS = ["desk lamp", "office chair", "bookshelf", "monitor arm", "keyboard", "standing desk", "cable tray"]


@tool
def search_orders(customer: str) -> dict[str, Any]:
    """Return every order of a customer, with shipping details, as JSON."""
    orders = [
        {"order": f"A-{1000 + i}", "item": ITEMS[i % len(ITEMS)], "status": "in transit",
         "ship_to": CITIES[i % len(CITIES)], "tracking": f"TRK{(i * 7919) % 100000:05d}"}
        for i in range(300)
    ]
    orders[187] = {"order": "A-1187", "item": "bookshelf", "status": "delivered", "ship_to": "Lisbon",
                   "tracking": "TRK55120"}
    return {"customer": customer, "count": len(orders), "orders": orders}


class ScriptedChatModel(GenericFakeChatModel):
    """LangChain's fake chat model (answers from a script); ``create_agent`` binds tools to it, a no-op here."""

    def bind_tools(self, tools: Any, **kwargs: Any) -> "ScriptedChatModel":
        return self


def main() -> None:
    model = ScriptedChatModel(messages=iter([
        AIMessage("", tool_calls=[{"name": "search_orders", "args": {"customer": "Ines"}, "id": "call_1"}]),
        AIMessage("Order A-1187 (a bookshelf) was delivered to Lisbon; tracking number TRK55120."),
    ]))
    # A budget ranks the records (cprs-mini's critic and its MiniLM similarity together); without one, cprs-mini
    # keeps every line its tags mark, which on JSON records is loose (about 130 of these 300).
    middleware = CPRSToolOutputMiddleware(instruction="needle", min_tokens=512, target_ratio=0.05)
    agent = create_agent(model, [search_orders], middleware=[middleware])
    state = agent.invoke({"messages": [HumanMessage(QUESTION)]})
    print(f"question: {QUESTION}")
    for message in state["messages"]:
        if isinstance(message, ToolMessage):
            cprs = message.artifact["cprs"]
            full = json.loads(message.artifact["full_output"])
            print(f"tool {message.name} returned {len(full['orders'])} orders, {cprs['original_tokens']} tokens; "
                  f"the model saw {cprs['compressed_tokens']} ({cprs['ratio']:.1f}x smaller):")
            print("  " + message.text.replace("\n", "\n  "))
    print(f"answer: {state['messages'][-1].text}")


if __name__ == "__main__":
    main()
