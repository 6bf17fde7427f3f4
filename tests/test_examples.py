"""Every ``examples/*.yaml`` is a valid config whose task builds, whose rewards resolve with their
arguments, and whose rollout engine (and environment) exists; the model is not loaded."""

from __future__ import annotations

import json
import runpy
import sys
from pathlib import Path

import pytest

from groupwise.config import load_config
from groupwise.data.tasks import build_task
from groupwise.envs import ENVIRONMENTS
from groupwise.rewards.base import check_task_functions, rewards_from_config
from groupwise.rollout.engine import ENGINES

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = sorted((ROOT / "examples").glob("*.yaml"))


def test_the_examples_are_found() -> None:
    names = {p.name for p in EXAMPLES}
    assert {"math.yaml", "code.yaml", "dialogue.yaml", "calculator.yaml", "guess.yaml"} <= names


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_an_example_builds(path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ROOT)  # the examples' data paths are relative to the repository
    config = load_config(str(path))
    d, r = config.data, config.rollout
    task = build_task(
        d.task, train_size=d.train_size, eval_size=d.eval_size, seed=d.seed, params=d.params
    )
    assert r.engine == "auto" or r.engine in ENGINES  # auto: the run plan picks a registered one
    if r.engine == "episodes":
        assert r.engine_kwargs["environment"] in ENVIRONMENTS
    if "reward_model" in (config.rewards.funcs or []):  # a plumbing demo, no held-out judge
        pytest.skip("its reward model directory is made by examples/make_tiny_reward_model.py")
    assert task.train and task.eval, "an example without held-out rows shows no learning"
    assert task.correctness is not None
    funcs = rewards_from_config(
        config.rewards,
        max_completion_length=r.max_completion_length,
        defaults=task.reward_funcs,
    )
    check_task_functions(funcs, task, engine_adds_columns=r.engine not in ("local", "auto"))


@pytest.mark.parametrize("mode", ["factory", "tools", "dict"])
def test_the_trl_agent_script_runs(
    mode: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``examples/trl_agent.py`` as a user runs it (tiny-random, one step): its TRL agent
    arguments give an episodes run with TRL's tool metrics, and its reward, reading the final
    assistant message of conversational completions, is called."""
    out = tmp_path / "run"
    argv = ["trl_agent.py", "--mode", mode, "--max-steps", "1", "--model", "tiny-random"]
    monkeypatch.setattr(sys, "argv", [*argv, "--output-dir", str(out)])
    runpy.run_path(str(ROOT / "examples" / "trl_agent.py"), run_name="__main__")
    (metrics,) = [json.loads(line) for line in (out / "metrics.jsonl").open()]
    assert "tools/call_frequency" in metrics and "rewards/says_answer/mean" in metrics
    config = load_config(str(out / "config.yaml"))
    assert config.rollout.engine == "episodes" and config.rollout.engine_kwargs["max_turns"] == 3
    (line, *_) = (out / "completions.jsonl").open()
    assert "What is the" in line


@pytest.mark.parametrize(
    ("script", "package", "args"),
    [
        ("openenv_env.py", "openenv.core", []),
        ("openenv_env.py", "openenv.core", ["--server"]),
        ("verifiers_env.py", "verifiers.v1", []),
    ],
    ids=["openenv", "openenv-server", "verifiers"],
)
def test_the_environment_scripts_run(
    script: str, package: str, args: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``examples/openenv_env.py`` and ``examples/verifiers_env.py`` as a user runs them
    (tiny-random, one step): episodes played against the package's own environment, its
    reward in the metrics, the environment's messages in the logged conversation."""
    extra = package.split(".")[0]
    pytest.importorskip(
        package, reason=f"{extra} is not installed: pip install 'groupwise[{extra}]'"
    )
    out = tmp_path / "run"
    argv = [script, *args, "--max-steps", "1", "--model", "tiny-random"]
    monkeypatch.setattr(sys, "argv", [*argv, "--output-dir", str(out)])
    runpy.run_path(str(ROOT / "examples" / script), run_name="__main__")
    (metrics,) = [json.loads(line) for line in (out / "metrics.jsonl").open()]
    assert 0.0 <= metrics["rewards/env_reward/mean"] <= 1.0 and metrics["turns/mean"] >= 1.0
    said = {"openenv_env.py": "in capital letters", "verifiers_env.py": "What is"}[script]
    assert said in (out / "completions.jsonl").read_text()
