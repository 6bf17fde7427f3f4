"""Tools: plain Python functions the policy calls from inside an episode.

A function becomes a :class:`Tool` (:meth:`Tool.from_function`): its name, its docstring (the
first paragraph describes the tool, a Google-style ``Args:`` section its arguments) and its
type-hinted signature give an OpenAI-style JSON schema. The tools are described to the model
through ``tokenizer.apply_chat_template(messages, tools=[...])`` where the chat template renders
tools, else by the text protocol of :func:`tools_instructions` in a system message.

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
import inspect
import json
import re
import types
import typing
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from groupwise.envs.base import BaseEnvironment, EnvStep, Row, call_maybe_async

_JSON_TYPES = {str: "string", int: "integer", float: "number", bool: "boolean"}
_CALL = re.compile(r"<tool_call>(.*?)(</tool_call>|$)", re.DOTALL)


@dataclass
class Tool:
    """A callable with the JSON schema that describes it to the model."""

    name: str
    description: str
    parameters: dict[str, Any]
    func: Callable[..., Any]

    @classmethod
    def from_function(cls, func: Callable[..., Any], name: str | None = None) -> Tool:
        """Schema from ``func``'s name, docstring and type hints (see the module docstring)."""
        doc = inspect.getdoc(func) or ""
        summary, arg_docs = _parse_docstring(doc)
        try:
            hints = typing.get_type_hints(func)
        except Exception:
            hints = {}
        properties: dict[str, Any] = {}
        required: list[str] = []
        for pname, param in inspect.signature(func).parameters.items():
            if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
                continue
            prop = _json_type(hints.get(pname, param.annotation))
            if pname in arg_docs:
                prop["description"] = arg_docs[pname]
            properties[pname] = prop
            if param.default is param.empty:
                required.append(pname)
        parameters = {"type": "object", "properties": properties, "required": required}
        return cls(name or func.__name__, summary, parameters, func)

    def schema(self) -> dict[str, Any]:
        """The OpenAI-style function schema (``tools=[...]`` of ``apply_chat_template``)."""
        return {
            "type": "function",
            "function": {
                "name": self.name,
                "description": self.description,
                "parameters": self.parameters,
            },
        }


def as_tool(obj: Tool | Callable[..., Any]) -> Tool:
    """``obj`` if it is a Tool, else the tool made from the function."""
    return obj if isinstance(obj, Tool) else Tool.from_function(obj)


def _parse_docstring(doc: str) -> tuple[str, dict[str, str]]:
    """The first paragraph and the ``Args:`` descriptions of a Google-style docstring."""
    summary = doc.split("\n\n", 1)[0].strip()
    args: dict[str, str] = {}
    lines = doc.splitlines()
    starts = [i for i, line in enumerate(lines) if line.strip() == "Args:"]
    for line in lines[starts[0] + 1 :] if starts else []:
        if not line.strip() or re.match(r"^\S.*:\s*$", line):  # blank or the next section
            break
        m = re.match(r"\s*(\w+)\s*(?:\([^)]*\))?\s*:\s*(.*)", line)
        if m:
            args[m.group(1)] = m.group(2).strip()
    return summary, args


def _json_type(hint: Any) -> dict[str, Any]:
    origin = typing.get_origin(hint)
    if hint in _JSON_TYPES:
        return {"type": _JSON_TYPES[hint]}
    if origin in (list, Sequence, tuple):
        return {"type": "array"}
    if origin is dict or hint is dict:
        return {"type": "object"}
    if origin in (typing.Union, types.UnionType):
        options = [a for a in typing.get_args(hint) if a is not type(None)]
        return _json_type(options[0]) if len(options) == 1 else {}
    return {}


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
    """The text protocol, for chat templates that do not render tools."""
    lines = "\n".join(json.dumps(t.schema()) for t in tools)
    return (
        "You can call tools. To call one, write\n"
        '<tool_call>{"name": <tool name>, "arguments": <arguments as a JSON object>}</tool_call>\n'
        "and stop; the result comes back as <tool_response>...</tool_response>. "
        "Answer without a tool call when you are done.\n"
        f"Available tools:\n<tools>\n{lines}\n</tools>"
    )


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
