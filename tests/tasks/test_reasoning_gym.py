from __future__ import annotations

import json
from typing import Any

import pytest

pytest.importorskip("reasoning_gym")

import groupwise.tasks.reasoning_gym.data as rg_task
from groupwise.data import build_task
from groupwise.rewards import resolve_reward
from groupwise.tasks.reasoning_gym.rewards import (
    extract_answer,
    reasoning_gym_correct,
    reasoning_gym_score,
)


def _task(name: str, seed: int = 0, **params: Any) -> Any:
    params = {"name": name, **params}
    return build_task("reasoning_gym", train_size=60, eval_size=20, seed=seed, params=params)


def _columns(rows: list[dict[str, Any]]) -> dict[str, list[Any]]:
    return {k: [r[k] for r in rows] for k in rows[0] if k != "prompt"}


@pytest.mark.parametrize("name", ["basic_arithmetic", "chain_sum", "countdown", "gsm_symbolic"])
def test_task_rows_split_and_verifier(name: str) -> None:
    task = _task(name, seed=3)
    assert task.name == f"reasoning_gym/{name}"
    assert len(task.eval) == 20 and 40 <= len(task.train) <= 60
    assert not {r["question"] for r in task.train} & {r["question"] for r in task.eval}
    row = task.eval[0]
    assert row["prompt"][0]["role"] == "system" and row["prompt"][-1]["content"] == row["question"]
    assert json.loads(json.dumps(task.train + task.eval)) == task.train + task.eval
    rows = task.eval[:3]
    right = [f"<think>ok</think><answer>{r['answer']}</answer>" for r in rows]
    assert reasoning_gym_score([r["prompt"] for r in rows], right, **_columns(rows)) == [1.0] * 3
    wrong = ["<answer>this is wrong</answer>", "", "I give up"]
    scores = reasoning_gym_score([r["prompt"] for r in rows], wrong, **_columns(rows))
    assert all(0.0 <= s < 1.0 for s in scores)
    assert task.correctness is reasoning_gym_correct
    assert reasoning_gym_correct([""] * 3, wrong, **_columns(rows)) == [0.0] * 3


def test_split_is_seeded() -> None:
    first, again, other = _task("chain_sum", seed=5), _task("chain_sum", seed=5), _task("chain_sum")
    assert [r["question"] for r in first.eval] == [r["question"] for r in again.eval]
    assert [r["question"] for r in first.eval] != [r["question"] for r in other.eval]


def test_numeric_answers_without_tags_use_the_last_number() -> None:
    task = _task("basic_arithmetic")
    row = task.eval[0]
    answer = row["answer"]
    completions = [
        f"Let me compute. The result is {answer}.",
        f"{answer} is what I first thought, but it is {int(answer) + 1}",
        "no number here",
    ]
    scores = reasoning_gym_score([row["prompt"]] * 3, completions, **_columns([row] * 3))
    assert scores == [1.0, 0.0, 0.0]


@pytest.mark.parametrize(
    ("text", "reference", "expected"),
    [
        ("<answer> 42 </answer>", "42", "42"),
        ("<answer>1</answer> then <answer>2</answer>", "2", "2"),
        ("so the total is 1,234 apples", "1234", "1234"),
        ("it is -7", "-7", "-7"),
        ("nothing numeric", "5", None),
        ("Working...\n\n3*4 + 2\n", "3*4+2", "3*4 + 2"),
        ("", "x", None),
    ],
)
def test_extract_answer(text: str, reference: str, expected: str | None) -> None:
    assert extract_answer(text, reference) == expected


def test_countdown_partial_credit_and_config() -> None:
    task = _task("countdown", config={"min_numbers": 3, "max_numbers": 3})
    row = task.eval[0]
    assert len(row["metadata"]["numbers"]) == 3 and row["rg_config"]["min_numbers"] == 3
    good = f"<answer>{row['answer']}</answer>"
    scores = reasoning_gym_score(
        [row["prompt"]] * 2, [good, "<answer>1+1</answer>"], **_columns([row] * 2)
    )
    assert scores[0] == 1.0 and 0.0 <= scores[1] < 1.0


def test_reward_is_a_builtin_and_errors_are_named() -> None:
    assert resolve_reward("reasoning_gym_score") is reasoning_gym_score
    assert rg_task.reasoning_gym_score is reasoning_gym_score  # still importable from data/
    assert rg_task.extract_answer is extract_answer
    with pytest.raises(ValueError, match="data.params: reasoning-gym dataset 'no_such_set'"):
        _task("no_such_set")
    with pytest.raises(ValueError, match=r"data.params.config.seed: set by groupwise"):
        _task("chain_sum", config={"seed": 1})
    with pytest.raises(ValueError, match="data.params: bad parameters"):
        build_task("reasoning_gym", train_size=1, eval_size=1, seed=0, params={})
