"""The environment interface: what a multi-turn episode talks to.

An environment is a small stateful object, built fresh for every episode (G per prompt)::

    @ENVIRONMENTS.register("counter")
    class Counter(Environment):
        def reset(self, row):            # the dataset row (prompt and other columns)
            self.n = 0
            return None                  # or a first observation, appended to the prompt
        def step(self, policy_message):  # the policy's reply (decoded text of its turn)
            self.n += 1
            return EnvStep(f"ok {self.n}", done=self.n >= 3)   # or a (message, done) tuple
        def reward(self):                # optional: the episode's own end reward
            return float(self.n)

``rollout.engine=episodes`` with ``rollout.engine_kwargs={"environment": "counter"}`` then runs
the policy against it (:mod:`groupwise.rollout.episodes`). A single-turn task is the 1-turn case:
``step`` returns ``done=True`` at once. Messages are rendered with the tokenizer's chat template
in the environment's ``role`` (``"user"`` by default, ``"tool"`` for tool results).

Other shapes map onto it:

* **TRL's** ``environment_factory`` (``GRPOTrainer(environment_factory=MyEnv)``), followed as
  documented in TRL's GRPO guide ("Agent Training / Environments") and its OpenEnv guide:
  a class whose ``__init__`` takes no argument; ``reset(**kwargs)`` gets the dataset row's
  columns as keyword arguments (``prompt`` only when it takes it: by name or ``**kwargs``)
  and returns ``None`` or a string (the initial observation: here appended to the prompt's
  last user message); every public function of the class other than ``reset`` and
  ``get_reward`` is a tool (name, docstring with ``Args:``, typed signature); a tool that
  raises has its error message fed back as the tool response; the optional ``get_reward()``
  (sync or async) scores the finished episode. The episode goes on
  while the model calls tools and ends at its first answer without a tool call.
  :func:`from_trl` adapts such a class unchanged: ``ENVIRONMENTS.add("inc", from_trl(MyEnv))``.
  Reward functions get TRL's ``environments`` argument (the episode's instance, one per
  completion) and ``get_reward`` arrives as the ``env_reward`` column (see :func:`env_reward`).
  A dict ``{name: factory}`` picks the environment per row by its ``environment`` column
  (``from_trl(dict)``), each row seeing only its environment's tools. TRL's own
  ``GRPOTrainer(tools=..., environment_factory=...)`` call is translated by
  :mod:`groupwise.compat.trl_agents`.
* **verifiers** 0.4 tasksets, tasks and envs: :mod:`groupwise.envs.verifiers` (the
  ``verifiers`` environment; the env's ``run`` driven turn by turn by the policy, the task's
  toolsets as tools and its rubric as the end reward).
* **OpenEnv** (``reset`` / ``step`` / ``state``, in process or through its client):
  :mod:`groupwise.envs.openenv` (the ``openenv`` environment; the text-to-action and
  observation-to-text mappings are explicit arguments). (TRL's OpenEnv examples wrap an
  OpenEnv client into a TRL-shaped class; :func:`from_trl` then takes that class as is.)
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from groupwise.envs.schema import Tool
from groupwise.registry import Registry
from groupwise.rewards.base import COMPLETION_MESSAGES as COMPLETION_MESSAGES  # for engines

Row = Mapping[str, Any]


@dataclass
class EnvStep:
    """The environment's answer to one policy turn."""

    message: str | None
    """Text inserted into the conversation (no loss on it); None = nothing to say."""
    done: bool = False
    """The episode is over (the policy does not speak again)."""
    reward: float | None = None
    """An optional per-turn reward (kept on the episode as ``step_rewards``)."""
    tool_messages: list[dict[str, Any]] | None = None
    """Tool results as chat messages (``{"role": "tool", "name", "content"}``, one per call
    of the turn, in order), rendered as such where the chat template renders tool calls
    (:meth:`groupwise.rollout.chat.ChatFormat.reply_ids`); ``message`` is the same as text."""


class Environment(Protocol):
    """One episode's counterpart: ``reset`` from a dataset row, then ``step`` per policy turn.

    Optional attributes the engine reads when present: ``reward() -> float | None`` (the
    episode's end reward), ``role`` (the chat role of its messages, default ``"user"``),
    ``tools`` (a list of :class:`~groupwise.envs.tools.Tool` described to the model in the
    prompt, read after ``reset``) and ``columns() -> Mapping[str, Any]`` (this episode's values
    of extra reward-function columns, see :func:`env_columns`).
    """

    def reset(self, row: Row) -> str | None:
        """Start an episode for ``row``; a returned text is appended to the prompt."""
        ...

    def step(self, policy_message: str) -> EnvStep | tuple[str | None, bool]:
        """Answer the policy's message: the environment's reply and whether the episode ends."""
        ...


class BaseEnvironment:
    """Convenience base: no first observation, no end reward, messages as the user."""

    role: str = "user"
    tools: Sequence[Tool] = ()

    def reset(self, row: Row) -> str | None:
        """No first observation."""
        return None

    def step(self, policy_message: str) -> EnvStep | tuple[str | None, bool]:
        """Single turn: the episode ends after the policy's first reply."""
        return EnvStep(None, done=True)

    def reward(self) -> float | None:
        """No end reward."""
        return None


EnvironmentFactory = Callable[..., Environment]
"""Builds one environment per episode from ``rollout.engine_kwargs.env_kwargs``."""


ENVIRONMENTS: Registry[EnvironmentFactory] = Registry(
    "rollout.engine_kwargs.environment", builtin=True
)
"""Environments by name (``rollout.engine_kwargs.environment`` of the ``episodes`` engine)."""


def as_env_step(result: EnvStep | tuple[str | None, bool] | Any) -> EnvStep:
    """An :class:`EnvStep` from what ``step`` returned (an EnvStep or ``(message, done)``)."""
    if isinstance(result, EnvStep):
        return result
    if isinstance(result, tuple) and len(result) == 2:
        message, done = result
        return EnvStep(None if message is None else str(message), bool(done))
    raise TypeError(
        f"Environment.step must return an EnvStep or a (message, done) tuple, got {result!r}"
    )


def call_maybe_async(func: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """``func(*args, **kwargs)``, run to completion when it is a coroutine function."""
    out = func(*args, **kwargs)
    if inspect.isawaitable(out):
        return asyncio.run(_await(out))
    return out


async def _await(awaitable: Any) -> Any:
    return await awaitable


def end_reward(env: Environment) -> float | None:
    """The environment's end reward: ``reward()`` if it has one, else None."""
    reward = getattr(env, "reward", None)
    if not callable(reward):
        return None
    value = call_maybe_async(reward)
    return None if value is None else float(value)


def env_columns(envs: Sequence[Environment]) -> dict[str, list[Any]]:
    """The reward-function columns the environments add, one value per episode: each
    environment's optional ``columns()`` mapping (e.g. TRL's ``environments``: the episode's
    instance); {} when none has the method. Every episode must give the same keys."""
    rows = [getattr(env, "columns", None) for env in envs]
    if not any(callable(c) for c in rows):
        return {}
    values = [dict(c()) if callable(c) else {} for c in rows]
    keys = list(values[0])
    for v in values:
        if list(v) != keys:
            raise ValueError(
                f"the environments' columns() differ within a batch ({sorted(keys)} vs "
                f"{sorted(v)}); every episode must give the same keys"
            )
    return {k: [v[k] for v in values] for k in keys}
