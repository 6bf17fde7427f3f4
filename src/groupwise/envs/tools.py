"""Tools: plain Python functions the policy calls from inside an episode.

A function becomes a :class:`Tool` (:meth:`Tool.from_function`): its name, its docstring (the
first paragraph describes the tool, a Google-style ``Args:`` section its arguments) and its
type-hinted signature give an OpenAI-style JSON schema. The tools are described to the model
through ``tokenizer.apply_chat_template(messages, tools=[...])`` where the chat template renders
tools, else by the text protocol of :func:`tools_instructions` in a system message, which ends
with one worked call built from the first tool's schema (:func:`example_call`).

The call protocol (Hermes / Qwen style, the one those templates teach): the model writes

    <tool_call>{"name": "python", "arguments": {"code": "print(1 + 1)"}}</tool_call>

and each call's result comes back in the next environment message (role ``tool``) as
``<tool_response>...</tool_response>``. A malformed call (bad JSON, no name, arguments that are
not an object, an unclosed tag), an unknown tool or wrong arguments is answered with an
``error: ...`` result, never an exception. A tool runs in a worker thread with a timeout and
its result is cut to ``max_chars``; a tool that raises is reported as ``error: <exception>``.
A thread cannot be killed: code that may hang or flood belongs in the sandbox, as the built-in
:func:`python` tool does (:class:`groupwise.sandbox.Sandbox`, a fresh process per call with
CPU, memory, output and wall-clock limits).
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from groupwise.envs.base import (
    BaseEnvironment,
    Environment,
    EnvironmentFactory,
    EnvStep,
    Row,
    call_maybe_async,
)
from groupwise.envs.schema import Tool, as_tool, example_arguments

_CALL = re.compile(r"<tool_call>(.*?)(</tool_call>|$)", re.DOTALL)


@dataclass
class ToolCall:
    """One parsed call, or the error that replaces its result."""

    name: str | None
    arguments: dict[str, Any] = field(default_factory=dict)
    error: str | None = None


def parse_tool_calls(text: str) -> list[ToolCall]:
    """Every ``<tool_call>{...}</tool_call>`` in ``text``; malformed ones carry an error."""
    calls: list[ToolCall] = []
    for match in _CALL.finditer(text):
        body, closed = match.group(1).strip(), bool(match.group(2))
        if not closed:
            calls.append(ToolCall(None, error="error: unclosed <tool_call> tag"))
            continue
        try:
            data = json.loads(body)
        except json.JSONDecodeError as exc:
            calls.append(ToolCall(None, error=f"error: the tool call is not valid JSON ({exc})"))
            continue
        if not isinstance(data, dict) or not isinstance(data.get("name"), str):
            calls.append(ToolCall(None, error='error: a tool call needs a string "name"'))
            continue
        arguments = data.get("arguments", {})
        if isinstance(arguments, str):  # some models write the arguments as a JSON string
            with contextlib.suppress(json.JSONDecodeError):
                arguments = json.loads(arguments)
        if not isinstance(arguments, dict):
            error = 'error: "arguments" must be a JSON object'
            calls.append(ToolCall(data["name"], error=error))
            continue
        calls.append(ToolCall(data["name"], arguments))
    return calls


def run_tool_call(
    call: ToolCall, tools: Sequence[Tool], *, timeout: float = 10.0, max_chars: int = 2000
) -> str:
    """The result text of ``call`` (an ``error: ...`` text when anything goes wrong)."""
    if call.error is not None:
        return call.error
    by_name = {t.name: t for t in tools}
    tool = by_name.get(call.name or "")
    if tool is None:
        return f"error: unknown tool {call.name!r}; available: {', '.join(by_name) or 'none'}"
    pool = concurrent.futures.ThreadPoolExecutor(max_workers=1)
    try:
        future = pool.submit(call_maybe_async, tool.func, **call.arguments)
        result = future.result(timeout=timeout)
    except concurrent.futures.TimeoutError:
        return f"error: tool {tool.name!r} timed out after {timeout:g} s"
    except TypeError as exc:
        return f"error: bad arguments for tool {tool.name!r}: {exc}"
    except Exception as exc:
        return f"error: tool {tool.name!r} raised {type(exc).__name__}: {exc}"
    finally:
        pool.shutdown(wait=False, cancel_futures=True)
    text = result if isinstance(result, str) else json.dumps(result, default=str)
    if len(text) > max_chars:
        text = text[:max_chars] + f"\n... [cut at {max_chars} characters]"
    return text


def tools_instructions(tools: Sequence[Tool]) -> str:
    """The text protocol, for chat templates that do not render tools (and tokenizers without a
    template): how to call, the tools' schemas, then one worked call of the first tool
    (:func:`example_call`), since a small model told only the format rarely follows it."""
    lines = "\n".join(json.dumps(t.schema()) for t in tools)
    text = (
        "You can call tools. To call one, write\n"
        '<tool_call>{"name": <tool name>, "arguments": <arguments as a JSON object>}</tool_call>\n'
        "and stop; the result comes back as <tool_response>...</tool_response>. "
        "Answer without a tool call when you are done.\n"
        f"Available tools:\n<tools>\n{lines}\n</tools>"
    )
    if not tools:
        return text
    return (
        f"{text}\nAn example call of {tools[0].name} (use the values your task needs):\n"
        f"{example_call(tools[0])}"
    )


def example_call(tool: Tool) -> str:
    """One well-formed call of ``tool`` with plausible arguments from its own schema
    (:func:`groupwise.envs.schema.example_arguments`), e.g.
    ``<tool_call>{"name": "add", "arguments": {"a": 3}}</tool_call>``."""
    call = {"name": tool.name, "arguments": example_arguments(tool.parameters)}
    return f"<tool_call>{json.dumps(call)}</tool_call>"


class ToolEnvironment(BaseEnvironment):
    """Runs the policy's tool calls; ends when the policy answers without one.

    (The engine's ``max_turns`` bounds the episode.) Each turn's results are one message of
    role ``tool``: one ``<tool_response>`` block per call, in order.
    """

    role = "tool"

    def __init__(
        self,
        tools: Sequence[Tool | Callable[..., Any]],
        *,
        timeout: float = 10.0,
        max_chars: int = 2000,
    ) -> None:
        self.tools = [as_tool(t) for t in tools]
        self.runnable = list(self.tools)  # what runs (``tools`` is what the prompt describes)
        self.timeout = timeout
        self.max_chars = max_chars
        self.calls: list[ToolCall] = []
        self.errors = 0  # calls answered with an error result

    def reset(self, row: Row) -> str | None:
        """No first observation (the tools are described in the prompt)."""
        self.calls, self.errors = [], 0
        return None

    def step(self, policy_message: str) -> EnvStep:
        """Run every call of the message; done when there is none."""
        calls = parse_tool_calls(policy_message)
        if not calls:
            return EnvStep(None, done=True)
        self.calls.extend(calls)
        results = [
            run_tool_call(c, self.runnable, timeout=self.timeout, max_chars=self.max_chars)
            for c in calls
        ]
        self.errors += sum(r.startswith("error:") for r in results)
        return EnvStep("\n".join(f"<tool_response>{r}</tool_response>" for r in results))


_RESERVED = {"reset", "get_reward"}


class TRLEnvironment(ToolEnvironment):
    """A TRL ``environment_factory`` instance: its public methods are the tools (see
    :mod:`groupwise.envs.base` for the contract followed)."""

    def __init__(self, instance: Any, **options: Any) -> None:
        methods = [
            getattr(instance, name)
            for name in dir(instance)
            if not name.startswith("_")
            and name not in _RESERVED
            and callable(getattr(instance, name))
        ]
        super().__init__(methods, **options)
        self.instance = instance

    def reset(self, row: Row) -> str | None:
        """``instance.reset(**columns)`` (the row without its prompt)."""
        super().reset(row)
        out = call_maybe_async(
            self.instance.reset, **{k: v for k, v in row.items() if k != "prompt"}
        )
        return None if out is None else str(out)

    def reward(self) -> float | None:
        """``instance.get_reward()`` when the class has one."""
        get_reward = getattr(self.instance, "get_reward", None)
        return None if get_reward is None else float(call_maybe_async(get_reward))


def python(code: str) -> str:
    """Run Python code in a sandbox and return what it printed.

    Args:
        code: The Python program to run; print the values you want to see.
    """
    return python_result(code)


def python_result(code: str, sandbox: Any | None = None) -> str:
    """Run ``code`` in ``sandbox`` (default a :class:`~groupwise.sandbox.Sandbox`, 5 s) and
    describe the outcome: stdout, then stderr, or an ``error:`` line for a killed run."""
    from groupwise.sandbox import Sandbox, SandboxLimits

    if sandbox is None:  # limits under the tool timeout, so the sandbox reports the kill
        sandbox = Sandbox(SandboxLimits(cpu_seconds=5.0, wall_seconds=5.0))
    result = sandbox.run_python(code)
    out = result.stdout
    if result.stderr:
        out += ("\n" if out else "") + result.stderr
    if result.timed_out:
        return f"error: timed out ({result.killed_reason})\n{out}".rstrip()
    if result.output_truncated:
        return f"error: output limit exceeded\n{out}".rstrip()
    if result.killed_reason is not None:
        return f"error: killed ({result.killed_reason})\n{out}".rstrip()
    if result.returncode != 0:
        return f"error: exit status {result.returncode}\n{out}".rstrip()
    return out


def sandboxed_python_tool(sandbox: Any) -> Tool:
    """The ``python`` tool on a given sandbox (e.g. with small limits for tests)."""

    def run(code: str) -> str:
        return python_result(code, sandbox)

    tool = Tool.from_function(python)
    tool.func = run
    return tool


def from_trl(factory: Callable[[], Any], **tool_options: Any) -> EnvironmentFactory:
    """An environment factory for a TRL ``environment_factory`` class, used unchanged.

    ``tool_options`` go to :class:`~groupwise.envs.tools.ToolEnvironment` (e.g. ``timeout``).
    """

    def build(**_: Any) -> Environment:
        return TRLEnvironment(factory(), **tool_options)

    build.__name__ = getattr(factory, "__name__", "trl_environment")
    return build
