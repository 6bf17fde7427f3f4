"""Prompt datasets from local files: JSONL, JSON, CSV/TSV, Parquet, or ``datasets`` on disk.

Every row must have a prompt column holding plain text or a conversation (a non-empty list of
``{"role": str, "content": str}`` messages; in CSV a cell may hold such a list as JSON). Other
columns are kept and reach reward functions by name; a column missing from some rows is None
there. A bad row is rejected with the file, its row number (1-based; JSONL and CSV also give
the line) and what is wrong.

Task ``file`` (``data.task: file``) splits the rows into train and held-out with a seeded
shuffle (or takes the held-out rows from ``eval_path``).
"""

from __future__ import annotations

import csv
import gzip
import json
import random
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from groupwise.data.tasks import Row, Task, register_task
from groupwise.rewards.base import RewardFunc, is_async_reward, resolve_reward

RESERVED_COLUMNS = ("prompts", "completions", "completion_ids")
"""Column names that would clash with the arguments every reward function receives."""
Record = tuple[str, Any]
"""(where, raw row): ``where`` is e.g. ``"row 3 (line 4)"``."""


class DataFileError(ValueError):
    """A data file or one of its rows cannot be used; the message names the file and row."""


def read_records(path: str | Path, *, split: str = "train") -> list[Record]:
    """Raw rows of a data file with their location, by file type.

    ``.jsonl`` (optionally ``.gz``): one JSON object per line, blank lines skipped. ``.json``:
    an array of objects. ``.csv``/``.tsv``: a header row, then one row per record (all values
    are strings). ``.parquet``: via ``pyarrow``. A directory: ``datasets.load_from_disk`` (a
    ``DatasetDict`` gives its ``split``).
    """
    file = Path(path).expanduser()
    if not file.exists():
        raise DataFileError(f"{file}: no such file or directory")
    name = file.name.lower()
    if file.is_dir():
        return list(_read_saved_dataset(file, split))
    if name.endswith((".jsonl", ".jsonl.gz", ".ndjson")):
        return list(_read_jsonl(file))
    if name.endswith(".json"):
        return _read_json_array(file)
    if name.endswith((".csv", ".tsv")):
        return list(_read_csv(file, "\t" if name.endswith(".tsv") else ","))
    if name.endswith(".parquet"):
        return _read_parquet(file)
    raise DataFileError(
        f"{file}: unknown file type; use .jsonl, .json, .csv, .tsv, .parquet or a directory "
        "saved with datasets' save_to_disk"
    )


def _read_jsonl(file: Path) -> Iterator[Record]:
    opener = gzip.open if file.name.lower().endswith(".gz") else open
    with opener(file, "rt", encoding="utf-8") as handle:
        row = 0
        for line_number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            row += 1
            where = f"row {row} (line {line_number})"
            try:
                yield where, json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataFileError(f"{file}: {where}: invalid JSON: {exc}") from None


def _read_json_array(file: Path) -> list[Record]:
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise DataFileError(f"{file}: invalid JSON: {exc}") from None
    if not isinstance(data, list):
        raise DataFileError(f"{file}: a .json data file must hold an array of row objects")
    return [(f"row {i}", value) for i, value in enumerate(data, start=1)]


def _read_csv(file: Path, delimiter: str) -> Iterator[Record]:
    with open(file, newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle, delimiter=delimiter)
        for row, record in enumerate(reader, start=1):
            where = f"row {row} (line {reader.line_num})"
            if None in record:
                raise DataFileError(f"{file}: {where}: more values than header columns")
            yield where, {k: v for k, v in record.items() if v is not None}


def _read_parquet(file: Path) -> list[Record]:
    try:
        import pyarrow.parquet as pq
    except ImportError as exc:
        raise DataFileError(
            f"{file}: reading Parquet needs 'pyarrow' (pip install pyarrow)"
        ) from exc
    rows = pq.read_table(file).to_pylist()
    return [(f"row {i}", value) for i, value in enumerate(rows, start=1)]


def _read_saved_dataset(directory: Path, split: str) -> Iterator[Record]:
    try:
        import datasets
    except ImportError as exc:
        raise DataFileError(
            f"{directory}: a directory is read with datasets.load_from_disk, which needs the "
            "'datasets' package (pip install datasets)"
        ) from exc
    try:
        loaded = datasets.load_from_disk(str(directory))
    except (FileNotFoundError, ValueError) as exc:
        raise DataFileError(f"{directory}: not a dataset saved with save_to_disk: {exc}") from exc
    if isinstance(loaded, datasets.DatasetDict):
        if split not in loaded:
            raise DataFileError(
                f"{directory}: DatasetDict has no split {split!r} (splits: {', '.join(loaded)})"
            )
        loaded = loaded[split]
    for i, value in enumerate(loaded, start=1):
        yield f"row {i}", value


def check_prompt(value: Any, *, column: str, where: str) -> str | list[dict[str, str]]:
    """Validate a prompt cell: non-empty text, or a non-empty list of role/content messages.

    A string that holds a JSON list of messages (as CSV cells do) is decoded. Raises
    ``ValueError`` with ``where`` and what is wrong.
    """
    if isinstance(value, str) and value.lstrip().startswith("[{"):
        try:
            decoded = json.loads(value)
        except json.JSONDecodeError:
            decoded = None
        if isinstance(decoded, list):
            value = decoded
    if isinstance(value, str):
        if not value.strip():
            raise ValueError(f"{where}: prompt column {column!r} is empty")
        return value
    if not isinstance(value, (list, tuple)):
        raise ValueError(
            f"{where}: prompt column {column!r} must be a string or a list of "
            f"{{role, content}} messages, got {type(value).__name__}"
        )
    if not value:
        raise ValueError(f"{where}: prompt column {column!r} is an empty conversation")
    messages = []
    for i, message in enumerate(value):
        if not isinstance(message, dict):
            raise ValueError(f"{where}: {column}[{i}] is {type(message).__name__}, not a message")
        role, content = message.get("role"), message.get("content")
        if not isinstance(role, str) or not role:
            raise ValueError(f"{where}: {column}[{i}] has no string 'role'")
        if not isinstance(content, str):
            raise ValueError(f"{where}: {column}[{i}] ({role}) has no string 'content'")
        messages.append({"role": role, "content": content})
    return messages


def load_rows(
    path: str | Path,
    *,
    prompt_column: str = "prompt",
    answer_column: str | None = None,
    answer_delimiter: str | None = None,
    prompt_template: str | None = None,
    system_prompt: str | None = None,
    as_chat: bool = False,
    split: str = "train",
) -> list[Row]:
    """Rows with a validated ``prompt`` plus every other column (see the module docstring).

    ``prompt_column`` is renamed to ``prompt``; ``answer_column`` (if given) to ``answer``,
    keeping only the text after the last ``answer_delimiter`` when that is set (GSM8K: "####").
    ``prompt_template`` formats text prompts (``{prompt}`` and any column name). Text prompts
    become a user message when ``as_chat`` or ``system_prompt`` is set; ``system_prompt`` is
    put first in conversations that have no system message.
    """
    file = Path(path).expanduser()
    if prompt_template is not None and "{prompt}" not in prompt_template:
        raise DataFileError("prompt_template must contain '{prompt}'")
    rows = []
    for where, record in read_records(file, split=split):
        try:
            rows.append(
                _make_row(
                    record,
                    where=where,
                    prompt_column=prompt_column,
                    answer_column=answer_column,
                    answer_delimiter=answer_delimiter,
                    prompt_template=prompt_template,
                    system_prompt=system_prompt,
                    as_chat=as_chat,
                )
            )
        except ValueError as exc:
            raise DataFileError(f"{file}: {exc}") from None
    if not rows:
        raise DataFileError(f"{file}: no rows")
    return fill_missing_columns(rows)


def _make_row(
    record: Any,
    *,
    where: str,
    prompt_column: str,
    answer_column: str | None,
    answer_delimiter: str | None,
    prompt_template: str | None,
    system_prompt: str | None,
    as_chat: bool,
) -> Row:
    """One validated row (see :func:`load_rows`); raises ``ValueError`` naming ``where``."""
    if not isinstance(record, dict):
        raise ValueError(f"{where}: expected an object with columns, got {type(record).__name__}")
    if prompt_column not in record:
        columns = ", ".join(map(str, record)) or "none"
        raise ValueError(f"{where}: no {prompt_column!r} column (columns: {columns})")
    row = {str(k): v for k, v in record.items() if k != prompt_column}
    clash = [c for c in RESERVED_COLUMNS if c in row]
    if clash:
        raise ValueError(f"{where}: column {clash[0]!r} clashes with a reward argument; rename it")
    prompt = check_prompt(record[prompt_column], column=prompt_column, where=where)
    if answer_column is not None:
        if answer_column not in record:
            raise ValueError(f"{where}: no answer column {answer_column!r}")
        row["answer"] = row.pop(answer_column, record[answer_column])
    if answer_delimiter is not None and "answer" in row:
        text = str(row["answer"])
        if answer_delimiter not in text:
            raise ValueError(f"{where}: answer has no delimiter {answer_delimiter!r}: {text!r}")
        row["answer"] = text.rsplit(answer_delimiter, 1)[1].strip()
    if isinstance(prompt, str) and prompt_template is not None:
        try:
            prompt = prompt_template.format_map({**row, "prompt": prompt})
        except (KeyError, IndexError, ValueError) as exc:
            raise ValueError(f"{where}: prompt_template cannot be filled: {exc!r}") from None
    row["prompt"] = _with_system(prompt, system_prompt, as_chat)
    return row


def _with_system(
    prompt: str | list[dict[str, str]], system_prompt: str | None, as_chat: bool
) -> str | list[dict[str, str]]:
    if isinstance(prompt, str):
        if not (as_chat or system_prompt):
            return prompt
        prompt = [{"role": "user", "content": prompt}]
    if system_prompt and prompt[0]["role"] != "system":
        prompt = [{"role": "system", "content": system_prompt}, *prompt]
    return prompt


def fill_missing_columns(rows: list[Row]) -> list[Row]:
    """Give every row every column (None where absent): rewards get one value per row."""
    columns: dict[str, None] = {}
    for row in rows:
        columns.update(dict.fromkeys(row))
    return [{k: row.get(k) for k in columns} for row in rows]


def split_rows(
    rows: Sequence[Row],
    *,
    seed: int,
    train_size: int,
    eval_size: int,
    eval_fraction: float | None = None,
    eval_rows: Sequence[Row] | None = None,
    source: str = "data",
) -> tuple[list[Row], list[Row]]:
    """Seeded train/held-out split: (train, held-out), disjoint.

    The rows are shuffled with ``seed``. Held-out rows are ``eval_rows`` when given (shuffled,
    at most ``eval_size``), else the first ``round(eval_fraction * n)`` rows when
    ``eval_fraction`` is set, else the first ``eval_size`` rows. Train keeps at most
    ``train_size`` of the rest.
    """
    order = list(rows)
    random.Random(seed).shuffle(order)
    if eval_rows is not None:
        held = list(eval_rows)
        random.Random(seed + 1).shuffle(held)
        return order[:train_size], held[:eval_size]
    if eval_fraction is not None:
        if not 0 <= eval_fraction < 1:
            raise ValueError(f"data.params.eval_fraction must be in [0, 1), got {eval_fraction}")
        count = round(eval_fraction * len(order))
        key = "data.params.eval_fraction"
    else:
        count, key = eval_size, "data.eval_size"
    if count >= len(order):
        raise ValueError(
            f"{key}: {count} held-out rows leave no training rows out of {len(order)} in "
            f"{source}; lower it or give data.params.eval_path"
        )
    return order[count:][:train_size], order[:count]


def named_reward(name: str | None, key: str) -> RewardFunc | None:
    """A built-in reward by name for a task's correctness (must be sync), or None."""
    if name is None:
        return None
    try:
        func = resolve_reward(name)
    except ValueError as exc:
        raise ValueError(f"{key}: {exc}") from exc
    if is_async_reward(func):
        raise ValueError(f"{key}: {name!r} is async; held-out accuracy needs a sync reward")
    return func  # type: ignore[return-value]


@register_task("file")
def file_task(
    *,
    train_size: int,
    eval_size: int,
    seed: int,
    path: str,
    eval_path: str | None = None,
    eval_fraction: float | None = None,
    prompt_column: str = "prompt",
    answer_column: str | None = None,
    answer_delimiter: str | None = None,
    prompt_template: str | None = None,
    system_prompt: str | None = None,
    as_chat: bool = False,
    split: str = "train",
    eval_split: str = "test",
    correctness: str | None = None,
) -> Task:
    """Prompts from a local JSONL/JSON/CSV/TSV/Parquet file or saved ``datasets`` directory.

    Params: ``path``; held-out rows from ``eval_path`` or ``eval_fraction`` (else
    ``data.eval_size`` rows); column options as in :func:`load_rows`; ``correctness``: a
    built-in reward name (e.g. ``math_verify``) used as the default reward and for held-out
    accuracy.
    """
    options: dict[str, Any] = {
        "prompt_column": prompt_column,
        "answer_column": answer_column,
        "answer_delimiter": answer_delimiter,
        "prompt_template": prompt_template,
        "system_prompt": system_prompt,
        "as_chat": as_chat,
    }
    rows = load_rows(path, split=split, **options)
    held = load_rows(eval_path, split=eval_split, **options) if eval_path else None
    if held is not None and eval_fraction is not None:
        raise ValueError("data.params: give eval_path or eval_fraction, not both")
    train, held_out = split_rows(
        rows,
        seed=seed,
        train_size=train_size,
        eval_size=eval_size,
        eval_fraction=eval_fraction,
        eval_rows=held,
        source=str(path),
    )
    check = named_reward(correctness, "data.params.correctness")
    return Task(
        name="file",
        train=train,
        eval=held_out,
        reward_funcs=[check] if check is not None else [],
        correctness=check,
    )
