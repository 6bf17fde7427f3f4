"""An agent written against the ``openai`` client: a tool loop with a calculator.

Nothing here knows about groupwise: the same function runs against any OpenAI-compatible
endpoint (``client = openai.OpenAI(base_url=..., api_key=...)``). Trained with
``rollout.engine=agent`` (``examples/agent_calculator.yaml``), the client it gets talks to the
policy being trained, and every reply it receives becomes training tokens.
"""

from __future__ import annotations

import json
from typing import Any

from groupwise.tasks.calculator import calculator

TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "calculator",
            "description": "Evaluate an arithmetic expression exactly.",
            "parameters": {
                "type": "object",
                "properties": {"expression": {"type": "string", "description": "e.g. 347 * 86"}},
                "required": ["expression"],
            },
        },
    }
]


def run_tool(name: str, arguments: str) -> str:
    """The result of one tool call (an error text for an unknown tool or bad arguments)."""
    if name != "calculator":
        return f"error: unknown tool {name!r}"
    try:
        return calculator(**json.loads(arguments))
    except (TypeError, ValueError) as exc:
        return f"error: {exc}"


def calculator_agent(client: Any, row: dict[str, Any], episode: dict[str, Any]) -> None:
    """Ask the row's question; run every tool call and send the results back; stop at the
    first reply without a tool call (or after 3 replies). The reward comes from the task's
    reward functions on the conversation, so nothing is returned."""
    messages: list[Any] = list(row["prompt"])
    for _ in range(3):
        response = client.chat.completions.create(
            model=episode["model"], messages=messages, tools=TOOLS, max_tokens=48
        )
        message = response.choices[0].message
        messages.append(message)
        if not message.tool_calls:
            return
        for call in message.tool_calls:
            result = run_tool(call.function.name, call.function.arguments)
            messages.append({"role": "tool", "tool_call_id": call.id, "content": result})
