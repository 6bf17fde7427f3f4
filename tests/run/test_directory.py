"""The run directory's lock: one run per output_dir at a time; stale locks are taken over."""

from __future__ import annotations

import errno
import json
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from groupwise import load_config
from groupwise.config import ConfigError
from groupwise.models.precision import PrecisionChoice
from groupwise.run.directory import LOCK_FILE, OutputDirInUseError, RunDirectory, RunLock

HOLD_THE_LOCK = """
import sys
from groupwise.run.directory import RunLock
RunLock(sys.argv[1]).acquire()
print("locked", flush=True)
sys.stdin.read()  # until the test closes stdin; exits without releasing
"""


def _run_dir(path: Path, *extra: str) -> RunDirectory:
    config = load_config(overrides=[f"output_dir={path}", *extra])
    return RunDirectory(config, PrecisionChoice(bf16=False, setting="false", reason="test"))


def _dead_pid() -> int:
    proc = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    )
    return int(proc.stdout)


@pytest.fixture
def other_process(tmp_path: Path) -> Iterator[subprocess.Popen[str]]:
    """Another process holding ``tmp_path/run``'s lock (it ends without releasing it)."""
    (tmp_path / "run").mkdir()
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLD_THE_LOCK, str(tmp_path / "run")],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None and proc.stdout.readline() == "locked\n"
    yield proc
    proc.kill()
    proc.wait()


def test_a_second_run_refuses_while_the_first_holds_the_directory(
    tmp_path: Path, other_process: subprocess.Popen[str], capsys: pytest.CaptureFixture[str]
) -> None:
    run = tmp_path / "run"
    second = _run_dir(run)
    with pytest.raises(OutputDirInUseError) as info:
        second.find_checkpoint()
    message = str(info.value)
    assert f"training.output_dir {run} is in use by another run" in message
    assert f"pid {other_process.pid} on {socket.gethostname()}" in message
    assert str(run / LOCK_FILE) in message and "choose another training.output_dir" in message
    assert isinstance(info.value, ConfigError)  # the CLI reports it as a config error
    assert not (run / "config.yaml").exists()  # nothing was touched
    # the first one ends without releasing (killed): its lock is taken over, saying so
    assert other_process.stdin is not None
    other_process.stdin.close()
    other_process.wait(timeout=60)
    capsys.readouterr()
    assert second.find_checkpoint() is None
    err = capsys.readouterr().err
    assert f"taking over the lock {run / LOCK_FILE} left by pid {other_process.pid}" in err
    assert "which is no longer running" in err
    assert json.loads((run / LOCK_FILE).read_text())["pid"] == os.getpid()
    second.release()
    assert not (run / LOCK_FILE).exists()
    second.release()  # again: nothing to do


def test_a_lock_left_by_a_dead_pid_is_taken_over(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = tmp_path / "run"
    run.mkdir()
    dead = _dead_pid()
    holder = {"pid": dead, "host": socket.gethostname(), "started": "yesterday"}
    (run / LOCK_FILE).write_text(json.dumps(holder))
    first = _run_dir(run)
    assert first.find_checkpoint() is None
    err = capsys.readouterr().err
    assert f"left by pid {dead} on {socket.gethostname()} (started yesterday)" in err
    # a later run in this same process (a second trainer) takes it on quietly
    again = _run_dir(run, "resume=auto")
    assert again.find_checkpoint() is None
    assert capsys.readouterr().err == ""
    first.release()  # handed on: the lock stays
    assert (run / LOCK_FILE).exists()
    again.release()
    assert not (run / LOCK_FILE).exists()


def test_a_refused_start_releases_the_lock(tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.jsonl").write_text("")  # a previous run's log
    with pytest.raises(ConfigError, match="already holds a run"):
        _run_dir(run).find_checkpoint()
    assert not (run / LOCK_FILE).exists()


def test_without_flock_the_pid_decides(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, other_process: subprocess.Popen[str]
) -> None:
    """On a file system without flock the pid in the file decides: alive refuses, dead is
    taken over."""
    import groupwise.run.directory as run_dir

    def no_flock(fd: int, operation: int) -> None:
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(run_dir.fcntl, "flock", no_flock)
    run = tmp_path / "run"  # the other process wrote its live pid there
    with pytest.raises(OutputDirInUseError, match=f"pid {other_process.pid} on"):
        RunLock(run).acquire()
    other_process.kill()
    other_process.wait()
    lock = RunLock(run)
    lock.acquire()
    assert json.loads((run / LOCK_FILE).read_text())["pid"] == os.getpid()
    lock.release()


def test_resume_auto_refuses_when_no_checkpoint_is_usable(tmp_path: Path) -> None:
    """Starting over instead would cut the logs back to step 0: refuse, naming each problem."""
    run = tmp_path / "run"
    for step in (2, 4):
        checkpoint = run / "checkpoints" / f"step-{step:08d}"
        checkpoint.mkdir(parents=True)
        (checkpoint / "checkpoint.json").write_text(json.dumps({"step": step, "config": {}}))
    with pytest.raises(ConfigError) as info:
        _run_dir(run, "resume=auto").find_checkpoint()
    message = str(info.value)
    assert f"training.resume=auto: no usable checkpoint in {run / 'checkpoints'}" in message
    assert "step-00000004: trainer_state.pt is missing" in message
    assert "step-00000002: trainer_state.pt is missing" in message
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == [
        "step-00000002",
        "step-00000004",
    ]  # nothing moved aside
    assert not (run / LOCK_FILE).exists()
