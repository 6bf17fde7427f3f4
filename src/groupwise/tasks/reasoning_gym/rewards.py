"""The reward ``reasoning_gym_score``: a reasoning-gym dataset's own verifier.

It calls the dataset's ``score_answer`` (a float in [0, 1]) on the answer extracted from the
completion by :func:`extract_answer`, rebuilding the entry from the row's columns
``question``, ``answer``, ``metadata``, ``rg_dataset`` and ``rg_config`` (rows of the
``reasoning_gym`` task, :mod:`groupwise.tasks.reasoning_gym.data`, carry all of these). Needs the
optional ``reasoning-gym`` package (``pip install 'groupwise[math]'``).
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Callable, Sequence
from typing import Any

from groupwise.rewards.base import register_reward

_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?")
_ANSWER_TAG = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)
_SCORERS: dict[tuple[str, str], Callable[[Any, dict[str, Any]], float]] = {}
_SCORERS_LOCK = threading.Lock()


def import_reasoning_gym() -> Any:
    """The ``reasoning_gym`` module, or an ImportError saying how to install it."""
    try:
        import reasoning_gym
    except ImportError as exc:
        raise ImportError(
            "the reasoning_gym task and reward need the 'reasoning-gym' package: "
            "pip install 'groupwise[math]' (or pip install reasoning-gym)"
        ) from exc
    return reasoning_gym


def _is_number(text: str) -> bool:
    return _NUMBER.fullmatch(text.strip()) is not None


def extract_answer(completion: str, reference: str | None = None) -> str | None:
    """The answer part of a completion, for ``score_answer``.

    1. The content of the last ``<answer>...</answer>``, stripped, if any;
    2. else, when the reference answer is a number, the last number in the text (commas
       removed: ``"so 1,234 in total"`` -> ``"1234"``);
    3. else the last non-empty line, stripped; None for an empty completion.
    """
    tagged = _ANSWER_TAG.findall(completion)
    if tagged:
        return str(tagged[-1]).strip()
    if reference is not None and _is_number(reference):
        numbers = _NUMBER.findall(completion)
        return numbers[-1].replace(",", "") if numbers else None
    lines = [line.strip() for line in completion.splitlines() if line.strip()]
    return lines[-1] if lines else None


def _scorer(name: str, config: dict[str, Any]) -> Callable[[Any, dict[str, Any]], float]:
    """The ``score_answer`` of dataset ``name`` built with ``config`` (cached per process)."""
    key = (name, json.dumps(config, sort_keys=True))
    with _SCORERS_LOCK:
        if key not in _SCORERS:
            rg = import_reasoning_gym()
            _SCORERS[key] = rg.create_dataset(name, seed=0, size=1, **config).score_answer
        return _SCORERS[key]


@register_reward("reasoning_gym_score")
def reasoning_gym_score(
    prompts: Sequence[Any],
    completions: Sequence[str],
    question: Sequence[str],
    answer: Sequence[str],
    metadata: Sequence[dict[str, Any]],
    rg_dataset: Sequence[str],
    rg_config: Sequence[dict[str, Any] | None] | None = None,
    **_: Any,
) -> list[float]:
    """The dataset's ``score_answer(extract_answer(completion), entry)``, in [0, 1].

    ``entry`` is rebuilt from the ``question``, ``answer`` and ``metadata`` columns; the scorer
    is the dataset ``rg_dataset`` built with ``rg_config`` (rows of the ``reasoning_gym``
    task carry all of these). Some datasets give partial credit (e.g. countdown: 0.01 for a
    wrong expression).
    """
    configs = rg_config if rg_config is not None else [None] * len(completions)
    rewards = []
    for completion, q, a, meta, name, config in zip(
        completions, question, answer, metadata, rg_dataset, configs, strict=True
    ):
        entry = {"question": q, "answer": a, "metadata": meta}
        guess = extract_answer(completion, str(a))
        score = _scorer(name, dict(config or {}))(guess, entry)
        rewards.append(float(score))
    return rewards


def reasoning_gym_correct(
    prompts: Sequence[Any], completions: Sequence[str], **columns: Any
) -> list[float]:
    """1.0 when ``reasoning_gym_score`` gives full marks (1.0), else 0.0: held-out accuracy."""
    scores = reasoning_gym_score(prompts, completions, **columns)
    return [float(s >= 1.0) for s in scores]
