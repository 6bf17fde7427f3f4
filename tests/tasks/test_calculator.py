"""The calculator tool and environment, and the multiply task."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from groupwise import GRPOTrainer, load_config
from groupwise.data import build_task
from groupwise.envs import ENVIRONMENTS
from groupwise.envs.base import as_env_step
from groupwise.rewards.tools import final_answer_match, tool_used
from groupwise.tasks.calculator import CalculatorError, calculator, evaluate
from groupwise.tasks.multiply import tool_call_text
from tests.tests_helpers import tiny_overrides


@pytest.mark.parametrize(
    ("expression", "expected"),
    [
        ("123 * 45", "5535"),
        ("(2 + 3) * -4", "-20"),
        ("7 / 2", "3.5"),
        ("8 / 2", "4"),
        ("7 // 2", "3"),
        ("7 % 4", "3"),
        ("2 ** 10", "1024"),
        ("2^10", "1024"),
        ("12 x 34", "408"),
        ("12 × 34 =", "408"),
        ("1,234 * 2", "2468"),
        ("0.1 + 0.2", "0.3"),
        ("999 * 806", "805194"),
    ],
)
def test_calculator_arithmetic(expression: str, expected: str) -> None:
    assert calculator(expression) == expected


@pytest.mark.parametrize(
    ("expression", "reason"),
    [
        ("__import__('os').system('true')", "unsupported syntax"),
        ("abs(-3)", "unsupported syntax"),
        ("x + 1", "unsupported syntax"),
        ("(1).real", "unsupported syntax"),
        ("'a' * 3", "only numbers"),
        ("True + 1", "only numbers"),
        ("1 < 2", "unsupported syntax"),
        ("[1, 2]", "unsupported syntax"),
        ("1 / 0", "division by zero"),
        ("9 ** 9 ** 9", "exponent larger"),
        ("10 ** 60", "result too large"),
        ("1e308 * 10", "too large"),
        ("1 +", "not an arithmetic expression"),
        ("", "empty expression"),
        ("1" * 300, "longer than"),
    ],
)
def test_calculator_refusals(expression: str, reason: str) -> None:
    with pytest.raises(CalculatorError, match=reason):
        evaluate(expression)
    assert calculator(expression).startswith("error: ")


def test_calculator_environment_runs_calls_and_ends_on_an_answer() -> None:
    env = ENVIRONMENTS.get("calculator")()
    assert [t.name for t in env.tools] == ["calculator"]  # described by the engine
    assert ENVIRONMENTS.get("calculator")(describe=False).tools == []
    env = ENVIRONMENTS.get("calculator")(describe=False)
    env.reset({"prompt": "p"})
    step = as_env_step(env.step(tool_call_text(999, 806)))
    assert step.message == "<tool_response>805194</tool_response>" and not step.done
    bad = '<tool_call>{"name": "calculator", "arguments": {"expression": "abs(1)"}}</tool_call>'
    assert as_env_step(env.step(bad)).message.startswith("<tool_response>error: ")  # type: ignore[union-attr]
    assert as_env_step(env.step("805194")).done
    assert len(env.calls) == 2 and env.errors == 1  # the engine's tools/* metrics


def test_multiply_split_is_seeded_and_disjoint() -> None:
    task = build_task("multiply", train_size=500, eval_size=100, seed=3, params={})
    again = build_task("multiply", train_size=500, eval_size=100, seed=3, params={})
    assert task.eval == again.eval and task.train == again.train
    assert len(task.eval) == 100 and len(task.train) == 500

    def pair(row: dict) -> frozenset[str]:
        question = row["prompt"][-1]["content"]
        return frozenset(question.removeprefix("What is ").rstrip("?").split(" * "))

    assert not {pair(r) for r in task.eval} & {pair(r) for r in task.train}
    row = task.eval[0]
    a, b = (int(x) for x in row["prompt"][-1]["content"][8:-1].split(" * "))
    assert row["answer"] == str(a * b) and 10 <= a <= 999 and 10 <= b <= 999
    assert '"name": "calculator"' in row["prompt"][0]["content"]  # the protocol, exactly
    bare = build_task("multiply", train_size=5, eval_size=5, seed=3, params={"tools": False})
    assert bare.eval[0]["answer"] == row["answer"]
    assert len(bare.eval[0]["prompt"]) == 1 and "calculator" not in str(bare.eval[0]["prompt"])


def test_final_answer_match_reads_the_last_policy_turn() -> None:
    call = tool_call_text(12, 34)
    used = f"{call}\ntool\n<tool_response>408</tool_response>\nassistant\n408"
    copied = f"{call}\ntool\n<tool_response>408</tool_response>\nassistant\nDone."
    faked = "<tool_response>408</tool_response>"
    answers = ["408"] * 4
    completions = [used, copied, faked, "408"]
    assert final_answer_match([], completions, answers) == [1.0, 0.0, 0.0, 1.0]
    assert final_answer_match([], [used], ["408"], truncated=[True]) == [0.0]
    assert tool_used([], completions) == [1.0, 1.0, 0.0, 0.0]


def test_trainer_step_with_the_calculator_environment(tmp_path: Path) -> None:
    overrides = tiny_overrides(tmp_path, max_steps=1, bf16=False, max_completion_length=24)
    options = {
        "environment": "calculator",
        "env_kwargs": {"describe": False},
        "max_turns": 2,
        "max_tokens_per_turn": 8,
    }
    overrides += [
        "data.task=multiply",
        "rollout.engine=episodes",
        f"rollout.engine_kwargs={json.dumps(options)}",
    ]
    trainer = GRPOTrainer(load_config(overrides=overrides))
    metrics = trainer.step()
    assert metrics["turns/mean"] >= 1 and "tools/calls_mean" in metrics
