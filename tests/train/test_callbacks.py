"""Callbacks: plain ``fn(trainer, metrics)`` and TRL/transformers ``TrainerCallback`` objects."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from transformers import TrainerCallback

from groupwise import GRPOTrainer, load_config
from groupwise.compat.trl import GRPOConfig
from groupwise.train.callbacks import Callbacks
from tests.tests_helpers import tiny_overrides


class Recorder(TrainerCallback):  # type: ignore[misc]
    """Records every event; asks to save at step 1 and to stop at ``stop_at``."""

    def __init__(self, stop_at: int = 2) -> None:
        self.events: list[tuple[str, int]] = []
        self.logs: list[dict[str, float]] = []
        self.stop_at = stop_at
        self.args: Any = None

    def _record(self, name: str, args: Any, state: Any) -> None:
        self.events.append((name, state.global_step))
        self.args = args

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self._record("train_begin", args, state)
        assert kwargs["model"] is not None and kwargs["processing_class"] is not None

    def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self._record("step_begin", args, state)

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self._record("step_end", args, state)
        control.should_save = state.global_step == 1
        control.should_training_stop = state.global_step >= self.stop_at

    def on_log(self, args: Any, state: Any, control: Any, logs: Any = None, **kw: Any) -> None:
        self._record("log", args, state)
        self.logs.append(logs)

    def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self._record("save", args, state)

    def on_evaluate(
        self, args: Any, state: Any, control: Any, metrics: Any = None, **kw: Any
    ) -> None:
        self._record(f"evaluate {metrics['eval_accuracy']:.3f}", args, state)

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self._record("train_end", args, state)


def test_trainer_callback_events_save_and_stop(tmp_path: Path) -> None:
    overrides = tiny_overrides(tmp_path, max_steps=5, **{"eval.after": True})
    recorder, calls = Recorder(stop_at=2), []
    trainer = GRPOTrainer(
        load_config(overrides=overrides),
        callbacks=[recorder, lambda trainer, metrics: calls.append(trainer.step_count)],
    )
    summary = trainer.train()
    assert summary["steps"] == 2  # stopped by control.should_training_stop, not max_steps=5
    assert calls == [1, 2]  # the plain function still runs after each step
    names = [(n.split()[0], s) for n, s in recorder.events]
    assert names == [
        ("train_begin", 0),
        ("step_begin", 0),
        ("step_end", 1),
        ("log", 1),
        ("save", 1),  # control.should_save at step 1: a checkpoint at once
        ("step_begin", 1),
        ("step_end", 2),
        ("log", 2),
        ("evaluate", 2),  # the final evaluation still runs
        ("train_end", 2),
    ]
    evaluate = next(n for n, _ in recorder.events if n.startswith("evaluate"))
    assert float(evaluate.split()[1]) == pytest.approx(summary["eval_after"], abs=1e-3)
    assert [log["reward"] for log in recorder.logs] == [m["reward"] for m in _metrics(tmp_path)]
    assert (tmp_path / "run" / "checkpoints" / "step-00000001").is_dir()
    assert recorder.args is trainer.config  # no GRPOConfig given: groupwise's Config


def _metrics(tmp_path: Path) -> list[dict[str, Any]]:
    path = tmp_path / "run" / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_trl_call_passes_its_grpo_config_as_args(tmp_path: Path) -> None:
    args = GRPOConfig(
        output_dir=str(tmp_path / "run"),
        max_steps=3,
        num_generations=4,
        per_device_train_batch_size=8,
        max_completion_length=4,
        save_strategy="no",
        report_to="none",
        bf16=False,
    )
    recorder = Recorder(stop_at=1)
    rows = [{"prompt": f"Say {i}."} for i in range(8)]
    trainer = GRPOTrainer(
        model="tiny-random",
        reward_funcs=lambda completions, **kw: [float(len(c)) for c in completions],
        args=args,
        train_dataset=rows,
        callbacks=[recorder],
    )
    trainer.config.training.report = False
    assert trainer.train()["steps"] == 1
    assert recorder.args is args


def test_a_callback_class_is_instantiated_and_junk_is_refused() -> None:
    callbacks = Callbacks([Recorder])
    assert len(callbacks) == 1 and isinstance(callbacks.objects[0], Recorder)
    with pytest.raises(TypeError, match=r"callbacks\[1\]: expected fn\(trainer, metrics\)"):
        Callbacks([Recorder(), 42])
