from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import pytest

from groupwise.data import build_task
from groupwise.data.files import DataFileError, load_rows, read_records, split_rows

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "data"
CHAT = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi?"}]


def _jsonl(path: Path, rows: list[Any]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _task(params: dict[str, Any], **sizes: int) -> Any:
    sizes = {"train_size": 1000, "eval_size": 2, "seed": 0, **sizes}
    return build_task("file", params=params, **sizes)


def test_jsonl_text_and_conversational_rows_keep_columns(tmp_path: Path) -> None:
    path = _jsonl(
        tmp_path / "d.jsonl",
        [{"prompt": "2+2?", "answer": "4", "level": 1}, {"prompt": CHAT, "answer": "hello"}],
    )
    rows = load_rows(path)
    assert rows[0] == {"prompt": "2+2?", "answer": "4", "level": 1}
    assert rows[1] == {"prompt": CHAT, "answer": "hello", "level": None}  # missing -> None


def test_blank_lines_skipped_and_row_numbers_count_rows(tmp_path: Path) -> None:
    path = tmp_path / "d.jsonl"
    path.write_text('{"prompt": "a"}\n\n{"question": "b"}\n')
    with pytest.raises(DataFileError) as info:
        load_rows(path)
    message = str(info.value)
    assert str(path) in message and "row 2 (line 3)" in message
    assert "no 'prompt' column (columns: question)" in message


@pytest.mark.parametrize(
    ("row", "expected"),
    [
        ({"prompt": 42}, "must be a string or a list of {role, content} messages, got int"),
        ({"prompt": None}, "got NoneType"),
        ({"prompt": "   "}, "prompt column 'prompt' is empty"),
        ({"prompt": []}, "is an empty conversation"),
        ({"prompt": [{"role": "user"}]}, "prompt[0] (user) has no string 'content'"),
        ({"prompt": [{"content": "x"}]}, "prompt[0] has no string 'role'"),
        ({"prompt": ["hi"]}, "prompt[0] is str, not a message"),
        ([1, 2], "expected an object with columns, got list"),
        ({"prompt": "ok", "completions": "x"}, "column 'completions' clashes"),
    ],
)
def test_bad_rows_name_file_row_and_problem(tmp_path: Path, row: Any, expected: str) -> None:
    path = _jsonl(tmp_path / "bad.jsonl", [{"prompt": "fine"}, row])
    with pytest.raises(DataFileError) as info:
        load_rows(path)
    message = str(info.value)
    assert message.startswith(f"{path}: row 2 (line 2): ")
    assert expected in message


def test_invalid_json_line_is_named(tmp_path: Path) -> None:
    path = tmp_path / "d.jsonl"
    path.write_text('{"prompt": "a"}\n{"prompt": oops}\n')
    with pytest.raises(DataFileError, match=r"row 2 \(line 2\): invalid JSON"):
        load_rows(path)


def test_csv_text_and_json_message_cells(tmp_path: Path) -> None:
    path = tmp_path / "d.csv"
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["question", "answer"])
        writer.writerow(["What is 3+4?", "7"])
        writer.writerow([json.dumps(CHAT), "x"])
        writer.writerow(["[not json", "y"])
    rows = load_rows(path, prompt_column="question")
    assert [r["prompt"] for r in rows] == ["What is 3+4?", CHAT, "[not json"]
    assert rows[0]["answer"] == "7"
    with open(path, "a", newline="") as handle:
        csv.writer(handle).writerow(["", "8"])
    with pytest.raises(DataFileError, match=r"d\.csv: row 4 \(line 5\): prompt column 'question'"):
        load_rows(path, prompt_column="question")


def test_csv_missing_prompt_column(tmp_path: Path) -> None:
    path = tmp_path / "d.tsv"
    path.write_text("text\tanswer\nhello\t1\n")
    with pytest.raises(
        DataFileError, match=r"row 1 \(line 2\): no 'prompt' column \(columns: text"
    ):
        load_rows(path)
    assert load_rows(path, prompt_column="text") == [{"answer": "1", "prompt": "hello"}]


def test_parquet(tmp_path: Path) -> None:
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    path = tmp_path / "d.parquet"
    table = pa.Table.from_pylist([{"prompt": CHAT, "answer": "1"}, {"prompt": None, "answer": "2"}])
    pq.write_table(table, path)
    with pytest.raises(DataFileError, match=r"d\.parquet: row 2: prompt column 'prompt' .* got"):
        load_rows(path)
    pq.write_table(pa.Table.from_pylist([{"prompt": CHAT, "answer": "1"}]), path)
    assert load_rows(path) == [{"answer": "1", "prompt": CHAT}]


def test_datasets_saved_to_disk(tmp_path: Path) -> None:
    datasets = pytest.importorskip("datasets")
    data = {"prompt": ["a", "b", "c"], "answer": ["1", "2", "3"]}
    datasets.Dataset.from_dict(data).save_to_disk(str(tmp_path / "ds"))
    assert [r["prompt"] for r in load_rows(tmp_path / "ds")] == ["a", "b", "c"]
    both = datasets.DatasetDict(
        train=datasets.Dataset.from_dict(data),
        test=datasets.Dataset.from_dict({"prompt": ["t"], "answer": ["9"]}),
    )
    both.save_to_disk(str(tmp_path / "dd"))
    params = {"path": str(tmp_path / "dd"), "eval_path": str(tmp_path / "dd")}
    task = _task(params)
    assert sorted(r["prompt"] for r in task.train) == ["a", "b", "c"]
    assert [r["prompt"] for r in task.eval] == ["t"]
    with pytest.raises(DataFileError, match="no split 'valid'"):
        read_records(tmp_path / "dd", split="valid")


def test_unknown_and_missing_files(tmp_path: Path) -> None:
    with pytest.raises(DataFileError, match="no such file"):
        load_rows(tmp_path / "nope.jsonl")
    (tmp_path / "d.txt").write_text("x")
    with pytest.raises(DataFileError, match="unknown file type"):
        load_rows(tmp_path / "d.txt")


def test_options_answer_rename_delimiter_template_system(tmp_path: Path) -> None:
    path = _jsonl(tmp_path / "g.jsonl", [{"question": "Q1", "solution": "1+1=2\n#### 2"}])
    rows = load_rows(
        path,
        prompt_column="question",
        answer_column="solution",
        answer_delimiter="####",
        prompt_template="{prompt} Think.",
        system_prompt="Sys",
    )
    assert rows == [
        {
            "answer": "2",
            "prompt": [
                {"role": "system", "content": "Sys"},
                {"role": "user", "content": "Q1 Think."},
            ],
        }
    ]
    chat_rows = load_rows(_jsonl(tmp_path / "c.jsonl", [{"prompt": CHAT}]), system_prompt="X")
    assert chat_rows[0]["prompt"] == CHAT  # an existing system message is kept
    assert load_rows(path, prompt_column="question", as_chat=True)[0]["prompt"] == [
        {"role": "user", "content": "Q1"}
    ]
    with pytest.raises(DataFileError, match="row 1 .*no answer column 'answer_text'"):
        load_rows(path, prompt_column="question", answer_column="answer_text")


def test_split_is_seeded_disjoint_and_sized() -> None:
    rows = [{"prompt": str(i)} for i in range(100)]
    train, held = split_rows(rows, seed=3, train_size=1000, eval_size=10)
    assert len(held) == 10 and len(train) == 90
    assert not {r["prompt"] for r in train} & {r["prompt"] for r in held}
    again = split_rows(rows, seed=3, train_size=1000, eval_size=10)
    assert again == (train, held)
    other = split_rows(rows, seed=4, train_size=1000, eval_size=10)
    assert other[1] != held
    train, held = split_rows(rows, seed=3, train_size=20, eval_size=5, eval_fraction=0.25)
    assert len(held) == 25 and len(train) == 20
    with pytest.raises(ValueError, match="data.eval_size: 100 held-out rows leave no training"):
        split_rows(rows, seed=0, train_size=10, eval_size=100)
    with pytest.raises(ValueError, match="eval_fraction must be in"):
        split_rows(rows, seed=0, train_size=10, eval_size=1, eval_fraction=1.5)


def test_file_task_with_eval_path_and_correctness(tmp_path: Path) -> None:
    train = _jsonl(tmp_path / "t.jsonl", [{"prompt": f"q{i}", "answer": str(i)} for i in range(8)])
    held = _jsonl(tmp_path / "e.jsonl", [{"prompt": "e0", "answer": "0"}])
    task = _task({"path": str(train), "eval_path": str(held), "correctness": "exact_match"})
    assert len(task.train) == 8 and [r["prompt"] for r in task.eval] == ["e0"]
    assert task.correctness is not None and task.reward_funcs == [task.correctness]
    assert task.correctness(["e0"], ["0"], answer=["0"]) == [1.0]
    with pytest.raises(ValueError, match="data.params.correctness: rewards.funcs: unknown"):
        _task({"path": str(train), "correctness": "nope"})
    with pytest.raises(ValueError, match="data.params: bad parameters for task 'file'"):
        _task({"path": str(train), "prompt_col": "x"})
    with pytest.raises(ValueError, match="not both"):
        _task({"path": str(train), "eval_path": str(held), "eval_fraction": 0.5})


def test_bundled_example_files_load() -> None:
    gsm = _task(
        {
            "path": str(EXAMPLES / "gsm8k_sample.jsonl"),
            "prompt_column": "question",
            "answer_delimiter": "####",
            "eval_fraction": 0.2,
            "system_prompt": "Answer.",
        }
    )
    assert len(gsm.train) == 40 and len(gsm.eval) == 10
    assert all(r["answer"].lstrip("-").replace(".", "").isdigit() for r in gsm.train + gsm.eval)
    dialogue = load_rows(EXAMPLES / "dialogue_prompts.jsonl")
    assert len(dialogue) == 30 and all(isinstance(r["prompt"], list) for r in dialogue)
    assert dialogue[-1]["prompt"][-1]["role"] == "user"
