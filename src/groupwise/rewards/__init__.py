"""Reward functions: plain Python callables ``f(prompts, completions, **columns)``.

A reward function receives lists with one entry per completion: ``prompts``, ``completions``
(the decoded completion text), ``completion_ids`` (token ids), and every dataset column by
name (repeated for the G completions of a prompt). It returns one ``float`` (or ``None``: "not
applicable", ignored in the weighted sum) per completion; it may be ``async def``. Several
functions combine as a weighted sum (run concurrently); each one's mean and std are logged as
``rewards/<name>/mean`` and ``rewards/<name>/std``.

Rewards are chosen by name in ``rewards.funcs`` (arguments in ``rewards.kwargs.<name>``) from
the registries :data:`REWARDS` and :data:`REWARD_FACTORIES`, which each reward joins with a
decorator where it is defined (``@register_reward("name")``; user code does the same). Built-ins:
answer_match, exact_match, number_only, math_verify, think_answer_format, overlong_penalty,
reasoning_gym_score, code_tests, code_pass, reward_model, repetition_penalty, length_penalty,
env_reward, env_solved, final_answer_match, tool_used, sentiment, on_topic.
"""

from typing import Any

from groupwise.rewards import base as _base
from groupwise.rewards.answer import answer_match, exact_match, format_reward, last_number
from groupwise.rewards.base import (
    REWARD_FACTORIES,
    REWARDS,
    AnyRewardFunc,
    AsyncRewardFunc,
    RewardError,
    RewardFunc,
    RewardRunner,
    TrainerState,
    register_reward,
    register_reward_factory,
    resolve_reward,
    rewards_from_config,
    trl_reward,
)

# The import order is the registration order, the order names are listed in (the manifest,
# groupwise.builtins, lists these modules first, in this order).
# isort: off
from groupwise.rewards.reward_model import reward_model
from groupwise.rewards.text import length_penalty, repetition_penalty
from groupwise.rewards.math import math_verify, overlong_penalty, think_answer_format
# isort: on

__all__ = [
    "BUILTIN_REWARDS",
    "REWARDS",
    "REWARD_FACTORIES",
    "AnyRewardFunc",
    "AsyncRewardFunc",
    "RewardError",
    "RewardFunc",
    "RewardRunner",
    "TrainerState",
    "answer_match",
    "exact_match",
    "format_reward",
    "last_number",
    "length_penalty",
    "math_verify",
    "overlong_penalty",
    "register_reward",
    "register_reward_factory",
    "repetition_penalty",
    "resolve_reward",
    "reward_model",
    "rewards_from_config",
    "think_answer_format",
    "trl_reward",
]


def __getattr__(name: str) -> Any:
    if name == "BUILTIN_REWARDS":  # computed on use: listing them imports every reward module
        return _base.builtin_reward_names()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
