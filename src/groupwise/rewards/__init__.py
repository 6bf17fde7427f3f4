"""Reward functions: plain Python callables ``f(prompts, completions, **columns)``.

A reward function receives lists with one entry per completion: ``prompts``, ``completions``
(the decoded completion text), ``completion_ids`` (token ids), and every dataset column by
name (repeated for the G completions of a prompt). It returns one ``float`` (or ``None``: "not
applicable", ignored in the weighted sum) per completion. Several functions combine as a weighted
sum; each one's mean and std are logged as ``rewards/<name>/mean`` and ``rewards/<name>/std``.
"""

from groupwise.rewards.answer import answer_match, exact_match, format_reward, last_number
from groupwise.rewards.base import (
    BUILTIN_REWARDS,
    RewardError,
    RewardFunc,
    RewardRunner,
    resolve_reward,
)

__all__ = [
    "BUILTIN_REWARDS",
    "RewardError",
    "RewardFunc",
    "RewardRunner",
    "answer_match",
    "exact_match",
    "format_reward",
    "last_number",
    "resolve_reward",
]
