"""Procedural tasks from ``reasoning-gym`` (``pip install 'groupwise[math]'``), scored by its verifiers.

Task ``reasoning_gym`` (``data.params: {name: chain_sum, config: {min_terms: 2}}``) generates
items with reasoning-gym's per-item seeds (item ``i`` of a dataset with seed ``s`` uses seed
``s + i``): held-out items use seeds ``S .. S + eval_size - 1`` and train items the next
``train_size`` seeds, with ``S = data.seed * 1_000_003``, so no item seed is shared; train
questions that still coincide with a held-out one are dropped. Generation is up front (cheap for
the generators tried; docs/log.md). Each row has
the question as a conversational ``prompt`` (after an optional system prompt) and the entry as
JSON-serialisable columns: ``question``, ``answer``, ``metadata``, ``rg_dataset``, ``rg_config``.

The task's reward, ``reasoning_gym_score`` (:mod:`groupwise.tasks.reasoning_gym.rewards`, re-exported
here), calls the dataset's own ``score_answer`` (a float in [0, 1]) on the answer extracted from
the completion by :func:`extract_answer`.
"""

from __future__ import annotations

import json
from typing import Any

from groupwise.data.tasks import Row, Task, register_task
from groupwise.tasks.reasoning_gym.rewards import (
    extract_answer,
    import_reasoning_gym,
    reasoning_gym_correct,
    reasoning_gym_score,
)

__all__ = [
    "DEFAULT_SYSTEM_PROMPT",
    "extract_answer",
    "reasoning_gym_correct",
    "reasoning_gym_score",
    "reasoning_gym_task",
]

DEFAULT_SYSTEM_PROMPT = (
    "Think step by step, then give only the final answer inside <answer></answer> tags."
)


def _json_safe(value: Any) -> Any:
    """``value`` as plain JSON data (tuples become lists, unknown objects their ``str``)."""
    return json.loads(json.dumps(value, default=str))


def _rows(
    name: str, config: dict[str, Any], seed: int, size: int, system_prompt: str | None
) -> list[Row]:
    rg = import_reasoning_gym()
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
    rg = import_reasoning_gym()
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
