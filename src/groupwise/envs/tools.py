"""Tools: plain Python functions the policy calls from inside an episode.

A function becomes a :class:`Tool` (:meth:`Tool.from_function`): its name, its docstring (the
first paragraph describes the tool, a Google-style ``Args:`` section its arguments) and its
type-hinted signature give an OpenAI-style JSON schema. The tools are described to the model
through ``tokenizer.apply_chat_template(messages, tools=[...])`` where the chat template renders
tools, else by the text protocol of :func:`tools_instructions` in a system message, which ends
with one worked call built from the first tool's schema (:func:`example_call`); the
``episodes`` engine adds a worked exchange with the tool as earlier turns
(:func:`worked_exchange`).

The call protocol (Hermes / Qwen style, the one those templates teach, and the default; the
Llama 3.x and Mistral formats and the tokenizer's own parser are in
:mod:`groupwise.envs.formats`, chosen by the ``episodes`` engine): the model writes

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
import copy
import dataclasses
import inspect
import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from groupwise.envs.base import (
    BaseEnvironment,
    Environment,
    EnvironmentFactory,
    EnvStep,
    Row,
    call_maybe_async,
)
from groupwise.envs.formats import HERMES, ToolCall, ToolFormat
from groupwise.envs.schema import Tool, as_tool, example_arguments


def parse_tool_calls(text: str) -> list[ToolCall]:
    """Every ``<tool_call>{...}</tool_call>`` in ``text``; malformed ones carry an error (the
    ``hermes`` format; other formats: :mod:`groupwise.envs.formats`)."""
    return HERMES.parse(text)


def run_tool_call(
    call: ToolCall, tools: Sequence[Tool], *, timeout: float = 10.0, max_chars: int = 2000
) -> str:
    """The result text of ``call`` (an ``error: ...`` text when anything goes wrong)."""
    return execute_tool_call(call, tools, timeout=timeout, max_chars=max_chars)[0]


def execute_tool_call(
    call: ToolCall, tools: Sequence[Tool], *, timeout: float = 10.0, max_chars: int = 2000
) -> tuple[str, bool]:
    """``(result text, failed)`` of ``call``: ``failed`` when no tool returned (a malformed
    call, an unknown tool, bad arguments, a timeout or an exception: the text is then
    ``error: ...``); a tool's own result is never a failure, whatever it says."""
    if call.error is not None:
        return call.error, True
    by_name = {t.name: t for t in tools}
    tool = by_name.get(call.name or "")
    if tool is None:
        available = ", ".join(by_name) or "none"
        return f"error: unknown tool {call.name!r}; available: {available}", True
    pool = concurrent.futures.ThreadPoolExecutor(max_workers=1)
    try:
        future = pool.submit(call_maybe_async, tool.func, **call.arguments)
        result = future.result(timeout=timeout)
    except concurrent.futures.TimeoutError:
        return f"error: tool {tool.name!r} timed out after {timeout:g} s", True
    except TypeError as exc:
        return f"error: bad arguments for tool {tool.name!r}: {exc}", True
    except Exception as exc:
        return f"error: tool {tool.name!r} raised {type(exc).__name__}: {exc}", True
    finally:
        pool.shutdown(wait=False, cancel_futures=True)
    text = result if isinstance(result, str) else json.dumps(result, default=str)
    if len(text) > max_chars:
        text = text[:max_chars] + f"\n... [cut at {max_chars} characters]"
    return text, False


def tools_instructions(tools: Sequence[Tool], tool_format: ToolFormat = HERMES) -> str:
    """The text protocol, for chat templates that do not render tools (and tokenizers without a
    template): how to call (in ``tool_format``, default ``hermes``), the tools' schemas, then
    one worked call of the first tool (:func:`example_call`), since a small model told only the
    format rarely follows it."""
    text = tool_format.instructions("\n".join(json.dumps(t.schema()) for t in tools))
    if not tools:
        return text
    return (
        f"{text}\nAn example call of {tools[0].name} (use the values your task needs):\n"
        f"{example_call(tools[0], tool_format)}"
    )


def worked_exchange(
    tools: Sequence[Tool], tool_format: ToolFormat = HERMES, *, timeout: float = 2.0
) -> list[dict[str, str]]:
    """One worked exchange with the first tool, as earlier turns of a conversation: a user
    question naming the tool and its example arguments (``What is the capital for country
    "France"? Use the capital tool.``; the values of :func:`example_call`), the assistant's
    call, the tool's real result (``tool_format.results_text``, role ``tool``) and the
    assistant's answer, the result itself. A small model copies the turns it sees far more
    readily than it follows a described protocol.

    The example call really runs, once, only when that is safe to assume: the tool is a plain
    synchronous function, or a synchronous method bound to an instance (a TRL environment's
    tool), which then runs on a deep copy of that instance, so the episode's own instance is
    never changed (an instance that cannot be copied gets no exchange); never an async or
    other callable; and it returns within ``timeout`` seconds with a result that is not an
    ``error`` text. Otherwise ``[]``: no exchange (the worked call of
    :func:`tools_instructions` stays the only example)."""
    if not tools:
        return []
    tool = tools[0]
    runnable = _isolated(tool)
    if runnable is None:
        return []
    arguments = example_arguments(tool.parameters)
    call = ToolCall(tool.name, arguments)
    result, failed = execute_tool_call(call, [runnable], timeout=timeout, max_chars=500)
    if failed or not result.strip() or result.lstrip().lower().startswith("error"):
        return []
    values = " and ".join(f"{k} {json.dumps(v)}" for k, v in arguments.items())
    request = f"What is the {tool.name} for {values}? Use the {tool.name} tool."
    return [
        {"role": "user", "content": request},
        {"role": "assistant", "content": tool_format.call_text(tool.name, arguments)},
        {"role": "tool", "content": tool_format.results_text([result])},
        {"role": "assistant", "content": result},
    ]


def _isolated(tool: Tool) -> Tool | None:
    """``tool`` as it may run for an example without side effects on an episode: a plain
    synchronous function as it is; a synchronous bound method on a deep copy of its instance
    (None when the instance cannot be copied); None for anything else."""
    func = tool.func
    if inspect.isfunction(func) and not inspect.iscoroutinefunction(func):
        return tool
    method = getattr(func, "__func__", None)
    if not inspect.ismethod(func) or not inspect.isfunction(method):
        return None
    if inspect.iscoroutinefunction(method):
        return None
    try:
        copy_of_instance = copy.deepcopy(func.__self__)
    except Exception:  # locks, sockets, open files: no copy, no example run
        return None
    return dataclasses.replace(tool, func=method.__get__(copy_of_instance))


def example_call(tool: Tool, tool_format: ToolFormat = HERMES) -> str:
    """One well-formed call of ``tool`` with plausible arguments from its own schema
    (:func:`groupwise.envs.schema.example_arguments`) in ``tool_format``, e.g.
    ``<tool_call>{"name": "add", "arguments": {"a": 3}}</tool_call>``."""
    return tool_format.call_text(tool.name, example_arguments(tool.parameters))


class ToolEnvironment(BaseEnvironment):
    """Runs the policy's tool calls; ends when the policy answers without one.

    (The engine's ``max_turns`` bounds the episode.) Calls are read in ``tool_format``
    (default ``hermes``; the ``episodes`` engine sets the tokenizer's through
    :meth:`set_tool_format`). Each turn's results are one message of role ``tool``, the
    format's :meth:`~groupwise.envs.formats.ToolFormat.results_text` (``hermes``: one
    ``<tool_response>`` block per call, in order), and, per call, a ``tool`` message in
    :attr:`EnvStep.tool_messages` (for chat templates that render tool calls themselves).
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
        self.failures = 0  # named calls no tool returned for (see execute_tool_call)
        self.tool_format: ToolFormat = HERMES

    def set_tool_format(self, tool_format: ToolFormat) -> None:
        """Read the policy's calls in ``tool_format`` (and write results in it)."""
        self.tool_format = tool_format

    def reset(self, row: Row) -> str | None:
        """No first observation (the tools are described in the prompt)."""
        self.calls, self.errors, self.failures = [], 0, 0
        return None

    def step(self, policy_message: str) -> EnvStep:
        """Run every call of the message; done when there is none."""
        calls = self.tool_format.parse(policy_message)
        if not calls:
            return EnvStep(None, done=True)
        self.calls.extend(calls)
        outcomes = [
            execute_tool_call(c, self.runnable, timeout=self.timeout, max_chars=self.max_chars)
            for c in calls
        ]
        self.errors += sum(text.startswith("error:") for text, _ in outcomes)
        self.failures += sum(
            failed and c.name is not None for c, (_, failed) in zip(calls, outcomes, strict=True)
        )
        results = [text for text, _ in outcomes]
        messages = [
            {"role": "tool", "name": c.name or "invalid_call", "content": r}
            for c, r in zip(calls, results, strict=True)
        ]
        return EnvStep(self.tool_format.results_text(results), tool_messages=messages)


def tool_frequencies(envs: Iterable[Any]) -> dict[str, float]:
    """TRL's tool metrics over a batch's environments (none when no environment has tools).

    A *call* is a ``<tool_call>`` whose JSON names a tool (TRL's parser leaves malformed blocks
    as text); a *failure* is a call no tool returned for: an unknown tool, arguments that are
    not an object or do not fit, a timeout, an exception (a tool's result, even an ``error``
    text, is no failure). ``tools/call_frequency`` = calls / episodes and
    ``tools/failure_frequency`` = failures / calls (0 without calls), as TRL's GRPOTrainer
    defines them; ``tools/calls_mean`` and ``tools/error_rate`` count every block and every
    ``error:`` result instead.
    """
    envs = list(envs)
    if not any(getattr(env, "tools", ()) for env in envs):
        return {}
    calls = sum(
        sum(getattr(c, "name", None) is not None for c in getattr(env, "calls", ())) for env in envs
    )
    failures = sum(int(getattr(env, "failures", 0)) for env in envs)
    return {
        "tools/call_frequency": calls / max(len(envs), 1),
        "tools/failure_frequency": failures / calls if calls else 0.0,
    }


_RESERVED = {"reset", "get_reward"}


def trl_tool_methods(instance: Any) -> list[Callable[..., Any]]:
    """The tools of a TRL environment instance, as TRL lists them: the functions its class
    defines (its own or inherited; properties are not evaluated), public, other than
    ``reset`` and ``get_reward``, bound to the instance, by name."""
    return [
        getattr(instance, name)
        for name, _ in inspect.getmembers(type(instance), predicate=inspect.isfunction)
        if not name.startswith("_") and name not in _RESERVED
    ]


class TRLEnvironment(ToolEnvironment):
    """A TRL ``environment_factory`` instance: its public methods are the tools (see
    :mod:`groupwise.envs.base` for the contract followed), after ``tools`` (TRL's standalone
    ``tools=[...]``, shared by every environment)."""

    def __init__(
        self,
        instance: Any,
        tools: Sequence[Tool | Callable[..., Any]] = (),
        **options: Any,
    ) -> None:
        if not callable(getattr(instance, "reset", None)):
            raise TypeError(
                f"environment_factory: {type(instance).__name__} has no reset method; a TRL "
                "environment defines reset(**kwargs) (the dataset row's columns)"
            )
        super().__init__([*tools, *trl_tool_methods(instance)], **options)
        self.instance = instance

    def reset(self, row: Row) -> str | None:
        """``instance.reset(**columns)``: the row's columns, ``prompt`` included only when
        ``reset`` takes it (by name or ``**kwargs``, as TRL passes it)."""
        super().reset(row)
        params = inspect.signature(self.instance.reset).parameters.values()
        takes_prompt = any(p.kind is p.VAR_KEYWORD or p.name == "prompt" for p in params)
        columns = {k: v for k, v in row.items() if k != "prompt" or takes_prompt}
        out = call_maybe_async(self.instance.reset, **columns)
        return None if out is None else str(out)

    def reward(self) -> float | None:
        """``instance.get_reward()`` when the class has one."""
        get_reward = getattr(self.instance, "get_reward", None)
        return None if get_reward is None else float(call_maybe_async(get_reward))

    def columns(self) -> dict[str, Any]:
        """The reward functions' ``environments`` column: this episode's instance."""
        return {"environments": self.instance}


class RoutedEnvironment:
    """TRL's ``environment_factory={name: factory}``: each row's ``environment`` column picks
    the factory; the episode is a :class:`TRLEnvironment` on a fresh instance of it, built at
    ``reset`` (so the row sees only that environment's tools, after the shared ``tools``).
    ``reset`` passes the row without its ``environment`` column, as TRL does."""

    role = "tool"

    def __init__(
        self,
        factories: Mapping[str, Callable[[], Any]],
        tools: Sequence[Tool | Callable[..., Any]] = (),
        **options: Any,
    ) -> None:
        if not factories:
            raise ValueError("environment_factory: the dict of environments is empty")
        self.factories = dict(factories)
        self.shared = list(tools)
        self.options = options
        self.inner: TRLEnvironment | None = None
        self.tool_format: ToolFormat = HERMES

    def set_tool_format(self, tool_format: ToolFormat) -> None:
        """The format every row's environment reads calls in."""
        self.tool_format = tool_format

    def reset(self, row: Row) -> str | None:
        """Build the row's environment and reset it."""
        name = row.get("environment")
        if name not in self.factories:
            got = "no 'environment' column" if "environment" not in row else f"{name!r}"
            raise ValueError(
                f"environment_factory is a dict, so every row needs an 'environment' column "
                f"naming one of {sorted(self.factories)}; a row has {got}"
            )
        self.inner = TRLEnvironment(self.factories[name](), self.shared, **self.options)
        self.inner.set_tool_format(self.tool_format)
        return self.inner.reset({k: v for k, v in row.items() if k != "environment"})

    def _env(self) -> TRLEnvironment:
        if self.inner is None:
            raise RuntimeError("RoutedEnvironment: reset(row) comes first")
        return self.inner

    def step(self, policy_message: str) -> EnvStep:
        """The row's environment's step."""
        return self._env().step(policy_message)

    def reward(self) -> float | None:
        """The row's environment's ``get_reward()``, if it has one."""
        return self._env().reward()

    def columns(self) -> dict[str, Any]:
        """The row's instance as the ``environments`` column."""
        return self._env().columns()

    @property
    def tools(self) -> Sequence[Tool]:
        """The row's tools (none before ``reset``)."""
        return [] if self.inner is None else self.inner.tools

    @property
    def calls(self) -> list[ToolCall]:
        """The episode's tool calls."""
        return [] if self.inner is None else self.inner.calls

    @property
    def errors(self) -> int:
        """The episode's error results."""
        return 0 if self.inner is None else self.inner.errors

    @property
    def failures(self) -> int:
        """The episode's failed calls (see :func:`tool_frequencies`)."""
        return 0 if self.inner is None else self.inner.failures


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


def from_trl(
    factory: Callable[[], Any] | Mapping[str, Callable[[], Any]],
    *,
    tools: Sequence[Tool | Callable[..., Any]] = (),
    **tool_options: Any,
) -> EnvironmentFactory:
    """An environment factory for TRL's ``environment_factory``, used unchanged: a class (or
    any no-argument callable; one instance per episode) or a dict ``{name: factory}`` chosen
    per row by its ``environment`` column (:class:`RoutedEnvironment`). ``tools``: TRL's
    standalone ``tools=[...]``, offered next to every environment's own.

    ``tool_options`` go to :class:`~groupwise.envs.tools.ToolEnvironment` (e.g. ``timeout``).
    """
    if isinstance(factory, Mapping):
        routes = factory

        def build_routed(**_: Any) -> Environment:
            return RoutedEnvironment(routes, tools, **tool_options)

        build_routed.__name__ = "trl_environments"
        return build_routed
    make = factory

    def build(**_: Any) -> Environment:
        return TRLEnvironment(make(), tools, **tool_options)

    build.__name__ = getattr(factory, "__name__", "trl_environment")
    return build
