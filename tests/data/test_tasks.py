from __future__ import annotations

import pytest

from groupwise.data import build_task
from groupwise.data.sampler import PromptSampler
from groupwise.rewards import answer_match


def _key(row: dict) -> str:  # type: ignore[type-arg]
    return str(row["prompt"][-1]["content"])


def test_arithmetic_split_is_disjoint_and_seeded() -> None:
    task = build_task("arithmetic", train_size=10_000, eval_size=200, seed=7, params={})
    assert len(task.eval) == 200
    assert len(task.train) == 90 * 90 - 200
    assert not {_key(r) for r in task.eval} & {_key(r) for r in task.train}
    again = build_task("arithmetic", train_size=10_000, eval_size=200, seed=7, params={})
    assert [_key(r) for r in again.eval] == [_key(r) for r in task.eval]
    other = build_task("arithmetic", train_size=10_000, eval_size=200, seed=8, params={})
    assert [_key(r) for r in other.eval] != [_key(r) for r in task.eval]


def test_arithmetic_answers_are_right() -> None:
    params = {"operations": ["add", "sub", "mul"], "min_value": 2, "max_value": 9}
    task = build_task("arithmetic", train_size=50, eval_size=10, seed=0, params=params)
    for row in task.train + task.eval:
        text = _key(row)
        a, op, b = text.removeprefix("What is ").split("?")[0].split()
        expected = {"+": int(a) + int(b), "-": int(a) - int(b), "*": int(a) * int(b)}[op]
        assert row["answer"] == str(expected)
        assert answer_match([row["prompt"]], [row["answer"]], answer=[row["answer"]]) == [1.0]


def test_bad_task_and_params_are_named() -> None:
    with pytest.raises(ValueError, match="data.task: unknown task 'algebra'"):
        build_task("algebra", train_size=1, eval_size=1, seed=0, params={})
    with pytest.raises(ValueError, match="data.params"):
        build_task("arithmetic", train_size=1, eval_size=1, seed=0, params={"digits": 3})
    with pytest.raises(ValueError, match="unknown operation 'div'"):
        build_task("arithmetic", train_size=1, eval_size=1, seed=0, params={"operations": ["div"]})


def test_sampler_covers_each_epoch_and_restores() -> None:
    rows = [{"prompt": str(i)} for i in range(10)]
    sampler = PromptSampler(rows, seed=3)
    first = [r["prompt"] for r in sampler.next_batch(10)]
    assert sorted(first) == sorted(r["prompt"] for r in rows)
    state = sampler.state_dict()
    upcoming = [r["prompt"] for r in sampler.next_batch(7)]
    restored = PromptSampler(rows, seed=0)
    restored.load_state_dict(state)
    assert [r["prompt"] for r in restored.next_batch(7)] == upcoming


def test_sampler_rejects_rows_without_prompt() -> None:
    with pytest.raises(ValueError, match="training row 1 has no 'prompt' column"):
        PromptSampler([{"prompt": "a"}, {"question": "b"}], seed=0)
