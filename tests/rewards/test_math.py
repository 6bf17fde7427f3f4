"""Math rewards, plus reward configuration (rewards.kwargs) and the concurrent/async runner."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import pytest

from groupwise.config import RewardsConfig, load_config
from groupwise.rewards import (
    RewardError,
    RewardRunner,
    answer_match,
    resolve_reward,
    rewards_from_config,
)
from groupwise.rewards.math import (
    extract_tagged_answer,
    math_verify,
    overlong_penalty,
    think_answer_format,
)

pytest.importorskip("math_verify")


@pytest.mark.parametrize(
    ("completion", "gold", "expected"),
    [
        ("The answer is 42.", "42", 1.0),
        ("so x = \\boxed{\\frac{1}{2}}", "0.5", 1.0),
        ("$\\boxed{0.5}$", "\\frac{1}{2}", 1.0),
        ("<think>6*7</think><answer>42</answer>", "42", 1.0),
        ("<think>..</think><answer>x + 1</answer>", "1 + x", 1.0),
        ("We get $\\sqrt{2}$", "$\\sqrt{2}$", 1.0),
        ("There are 1,234 apples", "1234", 1.0),
        ("The answer is 41.", "42", 0.0),
        ("<answer>43</answer> (I first thought 42)", "42", 0.0),
        ("\\boxed{\\frac{1}{3}}", "0.5", 0.0),
        ("", "42", 0.0),
        ("I don't know", "42", 0.0),
        ("<answer></answer>", "7", 0.0),
        # restating the question is not answering it (a reward hack seen in a real run)
        ("86 - 23 =", "63", 0.0),
        ("<answer>86-23</answer>", "63", 0.0),
        ("86 - 23 = 63", "63", 1.0),
        ("<answer>The sum is 63.</answer>", "63", 1.0),
        ("it is -5", "-5", 1.0),
        ("half: 1/2", "0.5", 1.0),
    ],
)
def test_math_verify(completion: str, gold: str, expected: float) -> None:
    assert math_verify(["p"], [completion], answer=[gold]) == [expected]


def test_math_verify_unparseable_gold_is_not_applicable() -> None:
    assert math_verify(["p"] * 2, ["42", "1"], answer=["", "\\frac{"]) == [None, None]


def test_math_verify_in_a_worker_thread() -> None:
    out: list[Any] = []
    worker = threading.Thread(target=lambda: out.append(math_verify(["p"], ["\\boxed{3}"], ["3"])))
    worker.start()
    worker.join()
    assert out == [[1.0]]


@pytest.mark.parametrize(
    ("completion", "expected"),
    [
        ("<think>2+2=4</think><answer>4</answer>", 1.0),
        ("  <think>\nmulti\nline\n</think>\n\n<answer>4</answer>\n", 1.0),
        ("<think></think><answer>4</answer>", 1.0),
        ("<answer>4</answer>", 0.0),
        ("<think>x</think>", 0.0),
        ("<think>x</think><answer>4</answer> trailing", 0.0),
        ("preamble <think>x</think><answer>4</answer>", 0.0),
        ("<answer>4</answer><think>x</think>", 0.0),
        ("<think>x</think><answer> </answer>", 0.0),
        ("<think>a</think><think>b</think><answer>4</answer>", 0.0),
        ("<think>a<answer>3</answer></think><answer>4</answer>", 0.0),
        ("", 0.0),
    ],
)
def test_think_answer_format(completion: str, expected: float) -> None:
    assert think_answer_format(["p"], [completion]) == [expected]


def test_extract_tagged_answer() -> None:
    assert extract_tagged_answer("<answer> 1 </answer><answer>2</answer>") == "2"
    assert extract_tagged_answer("<answer>unclosed") is None


def test_overlong_penalty_formula() -> None:
    reward = overlong_penalty(max_completion_length=20, cache_length=8)
    lengths = [0, 12, 13, 16, 20, 21, 40]
    ids = [[1] * n for n in lengths]
    got = reward(["p"] * 7, ["x"] * 7, completion_ids=ids)
    assert got == pytest.approx([0.0, 0.0, -1 / 8, -0.5, -1.0, -1.0, -1.0])
    assert reward.__name__ == "overlong_penalty"
    with pytest.raises(ValueError, match="completion_ids"):
        reward(["p"], ["x"])
    with pytest.raises(ValueError, match="cache_length must be in 1..max_completion_length"):
        overlong_penalty(max_completion_length=8, cache_length=9)


# ----------------------------------------------------------------------- reward configuration
def test_factory_gets_kwargs_and_max_completion_length() -> None:
    config = RewardsConfig(
        funcs=["overlong_penalty"], kwargs={"overlong_penalty": {"cache_length": 4}}
    )
    [reward] = rewards_from_config(config, max_completion_length=10)
    assert reward(["p"] * 2, ["a", "b"], completion_ids=[[1] * 6, [1] * 8]) == [0.0, -0.5]
    with pytest.raises(ValueError, match=r"rewards.kwargs.overlong_penalty: .* needs cache_length"):
        resolve_reward("overlong_penalty", context={"max_completion_length": 10})
    with pytest.raises(ValueError, match="needs max_completion_length"):
        resolve_reward("overlong_penalty", {"cache_length": 2})
    with pytest.raises(ValueError, match="rewards.kwargs.overlong_penalty: cache_length must be"):
        resolve_reward("overlong_penalty", {"cache_length": 0, "max_completion_length": 4})


def test_plain_reward_kwargs_are_bound_and_checked() -> None:
    assert resolve_reward("math_verify") is math_verify
    bound = resolve_reward("repetition_penalty", {"ngram_size": 1})
    assert bound.__name__ == "repetition_penalty"
    assert bound(["p"], ["a a b b"]) == [-0.5]
    with pytest.raises(ValueError, match=r"rewards.kwargs.math_verify: .* no parameter 'tol'"):
        resolve_reward("math_verify", {"tol": 1})
    config = RewardsConfig(funcs=["answer_match"], kwargs={"math_verify": {}})
    with pytest.raises(ValueError, match="rewards.kwargs.math_verify: no reward function named"):
        rewards_from_config(config)
    with pytest.raises(ValueError, match="expected a mapping"):
        bad: dict[str, Any] = {"answer_match": 3}
        rewards_from_config(RewardsConfig(funcs=["answer_match"], kwargs=bad))


def test_task_defaults_are_used_and_factories_rebuilt() -> None:
    assert rewards_from_config(RewardsConfig(), defaults=[answer_match]) == [answer_match]
    penalty = overlong_penalty(max_completion_length=4, cache_length=2)
    kwargs = {"overlong_penalty": {"cache_length": 1}}
    [rebuilt] = rewards_from_config(
        RewardsConfig(kwargs=kwargs), max_completion_length=4, defaults=[penalty]
    )
    assert rebuilt is not penalty
    assert rebuilt(["p"], ["x"], completion_ids=[[1, 2, 3, 4]]) == [-1.0]


def test_rewards_config_keys_from_yaml(tmp_path: Any) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(
        "rewards:\n  funcs: [math_verify, overlong_penalty]\n"
        "  kwargs: {overlong_penalty: {cache_length: 8}}\n  unsafe_code_execution: true\n"
    )
    config = load_config(path)
    assert config.rewards.kwargs == {"overlong_penalty": {"cache_length": 8}}
    assert config.rewards.unsafe_code_execution is True
    funcs = rewards_from_config(
        config.rewards, max_completion_length=config.rollout.max_completion_length
    )
    assert [f.__name__ for f in funcs] == ["math_verify", "overlong_penalty"]


# ----------------------------------------------------------------------- async and concurrency
SLEEP = 0.3


async def slow_async_a(prompts: list[Any], completions: list[str], **_: Any) -> list[float]:
    await asyncio.sleep(SLEEP)
    return [1.0 for _ in completions]


async def slow_async_b(prompts: list[Any], completions: list[str], **_: Any) -> list[float]:
    await asyncio.sleep(SLEEP)
    return [2.0 for _ in completions]


def slow_sync(prompts: list[Any], completions: list[str], **_: Any) -> list[float]:
    time.sleep(SLEEP)
    return [4.0 for _ in completions]


def test_async_rewards_run_concurrently() -> None:
    runner = RewardRunner([slow_async_a, slow_async_b, slow_sync])
    start = time.perf_counter()
    result = runner(["p", "q"], ["a", "b"])
    elapsed = time.perf_counter() - start
    assert elapsed < 1.5 * SLEEP, f"three {SLEEP}s rewards took {elapsed:.2f}s"
    assert result.total.tolist() == [7.0, 7.0]
    assert runner.names == ["slow_async_a", "slow_async_b", "slow_sync"]


def test_sequential_mode_and_single_async_reward() -> None:
    assert RewardRunner([slow_async_a], concurrent=False)(["p"], ["a"]).total.tolist() == [1.0]

    async def inside_a_loop() -> list[float]:
        values: list[float] = RewardRunner([slow_async_b])(["p"], ["a"]).total.tolist()
        return values

    assert asyncio.run(inside_a_loop()) == [2.0]


def test_async_failure_names_function_and_sample() -> None:
    async def fragile(prompts: list[Any], completions: list[str], **_: Any) -> list[float]:
        return [1.0 / len(c) for c in completions]

    with pytest.raises(RewardError) as info:
        RewardRunner([fragile, answer_match])(["p0", "p1"], ["ab", ""], answer=["1", "2"])
    message = str(info.value)
    assert "'fragile' raised ZeroDivisionError" in message and "sample 1" in message


def test_async_reward_with_bound_kwargs() -> None:
    async def scaled(
        prompts: list[Any], completions: list[str], *, factor: float = 1.0, **_: Any
    ) -> list[float]:
        return [factor * len(c) for c in completions]

    bound = resolve_reward(scaled, {"factor": 2.0})
    assert asyncio.iscoroutinefunction(bound) and bound.__name__ == "scaled"
    assert RewardRunner([bound])(["p"], ["abc"]).total.tolist() == [6.0]
