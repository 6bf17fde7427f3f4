"""A reward and a task registered from outside groupwise are used by name like the built-ins."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import pytest

from groupwise.config import RewardsConfig
from groupwise.data import TASKS, Row, Task, build_task, register_task
from groupwise.registry import UnknownNameError
from groupwise.rewards import (
    REWARD_FACTORIES,
    REWARDS,
    RewardFunc,
    RewardRunner,
    register_reward,
    register_reward_factory,
    resolve_reward,
    rewards_from_config,
)


def shouting(
    prompts: Sequence[Any], completions: Sequence[str], *, bonus: float = 0.0, **_: Any
) -> list[float]:
    """1.0 for an all-caps completion, plus ``bonus``."""
    return [float(c.isupper()) + bonus for c in completions]


def short_enough(*, max_completion_length: int, share: float = 0.5) -> RewardFunc:
    """A factory: 1.0 for completions of at most ``share * max_completion_length`` characters."""
    limit = share * max_completion_length

    def short_enough(prompts: Sequence[Any], completions: Sequence[str], **_: Any) -> list[float]:
        return [float(len(c) <= limit) for c in completions]

    return short_enough


def letters_task(*, train_size: int, eval_size: int, seed: int, word: str = "abc") -> Task:
    """Say a word in capitals."""
    rows: list[Row] = [{"prompt": f"Shout {word} ({i})", "answer": word.upper()} for i in range(8)]
    held, train = rows[:eval_size], rows[eval_size:]
    return Task("letters", train[:train_size], held, reward_funcs=[shouting], correctness=shouting)


@pytest.fixture
def registered() -> Iterator[None]:
    """Register the three from here, as user code would; remove them afterwards."""
    register_reward("shouting")(shouting)
    register_reward_factory("short_enough")(short_enough)
    register_task("letters")(letters_task)
    try:
        yield
    finally:
        REWARDS.unregister("shouting")
        REWARD_FACTORIES.unregister("short_enough")
        TASKS.unregister("letters")


def test_user_reward_and_task_by_name(registered: None) -> None:
    assert resolve_reward("shouting") is shouting
    assert resolve_reward("shouting", {"bonus": 0.5})([""] * 2, ["HEY", "hey"]) == [1.5, 0.5]
    built = resolve_reward("short_enough", context={"max_completion_length": 4})
    assert built([""] * 2, ["ab", "abcd"]) == [1.0, 0.0]

    config = RewardsConfig(
        funcs=["shouting", "short_enough", "answer_match"],
        kwargs={"shouting": {"bonus": 1.0}, "short_enough": {"share": 1.0}},
    )
    funcs = rewards_from_config(config, max_completion_length=3)
    result = RewardRunner(funcs)(["p"] * 2, ["ABC", "abcd"], answer=["3", "3"])
    assert result.per_func["shouting"].tolist() == [2.0, 1.0]
    assert result.per_func["short_enough"].tolist() == [1.0, 0.0]

    task = build_task("letters", train_size=3, eval_size=2, seed=0, params={"word": "hi"})
    assert task.name == "letters" and len(task.train) == 3 and len(task.eval) == 2
    assert task.train[0]["answer"] == "HI"
    # the task's default reward, configured by its registered name
    defaults = rewards_from_config(
        RewardsConfig(kwargs={"shouting": {"bonus": 2.0}}), defaults=task.reward_funcs
    )
    assert defaults[0]([""], ["HI"]) == [3.0]
    with pytest.raises(ValueError, match="data.params: bad parameters for task 'letters'"):
        build_task("letters", train_size=1, eval_size=1, seed=0, params={"colour": "red"})


def test_cli_lists_builtin_and_user_tasks(
    registered: None, capsys: pytest.CaptureFixture[str]
) -> None:
    from groupwise.cli import main

    assert main(["tasks"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "letters: Say a word in capitals." in lines
    assert any(line.startswith("arithmetic: Two-operand") for line in lines)


def test_unknown_and_taken_names_are_explained(registered: None) -> None:
    with pytest.raises(UnknownNameError, match=r"rewards.funcs: unknown reward 'shout'; valid: .*"):
        resolve_reward("shout")
    with pytest.raises(ValueError, match=r"valid: .*shouting.*short_enough.*import path"):
        resolve_reward("shout")
    with pytest.raises(ValueError, match=r"data.task: unknown task 'letter'; valid: .*letters"):
        build_task("letter", train_size=1, eval_size=1, seed=0, params={})
    with pytest.raises(ValueError, match="rewards.funcs: 'answer_match' is already registered"):
        register_reward("answer_match")(shouting)  # a built-in is not silently shadowed
    with pytest.raises(ValueError, match="data.task: 'arithmetic' is already registered"):
        register_task("arithmetic")(letters_task)


def test_registries_are_left_clean() -> None:
    """Runs after the tests above (file order): the fixture removed what they registered."""
    assert "shouting" not in REWARDS and "short_enough" not in REWARD_FACTORIES
    assert "letters" not in TASKS
    assert "answer_match" in REWARDS and "arithmetic" in TASKS
