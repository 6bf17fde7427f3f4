"""Built-in answer and format rewards."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from groupwise.rewards.base import RewardFunc, register_reward

_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?")


def last_number(text: str) -> float | None:
    """The last number written in ``text`` (``1,234`` and ``-5.5`` included), or None."""
    found = _NUMBER.findall(text)
    if not found:
        return None
    try:
        return float(found[-1].replace(",", ""))
    except ValueError:
        return None


@register_reward("answer_match")
def answer_match(
    prompts: Sequence[Any],
    completions: Sequence[str],
    answer: Sequence[Any],
    truncated: Sequence[bool] | None = None,
    require_finished: bool = True,
    **_: Any,
) -> list[float]:
    """1.0 when the last number in the completion equals the ``answer`` column, else 0.0.

    ``require_finished`` (default; ``rewards.kwargs: {answer_match: {require_finished: false}}``
    turns it off): a completion cut off at ``max_completion_length`` (``truncated``, passed by
    the trainer; evaluation passes none) scores 0, since the last number of a cut-off text need
    not be its answer. Seen in a real run: the policy learned to follow the answer with chatter
    that the 16-token limit cut off before another number ("44 + 45 equals 89, which is the sum
    of"); at evaluation's 32 tokens the chatter named other numbers, and held-out accuracy fell;
    requiring a finished completion fixed it (docs/log.md).
    """
    cut = list(truncated) if truncated is not None else [False] * len(completions)
    rewards = []
    for completion, expected, was_cut in zip(completions, answer, cut, strict=True):
        got = last_number(completion)
        want = last_number(str(expected))
        ok = got is not None and want is not None and abs(got - want) < 1e-9
        rewards.append(float(ok and not (require_finished and was_cut)))
    return rewards


@register_reward("exact_match")
def exact_match(
    prompts: Sequence[Any], completions: Sequence[str], answer: Sequence[Any], **_: Any
) -> list[float]:
    """1.0 when the stripped completion equals the stripped ``answer`` column, else 0.0."""
    return [float(c.strip() == str(a).strip()) for c, a in zip(completions, answer, strict=True)]


def format_reward(pattern: str, *, name: str | None = None, full: bool = True) -> RewardFunc:
    """A reward of 1.0 for completions matching the regex ``pattern`` (whole text if ``full``).

    Example: ``format_reward(r"<think>.*?</think>\\s*<answer>.*?</answer>")``.
    """
    regex = re.compile(pattern, re.DOTALL)

    def reward(prompts: Sequence[Any], completions: Sequence[str], **_: Any) -> list[float]:
        match = regex.fullmatch if full else regex.search
        return [float(match(c.strip()) is not None) for c in completions]

    reward.__name__ = name or "format"
    return reward


@register_reward("number_only")
def number_only(prompts: Sequence[Any], completions: Sequence[str], **_: Any) -> list[float]:
    """1.0 when the completion is a single number and nothing else."""
    return [float(re.fullmatch(r"-?\d[\d,]*(\.\d+)?", c.strip()) is not None) for c in completions]
