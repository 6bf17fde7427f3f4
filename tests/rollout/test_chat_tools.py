"""Tool calls through chat templates (groupwise.rollout.chat): the format detected from what the
template renders for an assistant message with ``tool_calls`` (overridable), tool results as the
template's ``tool`` messages after the policy's own tokens, structured calls in re-rendered
prompts, and the failures other trainers shipped (consecutive tool messages, a template that
rejects the ``tool`` role, a call cut by the token limit).

The templates below are minimal Jinja written for these tests, reproducing how each family
renders tools, tool calls and tool results (ChatML with ``<tool_call>`` for Qwen 2.5 and Qwen 3,
header tokens with JSON calls and an ``ipython`` role for Llama 3.x), applied to SmolLM2's
tokenizer (the Llama tokens added to a copy)."""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

import pytest
import torch

from groupwise.envs import ENVIRONMENTS, EnvStep, Tool, ToolEnvironment
from groupwise.envs.formats import TokenizerParser
from groupwise.models import load_tokenizer, smollm2_tokenizer_dir, tiny_random_model
from groupwise.rollout import RolloutRequest, SamplingParams, tokenize_prompts
from groupwise.rollout.chat import ChatFormat, structured_messages
from groupwise.rollout.episodes import EpisodeEngine
from groupwise.rollout.weights import SharedWeights

_CHATML_END = (
    "{% else %}{{ '<|im_start|>' + m.role + '\\n' + m.content + '<|im_end|>\\n' }}{% endif %}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
_TOOLS_SYSTEM = (
    "{% if tools %}{{ '<|im_start|>system\\n# Tools\\n<tools>' }}"
    "{% for t in tools %}{{ '\\n' + (t | tojson) }}{% endfor %}"
    '{{ \'\\n</tools>\\nCall as <tool_call>{"name": ..., "arguments": ...}</tool_call>'
    "<|im_end|>\\n' }}{% endif %}"
)
_TOOL_RESULTS = (  # consecutive tool messages share one user turn
    "{% elif m.role == 'tool' %}"
    "{% if loop.first or messages[loop.index0 - 1].role != 'tool' %}"
    "{{ '<|im_start|>user' }}{% endif %}"
    "{{ '\\n<tool_response>\\n' + m.content + '\\n</tool_response>' }}"
    "{% if loop.last or messages[loop.index0 + 1].role != 'tool' %}{{ '<|im_end|>\\n' }}"
    "{% endif %}"
)
QWEN25 = (
    _TOOLS_SYSTEM + "{% for m in messages %}{% if m.role == 'assistant' %}"
    "{{ '<|im_start|>assistant' }}{% if m.content %}{{ '\\n' + m.content }}{% endif %}"
    "{% for c in m.tool_calls or [] %}{% set f = c.function %}"
    '{{ \'\\n<tool_call>\\n{"name": "\' + f.name + \'", "arguments": \' '
    "+ (f.arguments | tojson) + '}\\n</tool_call>' }}{% endfor %}{{ '<|im_end|>\\n' }}"
    + _TOOL_RESULTS
    + _CHATML_END
)
"""Qwen 2.5's way: tools in a system turn, calls as ``<tool_call>`` JSON after the content,
results as ``<tool_response>`` blocks in one user turn."""
QWEN3 = (
    _TOOLS_SYSTEM + "{% set ns = namespace(last=-1) %}{% for m in messages %}"
    "{% if m.role == 'user' %}{% set ns.last = loop.index0 %}{% endif %}{% endfor %}"
    "{% for m in messages %}{% if m.role == 'assistant' %}"
    "{% set content = (m.content or '').split('</think>')[-1].lstrip('\\n') %}"
    "{% if loop.index0 > ns.last and loop.last %}"
    "{{ '<|im_start|>assistant\\n<think>\\n\\n</think>\\n\\n' + content }}"
    "{% else %}{{ '<|im_start|>assistant\\n' + content }}{% endif %}"
    "{% for c in m.tool_calls or [] %}{% set f = c.function %}"
    "{% if content or not loop.first %}{{ '\\n' }}{% endif %}"
    '{{ \'<tool_call>\\n{"name": "\' + f.name + \'", "arguments": \' }}'
    "{% if f.arguments is string %}{{ f.arguments }}{% else %}{{ f.arguments | tojson }}"
    "{% endif %}{{ '}\\n</tool_call>' }}{% endfor %}{{ '<|im_end|>\\n' }}"
    + _TOOL_RESULTS
    + _CHATML_END
)
"""Qwen 3's way: as Qwen 2.5, plus an empty think block on the last assistant turn after the
last user message and arguments that may be a JSON string."""
LLAMA3 = (
    "{{ '<|begin_of_text|>' }}{% if tools %}{{ '<|start_header_id|>system<|end_header_id|>"
    '\\n\\nAnswer with a JSON call {"name": ..., "parameters": ...} of one of:\' }}'
    "{% for t in tools %}{{ '\\n' + (t | tojson) }}{% endfor %}{{ '<|eot_id|>' }}{% endif %}"
    "{% for m in messages %}{% if m.role == 'assistant' and m.tool_calls %}"
    "{% if m.tool_calls | length != 1 %}{{ raise_exception('one tool call at a time') }}"
    "{% endif %}{% set f = m.tool_calls[0].function %}"
    '{{ \'<|start_header_id|>assistant<|end_header_id|>\\n\\n{"name": "\' + f.name '
    "+ '\", \"parameters\": ' + (f.arguments | tojson) + '}<|eot_id|>' }}"
    "{% elif m.role == 'tool' or m.role == 'ipython' %}"
    "{{ '<|start_header_id|>ipython<|end_header_id|>\\n\\n' + m.content + '<|eot_id|>' }}"
    "{% else %}{{ '<|start_header_id|>' + m.role + '<|end_header_id|>\\n\\n' "
    "+ m.content + '<|eot_id|>' }}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}"
    "{% endif %}"
)
"""Llama 3.x's way: header tokens, a call as the whole assistant message
``{"name": ..., "parameters": ...}`` (one call per message, else it raises), results in an
``ipython`` turn."""
MISTRAL = (
    "{% for m in messages %}{% if m.role == 'user' %}{{ '[INST]' + m.content + '[/INST]' }}"
    "{% elif m.role == 'assistant' and m.tool_calls %}{{ '[TOOL_CALLS][' }}"
    "{% for c in m.tool_calls %}{{ {'name': c.function.name, 'arguments': c.function.arguments}"
    " | tojson }}{% if not loop.last %}{{ ', ' }}{% endif %}{% endfor %}{{ ']</s>' }}"
    "{% elif m.role == 'tool' %}{{ '[TOOL_RESULTS]' + m.content + '[/TOOL_RESULTS]' }}"
    "{% else %}{{ m.content + '</s>' }}{% endif %}{% endfor %}"
)
"""Mistral's list form of ``[TOOL_CALLS]``."""
NO_TOOL_ROLE = QWEN25.replace(
    "{% elif m.role == 'tool' %}", "{% elif m.role == 'tool' %}{{ raise_exception('no tool') }}"
).replace(
    "{% else %}",
    "{% elif m.role != 'user' and m.role != 'system' %}"
    "{{ raise_exception('no ' + m.role) }}{% else %}",
    1,
)
"""Renders tool calls, but raises on any role other than system, user and assistant."""
LLAMA_TOKENS = ["<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]


def add(a: int, b: int) -> int:
    """Add two integers.

    Args:
        a: the first.
        b: the second.
    """
    return a + b


@pytest.fixture(scope="module")
def smollm2() -> Any:
    return load_tokenizer(smollm2_tokenizer_dir())


def _tokenizer(base: Any, template: str | None, special: Sequence[str] = ()) -> Any:
    tokenizer = copy.deepcopy(base)
    tokenizer.chat_template = template
    if special:
        tokenizer.add_tokens(list(special), special_tokens=True)
    return tokenizer


def _format(base: Any, template: str | None, eos: str = "<|im_end|>", **kw: Any) -> ChatFormat:
    special = [*LLAMA_TOKENS, "<|python_tag|>"] if eos == "<|eot_id|>" else []
    if template == MISTRAL:
        special = ["[TOOL_CALLS]", "[ARGS]", "</s>"]
    tokenizer = _tokenizer(base, template, special)
    return ChatFormat(tokenizer, [tokenizer.convert_tokens_to_ids(eos)], **kw)


def _render(fmt: ChatFormat, messages: list[dict[str, Any]], **kw: Any) -> str:
    text: str = fmt.tokenizer.apply_chat_template(messages, tokenize=False, **kw)
    return text


def _call(name: str, **arguments: Any) -> dict[str, Any]:
    return {"type": "function", "function": {"name": name, "arguments": arguments}}


def test_the_format_is_detected_from_what_the_template_renders(smollm2: Any) -> None:
    cases = [
        (None, "<|im_end|>", "hermes", False),
        (smollm2.chat_template, "<|im_end|>", "hermes", False),  # SmolLM2: no tool calls
        (QWEN25, "<|im_end|>", "hermes", True),
        (QWEN3, "<|im_end|>", "hermes", True),
        (LLAMA3, "<|eot_id|>", "llama3", True),
        (MISTRAL, "</s>", "mistral", True),
    ]
    for template, eos, name, renders in cases:
        fmt = _format(smollm2, template, eos)
        assert fmt.tool_format.name == name, template
        assert fmt.renders_tool_calls() is renders
    assert _format(smollm2, QWEN25, tool_format="llama3").tool_format.name == "llama3"
    with pytest.raises(ValueError, match=r"tool_format='xml' is unknown; valid: auto, hermes"):
        _format(smollm2, QWEN25, tool_format="xml")


def test_the_tokenizers_parser_comes_first_under_auto(smollm2: Any) -> None:
    tokenizer = _tokenizer(smollm2, LLAMA3, LLAMA_TOKENS)
    tokenizer.response_template = {
        "start_anchor": "x",
        "fields": {"content": {"content": "text"}},
    }
    auto = ChatFormat(tokenizer, [0]).tool_format
    assert isinstance(auto, TokenizerParser) and auto.fallback.name == "llama3"
    assert not isinstance(
        ChatFormat(tokenizer, [0], tool_format="llama3").tool_format, TokenizerParser
    )


def _policy_then_results(
    fmt: ChatFormat, calls: list[dict[str, Any]], results: list[str]
) -> tuple[str, str]:
    """(the template's text of a structured conversation up to the assistant's EOS, the text
    of the environment's reply ids)"""
    user = {"role": "user", "content": "Add 2 and 3."}
    assistant = {"role": "assistant", "content": "", "tool_calls": calls}
    tools = [
        {"role": "tool", "name": c["function"]["name"], "content": r}
        for c, r in zip(calls, results, strict=True)
    ]
    full = _render(fmt, [user, assistant, *tools], add_generation_prompt=True)
    step = EnvStep("\n".join(results), tool_messages=tools)
    reply = fmt.tokenizer.decode(fmt.reply_ids(step, "tool"))
    return full, reply


@pytest.mark.parametrize("template", [QWEN25, QWEN3], ids=["qwen2.5", "qwen3"])
def test_consecutive_tool_results_render_as_the_template_groups_them(
    smollm2: Any, template: str
) -> None:
    fmt = _format(smollm2, template)
    full, reply = _policy_then_results(
        fmt, [_call("add", a=2, b=3), _call("add", a=1, b=1)], ["5", "2"]
    )
    assert full.endswith(reply)
    assert reply == (
        "\n<|im_start|>user\n<tool_response>\n5\n</tool_response>\n<tool_response>\n2\n"
        "</tool_response><|im_end|>\n<|im_start|>assistant\n"
    )  # one user turn, each result wrapped once (not the text protocol's blocks wrapped again)
    before = full[: -len(reply)]
    assert before.endswith("</tool_call><|im_end|>")  # the policy's turn, up to its own EOS


def test_llama3_results_in_an_ipython_turn_and_several_calls_fall_back_to_text(
    smollm2: Any,
) -> None:
    fmt = _format(smollm2, LLAMA3, "<|eot_id|>")
    full, reply = _policy_then_results(fmt, [_call("add", a=2, b=3)], ["5"])
    assert reply == (
        "<|start_header_id|>ipython<|end_header_id|>\n\n5<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n"
    )
    assert full.endswith('{"name": "add", "parameters": {"a": 2, "b": 3}}<|eot_id|>' + reply)
    two = [{"role": "tool", "name": "add", "content": r} for r in ("5", "2")]  # the template raises
    ids = fmt.reply_ids(EnvStep("5\n2", tool_messages=two), "tool")
    assert ids == fmt.message_ids("5\n2", "tool")
    assert "ipython" in fmt.tokenizer.decode(ids) and "5\n2" in fmt.tokenizer.decode(ids)


def test_a_template_that_rejects_the_tool_role_gets_the_results_as_user_text(smollm2: Any) -> None:
    fmt = _format(smollm2, NO_TOOL_ROLE)
    assert fmt.renders_tool_calls()
    messages = [{"role": "tool", "name": "add", "content": "5"}]
    text = "<tool_response>5</tool_response>"
    reply = fmt.tokenizer.decode(fmt.reply_ids(EnvStep(text, tool_messages=messages), "tool"))
    assert (
        reply == f"\n<|im_start|>user\n<tool>\n{text}\n</tool><|im_end|>\n<|im_start|>assistant\n"
    )


def test_smollm2_keeps_its_text_protocol(smollm2: Any) -> None:
    fmt = ChatFormat(smollm2, [smollm2.eos_token_id])
    messages = [{"role": "tool", "name": "add", "content": "5"}]
    text = "<tool_response>5</tool_response>"
    ids = fmt.reply_ids(EnvStep(text, tool_messages=messages), "tool")
    assert ids == fmt.message_ids(text, "tool")  # the template renders no calls: as before
    turn = smollm2('<tool_call>{"name": "add"}</tool_call><|im_end|>')["input_ids"]
    assert fmt.policy_text(turn) == smollm2.decode(turn, skip_special_tokens=True)
    assert any(
        "read as hermes (the default" in line for line in fmt.describe([Tool.from_function(add)])
    )


def test_a_call_marker_held_as_a_special_token_survives_decoding(smollm2: Any) -> None:
    fmt = _format(smollm2, MISTRAL, "</s>")
    tok = fmt.tokenizer
    ids = tok('[TOOL_CALLS][{"name": "add", "arguments": {"a": 1, "b": 2}}]</s>')["input_ids"]
    assert tok.decode(ids, skip_special_tokens=True).startswith("[{")  # the marker is dropped
    text = fmt.policy_text(ids)
    assert text == '[TOOL_CALLS][{"name": "add", "arguments": {"a": 1, "b": 2}}]'
    env = ToolEnvironment([add])
    fmt.attach(env)
    assert env.step(text).message == "3"


def test_a_call_cut_by_the_token_limit_is_an_error_result(smollm2: Any) -> None:
    fmt = _format(smollm2, LLAMA3, "<|eot_id|>")
    tok, env = fmt.tokenizer, ToolEnvironment([add])
    fmt.attach(env)
    ids = tok('{"name": "add", "parameters": {"a": 2, "b": 3}}')["input_ids"][:9]  # cut
    step = env.step(fmt.policy_text(ids))
    assert step.message == "error: the tool call is cut off before its JSON ended"
    reply = tok.decode(fmt.reply_ids(step, "tool"))
    assert reply.startswith("<|start_header_id|>ipython<|end_header_id|>\n\nerror: the tool")


def test_re_rendered_prompts_carry_earlier_calls_as_structured_tool_calls(smollm2: Any) -> None:
    call = '<tool_call>{"name": "add", "arguments": {"a": 2, "b": 3}}</tool_call>'
    prompt = [
        {"role": "user", "content": "Add 2 and 3."},
        {"role": "assistant", "content": call},
        {"role": "tool", "content": "<tool_response>5</tool_response>"},
        {"role": "assistant", "content": "5"},
        {"role": "user", "content": "Add 1 and 1."},
    ]
    assert structured_messages(prompt)[1] == {
        "role": "assistant",
        "content": "",
        "tool_calls": [_call("add", a=2, b=3)],
    }
    assert structured_messages(prompt)[2] == {"role": "tool", "content": "5"}
    openai = {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {"id": "c", "type": "function", "function": {"name": "add", "arguments": '{"a": 1}'}}
        ],
    }
    assert structured_messages([openai])[0]["tool_calls"][0]["function"]["arguments"] == {"a": 1}
    llama = _format(smollm2, LLAMA3, "<|eot_id|>")
    text = llama.prompt_text(prompt, [], None)
    assert '{"name": "add", "parameters": {"a": 2, "b": 3}}<|eot_id|>' in text  # its own format
    assert "<tool_call>" not in text and "ipython<|end_header_id|>\n\n5<|eot_id|>" in text
    qwen = _format(smollm2, QWEN25).prompt_text(prompt, [], None)
    assert "<tool_response>\n5\n</tool_response>" in qwen and "<tool_response>5" not in qwen
    plain = ChatFormat(smollm2, [smollm2.eos_token_id]).prompt_text(prompt, [], None)
    assert plain == _render(ChatFormat(smollm2, [0]), prompt, add_generation_prompt=True)


def test_the_engine_takes_tool_format_and_gives_it_to_the_environments(smollm2: Any) -> None:
    model, tiny_tokenizer = tiny_random_model(seed=0)
    ENVIRONMENTS.add("test_adder", lambda **_: ToolEnvironment([add]))
    try:
        options = {"environment": "test_adder", "max_tokens_per_turn": 2, "tool_format": "mistral"}
        engine = EpisodeEngine(
            SharedWeights(model), tiny_tokenizer, [tiny_tokenizer.eos_token_id], **options
        )
        batch = tokenize_prompts(tiny_tokenizer, ["a"], torch.device("cpu"))
        engine.generate(batch, RolloutRequest(2, SamplingParams(max_tokens=4, temperature=0.0)))
        assert {ep.env.tool_format.name for ep in engine.last_episodes} == {"mistral"}  # type: ignore[attr-defined]
        with pytest.raises(ValueError, match="rollout.engine_kwargs.tool_format='x'"):
            EpisodeEngine(
                SharedWeights(model), tiny_tokenizer, [0], environment="test_adder", tool_format="x"
            )
    finally:
        ENVIRONMENTS.unregister("test_adder")
