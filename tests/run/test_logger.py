"""RunLogger's held-out records: eval_samples.jsonl is written per evaluation and read back by
the report."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from groupwise.config import load_config
from groupwise.eval.evaluate import EvalResult
from groupwise.run.logger import EVAL_SAMPLES, RunLogger
from groupwise.run.report import RunData, before_and_after, load_run

PROMPTS = [[{"role": "user", "content": "Tell me about rainy days."}], "plain <b>text</b> prompt"]


def _logger(tmp_path: Path) -> RunLogger:
    return RunLogger(load_config(overrides=[f"training.output_dir={tmp_path}"]), tmp_path)


def _lines(path: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def _load_run(path: Path) -> RunData:
    """load_run needs metrics.jsonl or summary.json: give it an empty metrics file."""
    (path / "metrics.jsonl").touch()
    return load_run(path)


def test_each_evaluation_appends_its_answers(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    log = _logger(tmp_path)
    log.log_eval("before", EvalResult(0.25, ["meh", "bad"], [0.5, 0.0]), PROMPTS, step=0)
    log.log_eval("step 5", EvalResult(0.5, ["ok", "fine"], [0.5, 0.5]), PROMPTS, step=None)
    log.log_eval("after", EvalResult(0.75, ["great", "nice"], [1.0, 0.5]), PROMPTS, step=10)
    assert "held-out greedy accuracy (after): 75.0% on 2" in capsys.readouterr().out
    records = _lines(tmp_path / EVAL_SAMPLES)
    assert [(r["label"], r["index"]) for r in records] == [
        ("before", 0),
        ("before", 1),
        ("step 5", 0),
        ("step 5", 1),
        ("after", 0),
        ("after", 1),
    ]
    assert records[0] == {
        "label": "before",
        "step": 0,
        "index": 0,
        "prompt": PROMPTS[0],
        "completion": "meh",
        "score": 0.5,
    }
    assert records[5]["prompt"] == PROMPTS[1] and records[5]["completion"] == "nice"

    first, last, rows = before_and_after(_load_run(tmp_path))
    assert (first, last) == ("before", "after")
    assert [(p, a and a.completion, b and b.completion) for p, a, b in rows] == [
        (PROMPTS[0], "meh", "great"),
        (PROMPTS[1], "bad", "nice"),
    ]


def test_misaligned_result_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="do not line up"):
        _logger(tmp_path).log_eval("after", EvalResult(1.0, ["a"], [1.0]), PROMPTS, step=1)


def test_a_resume_drops_the_evaluations_after_its_checkpoint(tmp_path: Path) -> None:
    """eval_samples.jsonl lines carry the step they ran at; RunDirectory.start(step) keeps the
    ones up to the resumed checkpoint, as it does for metrics.jsonl (no label twice)."""
    from groupwise.models.precision import PrecisionChoice
    from groupwise.run.directory import RunDirectory

    log = _logger(tmp_path)
    log.log_eval("before", EvalResult(0.0, ["a", "b"], [0.0, 0.0]), PROMPTS, None, at_step=0)
    log.log_eval("step 2", EvalResult(0.5, ["c", "d"], [0.5, 0.5]), PROMPTS, None, at_step=2)
    log.log_eval("step 4", EvalResult(1.0, ["e", "f"], [1.0, 1.0]), PROMPTS, None, at_step=4)
    config = load_config(overrides=[f"training.output_dir={tmp_path}"])
    choice = PrecisionChoice(bf16=False, setting="false", reason="test")
    RunDirectory(config, choice).start(3)  # resuming from a checkpoint at step 3
    records = _lines(tmp_path / EVAL_SAMPLES)
    assert [(r["label"], r["step"]) for r in records] == [("before", 0)] * 2 + [("step 2", 2)] * 2
