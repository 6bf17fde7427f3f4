"""The dialogue_prompts task: reproducible prompts, a subject-disjoint held-out set, and the
sentiment judge as correctness."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from groupwise.config import RewardsConfig, load_config
from groupwise.data import build_task
from groupwise.data.tasks import Task
from groupwise.rewards.base import rewards_from_config
from groupwise.rollout.records import row_columns
from groupwise.tasks.dialogue.data import SUBJECTS, TEMPLATES, dialogue_prompts

pytest.importorskip("vaderSentiment")

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "dialogue.yaml"


def _task(eval_size: int = 64, seed: int = 1234, **params: Any) -> Task:
    return build_task(
        "dialogue_prompts", train_size=10_000, eval_size=eval_size, seed=seed, params=params
    )


def _text(row: dict[str, Any]) -> str:
    return str(row["prompt"][-1]["content"])


def test_prompts_are_templates_times_subjects_all_distinct() -> None:
    rows = dialogue_prompts()
    assert len(rows) == len(TEMPLATES) * len(SUBJECTS) >= 200
    assert len({_text(r) for r in rows}) == len(rows)
    assert all(r["subject"] in _text(r) for r in rows)
    assert all(r["prompt"][0]["role"] == "user" for r in rows)
    assert "Describe your morning commute in a few sentences." in {_text(r) for r in rows}


def test_split_is_seeded_disjoint_by_subject_and_sized() -> None:
    task = _task()
    assert len(task.eval) == 64
    assert len(task.train) + len(task.eval) <= len(TEMPLATES) * len(SUBJECTS)
    held_subjects = {r["subject"] for r in task.eval}
    assert not held_subjects & {r["subject"] for r in task.train}
    assert not {_text(r) for r in task.eval} & {_text(r) for r in task.train}
    # every prompt of a subject not held out is available for training
    assert len(task.train) == len(TEMPLATES) * (len(SUBJECTS) - len(held_subjects))
    again = _task()
    assert [_text(r) for r in again.eval] == [_text(r) for r in task.eval]
    assert [_text(r) for r in again.train] == [_text(r) for r in task.train]
    other = _task(seed=1235)
    assert {r["subject"] for r in other.eval} != held_subjects


def test_sizes_and_limits() -> None:
    assert len(_task(eval_size=50).eval) == 50
    small = build_task("dialogue_prompts", train_size=7, eval_size=10, seed=0, params={})
    assert len(small.train) == 7 and len(small.eval) == 10
    most = (len(SUBJECTS) - 1) * len(TEMPLATES)
    assert len(_task(eval_size=most).eval) == most
    with pytest.raises(ValueError, match="data.eval_size: .* leave none for training"):
        _task(eval_size=most + 1)
    with pytest.raises(ValueError, match="data.params.target: 'happy' is not one of"):
        _task(target="happy")
    with pytest.raises(ValueError, match="data.params: bad parameters"):
        _task(temperature=1.0)


def test_system_prompt_opens_every_chat() -> None:
    task = _task(system_prompt="Be kind.")
    assert all(r["prompt"][0] == {"role": "system", "content": "Be kind."} for r in task.eval)


def test_correctness_is_the_sentiment_judge_in_unit_range() -> None:
    task = _task(eval_size=10)
    assert task.correctness is not None and task.correctness.__name__ == "sentiment"
    rows = task.eval[:3]
    replies = ["What a lovely, happy topic!", "It is on Tuesday.", "That is terrible and sad."]
    prompts = [r["prompt"] for r in rows]
    scores = task.correctness(prompts=prompts, completions=replies, **row_columns(rows))
    assert all(0.0 <= s <= 1.0 for s in scores)
    assert scores[0] > scores[1] > scores[2]
    flipped = _task(eval_size=10, target="negative").correctness
    assert flipped is not None
    inverse = flipped(prompts=prompts, completions=replies, **row_columns(rows))
    assert inverse == pytest.approx([1.0 - s for s in scores])


def test_default_reward_is_the_judge_and_keeps_the_task_target() -> None:
    task = _task(eval_size=10, target="negative")
    (reward,) = rewards_from_config(RewardsConfig(), defaults=task.reward_funcs)
    low, high = reward(["p"] * 2, ["I love it, wonderful!", "I hate it, awful!"])
    assert high > 0.5 > low


def test_the_example_config_builds_its_task_and_rewards() -> None:
    config = load_config(EXAMPLE)
    d = config.data
    task = build_task(
        d.task, train_size=d.train_size, eval_size=d.eval_size, seed=d.seed, params=d.params
    )
    assert len(task.eval) >= 50 and task.correctness is not None
    funcs = rewards_from_config(config.rewards, max_completion_length=64)
    names = [f.__name__ for f in funcs]
    assert names == ["sentiment", "on_topic", "repetition_penalty", "length_penalty"]
    # the held-out judge and the training reward agree on the target
    reply = ["I hate this, it is awful."]
    assert funcs[0](["p"], reply) == task.correctness(prompts=["p"], completions=reply)
