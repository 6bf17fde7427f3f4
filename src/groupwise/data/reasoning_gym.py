"""Procedural tasks from ``reasoning-gym`` (``pip install 'groupwise[math]'``), scored by its verifiers.

Task ``reasoning_gym`` (``data.params: {name: chain_sum, config: {min_terms: 2}}``) generates
items with reasoning-gym's per-item seeds (item ``i`` of a dataset with seed ``s`` uses seed
``s + i``): held-out items use seeds ``S .. S + eval_size - 1`` and train items the next
``train_size`` seeds, with ``S = data.seed * 1_000_003``, so no item seed is shared; train
questions that still coincide with a held-out one are dropped. Generation is up front (most
generators take well under 1 ms per item; countdown about 12 ms). Each row has
the question as a conversational ``prompt`` (after an optional system prompt) and the entry as
JSON-serialisable columns: ``question``, ``answer``, ``metadata``, ``rg_dataset``, ``rg_config``.

The reward ``reasoning_gym`` calls the dataset's own ``score_answer`` (a float in [0, 1]) on the
answer extracted from the completion by :func:`extract_answer`.
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Callable, Sequence
from typing import Any

from groupwise.data.tasks import Row, Task, register_task

DEFAULT_SYSTEM_PROMPT = (
    "Think step by step, then give only the final answer inside <answer></answer> tags."
)
_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?")
_ANSWER_TAG = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)
_SCORERS: dict[tuple[str, str], Callable[[Any, dict[str, Any]], float]] = {}
_SCORERS_LOCK = threading.Lock()


def _import_reasoning_gym() -> Any:
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


def _json_safe(value: Any) -> Any:
    """``value`` as plain JSON data (tuples become lists, unknown objects their ``str``)."""
    return json.loads(json.dumps(value, default=str))


def _scorer(name: str, config: dict[str, Any]) -> Callable[[Any, dict[str, Any]], float]:
    """The ``score_answer`` of dataset ``name`` built with ``config`` (cached per process)."""
    key = (name, json.dumps(config, sort_keys=True))
    with _SCORERS_LOCK:
        if key not in _SCORERS:
            rg = _import_reasoning_gym()
            _SCORERS[key] = rg.create_dataset(name, seed=0, size=1, **config).score_answer
        return _SCORERS[key]


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


def _rows(
    name: str, config: dict[str, Any], seed: int, size: int, system_prompt: str | None
) -> list[Row]:
    rg = _import_reasoning_gym()
    dataset = rg.create_dataset(name, seed=seed, size=size, **config)
    rows = []
    for i in range(size):
        entry = dataset[i]
        prompt = [{"role": "user", "content": str(entry["question"])}]
        if system_prompt:
            prompt.insert(0, {"role": "system", "content": system_prompt})
        rows.append(
            {
                "prompt": prompt,
                "question": str(entry["question"]),
                "answer": str(entry["answer"]),
                "metadata": _json_safe(entry.get("metadata", {})),
                "rg_dataset": name,
                "rg_config": _json_safe(config),
            }
        )
    return rows


@register_task("reasoning_gym")
def reasoning_gym_task(
    *,
    train_size: int,
    eval_size: int,
    seed: int,
    name: str,
    config: dict[str, Any] | None = None,
    system_prompt: str | None = DEFAULT_SYSTEM_PROMPT,
) -> Task:
    """A reasoning-gym dataset by ``name`` with generator ``config``, scored by its verifier."""
    rg = _import_reasoning_gym()
    config = dict(config or {})
    for reserved in ("seed", "size"):
        if reserved in config:
            raise ValueError(
                f"data.params.config.{reserved}: set by groupwise "
                "(use data.seed, data.train_size and data.eval_size)"
            )
    try:
        rg.create_dataset(name, seed=0, size=1, **config)
    except (ValueError, TypeError, AssertionError) as exc:
        valid = ", ".join(sorted(rg.factory.DATASETS)[:12])
        raise ValueError(
            f"data.params: reasoning-gym dataset {name!r} with config {config}: {exc} "
            f"(datasets include {valid}, ...)"
        ) from exc
    start = (seed * 1_000_003) % 2**31
    held_out = _rows(name, config, start, eval_size, system_prompt) if eval_size else []
    seen = {row["question"] for row in held_out}
    train = [
        row
        for row in _rows(name, config, start + eval_size, train_size, system_prompt)
        if row["question"] not in seen
    ]
    if not train:
        raise ValueError(f"data.train_size: no training questions left for {name!r}")
    return Task(
        name=f"reasoning_gym/{name}",
        train=train,
        eval=held_out,
        reward_funcs=[reasoning_gym_score],
        correctness=reasoning_gym_correct,
    )
