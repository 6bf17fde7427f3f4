"""Tasks and their registry, ``TASKS`` (``data.task``).

A task builder registers itself where it is defined, built-in or user code alike::

    from groupwise.data.tasks import Task, register_task

    @register_task("my_task")
    def my_task(*, train_size: int, eval_size: int, seed: int, level: int = 1) -> Task: ...
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from groupwise.config import Config
from groupwise.registry import Registry, UnknownNameError
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
    eval_metric: str = "accuracy"
    """What the mean of ``correctness`` is called in the logs (e.g. ``"judge score"``); only
    ``"accuracy"`` is printed as a percentage."""


TaskBuilder = Callable[..., Task]


TASKS: Registry[TaskBuilder] = Registry("data.task", builtin=True)
"""Task builders by name (``data.task``); the built-ins are imported on first lookup."""


def register_task(name: str, *, replace: bool = False) -> Callable[[TaskBuilder], TaskBuilder]:
    """Decorator adding a task builder ``f(train_size, eval_size, seed, **params)`` as ``name``.

    The name can then be given in ``data.task`` (its keyword parameters in ``data.params``);
    registering a taken name needs ``replace=True``.
    """
    return TASKS.register(name, replace=replace)


def build_task(
    name: str, *, train_size: int, eval_size: int, seed: int, params: dict[str, Any]
) -> Task:
    """Build a registered task, with errors that name the config key to fix."""
    if name not in TASKS:
        raise UnknownNameError(
            f"data.task: unknown task {name!r}; valid: {', '.join(sorted(TASKS))}"
        )
    try:
        return TASKS.get(name)(train_size=train_size, eval_size=eval_size, seed=seed, **params)
    except TypeError as exc:
        raise ValueError(f"data.params: bad parameters for task {name!r}: {exc}") from exc


def task_from_config(config: Config) -> Task:
    """The task ``config.data`` names, built with its sizes, seed and parameters."""
    d = config.data
    return build_task(
        d.task, train_size=d.train_size, eval_size=d.eval_size, seed=d.seed, params=d.params
    )
