"""Helpers shared by test modules (``tests`` is a package; pytest puts the repository root on sys.path)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

TIMING_KEYS = ("time/", "step_time", "wall_time")
"""Prefixes of the metrics that measure time (they differ between otherwise equal runs)."""


def tiny_overrides(tmp_path: Path, **extra: object) -> list[str]:
    """Overrides for a fast tiny-random run writing into ``tmp_path``."""
    base: dict[str, object] = {
        "model.name": "tiny-random",
        "max_steps": 2,
        "num_generations": 4,
        "per_device_train_batch_size": 8,
        "gradient_accumulation_steps": 2,
        "max_completion_length": 8,
        "eval.before": False,
        "eval.after": False,
        "progress": False,
        "save_final": False,
        "save_steps": 0,
        "report": False,
        "output_dir": str(tmp_path / "run"),
        "data.train_size": 64,
        "data.eval_size": 8,
        "learning_rate": 1e-3,
        # float32 master weights on every CPU kind (param_dtype=auto would pick pure bf16 on
        # CPUs with native bf16 only): the same code paths wherever the tests run
        "training.param_dtype": "float32",
    }
    base.update(extra)
    return [f"{k}={v}" for k, v in base.items()]


def varied_reward(prompts: list[Any], completions: list[str], **_: Any) -> list[float]:
    """A reward with spread inside most groups (by length), so every step updates the weights.

    Importable as ``tests.tests_helpers:varied_reward`` in ``rewards.funcs``.
    """
    return [float(len(c) % 5) / 4.0 for c in completions]


class Crash(Exception):
    """Stands in for a process dying between steps."""


def crash_after(step: int) -> Any:
    """A step callback that dies right after ``step`` was logged (and checkpointed, when due)."""

    def callback(trainer: Any, metrics: dict[str, float]) -> None:
        if trainer.step_count == step:
            raise Crash

    return callback


def load_module(path: Path, name: str) -> ModuleType:
    """Import the file ``path`` (a benchmark or script, not a package module) as ``name``."""
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module
