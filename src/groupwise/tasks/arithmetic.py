"""Built-in arithmetic task: "What is a + b? Reply with only the number."

With a, b in 10..99 (the default), untrained SmolLM2-135M-Instruct answers some held-out
problems correctly with greedy decoding (figures in docs/log.md): weak but not hopeless, so GRPO
has signal to use.
Every (a, b) pair is enumerated, shuffled with the task seed and split, so the held-out problems
never appear in training.
"""

from __future__ import annotations

import itertools
import random

from groupwise.data.tasks import Row, Task, register_task
from groupwise.rewards.answer import answer_match

_SYMBOLS = {"add": "+", "sub": "-", "mul": "*"}
TEMPLATE = "What is {a} {op} {b}? Reply with only the number."


def _solve(a: int, op: str, b: int) -> int:
    return {"add": a + b, "sub": a - b, "mul": a * b}[op]


@register_task("arithmetic")
def arithmetic_task(
    *,
    train_size: int,
    eval_size: int,
    seed: int,
    min_value: int = 10,
    max_value: int = 99,
    operations: tuple[str, ...] | list[str] = ("add",),
    system_prompt: str | None = None,
) -> Task:
    """Two-operand integer arithmetic; each row has ``prompt`` and ``answer`` columns."""
    bad = [op for op in operations if op not in _SYMBOLS]
    if bad:
        raise ValueError(f"unknown operation {bad[0]!r}; valid: {', '.join(_SYMBOLS)}")
    if min_value > max_value:
        raise ValueError(f"min_value ({min_value}) > max_value ({max_value})")
    values = range(min_value, max_value + 1)
    problems = list(itertools.product(values, operations, values))
    if eval_size >= len(problems):
        raise ValueError(f"eval_size {eval_size} leaves no training problems ({len(problems)})")
    random.Random(seed).shuffle(problems)
    rows = [_row(a, op, b, system_prompt) for a, op, b in problems]
    held_out, train = rows[:eval_size], rows[eval_size:]
    return Task(
        name="arithmetic",
        train=train[:train_size],
        eval=held_out,
        reward_funcs=[answer_match],
        correctness=answer_match,
    )


def _row(a: int, op: str, b: int, system_prompt: str | None) -> Row:
    messages = [{"role": "user", "content": TEMPLATE.format(a=a, op=_SYMBOLS[op], b=b)}]
    if system_prompt:
        messages.insert(0, {"role": "system", "content": system_prompt})
    return {"prompt": messages, "answer": str(_solve(a, op, b))}
