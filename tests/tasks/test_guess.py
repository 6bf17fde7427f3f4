"""The ``guess`` environment and task: replies, the end reward by hand, and a run on tiny-random
whose held-out evaluation reads the environment's reward through the engine's columns."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from groupwise import GRPOTrainer, load_config
from groupwise.data.tasks import build_task
from groupwise.envs import ENVIRONMENTS
from groupwise.rewards.environment import env_solved
from groupwise.tasks.guess import GuessEnvironment, parse_guess, range_text
from tests.tests_helpers import tiny_overrides


@pytest.mark.parametrize(
    ("message", "expected"),
    [
        ("7", 7),
        ("I guess 12!", 12),
        ("Five", 5),
        ("twelve? 12", 12),  # the same number twice is one guess
        ("1 and 20", "many"),
        ("3 4 5 6 7", "many"),  # listing candidates is not a guess
        ("no idea", None),
        ("", None),
    ],
)
def test_parse_guess(message: str, expected: object) -> None:
    assert parse_guess(message) == expected


def _play(secret: int, guesses: list[str], max_guesses: int = 6) -> tuple[list[str], float]:
    env = GuessEnvironment(low=1, high=20, max_guesses=max_guesses)
    env.reset({"prompt": "p", "secret": secret})
    replies = []
    for guess in guesses:
        step = env.step(guess)
        replies.append("Correct!" if step.done else str(step.message))
        if step.done:
            break
    return replies, env.reward()


def test_replies_and_the_end_reward_by_hand() -> None:
    replies, reward = _play(13, ["10", "15", "13"])
    assert replies == ["Higher.", "Lower.", "Correct!"]
    assert reward == pytest.approx((6 - 3 + 1) / 6)  # solved at the 3rd of 6 guesses: 4/6
    assert _play(13, ["13"])[1] == 1.0  # first guess: full reward
    assert _play(13, ["1", "2", "3", "4", "5", "13"])[1] == pytest.approx(1 / 6)
    assert _play(13, ["10", "11"])[1] == 0.0  # not solved
    replies, reward = _play(4, ["nothing", "3 4", "25", "4"])
    assert replies[:3] == [
        "Please guess one whole number from 1 to 20.",
        "One number per guess, please. Guess again.",
        "My number is from 1 to 20. Guess again.",
    ]
    assert reward == pytest.approx(3 / 6)  # the invalid turns count as guesses


def test_say_range_states_the_range_the_answers_leave() -> None:
    env = GuessEnvironment(low=1, high=20, say_range=True)
    env.reset({"prompt": "p", "secret": 13})
    replies = [env.step(g).message for g in ["10", "15", "5", "12", "14"]]
    assert replies == [
        "Higher. It is from 11 to 20.",
        "Lower. It is from 11 to 14.",
        "Higher. It is from 11 to 14.",  # a guess below the range left narrows nothing
        "Higher. It is from 13 to 14.",
        "Lower. It is 13.",
    ]
    assert env.step("13").done and env.reward() == pytest.approx(1 / 6)
    env.reset({"prompt": "p", "secret": 2})  # a new episode starts from the whole range
    assert env.step("9").message == "Lower. It is from 1 to 8."
    assert range_text(4, 4) == "It is 4."


def test_progress_pays_a_lost_game_for_the_range_it_narrowed() -> None:
    env = GuessEnvironment(low=1, high=100, max_guesses=3, progress=True)
    env.reset({"prompt": "p", "secret": 13})
    assert env.reward() == pytest.approx(-0.5)  # nothing guessed: the whole range left
    [env.step(g) for g in ["50", "25", "12"]]  # 1..49, 1..24, 13..24 left: 12 numbers
    assert env.reward() == pytest.approx(-0.5 * math.log(12) / math.log(100))
    env.reset({"prompt": "p", "secret": 13})
    [env.step(g) for g in ["33", "33", "33"]]  # repeating narrows nothing more: 1..32
    assert env.reward() == pytest.approx(-0.5 * math.log(32) / math.log(100))
    env.reset({"prompt": "p", "secret": 13})
    assert env.step("13").done and env.reward() == 1.0  # a won game scores more than any lost
    assert GuessEnvironment(low=1, high=100).reward() == 0.0  # without progress: 0 unsolved


def test_the_demo_game_shows_the_environments_own_answers() -> None:
    task = build_task(
        "guess", train_size=2, eval_size=100, seed=0, params={"high": 100, "say_range": True}
    )
    demo = [m["content"] for m in task.train[0]["prompt"][2:7]]
    assert demo == ["50", "Lower. It is from 1 to 49.", "25", "Higher. It is from 26 to 49.", "37"]
    assert task.train[0]["prompt"][7]["content"].startswith("Correct! New game.")
    assert sorted(r["secret"] for r in task.eval) == list(range(1, 101))  # 100 distinct games


def test_bad_rows_and_settings_name_the_key() -> None:
    with pytest.raises(ValueError, match="'secret' column"):
        GuessEnvironment().reset({"prompt": "p"})
    with pytest.raises(ValueError, match="outside"):
        GuessEnvironment(high=10).reset({"prompt": "p", "secret": 11})
    with pytest.raises(ValueError, match="max_guesses"):
        GuessEnvironment(max_guesses=0)
    with pytest.raises(ValueError, match=r"data.params.low"):
        build_task("guess", train_size=4, eval_size=4, seed=0, params={"low": 5, "high": 6})


def test_the_task_is_seeded_and_holds_out_every_secret_once() -> None:
    task = build_task("guess", train_size=50, eval_size=100, seed=3, params={"high": 16})
    again = build_task("guess", train_size=50, eval_size=100, seed=3, params={"high": 16})
    assert [r["secret"] for r in task.train] == [r["secret"] for r in again.train]
    assert sorted(r["secret"] for r in task.eval) == list(range(1, 17))
    prompt = task.train[0]["prompt"]
    assert "from 1 to 16" in prompt[0]["content"]
    assert [m["content"] for m in prompt[1:5]][1:] == ["8", "Lower.", "4"]  # the demo game
    assert all("secret" not in json.dumps(r["prompt"]) for r in task.train)
    assert "guess" in ENVIRONMENTS


def test_env_solved_reads_the_environment_reward() -> None:
    assert env_solved(["p"] * 3, ["a"] * 3, env_reward=[0.5, 0.0, None]) == [1.0, 0.0, 0.0]


def test_a_guessing_run_trains_and_evaluates_through_the_engine(tmp_path: Path) -> None:
    overrides = tiny_overrides(
        tmp_path,
        **{
            "data.task": "guess",
            "data.params": "{high: 8}",
            "data.eval_size": 8,
            "rewards.funcs": "[env_reward]",
            "rollout.engine": "episodes",
            "rollout.engine_kwargs": "{environment: guess, env_kwargs: {high: 8, max_guesses: 3},"
            " max_turns: 3, max_tokens_per_turn: 3}",
            "max_completion_length": 24,
            "eval.before": True,
            "eval.max_new_tokens": 24,
        },
    )
    summary = GRPOTrainer(load_config(overrides=overrides)).train()
    assert summary["steps"] == 2 and 0.0 <= summary["eval_before"] <= 1.0
    metrics = [
        json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().split("\n")[:-1]
    ]
    assert all(1 <= m["turns/mean"] <= 5 for m in metrics)  # at most 3 policy turns + 2 replies
