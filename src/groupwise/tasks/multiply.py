"""Built-in task ``multiply``: products of two 2-3 digit numbers, with a ``calculator`` tool.

"What is 347 * 86?" is beyond what SmolLM2-135M-Instruct computes in its head; with the
``calculator`` environment (:mod:`groupwise.tasks.calculator`, ``rollout.engine=episodes``) it
can call the tool and copy the result. With ``tools: true`` (default) the prompt says how, in the
exact text protocol, with a worked call on other numbers (``TOOL_HINT``); ``tools: false`` asks
the bare question (the no-tool baseline, e.g. ``groupwise eval`` with the local engine).

Problems are distinct unordered pairs (a, b) drawn with the task seed; the first ``eval_size``
are held out and never appear in training (in either order).

Correctness (:func:`final_answer_match`) reads the policy's final answer only: the text after the
last tool response, tool calls removed, must end in the product (a number copied by the tool
response alone does not count); a truncated episode scores 0 in training.
"""

from __future__ import annotations

import random

from groupwise.data.tasks import Row, Task, register_task
from groupwise.rewards.tools import final_answer_match

QUESTION = "What is {a} * {b}?"
TOOL_SYSTEM = (
    "You have a calculator tool. To use it, write exactly:\n"
    '<tool_call>{"name": "calculator", "arguments": {"expression": "<a> * <b>"}}</tool_call>\n'
    "with the numbers of the question. The result comes back as "
    "<tool_response>...</tool_response>. Then reply with only that number."
)
NO_TOOL_HINT = "Reply with only the number."
EXAMPLES = ((12, 34), (305, 27), (48, 716))


@register_task("multiply")
def multiply_task(
    *,
    train_size: int,
    eval_size: int,
    seed: int,
    min_value: int = 10,
    max_value: int = 999,
    tools: bool = True,
    demos: int = 3,
    system_prompt: str | None = None,
) -> Task:
    """Rows ``{"prompt": [messages], "answer": str(a * b)}``."""
    if min_value > max_value:
        raise ValueError(f"min_value ({min_value}) > max_value ({max_value})")
    span = max_value - min_value + 1
    available = span * (span + 1) // 2
    if eval_size + 1 > available:
        raise ValueError(f"eval_size {eval_size} leaves no training problems ({available})")
    rng = random.Random(seed)
    wanted = min(available, eval_size + train_size)
    seen: set[tuple[int, int]] = set()
    pairs: list[tuple[int, int]] = []
    while len(pairs) < wanted:
        a, b = rng.randint(min_value, max_value), rng.randint(min_value, max_value)
        key = (min(a, b), max(a, b))
        if key not in seen:
            seen.add(key)
            pairs.append((a, b))
    rows = [_row(a, b, tools, demos, system_prompt) for a, b in pairs]
    return Task(
        name="multiply",
        train=rows[eval_size:],
        eval=rows[:eval_size],
        reward_funcs=[final_answer_match],
        correctness=final_answer_match,
    )


def tool_call_text(a: int, b: int) -> str:
    """The exact call the prompt teaches, for ``a * b``."""
    args = f'{{"expression": "{a} * {b}"}}'
    return f'<tool_call>{{"name": "calculator", "arguments": {args}}}</tool_call>'


def _row(a: int, b: int, tools: bool, demos: int, system_prompt: str | None) -> Row:
    if not tools:
        messages = [{"role": "user", "content": f"{QUESTION.format(a=a, b=b)} {NO_TOOL_HINT}"}]
        if system_prompt:
            messages.insert(0, {"role": "system", "content": system_prompt})
        return {"prompt": messages, "answer": str(a * b)}
    system = f"{system_prompt}\n\n{TOOL_SYSTEM}" if system_prompt else TOOL_SYSTEM
    messages = [{"role": "system", "content": system}]
    for x, y in EXAMPLES[:demos]:  # worked exchanges on other numbers
        messages += [
            {"role": "user", "content": QUESTION.format(a=x, b=y)},
            {"role": "assistant", "content": tool_call_text(x, y)},
            {"role": "tool", "content": f"<tool_response>{x * y}</tool_response>"},
            {"role": "assistant", "content": str(x * y)},
        ]
    messages.append({"role": "user", "content": QUESTION.format(a=a, b=b)})
    return {"prompt": messages, "answer": str(a * b)}
