"""Built-in environments: ``counter`` (scripted, for tests and smoke runs) and ``python``
(a tool environment with the sandboxed ``python`` tool)."""

from __future__ import annotations

from typing import Any

from groupwise.envs.base import ENVIRONMENTS, BaseEnvironment, EnvStep, Row
from groupwise.envs.tools import ToolEnvironment, python


@ENVIRONMENTS.register("counter")
class CounterEnvironment(BaseEnvironment):
    """Answers every policy turn with ``ok <n>`` and ends after ``turns`` policy turns.

    Its end reward is the mean length of the policy's replies in characters, capped at
    ``target_chars`` and divided by it (so longer answers score higher, up to the cap).
    """

    def __init__(self, turns: int = 3, target_chars: int = 20) -> None:
        self.turns = turns
        self.target_chars = target_chars
        self.replies: list[str] = []

    def reset(self, row: Row) -> str | None:
        """A fresh count."""
        self.replies = []
        return None

    def step(self, policy_message: str) -> EnvStep:
        """``ok <n>``; done after ``turns`` replies."""
        self.replies.append(policy_message)
        n = len(self.replies)
        if n >= self.turns:
            return EnvStep(None, done=True)
        return EnvStep(f"ok {n}")

    def reward(self) -> float | None:
        """Mean reply length relative to ``target_chars`` (at most 1)."""
        if not self.replies:
            return 0.0
        lengths = [min(len(r), self.target_chars) for r in self.replies]
        return sum(lengths) / (len(lengths) * self.target_chars)


@ENVIRONMENTS.register("python")
def python_environment(**options: Any) -> ToolEnvironment:
    """A :class:`ToolEnvironment` with the sandboxed ``python`` tool (``options``: timeout,
    max_chars)."""
    return ToolEnvironment([python], **options)
