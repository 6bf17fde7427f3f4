"""The docs list every config key (docs/configuration.md) and every metric (README.md)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from groupwise.config import Config, config_to_dict

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
REFERENCE = ROOT / "docs" / "configuration.md"


def test_reference_lists_every_config_key() -> None:
    text = REFERENCE.read_text()
    missing = [
        f"{section}.{name}"
        for section, fields in config_to_dict(Config()).items()
        for name in fields
        if f"`{section}.{name}`" not in text
    ]
    assert not missing, (
        f"docs/configuration.md is stale; run `python scripts/update_readme_reference.py`: {missing}"
    )


def test_readme_documents_the_metrics() -> None:
    text = README.read_text()
    for name in (
        "reward",
        "reward_std",
        "frac_reward_zero_std",
        "kl",
        "entropy",
        "clip_ratio/low_mean",
        "completions/mean_length",
        "completions/clipped_ratio",
        "loss",
        "grad_norm",
        "learning_rate",
        "num_tokens",
        "step_time",
        "time/generate",
    ):
        assert f"`{name}`" in text, name


def test_readme_links_the_reference() -> None:
    assert "(docs/configuration.md)" in README.read_text()


def test_reference_matches_the_defaults() -> None:
    from groupwise.config import reference_markdown

    assert reference_markdown().strip() in REFERENCE.read_text(), (
        "docs/configuration.md is stale (a default or docstring changed); "
        "run `python scripts/update_readme_reference.py`"
    )


def test_the_readme_agent_example_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The README's custom environment with a custom tool, run as written (tiny-random, 1
    step, and its registration undone). Its string prompts reach the model as chat turns (the
    tiny model has SmolLM2's tokenizer and chat template, which ignores ``tools=``): a system
    message with the tool protocol and a worked call of ``capital``, a worked exchange (the
    docstring's example country, the tool's real answer), then the user's question. Its reward
    credits only an answer given after the tool's result, and it evaluates on held-out rows."""
    import re

    from groupwise.envs import ENVIRONMENTS
    from groupwise.rollout.episodes import EpisodeEngine

    seen: list[str] = []
    generate = EpisodeEngine.generate

    def spy(self: EpisodeEngine, prompts: Any, request: Any) -> Any:
        rollout = generate(self, prompts, request)
        seen.extend(
            self.tokenizer.batch_decode(rollout.prompts.input_ids, skip_special_tokens=False)
        )
        return rollout

    monkeypatch.setattr(EpisodeEngine, "generate", spy)

    text = README.read_text()
    section = text[text.index("### Agents: tools and multi-turn environments") :]
    code = re.search(r"```python\n(.*?)```", section, re.S)
    assert code is not None
    source = code.group(1)
    assert len(source.strip().splitlines()) <= 30  # the example stays under 30 lines
    source = source.replace(
        '"max_steps=20"]',
        f'"max_steps=1", "model.name=tiny-random", "output_dir={tmp_path}/run", '
        '"per_device_train_batch_size=8", "num_generations=4", "max_completion_length=32", '
        '"eval.before=false", "eval.after=false", "progress=false", "report=false", '
        '"save_final=false", "training.param_dtype=float32"]',
    )
    names: dict[str, Any] = {"__name__": "readme_example"}
    try:
        exec(compile(source, "README-agent-example", "exec"), names)
    finally:
        ENVIRONMENTS.unregister("capitals")
    assert (tmp_path / "run" / "metrics.jsonl").exists()
    assert seen
    call = '<tool_call>{"name": "capital", "arguments": {"country": "France"}}</tool_call>'
    exchange = (
        f"<|im_start|>assistant\n{call}<|im_end|>\n"
        "<|im_start|>tool\n<tool_response>Paris</tool_response><|im_end|>\n"
        "<|im_start|>assistant\nParis<|im_end|>\n<|im_start|>user\nWhat is the capital of "
    )
    for text in seen:
        text = text[text.index("<|im_start|>") :]  # after the left padding
        assert text.startswith("<|im_start|>system\nYou can call tools.") and exchange in text
        assert re.search(
            r"<\|im_start\|>user\nWhat is the capital of \w+\? Use the capital tool\.", text
        )
        assert text.endswith("<|im_end|>\n<|im_start|>assistant\n")
    task, reward = names["task"], names["from_the_tool"]
    held_out = {row["prompt"] for row in task.eval}
    assert held_out and not held_out & {row["prompt"] for row in task.train}
    said = '<tool_call>{"name": "capital", "arguments": {"country": "Peru"}}</tool_call>'
    completions = [
        "The capital of Peru is Lima.",  # no tool: no credit
        "<tool_response>Lima</tool_response> Lima",  # a result the policy wrote itself
        f"{said}\ntool\n<tool_response>Lima</tool_response>\nassistant\nLima",
        f"{said}\ntool\n<tool_response>Lima</tool_response>\nassistant\nCusco",
    ]
    assert reward(["q"] * 4, completions, ["Lima"] * 4) == [0.0, 0.0, 1.0, 0.0]


def test_the_readme_trl_example_runs_two_steps(tmp_path: Path) -> None:
    """The README's TRL-shaped script (a conversational dataset, a reward reading
    c[0]["content"]) as written, on tiny-random for two steps."""
    import re

    text = README.read_text()
    section = text[text.index("TRL scripts run with") :]
    code = re.search(r"```python\n(.*?)```", section, re.S)
    assert code is not None and 'c[0]["content"]' in code.group(1)
    source = code.group(1).replace('model="smollm2-135m-instruct"', 'model="tiny-random"')
    source = source.replace(
        'args=GRPOConfig(output_dir="runs/trl", max_steps=30, num_generations=8, beta=0.04)',
        f'args=GRPOConfig(output_dir="{tmp_path}/run", max_steps=2, num_generations=4, '
        "beta=0.04, per_device_train_batch_size=8, max_completion_length=8, "
        'disable_tqdm=True, save_strategy="no")',
    )
    assert 'model="tiny-random"' in source and "max_steps=2" in source
    exec(compile(source, "README-trl-example", "exec"), {"__name__": "readme_trl"})
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 2


def test_the_readme_stays_short() -> None:
    """The README keeps the current figures and a line or two per feature (detail goes to docs/)."""
    lines = (ROOT / "README.md").read_text(encoding="utf-8").splitlines()
    assert len(lines) < 230, f"README.md has {len(lines)} lines; move detail to docs/guide.md"
