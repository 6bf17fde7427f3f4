"""Rewards for tool-using episodes: the policy's final answer, and whether a tool answered.

Only the text after the last ``</tool_response>`` counts as the answer (tool calls removed), so
a number the tool returned does not score unless the policy says it; a ``<tool_response>`` the
policy writes itself is not a tool's answer.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from groupwise.rewards.answer import last_number
from groupwise.rewards.base import register_reward

_CALL = re.compile(r"<tool_call>.*?(</tool_call>|$)", re.DOTALL)


def final_answer(completion: str) -> str:
    """The policy's last words: the text after the last ``</tool_response>``, calls removed."""
    tail = completion.rsplit("</tool_response>", 1)[-1]
    return _CALL.sub(" ", tail)


@register_reward("final_answer_match")
def final_answer_match(
    prompts: Sequence[Any],
    completions: Sequence[str],
    answer: Sequence[Any],
    truncated: Sequence[bool] | None = None,
    **_: Any,
) -> list[float]:
    """1.0 when the last number of the final answer (:func:`final_answer`) is ``answer``;
    0.0 for a truncated episode (``truncated``, passed by the trainer)."""
    cut = list(truncated) if truncated is not None else [False] * len(completions)
    out = []
    for completion, expected, was_cut in zip(completions, answer, cut, strict=True):
        got, want = last_number(final_answer(completion)), last_number(str(expected))
        out.append(float(got is not None and want is not None and got == want and not was_cut))
    return out


_ANSWERED = re.compile(
    r"<tool_call>.*?</tool_call>\s*(?:tool\s*)?<tool_response>(.*?)</tool_response>", re.DOTALL
)


@register_reward("tool_used")
def tool_used(prompts: Sequence[Any], completions: Sequence[str], **_: Any) -> list[float]:
    """1.0 when a tool call of the episode got a result that is not an error (a diagnostic:
    the policy writing ``<tool_response>`` itself does not count)."""
    return [
        float(any(not r.strip().startswith("error") for r in _ANSWERED.findall(c)))
        for c in completions
    ]
