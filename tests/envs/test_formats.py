"""Tool-call formats (groupwise.envs.formats): hermes, llama3 and mistral calls read back, every
malformed or cut-off call an ``error: ...`` result, the tokenizer's own response parser first,
and a ToolEnvironment running the calls of the format it is given."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from groupwise.envs import Tool, ToolEnvironment, from_trl
from groupwise.envs.formats import (
    HERMES,
    TOOL_FORMATS,
    TokenizerParser,
    has_response_parser,
    tool_format,
)
from groupwise.envs.tools import example_call, tools_instructions
from groupwise.models import load_tokenizer, smollm2_tokenizer_dir

LLAMA3, MISTRAL = TOOL_FORMATS["llama3"], TOOL_FORMATS["mistral"]


def add(a: int, b: int) -> int:
    """Add two integers.

    Args:
        a: the first.
        b: the second.
    """
    return a + b


def _calls(calls: list[Any]) -> list[tuple[Any, ...]]:
    return [(c.name, c.arguments, c.error) for c in calls]


def test_llama3_calls_with_and_without_python_tag_and_several_by_semicolon() -> None:
    one = '{"name": "add", "parameters": {"a": 1, "b": 2}}'
    assert _calls(LLAMA3.parse(one)) == [("add", {"a": 1, "b": 2}, None)]
    tagged = (
        '<|python_tag|>{"name": "add", "parameters": {"a": 1}}; {"name": "mul", "parameters": {}}'
    )
    assert _calls(LLAMA3.parse(tagged)) == [("add", {"a": 1}, None), ("mul", {}, None)]
    prose = 'I will add. {"name": "add", "arguments": "{\\"a\\": 5}"}'  # arguments, as a string
    assert _calls(LLAMA3.parse(prose)) == [("add", {"a": 5}, None)]
    assert LLAMA3.parse("The sum is 3.") == []  # an answer, no call


def test_llama3_malformed_and_cut_off_calls_are_errors() -> None:
    (cut,) = LLAMA3.parse('{"name": "add", "parameters": {"a": 1')
    assert cut.error == "error: the tool call is cut off before its JSON ended"
    (bad,) = LLAMA3.parse('{"name": "add", parameters}')
    assert bad.error is not None and bad.error.startswith("error: the tool call is not valid JSON")
    (nameless,) = LLAMA3.parse('{"answer": 3}')
    assert nameless.error == 'error: a tool call needs a string "name"'
    (listed,) = LLAMA3.parse('{"name": "add", "parameters": [1, 2]}')
    assert listed.name == "add" and listed.error == 'error: "parameters" must be a JSON object'
    first, second = LLAMA3.parse('{"name": "add", "parameters": {}}; {"name": "add", "par')
    assert first.error is None and second.error is not None  # the good call is kept


def test_mistral_list_and_named_forms() -> None:
    listed = (
        '[TOOL_CALLS][{"name": "add", "arguments": {"a": 1}}, {"name": "mul", "arguments": {}}]'
    )
    assert _calls(MISTRAL.parse(listed)) == [("add", {"a": 1}, None), ("mul", {}, None)]
    named = '[TOOL_CALLS]add[ARGS]{"a": 1}[TOOL_CALLS]mul[CALL_ID]a1b2c3d4e[ARGS]{"b": 2}'
    assert _calls(MISTRAL.parse(named)) == [("add", {"a": 1}, None), ("mul", {"b": 2}, None)]
    assert MISTRAL.parse("no call, just [brackets]") == []


def test_mistral_malformed_and_cut_off_calls_are_errors() -> None:
    (cut_list,) = MISTRAL.parse('[TOOL_CALLS][{"name": "add", "argu')
    assert cut_list.error is not None and cut_list.error.startswith("error: the tool call is")
    (no_args,) = MISTRAL.parse("[TOOL_CALLS]add")
    assert no_args.error == "error: the tool call is cut off before [ARGS]"
    (cut_args,) = MISTRAL.parse('[TOOL_CALLS]add[ARGS]{"a": ')
    assert cut_args.error == "error: the tool call is cut off before its JSON ended"
    (not_object,) = MISTRAL.parse("[TOOL_CALLS]add[ARGS][1]")
    assert not_object.error == 'error: "arguments" must be a JSON object'


def test_each_format_writes_calls_it_reads_back() -> None:
    tool = Tool.from_function(add)
    for fmt in TOOL_FORMATS.values():
        (call,) = fmt.parse(example_call(tool, fmt))
        assert (call.name, call.arguments, call.error) == ("add", {"a": 3, "b": 3}, None)
        text = tools_instructions([tool], fmt)
        assert example_call(tool, fmt) in text and '"name": "add"' in text
    assert "<tool_call>" not in tools_instructions([tool], LLAMA3)
    assert tools_instructions([tool]) == tools_instructions([tool], HERMES)  # the default
    with pytest.raises(ValueError, match="valid: auto, hermes, llama3, mistral"):
        tool_format("xml")


def test_a_tool_environment_runs_calls_in_its_format() -> None:
    env = ToolEnvironment([add])
    env.reset({})
    env.set_tool_format(LLAMA3)
    step = env.step('{"name": "add", "parameters": {"a": 2, "b": 3}}; {"name": "add", "par')
    assert step.message == "5\nerror: the tool call is cut off before its JSON ended"
    assert step.tool_messages == [
        {"role": "tool", "name": "add", "content": "5"},
        {"role": "tool", "name": "invalid_call", "content": step.message.split("\n")[1]},
    ]
    assert env.errors == 1 and len(env.calls) == 2
    assert env.step("Five.").done  # an answer without a call ends the episode
    hermes = ToolEnvironment([add])  # the default format, results as <tool_response> blocks
    text = '<tool_call>{"name": "add", "arguments": {"a": 1, "b": 1}}</tool_call>'
    assert hermes.step(text).message == "<tool_response>2</tool_response>"
    assert hermes.step('{"name": "add", "parameters": {"a": 1, "b": 1}}').done  # not hermes


class Adder:
    def reset(self, **kwargs: Any) -> None:
        return None

    def add(self, a: int, b: int) -> int:
        """Add.

        Args:
            a: first.
            b: second.
        """
        return a + b


def test_routed_environments_read_calls_in_the_given_format() -> None:
    env: Any = from_trl({"adder": Adder})()
    env.set_tool_format(MISTRAL)
    env.reset({"environment": "adder"})
    step = env.step('[TOOL_CALLS][{"name": "add", "arguments": {"a": 4, "b": 4}}]')
    assert step.message == "8"


RESPONSE_TEMPLATE = {
    "defaults": {"role": "assistant"},
    "start_anchor": "<|im_start|>assistant\n",
    "fields": {
        "tool_calls": {
            "open_pattern": r"\s*<call>",
            "close": "</call>",
            "repeats": True,
            "content": "json",
            "transform": {"type": "function", "function": "{content}"},
        },
        "content": {"close_pattern": r"\s*<\|im_end\|>", "content": "text"},
    },
}
"""A response template (transformers 5.x) for a ``<call>{...}</call>`` protocol no text format
of groupwise reads: only the tokenizer's parser finds these calls."""


def test_the_tokenizers_response_parser_comes_first_then_the_text_format() -> None:
    tokenizer = copy.deepcopy(load_tokenizer(smollm2_tokenizer_dir()))
    assert not has_response_parser(tokenizer)
    tokenizer.response_template = RESPONSE_TEMPLATE
    assert has_response_parser(tokenizer)
    parser = TokenizerParser(tokenizer, HERMES)
    text = 'Let me add. <call>{"name": "add", "arguments": {"a": 1, "b": 2}}</call>'
    assert HERMES.parse(text) == []  # the text format alone finds nothing
    assert _calls(parser.parse(text)) == [("add", {"a": 1, "b": 2}, None)]
    cut = '<call>{"name": "add", "arg'  # the tokenizer's parser raises: the text format reads
    assert parser.parse(cut) == HERMES.parse(cut) == []
    hermes_cut = '<tool_call>{"name": "add", "arg'
    assert _calls(parser.parse(hermes_cut)) == [(None, {}, "error: unclosed <tool_call> tag")]
    assert parser.call_text("add", {"a": 1}) == HERMES.call_text("add", {"a": 1})
