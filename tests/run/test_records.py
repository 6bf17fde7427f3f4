"""The run's record lines: written in the file's format, read back through one ``from_json``."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest

from groupwise.run.records import CompletionRecord, EvalSample, RecordError, read_records

CHAT = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "2+2?"}]


def _completion(**changes: Any) -> CompletionRecord:
    fields: dict[str, Any] = {
        "step": 3,
        "prompt": CHAT,
        "completion": "4 \u2028 é",
        "rewards": {"correct": 1.0, "format": None},
        "reward": 0.30000000000000004,
        "advantage": -1.2247448713915887,
        "truncated": False,
    }
    fields.update(changes)
    return CompletionRecord(**fields)


def _line(record: CompletionRecord | EvalSample) -> str:
    """A record's line as the logger appends it."""
    return json.dumps(record.to_json()) + "\n"


def test_a_completion_line_has_the_files_keys_in_order() -> None:
    assert _line(_completion(prompt="2+2=", completion="4", reward=1.0, advantage=0.5)) == (
        '{"step": 3, "prompt": "2+2=", "completion": "4", "rewards": {"correct": 1.0, '
        '"format": null}, "reward": 1.0, "advantage": 0.5, "truncated": false}\n'
    )
    turns = [{"role": "assistant", "content": "a"}, {"role": "environment", "content": "b"}]
    assert list(_completion(turns=turns).to_json()) == [
        "step",
        "prompt",
        "completion",
        "rewards",
        "reward",
        "advantage",
        "truncated",
        "turns",
    ]


@pytest.mark.parametrize(
    "record",
    [
        _completion(),
        _completion(turns=[{"role": "assistant", "content": "x"}], truncated=True),
        _completion(reward=math.inf, advantage=0.0, rewards={}),
    ],
)
def test_completion_records_round_trip_byte_for_byte(record: CompletionRecord) -> None:
    line = _line(record)
    back = CompletionRecord.from_json(json.loads(line))
    assert back == record and _line(back) == line


def test_a_nan_reward_round_trips() -> None:
    line = _line(_completion(reward=math.nan))
    back = CompletionRecord.from_json(json.loads(line))
    assert math.isnan(back.reward) and _line(back) == line


def test_a_hand_written_integer_stays_an_integer() -> None:
    line = json.dumps({**_completion().to_json(), "reward": 1, "advantage": 0}) + "\n"
    assert _line(CompletionRecord.from_json(json.loads(line))) == line


def test_eval_samples_round_trip_with_and_without_a_step() -> None:
    sample = EvalSample(label="after", step=10, index=1, prompt=CHAT, completion="4", score=1.0)
    line = _line(sample)
    assert line.startswith('{"label": "after", "step": 10, "index": 1, "prompt": [')
    assert EvalSample.from_json(json.loads(line)) == sample
    old = '{"label": "before", "index": 0, "prompt": "p", "completion": "c", "score": 0.5}\n'
    back = EvalSample.from_json(json.loads(old))
    assert back.step is None  # the documented default for lines without one
    assert _line(back) == old


def test_a_missing_turns_key_is_a_single_turn_completion() -> None:
    data = _completion().to_json()
    assert "turns" not in data
    assert CompletionRecord.from_json(data).turns is None


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"reward": None}, r"x\.jsonl:7: CompletionRecord key 'reward' must be a number"),
        ({"step": 1.0}, "key 'step' must be an integer"),
        ({"step": True}, "key 'step' must be an integer"),
        ({"truncated": 0}, "key 'truncated' must be true or false"),
        ({"prompt": 3}, "key 'prompt' must be a string or a list of messages"),
        ({"rewards": {"f": "high"}}, "key 'rewards' must be an object of numbers or nulls"),
        ({"turns": [{"role": "assistant"}]}, "key 'turns' must be a list of"),
        ({"extra": 1}, "unknown key 'extra' \\(known: step, prompt, .*, turns\\)"),
    ],
)
def test_a_bad_completion_line_names_the_key(change: dict[str, Any], message: str) -> None:
    data = {**_completion().to_json(), **change}
    with pytest.raises(RecordError, match=message):
        CompletionRecord.from_json(data, where="x.jsonl:7")


@pytest.mark.parametrize("key", ["step", "prompt", "completion", "rewards", "reward", "advantage"])
def test_a_missing_key_is_named(key: str) -> None:
    data = _completion().to_json()
    del data[key]
    with pytest.raises(
        RecordError, match=f"completions.jsonl: CompletionRecord lacks the key '{key}'"
    ):
        CompletionRecord.from_json(data)


def test_a_bad_eval_sample_names_the_key() -> None:
    data = {"label": "after", "index": 0, "prompt": "p", "completion": "c"}
    with pytest.raises(RecordError, match="eval_samples.jsonl: EvalSample lacks the key 'score'"):
        EvalSample.from_json(data)
    with pytest.raises(RecordError, match="key 'index' must be an integer"):
        EvalSample.from_json({**data, "score": 1.0, "index": "0"})


def test_read_records_names_the_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "completions.jsonl"
    good = _line(_completion())
    path.write_text(good + good + '{"step": 4, "prom')  # the last line torn by a kill
    assert [r.step for r in read_records(path, CompletionRecord)] == [3, 3]
    path.write_text(good + json.dumps({"step": 4}) + "\n")
    with pytest.raises(RecordError, match=rf"{path}:2: CompletionRecord lacks the key 'prompt'"):
        list(read_records(path, CompletionRecord))
