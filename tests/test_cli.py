"""The command line, run as a user would: in a subprocess."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.tests_helpers import tiny_overrides


def _run(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "groupwise", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=600,
    )


def test_train_writes_run_directory(tmp_path: Path) -> None:
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump({"algorithm": {"loss_type": "grpo"}}))
    overrides = tiny_overrides(
        tmp_path,
        save_final=True,
        report=True,
        progress=True,
        log_completions_steps=2,
        **{"eval.after": True, "data.eval_size": 4},
    )
    result = _run("train", str(config), *overrides, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    run = tmp_path / "run"
    # the live view (plain lines off a terminal): a line per step, sampled completions at
    # step 1 and step 2 (every log_completions_steps), two each, prompts from the run
    steps = [x.split()[1] for x in result.stderr.splitlines() if x.startswith("step ")]
    assert steps == ["1/2", "2/2"], result.stderr
    assert result.stderr.count("  completion: ") == 4
    logged = [json.loads(x) for x in (run / "completions.jsonl").read_text().splitlines()]
    assert any(f"prompt: {r['prompt'][-1]['content']}" in result.stderr for r in logged)
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["algorithm"]["loss_type"] == "grpo"
    assert saved["model"]["name"] == "tiny-random"
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in lines] == [1, 2]
    for key in (
        "reward",
        "reward_std",
        "rewards/answer_match/mean",
        "frac_reward_zero_std",
        "completions/mean_length",
        "loss",
        "grad_norm",
        "learning_rate",
        "step_time",
        "time/generate",
        "time/update",
        "entropy",
    ):
        assert key in lines[-1], key
    summary = json.loads((run / "summary.json").read_text())
    assert 0.0 <= summary["eval_after"] <= 1.0 and summary["steps"] == 2
    assert "held-out accuracy" not in result.stdout or "after" in result.stdout
    completions = (run / "completions.jsonl").read_text().splitlines()
    assert len(completions) == 2 * 16  # 2 steps x 4 prompts x 4 completions
    assert (run / "report.html").read_text().count("<img") >= 3
    (run / "report.html").unlink()  # the README's `groupwise report RUN_DIR` writes it again
    report = _run("report", str(run), cwd=tmp_path)
    assert report.returncode == 0, report.stderr
    assert (run / "report.html").read_text().count("<img") >= 3
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(run / "final"))
    assert model.config.num_hidden_layers == 2


def test_bad_key_fails_with_its_name(tmp_path: Path) -> None:
    result = _run("train", "model.name=tiny-random", "algorithm.betta=0.1", cwd=tmp_path)
    assert result.returncode == 2
    assert "algorithm.betta" in result.stderr
    assert "Traceback" not in result.stderr


def test_bad_value_and_missing_model(tmp_path: Path) -> None:
    result = _run("train", "num_generations=1", cwd=tmp_path)
    assert result.returncode == 2 and "rollout.num_generations must be >= 2" in result.stderr
    result = _run("train", f"model.name={tmp_path / 'nowhere'}", cwd=tmp_path)
    assert result.returncode == 2 and "nowhere" in result.stderr


def test_config_command_prints_resolved_yaml(tmp_path: Path) -> None:
    result = _run("config", "beta=0.04", "loss_type=grpo", cwd=tmp_path)
    assert result.returncode == 0
    data = yaml.safe_load(result.stdout)
    assert data["algorithm"]["beta"] == 0.04 and data["algorithm"]["loss_type"] == "grpo"
    reference = _run("config", "--reference", cwd=tmp_path)
    assert "`algorithm.beta`" in reference.stdout


def test_eval_compares_models(tmp_path: Path) -> None:
    """`groupwise eval` on a tiny model: greedy accuracy, pass@k and maj@k in one table."""
    result = _run(
        "eval",
        "tiny-random",
        "data.eval_size=4",
        "--k",
        "2",
        "--baseline",
        "tiny-random",
        "eval.max_new_tokens=4",  # an override after the options is taken too
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "arithmetic: 4 held-out prompts"
    assert lines[1] == "| model | accuracy | pass@2 | pass@1 | maj@2 |"
    assert len(lines) == 5
    assert lines[3].startswith("| tiny-random (baseline) | 0.0% |")
    assert lines[4].startswith("| tiny-random | 0.0% |")
    stray = _run("eval", "tiny-random", "--k", "2", "--kk", "3", cwd=tmp_path)
    assert stray.returncode == 2 and "unrecognized arguments: --kk 3" in stray.stderr


def test_eval_plays_a_multi_turn_task_through_its_engine(tmp_path: Path) -> None:
    """`groupwise eval` on the guessing game: the configured episodes engine plays every game
    (the environment's reward is what the task's correctness reads)."""
    engine = (
        "rollout.engine_kwargs={environment: guess, env_kwargs: {high: 8, max_guesses: 3},"
        " max_turns: 3, max_tokens_per_turn: 3}"
    )
    args = [
        "data.task=guess",
        "data.params={high: 8}",
        "data.eval_size=8",
        "eval.max_new_tokens=24",
    ]
    result = _run("eval", "tiny-random", *args, "rollout.engine=episodes", engine, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[0] == "guess: 8 held-out prompts"
    assert result.stdout.splitlines()[3].startswith("| tiny-random | ")


def test_the_summary_line_names_the_tasks_metric(capsys: pytest.CaptureFixture[str]) -> None:
    from groupwise.cli import _print_summary

    _print_summary({"eval_before": 0.25, "eval_after": 0.5, "run_dir": "r"})
    _print_summary({"eval_before": 0.759, "eval_after": 0.9, "eval_metric": "judge score"})
    out = capsys.readouterr().out
    assert "held-out accuracy: 25.0% before -> 50.0% after (+25.0 points)" in out
    assert "held-out judge score: 0.759 before -> 0.900 after (+0.141)" in out
