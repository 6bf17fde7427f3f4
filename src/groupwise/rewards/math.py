"""Math rewards: answer correctness with math-verify, the think/answer format, DAPO overlong.

``math_verify`` needs the optional ``math-verify`` package (``pip install 'groupwise[math]'``).
"""

from __future__ import annotations

import re
import threading
from collections.abc import Sequence
from typing import Any

from groupwise.rewards.base import RewardFunc, register_reward, register_reward_factory

_ANSWER_TAG = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)
_FORMAT = re.compile(r"\s*<think>(.*?)</think>\s*<answer>(.*?)</answer>\s*", re.DOTALL)
_TAGS = ("<think>", "</think>", "<answer>", "</answer>")
_MAX_PARSE_CHARS = 4000  # math-verify looks at the end of the text; cap its work
# a plain number: sign, thousands separators, decimals, a simple fraction
_NUMBER = re.compile(r"-?\d+(?:,\d{3})*(?:\.\d+)?(?:/\d+)?")


def extract_tagged_answer(text: str) -> str | None:
    """The stripped content of the last ``<answer>...</answer>`` in ``text``, or None."""
    found = _ANSWER_TAG.findall(text)
    return found[-1].strip() if found else None


def _parse(text: str, *, gold: bool) -> list[Any]:
    """math-verify's ``parse`` (LaTeX incl. ``\\boxed{}``, then plain expressions/numbers).

    Its signal-based timeout works only in the main thread; elsewhere (the reward runner's
    worker threads) it is disabled and the input is capped at ``_MAX_PARSE_CHARS`` characters.
    """
    try:
        from math_verify import ExprExtractionConfig, LatexExtractionConfig, parse
    except ImportError as exc:
        raise ImportError(
            "the math_verify reward needs the 'math-verify' package: "
            "pip install 'groupwise[math]' (or pip install math-verify)"
        ) from exc
    timeout = 5 if threading.current_thread() is threading.main_thread() else None
    text = text if gold else text[-_MAX_PARSE_CHARS:]
    if gold and "$" not in text and "\\" not in text:
        text = f"${text}$"  # a bare gold answer ("1/2", "x+1") is read as one expression
    config = [LatexExtractionConfig(), ExprExtractionConfig()]
    return list(parse(text, extraction_config=config, parsing_timeout=timeout))


def _verify(gold: list[Any], pred: list[Any]) -> bool:
    from math_verify import verify

    timeout = 5 if threading.current_thread() is threading.main_thread() else None
    return bool(verify(gold, pred, timeout_seconds=timeout))


@register_reward("math_verify")
def math_verify(
    prompts: Sequence[Any], completions: Sequence[str], answer: Sequence[Any], **_: Any
) -> list[float | None]:
    """1.0 when the completion's final answer equals the ``answer`` column mathematically.

    The answer is read from the last ``<answer>...</answer>`` when present, else from the whole
    completion. There, a ``\\boxed{}`` wins; otherwise, when the gold answer is a plain number,
    the prediction is the *last number* written, and else math-verify takes the last LaTeX or
    plain expression. Equality is symbolic or numeric (``0.5 == \\frac{1}{2}``,
    ``1,234 == 1234``). A gold answer math-verify cannot parse gives None (not applicable); an
    unparseable completion gives 0.0.

    Why the last number: math-verify evaluates a plain expression, so a policy that merely
    restates the question ("86 - 23 =") would be scored as answering 63. A real run learned
    exactly that reward hack: its reward rose while held-out accuracy fell (docs/log.md).
    """
    rewards: list[float | None] = []
    for completion, expected in zip(completions, answer, strict=True):
        gold = _parse(str(expected), gold=True)
        if not gold:
            rewards.append(None)
            continue
        pred_text = _prediction_text(completion, numeric_gold=_is_plain_number(str(expected)))
        pred = _parse(pred_text, gold=False) if pred_text is not None else []
        rewards.append(float(bool(pred) and _verify(gold, pred)))
    return rewards


def _is_plain_number(text: str) -> bool:
    return _NUMBER.fullmatch(text.strip().strip("$").strip()) is not None


def _prediction_text(completion: str, *, numeric_gold: bool) -> str | None:
    """The text math-verify should read the prediction from (None: no answer given)."""
    tagged = extract_tagged_answer(completion)
    text = tagged if tagged is not None else completion
    if "\\boxed" in text or "$" in text or "\\(" in text:
        return text  # LaTeX: math-verify's own extraction (boxed first)
    if numeric_gold:
        numbers = _NUMBER.findall(text)
        return f"${numbers[-1].replace(',', '')}$" if numbers else None
    return f"${text}$" if tagged is not None else text


@register_reward("think_answer_format")
def think_answer_format(
    prompts: Sequence[Any], completions: Sequence[str], **_: Any
) -> list[float]:
    """1.0 for exactly ``<think>...</think><answer>...</answer>`` (whitespace around allowed).

    Each tag must occur exactly once, in that order, with a non-empty answer and nothing
    outside the two blocks; anything else is 0.0.
    """
    rewards = []
    for completion in completions:
        match = _FORMAT.fullmatch(completion)
        ok = (
            match is not None
            and all(completion.count(tag) == 1 for tag in _TAGS)
            and bool(match.group(2).strip())
        )
        rewards.append(float(ok))
    return rewards


@register_reward_factory("overlong_penalty")
def overlong_penalty(max_completion_length: int, cache_length: int) -> RewardFunc:
    """DAPO's soft overlong punishment (arXiv 2503.14476, eq. 13), as a reward function.

    With ``L_max = max_completion_length``, ``L_cache = cache_length`` and ``|y|`` the number
    of completion tokens (from the ``completion_ids`` column)::

        0                               if |y| <= L_max - L_cache
        (L_max - L_cache - |y|) / L_cache  if L_max - L_cache < |y| <= L_max
        -1                              if |y| > L_max

    The reward falls linearly from 0 to -1 over the last ``L_cache`` tokens of the budget.
    """
    if not 0 < cache_length <= max_completion_length:
        raise ValueError(
            f"cache_length must be in 1..max_completion_length ({max_completion_length}), "
            f"got {cache_length}"
        )
    safe = max_completion_length - cache_length

    def overlong_penalty(
        prompts: Sequence[Any],
        completions: Sequence[str],
        completion_ids: Sequence[Sequence[int]] | None = None,
        **_: Any,
    ) -> list[float]:
        """0, then linearly down to -1 over the last cache_length tokens, -1 beyond."""
        if completion_ids is None:
            raise ValueError("overlong_penalty needs the 'completion_ids' argument (token ids)")
        rewards = []
        for ids in completion_ids:
            length = len(ids)
            if length <= safe:
                rewards.append(0.0)
            elif length <= max_completion_length:
                rewards.append((safe - length) / cache_length)
            else:
                rewards.append(-1.0)
        return rewards

    return overlong_penalty
