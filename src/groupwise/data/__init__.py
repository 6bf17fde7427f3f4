"""Data and tasks: where prompts come from, and how answers are checked.

A *row* is a dict with a ``prompt`` (plain text, or a list of ``{"role", "content"}`` messages)
plus any other columns; those columns are passed to reward functions by name. A *task* bundles a
train split, a held-out split, its default reward functions and the check used for accuracy.
"""

from groupwise.data.tasks import TASKS, Row, Task, build_task, register_task

__all__ = ["TASKS", "Row", "Task", "build_task", "register_task"]
