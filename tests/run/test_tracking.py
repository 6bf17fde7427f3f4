"""Trackers: TensorBoard event files read back, wandb offline, name and install errors."""

from __future__ import annotations

import importlib.util
import math
import sys
from pathlib import Path

import pytest

from groupwise.run.records import CompletionRecord
from groupwise.run.tracking import (
    TensorBoardTracker,
    Tracker,
    TrackerUnavailableError,
    build_trackers,
    close_trackers,
    completions_markdown,
    parse_report_to,
    scalar_items,
)

HAS_TENSORBOARD = importlib.util.find_spec("tensorboard") is not None
needs_tensorboard = pytest.mark.skipif(not HAS_TENSORBOARD, reason="tensorboard not installed")

RECORDS = [
    CompletionRecord(
        step=1,
        prompt=[{"role": "user", "content": "What is 2+2?"}],
        completion="<answer>4</answer>\n| not a table |",
        rewards={"correct": 1.0, "format": None},
        reward=1.0,
        advantage=0.5,
        truncated=False,
    ),
    CompletionRecord(
        step=1,
        prompt="2+2=",
        completion="",
        rewards={},
        reward=0.0,
        advantage=-0.5,
        truncated=True,
    ),
]


def _events(log_dir: Path) -> object:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    accumulator = EventAccumulator(str(log_dir))
    accumulator.Reload()
    return accumulator


@needs_tensorboard
def test_tensorboard_scalars_and_text_read_back(tmp_path: Path) -> None:
    trackers = build_trackers(["tensorboard"], tmp_path, {"model": {"name": "tiny"}})
    assert len(trackers) == 1 and isinstance(trackers[0], TensorBoardTracker)
    assert isinstance(trackers[0], Tracker)
    for step in (1, 2, 3):
        metrics = {
            "step": step,
            "reward": 0.25 * step,
            "rewards/correct/mean": 0.5,
            "num_tokens": 100 * step,
            "kl": math.nan if step == 2 else 0.01,
            "note": "not a number",
        }
        trackers[0].log(metrics, step)
    trackers[0].log_text("completions", completions_markdown(RECORDS), 3)
    close_trackers(trackers)

    events = _events(tmp_path / "tensorboard")
    tags = events.Tags()  # type: ignore[attr-defined]
    assert set(tags["scalars"]) == {"reward", "rewards/correct/mean", "num_tokens", "kl"}
    reward = events.Scalars("reward")  # type: ignore[attr-defined]
    assert [e.step for e in reward] == [1, 2, 3]
    assert [e.value for e in reward] == pytest.approx([0.25, 0.5, 0.75])
    assert [e.value for e in events.Scalars("num_tokens")] == [100, 200, 300]  # type: ignore[attr-defined]
    assert math.isnan(events.Scalars("kl")[1].value)  # type: ignore[attr-defined]
    (text,) = events.Tensors("completions/text_summary")  # type: ignore[attr-defined]
    assert text.step == 3
    body = text.tensor_proto.string_val[0].decode()
    assert "reward 1, advantage 0.5 (correct 1, format n/a)" in body
    assert "    user: What is 2+2?" in body and "truncated" in body


def test_parse_report_to() -> None:
    assert parse_report_to(None) == []
    assert parse_report_to("none") == []
    assert parse_report_to([]) == []
    assert parse_report_to("TensorBoard, wandb,tensorboard") == ["tensorboard", "wandb"]
    with pytest.raises(ValueError, match=r"training\.report_to.*tensorboard, wandb"):
        parse_report_to(["mlflow"])


def test_unknown_tracker_starts_nothing(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"unknown tracker 'comet' in training\.report_to"):
        build_trackers(["tensorboard", "comet"], tmp_path, {})
    assert not (tmp_path / "tensorboard").exists()


def test_missing_tensorboard_names_the_package(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "tensorboard", None)  # makes `import tensorboard` fail
    with pytest.raises(TrackerUnavailableError, match="pip install tensorboard"):
        build_trackers(["tensorboard"], tmp_path, {})


def test_missing_wandb_names_the_package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "wandb", None)
    with pytest.raises(TrackerUnavailableError, match="pip install wandb") as info:
        build_trackers(["wandb"], tmp_path, {})
    assert isinstance(info.value, ImportError)


@needs_tensorboard
def test_started_trackers_closed_when_a_later_one_fails(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    closed: list[bool] = []
    original = TensorBoardTracker.close

    def spy(self: TensorBoardTracker) -> None:
        closed.append(True)
        original(self)

    monkeypatch.setattr(TensorBoardTracker, "close", spy)
    monkeypatch.setitem(sys.modules, "wandb", None)
    with pytest.raises(TrackerUnavailableError):
        build_trackers(["tensorboard", "wandb"], tmp_path, {})
    assert closed == [True]


def test_wandb_rejects_bad_mode(tmp_path: Path) -> None:
    from groupwise.run.tracking import WandbTracker

    with pytest.raises(ValueError, match="offline"):
        WandbTracker("p", mode="sometimes", dir=tmp_path)


def test_wandb_offline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("wandb")
    from groupwise.run.tracking import WandbTracker

    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path / "config"))
    monkeypatch.setenv("WANDB_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("WANDB_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    tracker = WandbTracker("groupwise-test", "run", {"lr": 1e-5}, mode="offline", dir=tmp_path)
    tracker.log({"step": 1, "reward": 0.5, "note": "x"}, 1)
    tracker.log_text("completions", completions_markdown(RECORDS), 1)
    tracker.close()
    runs = list((tmp_path / "wandb").glob("offline-run-*"))
    assert len(runs) == 1 and list(runs[0].glob("*.wandb"))


def test_scalar_items() -> None:
    items = dict(scalar_items({"step": 3, "a": 1, "b": 2.5, "c": True, "d": "x", "e": None}))
    assert items == {"a": 1.0, "b": 2.5}


def test_completions_markdown_limit_and_code_blocks() -> None:
    text = completions_markdown(RECORDS * 5, limit=3)
    assert text.count("**#") == 3
    assert "    <answer>4</answer>" in text  # indented: a code block, never rendered as HTML
    assert "    | not a table |" in text
    assert completions_markdown([]) == ""
