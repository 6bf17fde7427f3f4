"""The task registry."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from groupwise.rewards.base import RewardFunc

Row = dict[str, Any]


@dataclass
class Task:
    """Prompts with a held-out split, default rewards and an accuracy check."""

    name: str
    """Task name."""
    train: list[Row]
    """Training rows (each has a ``prompt``)."""
    eval: list[Row]
    """Held-out rows, disjoint from ``train``."""
    reward_funcs: list[RewardFunc] = field(default_factory=list)
    """Rewards used when the config names none."""
    correctness: RewardFunc | None = None
    """Reward in [0, 1] whose mean over greedy answers is the held-out accuracy."""


TaskBuilder = Callable[..., Task]
TASKS: dict[str, TaskBuilder] = {}


def register_task(name: str) -> Callable[[TaskBuilder], TaskBuilder]:
    """Decorator adding a task builder ``f(train_size, eval_size, seed, **params)``."""

    def add(builder: TaskBuilder) -> TaskBuilder:
        TASKS[name] = builder
        return builder

    return add


def import_builtin_tasks() -> None:
    """Import the modules whose ``@register_task`` builders fill ``TASKS``."""
    import groupwise.data.arithmetic
    import groupwise.data.code
    import groupwise.data.files
    import groupwise.data.reasoning_gym  # noqa: F401


def build_task(
    name: str, *, train_size: int, eval_size: int, seed: int, params: dict[str, Any]
) -> Task:
    """Build a registered task, with errors that name the config key to fix."""
    import_builtin_tasks()
    if name not in TASKS:
        raise ValueError(f"data.task: unknown task {name!r}; valid: {', '.join(sorted(TASKS))}")
    try:
        return TASKS[name](train_size=train_size, eval_size=eval_size, seed=seed, **params)
    except TypeError as exc:
        raise ValueError(f"data.params: bad parameters for task {name!r}: {exc}") from exc
