"""Environments and tools: the interface, the TRL-shaped adapter, tool schemas, the tool-call
protocol (good, malformed, unknown), contained tool failures and the sandboxed python tool."""

from __future__ import annotations

import threading
import time
import warnings
from typing import Any

import pytest

from groupwise.envs import (
    ENVIRONMENTS,
    EnvStep,
    Tool,
    ToolEnvironment,
    as_env_step,
    end_reward,
    env_reward,
    from_trl,
    parse_tool_calls,
    run_tool_call,
)
from groupwise.envs.tools import python_result, sandboxed_python_tool, tools_instructions
from groupwise.sandbox import Sandbox, SandboxLimits


def add(a: int, b: float = 1.0, note: str | None = None) -> float:
    """Add two numbers.

    Args:
        a: The first number.
        b: The second number.
        note: Ignored.

    Returns:
        The sum.
    """
    return a + b


def test_function_to_schema() -> None:
    schema = Tool.from_function(add).schema()
    assert schema == {
        "type": "function",
        "function": {
            "name": "add",
            "description": "Add two numbers.",
            "parameters": {
                "type": "object",
                "properties": {
                    "a": {"type": "integer", "description": "The first number."},
                    "b": {"type": "number", "description": "The second number."},
                    "note": {"type": "string", "description": "Ignored."},
                },
                "required": ["a"],
            },
        },
    }
    assert '"name": "add"' in tools_instructions([Tool.from_function(add)])


def test_parse_good_malformed_and_unknown_calls() -> None:
    text = (
        'first <tool_call>{"name": "add", "arguments": {"a": 2, "b": 3}}</tool_call> '
        "<tool_call>{not json}</tool_call>"
        '<tool_call>{"arguments": {}}</tool_call>'
        '<tool_call>{"name": "add", "arguments": [1]}</tool_call>'
        '<tool_call>{"name": "nope", "arguments": "{}"}</tool_call>'
        '<tool_call>{"name": "add"'
    )
    calls = parse_tool_calls(text)
    assert len(calls) == 6
    tools = [Tool.from_function(add)]
    results = [run_tool_call(c, tools) for c in calls]
    assert results[0] == "5"
    assert results[1].startswith("error: the tool call is not valid JSON")
    assert results[2] == 'error: a tool call needs a string "name"'
    assert results[3] == 'error: "arguments" must be a JSON object'
    assert results[4] == "error: unknown tool 'nope'; available: add"
    assert results[5] == "error: unclosed <tool_call> tag"
    assert parse_tool_calls("no calls here") == []


def test_tool_failures_are_results_not_crashes() -> None:
    def boom(x: int) -> int:
        """Fails."""
        raise RuntimeError("kaput")

    def slow() -> str:
        """Hangs."""
        time.sleep(5)
        return "late"

    def flood() -> str:
        """Floods."""
        return "x" * 10_000

    tools = [Tool.from_function(f) for f in (boom, slow, flood, add)]
    env = ToolEnvironment(tools, timeout=0.3, max_chars=100)
    env.reset({"prompt": "p"})
    start = time.perf_counter()
    step = env.step(
        '<tool_call>{"name": "boom", "arguments": {"x": 1}}</tool_call>'
        '<tool_call>{"name": "slow", "arguments": {}}</tool_call>'
        '<tool_call>{"name": "flood", "arguments": {}}</tool_call>'
        '<tool_call>{"name": "add", "arguments": {"z": 1}}</tool_call>'
    )
    assert time.perf_counter() - start < 3
    assert step.message is not None and not step.done
    parts = step.message.split("</tool_response>\n")
    assert "error: tool 'boom' raised RuntimeError: kaput" in parts[0]
    assert "error: tool 'slow' timed out after 0.3 s" in parts[1]
    assert "[cut at 100 characters]" in parts[2] and len(parts[2]) < 200
    assert "error: bad arguments for tool 'add'" in parts[3]
    assert env.step("the answer is 4") == EnvStep(None, done=True)  # no call: the end


class IncrementEnv:
    """TRL's ``environment_factory`` shape, as documented."""

    def __init__(self) -> None:
        self.counter = 0

    def reset(self, target: int = 1, **kwargs: Any) -> str | None:
        self.counter, self.target = 0, target
        return None

    def get_reward(self) -> float:
        return float(self.counter == self.target)

    def increment(self, step: int) -> int:
        """Increment the counter.

        Args:
            step: Value to add to the counter.
        """
        self.counter += step
        return self.counter

    def _private(self) -> None:
        raise AssertionError("not a tool")


def test_trl_adapter() -> None:
    env = from_trl(IncrementEnv)()
    assert [t.name for t in env.tools] == ["increment"]  # type: ignore[attr-defined]
    assert env.reset({"prompt": "p", "target": 3}) is None
    call = '<tool_call>{"name": "increment", "arguments": {"step": 3}}</tool_call>'
    assert as_env_step(env.step(call)).message == "<tool_response>3</tool_response>"
    assert as_env_step(env.step("done")).done
    assert end_reward(env) == 1.0


def test_registry_counter_and_step_shapes() -> None:
    counter = ENVIRONMENTS.get("counter")(turns=2)
    counter.reset({"prompt": "p"})
    assert as_env_step(counter.step("hello")) == EnvStep("ok 1")
    assert as_env_step(counter.step("hi")).done
    assert end_reward(counter) == pytest.approx((5 + 2) / 40)
    assert as_env_step(("msg", True)) == EnvStep("msg", True)
    with pytest.raises(TypeError, match="EnvStep"):
        as_env_step("bad")
    with pytest.raises(ValueError, match="unknown name 'nope'; valid: ") as err:
        ENVIRONMENTS.get("nope")
    assert {"counter", "python"} <= set(str(err.value).split("valid: ")[1].split(", "))
    with pytest.raises(ValueError, match="filled by rollout.engine=episodes"):
        env_reward(["p"], ["c"])


AVAILABLE, REASON = Sandbox.available()


def test_python_tool_in_the_sandbox() -> None:
    """In bubblewrap where it works here, else with the same limits unisolated (unsafe)."""
    limits = SandboxLimits(cpu_seconds=1, wall_seconds=1.5, memory_mb=256)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sandbox = Sandbox(limits, unsafe=not AVAILABLE)
    assert python_result("print(6 * 7)", sandbox) == "42\n"
    env = ToolEnvironment([sandboxed_python_tool(sandbox)], timeout=10)
    env.reset({"prompt": "p"})
    hang = '<tool_call>{"name": "python", "arguments": {"code": "while True: pass"}}</tool_call>'
    crash = '<tool_call>{"name": "python", "arguments": {"code": "1/0"}}</tool_call>'
    message = as_env_step(env.step(hang + crash)).message or ""
    hung, crashed = message.split("</tool_response>\n")
    assert "error: timed out" in hung
    assert "error: exit status" in crashed and "ZeroDivisionError" in crashed


class Shop:
    """A TRL environment with a property, a classmethod and a callable attribute: TRL lists
    only the class's public functions as tools (properties are never evaluated)."""

    def __init__(self) -> None:
        self.helper = lambda: "not a tool"  # a callable attribute, not a function of the class

    @property
    def boom(self) -> int:
        raise AssertionError("a property was evaluated")

    @classmethod
    def make(cls) -> Shop:
        return cls()

    def reset(self, prompt: Any, item: str) -> None:
        self.seen = (prompt, item)

    def buy(self, item: str) -> str:
        """Buy an item.

        Args:
            item: What to buy.
        """
        return f"bought {item}"


def test_trl_tools_are_the_class_functions_and_reset_gets_the_prompt_it_takes() -> None:
    env = from_trl(Shop)()
    assert [t.name for t in env.tools] == ["buy"]  # type: ignore[attr-defined]
    env.reset({"prompt": "p", "item": "tea"})
    assert env.instance.seen == ("p", "tea")  # type: ignore[attr-defined]
    env = from_trl(IncrementEnv)()  # reset(target, **kwargs): gets the prompt too
    env.reset({"prompt": "p", "target": 2})


def search(query: str) -> str:
    """Search.

    Args:
        query: What to look for.
    """
    return f"found {query}"


def test_a_dict_of_environments_routes_each_row_to_its_own_tools() -> None:
    factory = from_trl({"inc": IncrementEnv, "shop": Shop}, tools=[search])
    inc, shop = factory(), factory()
    assert inc.tools == []  # type: ignore[attr-defined]  # nothing before reset
    inc.reset({"prompt": "p", "environment": "inc", "target": 2})
    shop.reset({"prompt": "p", "environment": "shop", "item": "tea"})
    assert [t.name for t in inc.tools] == ["search", "increment"]  # type: ignore[attr-defined]
    assert [t.name for t in shop.tools] == ["search", "buy"]  # type: ignore[attr-defined]
    buy = '<tool_call>{"name": "buy", "arguments": {"item": "tea"}}</tool_call>'
    assert "error: unknown tool 'buy'" in str(as_env_step(inc.step(buy)).message)
    assert as_env_step(shop.step(buy)).message == "<tool_response>bought tea</tool_response>"
    step = '<tool_call>{"name": "increment", "arguments": {"step": 2}}</tool_call>'
    as_env_step(inc.step(step))
    assert end_reward(inc) == 1.0 and end_reward(shop) is None  # Shop has no get_reward
    assert inc.columns()["environments"].counter == 2  # type: ignore[attr-defined]
    with pytest.raises(ValueError, match=r"'environment' column naming one of \['inc', 'shop'\]"):
        factory().reset({"prompt": "p"})
    with pytest.raises(ValueError, match="a row has 'nope'"):
        factory().reset({"prompt": "p", "environment": "nope"})


def test_tool_frequencies_count_as_trl_does() -> None:
    from groupwise.envs import env_columns, tool_frequencies

    def boom() -> str:
        """Fails."""
        raise RuntimeError("kaput")

    def says_error() -> str:
        """Returns a text starting with error (a result, not a failure)."""
        return "error: exit status 1"

    tools = [Tool.from_function(f) for f in (boom, says_error, add)]
    a, b, c = ToolEnvironment(tools), ToolEnvironment(tools), ToolEnvironment(tools)
    for env in (a, b, c):
        env.reset({"prompt": "p"})
    a.step(
        '<tool_call>{"name": "add", "arguments": {"a": 1}}</tool_call>'  # call, fine
        '<tool_call>{"name": "says_error", "arguments": {}}</tool_call>'  # call, a result
        "<tool_call>{not json}</tool_call>"  # not a call (TRL leaves it as text)
    )
    b.step(
        '<tool_call>{"name": "boom", "arguments": {}}</tool_call>'  # call, failure
        '<tool_call>{"name": "nope", "arguments": {}}</tool_call>'  # call, failure (unknown)
        '<tool_call>{"name": "add", "arguments": [1]}</tool_call>'  # call, failure (not object)
    )
    assert (a.failures, b.failures, c.failures) == (0, 3, 0)
    assert tool_frequencies([a, b, c]) == {
        "tools/call_frequency": 5 / 3,
        "tools/failure_frequency": 3 / 5,
    }
    assert tool_frequencies([c]) == {"tools/call_frequency": 0.0, "tools/failure_frequency": 0.0}
    assert tool_frequencies([object()]) == {}  # no tools: TRL logs none
    assert env_columns([a, b]) == {}  # plain tool environments add no column


def test_the_worked_exchange_runs_a_plain_function_tool_once_and_shows_its_result() -> None:
    from groupwise.envs.tools import worked_exchange

    seen: list[str] = []

    def capital(country: str) -> str:
        """The capital city of a country.

        Args:
            country: the country's English name, e.g. "France".
        """
        seen.append(country)
        return {"France": "Paris"}.get(country, "unknown")

    tool = Tool.from_function(capital)
    user, call, result, answer = worked_exchange([tool, Tool.from_function(add)])
    assert seen == ["France"]  # the first tool, with its example arguments, once
    assert [m["role"] for m in (user, call, result, answer)] == [
        "user",
        "assistant",
        "tool",
        "assistant",
    ]
    assert user["content"] == 'What is the capital for country "France"? Use the capital tool.'
    (parsed,) = parse_tool_calls(call["content"])
    assert (parsed.name, parsed.arguments, parsed.error) == ("capital", {"country": "France"}, None)
    assert result["content"] == "<tool_response>Paris</tool_response>"
    assert answer["content"] == "Paris"
    assert worked_exchange([]) == []


def test_a_bound_method_tool_shows_its_exchange_from_a_copy_of_its_instance() -> None:
    from groupwise.envs.tools import worked_exchange

    class Counter:  # a TRL environment: its state comes from reset, its tools change it
        def __init__(self) -> None:
            self.n = 0

        def bump(self, by: int) -> int:
            """Add to the counter.

            Args:
                by: how much to add, e.g. 3.
            """
            self.n += by
            return self.n

    counter = Counter()
    counter.n = 10  # as reset left it
    _, call, result, answer = worked_exchange([Tool.from_function(counter.bump)])
    assert parse_tool_calls(call["content"])[0].arguments == {"by": 3}
    assert result["content"] == "<tool_response>13</tool_response>" and answer["content"] == "13"
    assert counter.n == 10  # the episode's own instance is unchanged


def test_no_worked_exchange_where_the_example_call_is_not_safe_or_fails() -> None:
    from groupwise.envs.tools import worked_exchange

    class Locked:
        def __init__(self) -> None:
            self.lock = threading.Lock()  # cannot be deep-copied
            self.n = 0

        def bump(self, by: int) -> int:
            """Add to the counter (state a demo call must not change)."""
            self.n += by
            return self.n

    locked = Locked()
    assert worked_exchange([Tool.from_function(locked.bump)]) == [] and locked.n == 0

    async def slow(x: int) -> int:
        """An async tool."""
        return x

    def broken(x: int) -> int:
        """Raises."""
        raise RuntimeError("no")

    def refuses(x: int) -> str:
        """Answers with an error text."""
        return "error: not this one"

    for func in (slow, broken, refuses):
        assert worked_exchange([Tool.from_function(func)]) == [], func.__name__
