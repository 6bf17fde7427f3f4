"""``env_reward``: the environment's own end-of-episode reward, as a reward function."""

from collections.abc import Sequence
from typing import Any

from groupwise.rewards.base import register_reward


@register_reward("env_reward")
def env_reward(
    prompts: Sequence[Any], completions: Sequence[str], **columns: Any
) -> list[float | None]:
    """Reward function returning the environment's own end reward of each episode.

    The ``episodes`` engine records it per row as the ``env_reward`` column; None (no reward)
    where the environment has none. Use it in ``rewards.funcs`` next to text-based rewards.
    """
    values = columns.get("env_reward")
    if values is None:
        raise ValueError(
            "env_reward: no 'env_reward' column; it is filled by rollout.engine=episodes"
        )
    return [None if v is None else float(v) for v in values]


@register_reward("env_solved")
def env_solved(prompts: Sequence[Any], completions: Sequence[str], **columns: Any) -> list[float]:
    """1.0 where the environment's end reward (the ``env_reward`` column) is positive, else 0.0:
    the share of episodes the environment counted as a success (e.g. a game won)."""
    return [float(v is not None and v > 0) for v in env_reward(prompts, completions, **columns)]
