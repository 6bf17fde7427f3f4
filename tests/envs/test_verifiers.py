"""verifiers 0.4 environments through :mod:`groupwise.envs.verifiers`: a taskset over an in-memory
``datasets.Dataset``, a multi-turn env (its ``run`` sends hints) and a tool task (a toolset), the
rubric's reward checked by hand, each trained for two steps with the tiny-random model."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from groupwise import GRPOTrainer, load_config
from groupwise.data import Task
from groupwise.envs import ENVIRONMENTS, EnvStep
from tests.tests_helpers import tiny_overrides

vf = pytest.importorskip(
    "verifiers.v1", reason="verifiers is not installed: pip install 'groupwise[verifiers]'"
)
datasets = pytest.importorskip(
    "datasets", reason="datasets is not installed: pip install 'groupwise[data]'"
)

from groupwise.envs.verifiers import (  # noqa: E402
    from_verifiers,
    verifiers_rows,
    verifiers_score,
)

DATA = datasets.Dataset.from_dict(
    {"question": ["What is 2+2?", "What is 3+4?", "What is 5+1?"], "answer": ["4", "7", "6"]}
)


class QData(vf.TaskData):
    """A question's answer, next to verifiers' own fields."""

    answer: str = ""


class QTask(vf.Task[QData]):
    """The rubric: the answer in the last reply (weight 1), a short last reply (weight 0.5)."""

    @vf.reward(weight=1.0)
    async def correct(self, task: QData, trace: Any) -> float:
        return float(task.answer in trace.last_reply)

    @vf.reward(weight=0.5)
    async def brief(self, trace: Any) -> float:
        return float(len(trace.last_reply) <= 20)

    @vf.metric
    async def replies(self, trace: Any) -> float:
        return float(trace.num_turns)


class Calc(vf.Toolset):
    """A toolset: verifiers serves it over MCP; groupwise calls it in process."""

    @vf.tool
    def add(self, a: int, b: int) -> int:
        """Add two integers.

        Args:
            a: The first.
            b: The second.
        """
        return a + b


class CalcTask(QTask):
    """QTask with the calculator (verifiers' tool environment)."""

    @classmethod
    def toolsets(cls, config: Any) -> list[Any]:
        return [Calc(vf.ToolsetConfig())]


class QTaskset(vf.Taskset[QTask, vf.TasksetConfig]):
    """The dataset's rows as tasks."""

    def load(self) -> Iterator[QTask]:
        for row in DATA:
            yield QTask(QData(prompt=row["question"], answer=row["answer"]), self.config.task)


class CalcTaskset(vf.Taskset[CalcTask, vf.TasksetConfig]):
    """The dataset's rows as tool tasks."""

    def load(self) -> Iterator[CalcTask]:
        for row in DATA:
            data = QData(prompt=row["question"], answer=row["answer"], system_prompt="Be brief.")
            yield CalcTask(data, self.config.task)


class HintEnvConfig(vf.EnvConfig):
    """The seat and how many tries."""

    player: vf.AgentConfig = vf.AgentConfig()
    tries: int = 3


class HintEnv(vf.Env[HintEnvConfig]):
    """Multi-turn: after a wrong reply the env answers with a hint (verifiers' env_response),
    until the answer is given or the tries are used (is_completed)."""

    async def run(self, task: Any, agents: Any) -> None:
        async with agents.player.interaction(task) as exchange:
            segment = await exchange.turn()
            tries = 1
            while not segment.terminated and task.data.answer not in segment.last_reply:
                if tries >= self.config.tries:
                    break
                segment = await exchange.turn(f"No. It starts with {task.data.answer[0]}.")
                tries += 1


class TwoSeats(HintEnv):
    """Opens a second interaction: refused (the policy plays one seat)."""

    async def run(self, task: Any, agents: Any) -> None:
        async with agents.player.interaction(task), agents.judge.interaction(task):
            pass


def rows(taskset_cls: type) -> list[dict[str, Any]]:
    return verifiers_rows(taskset_cls(vf.TasksetConfig()))


def test_dataset_rows_become_groupwise_rows() -> None:
    got = rows(QTaskset)
    assert [r["prompt"] for r in got] == [
        [{"role": "user", "content": q}] for q in DATA["question"]
    ]
    assert [r["answer"] for r in got] == ["4", "7", "6"]
    assert got[0]["verifiers_task"]["type"] == "tests.envs.test_verifiers:QTask"
    system = rows(CalcTaskset)[0]["prompt"][0]
    assert system == {"role": "system", "content": "Be brief."}


def test_multi_turn_env_messages_and_rubric_by_hand() -> None:
    env = from_verifiers(HintEnv)()
    assert env.reset(rows(QTaskset)[1]) is None  # a prompted task: the policy speaks first
    assert env.step("five") == EnvStep("No. It starts with 7.")
    assert env.step("seven is 7") == EnvStep(None, done=True)
    # correct (1.0 * 1) + brief (0.5 * 1): the last reply holds 7 and is short
    assert env.reward() == pytest.approx(1.5)
    assert env.columns() == {
        "verifiers_rewards": {"correct": 1.0, "brief": 1.0},
        "verifiers_metrics": {"replies": 2.0},
    }
    assert env.trace.stop_condition is None
    # the engine ends an episode early (max_turns): the waiting turn is terminated, then scored
    cut = ENVIRONMENTS.get("verifiers")(env="tests.envs.test_verifiers:HintEnv")
    cut.reset(rows(QTaskset)[0])
    long = "no idea at all, sorry about that"
    assert cut.step(long).message == "No. It starts with 4."
    assert cut.reward() == 0.0  # neither correct nor brief
    assert cut.trace.stop_condition == "groupwise_episode_end"
    one = ENVIRONMENTS.get("verifiers")(env=HintEnv, env_config={"tries": 1})
    one.reset(rows(QTaskset)[0])
    assert one.step("5").done and one.reward() == pytest.approx(0.5)


def test_tool_env_runs_the_toolset_and_scores() -> None:
    env = from_verifiers()()  # the single-agent run: tools, then an answer
    assert env.reset(rows(CalcTaskset)[0]) is None
    assert [t.name for t in env.tools] == ["calc_add"]
    call = '<tool_call>{"name": "calc_add", "arguments": {"a": 2, "b": 2}}</tool_call>'
    assert env.step(call) == EnvStep("<tool_response>4</tool_response>")
    assert env.role == "tool"
    assert env.step("4") == EnvStep(None, done=True)
    assert env.reward() == pytest.approx(1.5) and len(env.calls) == 1
    assert [m.role for m in env.trace.messages] == [
        "system",
        "user",
        "assistant",
        "tool",
        "assistant",
    ]
    single = from_verifiers()()  # no tools: one reply, scored
    single.reset(rows(QTaskset)[2])
    assert single.step("6") == EnvStep(None, done=True) and single.reward() == pytest.approx(1.5)


def test_refusals_name_the_fix(monkeypatch: pytest.MonkeyPatch) -> None:
    env = from_verifiers(TwoSeats)()
    with pytest.raises(RuntimeError, match="plays one seat"):
        env.reset(rows(QTaskset)[0])
    with pytest.raises(ValueError, match="verifiers_rows"):
        from_verifiers()().reset({"prompt": "hi"})
    monkeypatch.setitem(sys.modules, "verifiers.v1", None)
    with pytest.raises(ImportError, match=r"groupwise\[verifiers\]"):
        from_verifiers()


@pytest.mark.parametrize("kind", ["multi_turn", "tools"])
def test_trains_two_steps(kind: str, tmp_path: Path) -> None:
    if kind == "tools":
        task_rows, env_kwargs = rows(CalcTaskset), {}
    else:
        task_rows, env_kwargs = rows(QTaskset), {"env": "tests.envs.test_verifiers:HintEnv"}
    options = {"environment": "verifiers", "env_kwargs": env_kwargs, "max_tokens_per_turn": 6}
    overrides = tiny_overrides(
        tmp_path,
        max_completion_length=24,
        **{"rollout.engine": "episodes", "rewards.weights": "[1.0, 0.0, 0.0]"},
    )
    overrides.append(f"rollout.engine_kwargs={json.dumps(options)}")
    funcs = ["env_reward", verifiers_score("correct"), verifiers_score("replies", metric=True)]
    task = Task("verifiers_test", train=task_rows, eval=[])
    trainer = GRPOTrainer(load_config(overrides=overrides), funcs, task=task)
    for _ in range(2):
        metrics = trainer.step()
        assert 0.0 <= metrics["rewards/env_reward/mean"] <= 1.5
        assert 0.0 <= metrics["rewards/verifiers_correct/mean"] <= 1.0
        assert 1.0 <= metrics["rewards/verifiers_replies/mean"] <= 4.0
    assert trainer.step_count == 2
