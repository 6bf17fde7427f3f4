"""How multi-turn prompts reach the model (groupwise.rollout.chat): a string prompt as one user
message of the chat template, raw text without one; tools through a template that renders them
unchanged, else the text protocol with one worked call built from the tool's schema."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest

from groupwise.envs import Tool
from groupwise.envs.schema import example_arguments, example_value
from groupwise.envs.tools import example_call, parse_tool_calls, run_tool_call
from groupwise.models import load_tokenizer, smollm2_tokenizer_dir
from groupwise.rollout.chat import ChatFormat

TOOLS_TEMPLATE = (
    "{% if tools %}<|im_start|>system\nTOOLS {{ tools | tojson }}<|im_end|>\n{% endif %}"
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
"""A ChatML template that renders ``tools=`` (as Qwen's and Hermes' do)."""


def capital(country: str, population: bool = False) -> str:
    """The capital city of a country.

    Args:
        country: the country's English name.
        population: also give the population.
    """
    return {"france": "Paris"}.get(country.lower(), "unknown")


@pytest.fixture(scope="module")
def smollm2() -> Any:
    """SmolLM2's tokenizer: a chat template that ignores ``tools=``."""
    return load_tokenizer(smollm2_tokenizer_dir())


def _with_template(tokenizer: Any, template: str | None) -> Any:
    other = copy.deepcopy(tokenizer)
    other.chat_template = template
    return other


def _user(tokenizer: Any, text: str, **kw: Any) -> str:
    messages = [{"role": "user", "content": text}]
    out: str = tokenizer.apply_chat_template(
        messages, tokenize=False, add_generation_prompt=True, **kw
    )
    return out


def test_a_string_prompt_is_one_user_message_of_the_template(smollm2: Any) -> None:
    fmt = ChatFormat(smollm2, [smollm2.eos_token_id])
    text = fmt.prompt_text("What is 2 + 2?", [], None)
    assert text == _user(smollm2, "What is 2 + 2?")
    assert text.startswith("<|im_start|>") and text.endswith("<|im_start|>assistant\n")
    assert fmt.prompt_text("Go.", [], "Board: empty") == _user(smollm2, "Go.\nBoard: empty")
    assert fmt.prompt_text("<raw>", [], None, rendered=True) == "<raw>"  # decoded ids stay
    plain = ChatFormat(_with_template(smollm2, None), [smollm2.eos_token_id])
    assert not plain.templated and plain.prompt_text("What is 2 + 2?", [], None) == (
        "What is 2 + 2?"
    )


def test_example_values_by_json_schema_type() -> None:
    assert example_value({"type": "string"}) == "text"
    assert example_value({"type": "integer"}) == 3
    assert example_value({"type": "number"}) == 2.5
    assert example_value({"type": "boolean"}) is True
    assert example_value({"type": "array"}) == [] and example_value({"type": "object"}) == {}
    assert example_value({"type": ["null", "integer"]}) == 3
    assert example_value({"type": "string", "enum": ["north", "south"]}) == "north"
    assert example_value({"type": "integer", "default": 7}) == 7
    assert example_value({"type": "string", "description": 'A sum, e.g. "12 + 30".'}) == "12 + 30"
    assert example_value({}) == "text"
    schema = Tool.from_function(capital).parameters
    assert example_arguments(schema) == {"country": "text"}  # the required ones
    assert example_arguments({"properties": {"n": {"type": "integer"}}}) == {"n": 3}


def test_the_worked_call_is_a_well_formed_call_of_the_tool() -> None:
    tool = Tool.from_function(capital)
    call = example_call(tool)
    assert call == '<tool_call>{"name": "capital", "arguments": {"country": "text"}}</tool_call>'
    (parsed,) = parse_tool_calls(call)
    assert parsed.error is None and run_tool_call(parsed, [tool]) == "unknown"


def test_a_template_without_tools_gets_the_protocol_with_a_worked_call(smollm2: Any) -> None:
    tool = Tool.from_function(capital)
    fmt = ChatFormat(smollm2, [smollm2.eos_token_id])
    assert not fmt.renders_tools()
    text = fmt.prompt_text("The capital of France?", [tool], None)
    system = text[: text.index("<|im_start|>user")]
    assert system.startswith("<|im_start|>system\n") and example_call(tool) in system
    assert json.dumps(tool.schema()) in system
    assert text.endswith(_user(smollm2, "The capital of France?").split("<|im_end|>\n", 1)[1])
    assert any("one worked call" in line for line in fmt.describe([tool]))


def test_a_template_with_tools_is_used_unchanged(smollm2: Any) -> None:
    tool = Tool.from_function(capital)
    tokenizer = _with_template(smollm2, TOOLS_TEMPLATE)
    fmt = ChatFormat(tokenizer, [tokenizer.eos_token_id])
    assert fmt.renders_tools()
    text = fmt.prompt_text("The capital of France?", [tool], None)
    assert text == _user(tokenizer, "The capital of France?", tools=[tool.schema()])
    assert example_call(tool) not in text and "<tool_call>" not in text
    assert any("chat template's tools=" in line for line in fmt.describe([tool]))


def test_a_template_without_tools_gets_a_worked_exchange_before_the_question(smollm2: Any) -> None:
    """The exchange (a request, the call, the tool's real result, the answer) comes as earlier
    turns after the system message; the tool runs once for every prompt rendered."""
    calls: list[str] = []

    def lookup(country: str) -> str:
        """The capital city of a country.

        Args:
            country: a name, e.g. "France".
        """
        calls.append(country)
        return "Paris"

    tool = Tool.from_function(lookup)
    fmt = ChatFormat(smollm2, [smollm2.eos_token_id])
    text = fmt.prompt_text("The capital of Peru?", [tool], None)
    assert fmt.prompt_text("The capital of Chile?", [tool], None) != text and calls == ["France"]
    call = example_call(tool)
    assert call == '<tool_call>{"name": "lookup", "arguments": {"country": "France"}}</tool_call>'
    turns = text.split("<|im_start|>")[1:]
    roles = [t.split("\n", 1)[0] for t in turns]
    assert roles == ["system", "user", "assistant", "tool", "assistant", "user", "assistant"]
    assert turns[2] == f"assistant\n{call}<|im_end|>\n"
    assert turns[3] == "tool\n<tool_response>Paris</tool_response><|im_end|>\n"
    assert turns[4] == "assistant\nParis<|im_end|>\n"
    assert turns[5] == "user\nThe capital of Peru?<|im_end|>\n"
    assert any("worked exchange" in line for line in fmt.describe([tool]))
    shown = [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": call},
        {"role": "user", "content": "The capital of Peru?"},
    ]
    assert "<|im_start|>tool" not in fmt.prompt_text(shown, [tool], None)  # one is shown already
    assert "<|im_start|>tool" not in ChatFormat(
        _with_template(smollm2, TOOLS_TEMPLATE), [smollm2.eos_token_id]
    ).prompt_text("The capital of Peru?", [tool], None)  # a template with tools: unchanged
