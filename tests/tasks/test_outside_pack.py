"""A task pack written outside groupwise: its task, its reward and its environment, registered
here the way a built-in pack registers in groupwise/tasks/, then trained by name."""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from groupwise import GRPOTrainer, load_config
from groupwise.data import TASKS, Row, Task, build_task, register_task
from groupwise.envs import ENVIRONMENTS, BaseEnvironment, EnvStep
from groupwise.rewards import REWARDS, register_reward
from tests.tests_helpers import tiny_overrides

WORDS = ("apple", "river", "stone", "cloud", "lemon", "tiger", "piano", "maple")


class EchoEnvironment(BaseEnvironment):
    """Asks again until the policy says the row's ``word``; ends after ``tries`` replies."""

    def __init__(self, tries: int = 2) -> None:
        self.tries, self.word, self.replies, self.said = tries, "", 0, False

    def reset(self, row: Row) -> str | None:
        self.word, self.replies, self.said = str(row["word"]), 0, False
        return None

    def step(self, policy_message: str) -> EnvStep:
        self.replies += 1
        self.said = self.word in policy_message.lower()
        if self.said or self.replies >= self.tries:
            return EnvStep(None, done=True)
        return EnvStep(f"Say {self.word}.")

    def reward(self) -> float:
        return float(self.said)


def said_word(
    prompts: Sequence[Any], completions: Sequence[str], word: Sequence[str], **_: Any
) -> list[float]:
    """1.0 when the episode's text holds the row's ``word``."""
    return [float(w in c.lower()) for c, w in zip(completions, word, strict=True)]


def echo_task(*, train_size: int, eval_size: int, seed: int) -> Task:
    """Say the word."""
    rows: list[Row] = [{"prompt": f"Say {w}.", "word": w} for w in WORDS]
    held, train = rows[:eval_size], rows[eval_size:]
    return Task("test_echo", (train * train_size)[:train_size], held, [said_word], said_word)


@pytest.fixture
def pack() -> Iterator[None]:
    """Register the pack's three parts, as its module's decorators would; remove them after."""
    register_task("test_echo")(echo_task)
    register_reward("said_word")(said_word)
    ENVIRONMENTS.register("test_echo")(EchoEnvironment)
    try:
        yield
    finally:
        TASKS.unregister("test_echo")
        REWARDS.unregister("said_word")
        ENVIRONMENTS.unregister("test_echo")


def test_a_pack_from_outside_trains_by_name(pack: None, tmp_path: Path) -> None:
    task = build_task("test_echo", train_size=6, eval_size=2, seed=0, params={})
    assert [r["word"] for r in task.eval] == ["apple", "river"] and len(task.train) == 6
    options = {"environment": "test_echo", "env_kwargs": {"tries": 2}, "max_tokens_per_turn": 4}
    overrides = tiny_overrides(
        tmp_path,
        max_steps=1,
        max_completion_length=16,
        **{
            "data.task": "test_echo",
            "data.eval_size": 2,
            "rewards.funcs": "[said_word, env_reward]",
            "rollout.engine": "episodes",
        },
    )
    overrides.append(f"rollout.engine_kwargs={json.dumps(options)}")
    trainer = GRPOTrainer(load_config(overrides=overrides))
    assert [f.__name__ for f in trainer.rewards.funcs] == ["said_word", "env_reward"]
    metrics = trainer.step()
    assert 0.0 <= metrics["rewards/said_word/mean"] <= 1.0
    assert 0.0 <= metrics["rewards/env_reward/mean"] <= 1.0
    assert 1.0 <= metrics["turns/mean"] <= 3.0  # at most two replies and the one request
