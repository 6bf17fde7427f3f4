"""Every command in the README's ``bash`` blocks, run in a subprocess from the repository root.

The README's default training job runs as written with only its length cut (one step, no
evaluation): the real SmolLM2-135M-Instruct, the default task and config. The command-line
block's lines run with their placeholders filled: ``CONFIG.yaml`` is ``examples/math.yaml``,
``[key=value ...]`` are tiny-random overrides, ``RUN_DIR`` is the run those wrote, and a real
model named as a baseline is swapped for tiny-random (its evaluation is the same code).
``bash scripts/test.sh`` is what CI runs (``.ci/run``), so it is checked by being CI.
"""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from tests.tests_helpers import tiny_overrides

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_JOB = "bash scripts/setup.sh && .venv/bin/groupwise train"


def bash_commands() -> list[str]:
    """The README's ``bash`` blocks as commands: comments dropped, one command per line."""
    text = (ROOT / "README.md").read_text()
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.DOTALL):
        for line in block.splitlines():
            command = line.split(" # ")[0].strip() if not line.startswith("#") else ""
            if command:
                commands.append(command)
    return commands


def _run(command: str, timeout: int = 900) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", "-c", command], cwd=ROOT, capture_output=True, text=True, timeout=timeout
    )


def test_the_readme_has_the_two_commands() -> None:
    commands = bash_commands()
    assert DEFAULT_JOB in commands
    assert "bash scripts/test.sh" in commands
    assert (ROOT / ".ci" / "run").read_text().rstrip().endswith("exec bash scripts/test.sh")


@pytest.mark.skipif(not (ROOT / ".venv" / "bin" / "groupwise").exists(), reason="needs .venv")
def test_the_default_training_job_runs_as_written(tmp_path: Path) -> None:
    """The README's first command, one step long: the real model, task and defaults."""
    out = tmp_path / "default"
    cut = f"training.max_steps=1 eval.before=false eval.after=false training.output_dir={out}"
    result = _run(f"{DEFAULT_JOB} {cut}")
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == 1
    assert summary["model"] == "smollm2-135m-instruct"
    assert summary["task"] == "arithmetic"
    metrics = json.loads((out / "metrics.jsonl").read_text().splitlines()[0])
    assert metrics["step"] == 1 and "reward" in metrics


def _filled(command: str, run_dir: Path, overrides: list[str]) -> str:
    words = [w for w in shlex.split(command) if w not in ("[key=value", "...]")]
    swap = {
        "groupwise": f"{sys.executable} -m groupwise",
        "[CONFIG.yaml]": "examples/math.yaml",
        "RUN_DIR": str(run_dir),
        "smollm2-135m-instruct": "tiny-random",
    }
    words = [swap.get(w, shlex.quote(w)) for w in words]
    if words[1] in ("train", "config") and "--reference" not in words:
        words += [shlex.quote(o) for o in overrides]
    if words[1] == "eval":  # overrides go after the target, before the options
        words[3:3] = ["data.eval_size=4", "eval.max_new_tokens=4"]
    if words[1] == "chat":  # the interactive chat, on an empty input
        words += ["--max-new-tokens", "4", "< /dev/null"]
    return " ".join(words)


def test_the_command_line_block_runs(tmp_path: Path) -> None:
    """Each ``groupwise ...`` line of the README, in its order (train first writes RUN_DIR)."""
    commands = [c for c in bash_commands() if c.startswith("groupwise ")]
    assert [c.split()[1] for c in commands] == [
        "train",
        "config",
        "config",
        "tasks",
        "report",
        "eval",
        "export",
        "chat",
    ]
    overrides = tiny_overrides(tmp_path, save_final=True)
    run_dir = tmp_path / "run"
    for command in commands:
        result = _run(_filled(command, run_dir, overrides), timeout=600)
        assert result.returncode == 0, (command, result.stderr[-3000:])
        if command.startswith("groupwise tasks"):
            assert "arithmetic:" in result.stdout and "guess:" in result.stdout
        if command.startswith("groupwise config --reference"):
            assert "training.max_steps" in result.stdout
    assert (run_dir / "report.html").exists()
    assert (run_dir / "final").is_dir()
    assert (run_dir / "final" / "model.q4_k_m.gguf").is_file()
    assert (run_dir / "final" / "model.bf16.Modelfile").is_file()
