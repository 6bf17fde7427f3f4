"""TRL's agent arguments: GRPOTrainer(tools=..., environment_factory=...) and
GRPOConfig(max_tool_calling_iterations=...) on the episodes engine."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from groupwise import GRPOTrainer
from groupwise.compat.trl import GRPOConfig
from groupwise.config import ConfigError
from groupwise.envs import ENVIRONMENTS
from groupwise.models import tiny_random_model
from groupwise.rollout import RolloutRequest, SamplingParams, tokenize_prompts
from groupwise.rollout.episodes import EpisodeEngine
from groupwise.rollout.weights import SharedWeights


class Counter:
    """TRL's documented environment shape; its reward is the row's ``target`` (known by hand
    whatever the policy writes)."""

    def reset(self, target: int = 1, **kwargs: Any) -> str:
        self.target, self.counter = target, 0
        return f"Reach {target}."

    def get_reward(self) -> float:
        return float(self.target)

    def increment(self, step: int) -> int:
        """Increment the counter.

        Args:
            step: Value to add.
        """
        self.counter += step
        return self.counter


class Library:
    """An environment without get_reward."""

    def reset(self, **kwargs: Any) -> None:
        return None

    def lookup(self, title: str) -> str:
        """Look a book up.

        Args:
            title: The book's title.
        """
        return f"{title}: on shelf 3"


def clock() -> str:
    """The time of day."""
    return "noon"


def _args(tmp_path: Path, **extra: Any) -> GRPOConfig:
    options: dict[str, Any] = {
        "output_dir": str(tmp_path / "run"),
        "max_steps": 1,
        "num_generations": 2,
        "per_device_train_batch_size": 8,
        "max_completion_length": 12,
        "learning_rate": 1e-3,
        "save_strategy": "no",
        "disable_tqdm": True,
        "gradient_checkpointing": False,
        "bf16": False,
        "eval_strategy": "no",
        **extra,
    }
    return GRPOConfig(**options)


def _rows(n: int = 4) -> list[dict[str, Any]]:
    return [
        {"prompt": [{"role": "user", "content": f"Task {i}."}], "target": i + 1} for i in range(n)
    ]


def test_tools_become_the_episodes_engine_with_those_tools(tmp_path: Path) -> None:
    trainer = GRPOTrainer(
        model="tiny-random",
        reward_funcs=lambda completions, **kw: [0.0] * len(completions),
        args=_args(tmp_path, max_tool_calling_iterations=2),
        train_dataset=_rows(),
        tools=[clock],
    )
    r = trainer.config.rollout
    assert r.engine == "episodes"
    assert r.engine_kwargs == {"environment": "trl:tools", "max_turns": 3}  # N rounds + 1
    env = ENVIRONMENTS.get("trl:tools")()
    assert [t.name for t in env.tools] == ["clock"]  # type: ignore[attr-defined]


def test_max_tool_calling_iterations_maps_to_turns_and_is_checked(tmp_path: Path) -> None:
    def build(**extra: Any) -> GRPOTrainer:
        return GRPOTrainer(
            model="tiny-random",
            args=_args(tmp_path, **extra),
            train_dataset=_rows(),
            environment_factory=Counter,
        )

    assert build(max_tool_calling_iterations=0).config.rollout.engine_kwargs["max_turns"] == 1
    assert "max_turns" not in build().config.rollout.engine_kwargs  # the engine's default
    with pytest.raises(ConfigError, match="max_tool_calling_iterations=-1 must be an integer"):
        build(max_tool_calling_iterations=-1)
    no_tools = GRPOTrainer(  # as TRL: without tools or environments the field does nothing
        model="tiny-random",
        reward_funcs=lambda completions, **kw: [0.0] * len(completions),
        args=_args(tmp_path, max_tool_calling_iterations=2),
        train_dataset=_rows(),
    )
    assert no_tools.config.rollout.engine != "episodes"


def test_get_reward_is_a_reward_named_after_the_class_and_reward_funcs_optional(
    tmp_path: Path,
) -> None:
    trainer = GRPOTrainer(
        model="tiny-random",
        args=_args(tmp_path),
        train_dataset=_rows(),
        environment_factory=Counter,
    )
    assert trainer.rewards.names == ["Counter"] and trainer.rewards.weights == [1.0]
    weighted = GRPOTrainer(
        model="tiny-random",
        reward_funcs=lambda completions, **kw: [0.0] * len(completions),
        args=_args(tmp_path, reward_weights=[0.5]),
        train_dataset=_rows(),
        environment_factory=Counter,
    )
    assert weighted.rewards.names == ["<lambda>", "Counter"]
    assert weighted.rewards.weights == [0.5, 1.0]


def test_a_run_with_a_dict_of_environments(tmp_path: Path) -> None:
    """Two steps end to end: each completion's reward function sees its own environment
    instance; ``rewards/Counter/mean`` is the mean ``target`` of the Counter rows only (the
    Library rows are not scored by it); TRL's tool metrics are logged."""
    seen: list[list[tuple[str, Any]]] = []

    def zero(completions: list[Any], environments: list[Any], **kwargs: Any) -> list[float]:
        seen.append([(type(e).__name__, getattr(e, "target", None)) for e in environments])
        assert len({id(e) for e in environments}) == len(environments)  # one per episode
        names = ["Counter" if e == "count" else "Library" for e in kwargs["environment"]]
        assert [type(e).__name__ for e in environments] == names  # completion order
        return [0.0] * len(completions)

    rows = _rows(2)  # targets 1 and 2, then two Library rows
    for row in rows:
        row["environment"] = "count"
    book = {"prompt": [{"role": "user", "content": "Find a book."}], "target": None}
    rows += [{**book, "environment": "books"}] * 2  # uniform columns, as a datasets.Dataset
    trainer = GRPOTrainer(
        model="tiny-random",
        reward_funcs=zero,
        args=_args(tmp_path, max_steps=2, max_tool_calling_iterations=1),
        train_dataset=rows,  # 4 prompts x 2 completions per step: every row, every step
        environment_factory={"count": Counter, "books": Library},
        tools=[clock],
    )
    trainer.config.training.report = False
    assert trainer.rewards.names == ["zero", "Counter"]  # Library has no get_reward
    assert trainer.train()["steps"] == 2
    metrics = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").open()]
    for step, m in zip(seen, metrics, strict=True):
        assert sorted(t for n, t in step if n == "Counter") == [1, 1, 2, 2]
        assert m["rewards/Counter/mean"] == pytest.approx(1.5)  # (1 + 1 + 2 + 2) / 4
        assert m["tools/call_frequency"] >= 0.0 and "tools/failure_frequency" in m


def test_each_row_is_prompted_with_only_its_environments_tools() -> None:
    """The episodes engine renders each row's prompt with its own environment's tools."""
    from groupwise.compat.trl_agents import agent_setup

    setup = agent_setup([clock], {"count": Counter, "books": Library})
    assert setup is not None
    model, tokenizer = tiny_random_model(seed=0)
    engine = EpisodeEngine(
        SharedWeights(model), tokenizer, [tokenizer.eos_token_id], **setup.engine_kwargs
    )
    rows = [
        {"prompt": [{"role": "user", "content": "Count."}], "environment": "count", "target": 3},
        {"prompt": [{"role": "user", "content": "Read."}], "environment": "books"},
    ]
    batch = tokenize_prompts(tokenizer, [r["prompt"] for r in rows], torch.device("cpu"))
    request = RolloutRequest(2, SamplingParams(max_tokens=4, temperature=0.0), rows=rows)
    rollout = engine.generate(batch, request)
    count, books = (tokenizer.decode(ids) for ids in rollout.prompts.input_ids)
    assert '"name": "increment"' in count and '"name": "lookup"' not in count
    assert '"name": "lookup"' in books and '"name": "increment"' not in books
    assert '"name": "clock"' in count and '"name": "clock"' in books  # shared tools: both
    assert "Reach 3." in count
    columns = getattr(rollout, "columns")  # noqa: B009
    assert [type(e).__name__ for e in columns["environments"]] == ["Counter"] * 2 + ["Library"] * 2
    assert columns["env_reward"] == [3.0, 3.0, None, None]


def test_refusals_name_the_argument_and_the_nearest_setting(tmp_path: Path) -> None:
    def build(**kwargs: Any) -> GRPOTrainer:
        options: dict[str, Any] = {"args": _args(tmp_path), "train_dataset": _rows(), **kwargs}
        return GRPOTrainer(model="tiny-random", **options)

    with pytest.raises(TypeError, match="'rollout_func' is not supported.*rollout.engine=agent"):
        build(rollout_func=lambda prompts, trainer: {}, reward_funcs=lambda **kw: [])
    with pytest.raises(TypeError, match="no reward source.*get_reward"):
        build(environment_factory=Library)
    with pytest.raises(TypeError, match="train_dataset=None, is not supported"):
        build(environment_factory=Counter, train_dataset=None)
    with pytest.raises(TypeError, match=r"environment_factory\['x'\] built a object without"):
        build(environment_factory={"x": object})
    with pytest.raises(TypeError, match="tools must be functions"):
        build(environment_factory=Counter, tools=["clock"])
