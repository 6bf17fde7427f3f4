"""Checkpoints and resume: atomic saves, pruning, exact continuation after kills and signals."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

from groupwise import GRPOTrainer, load_config
from groupwise.config import ConfigError
from groupwise.run.checkpoint import CHECKPOINTS, latest_checkpoint, list_checkpoints
from tests.tests_helpers import TIMING_KEYS, Crash, crash_after, tiny_overrides

# fp32 so that two processes compute bit-identical steps (bf16 CPU kernels are not bitwise
# reproducible across processes here); a varied reward so every step updates the weights
COMMON: dict[str, object] = {"bf16": False, "save_steps": 2, "save_total_limit": 0}
REWARD = "rewards.funcs=[tests.tests_helpers:varied_reward]"
TESTS = Path(__file__).resolve().parents[2]  # the repository root: tests is a package


def _overrides(tmp_path: Path, **extra: object) -> list[str]:
    return [*tiny_overrides(tmp_path, **{**COMMON, **extra}), REWARD]


def _trainer(tmp_path: Path, **extra: object) -> GRPOTrainer:
    return GRPOTrainer(load_config(overrides=_overrides(tmp_path, **extra)))


def _metrics(run: Path) -> list[dict[str, Any]]:
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if not k.startswith(TIMING_KEYS)} for r in rows]


def _weights(trainer: GRPOTrainer) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in trainer.policy.named_parameters() if p.requires_grad}


def _completion_steps(run: Path) -> list[int]:
    lines = (run / "completions.jsonl").read_text().splitlines()
    return sorted({json.loads(x)["step"] for x in lines})


# ---------------------------------------------------------------------------- in one process


@pytest.mark.parametrize(
    "extra",
    [
        {"model.lora": False},
        pytest.param({"model.lora": True}, marks=pytest.mark.slow),
        # pure bf16: the Kahan compensation buffer must come back with the optimizer state
        {"bf16": True, "param_dtype": "bfloat16"},
    ],
    ids=["full", "lora", "pure-bf16"],
)
def test_resumed_run_equals_uninterrupted_run(tmp_path: Path, extra: dict[str, object]) -> None:
    full = _trainer(tmp_path / "full", max_steps=5, **extra)
    full.train()
    split = tmp_path / "split"
    config = load_config(overrides=_overrides(split, max_steps=5, **extra))
    with pytest.raises(Crash):
        # checkpoint at step 2; step 3 logged, then lost
        GRPOTrainer(config, callbacks=[crash_after(3)]).train()
    assert [p.name for p in list_checkpoints(split / "run")] == ["step-00000002"]
    assert [m["step"] for m in _metrics(split / "run")] == [1, 2, 3]
    second = _trainer(split, max_steps=5, resume="auto", **extra)
    second.train()  # resumes at step 2: step 3 is taken again, its old log lines dropped
    assert second.step_count == 5
    assert _metrics(split / "run") == _metrics(tmp_path / "full" / "run")
    assert _completion_steps(split / "run") == [1, 2, 3, 4, 5]
    a, b = _weights(full), _weights(second)
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name


@pytest.mark.slow
def test_max_steps_may_grow_on_resume(tmp_path: Path) -> None:
    _trainer(tmp_path, max_steps=2, lr_scheduler_type="constant").train()
    longer = _trainer(tmp_path, max_steps=4, resume="auto", lr_scheduler_type="constant")
    longer.train()
    assert [m["step"] for m in _metrics(tmp_path / "run")] == [1, 2, 3, 4]
    assert [m["learning_rate"] for m in _metrics(tmp_path / "run")] == [1e-3] * 4


def test_checkpoint_holds_a_loadable_model_and_pruning_keeps_the_newest(tmp_path: Path) -> None:
    trainer = _trainer(tmp_path, max_steps=5, save_steps=2, save_total_limit=2)
    trainer.train()
    run = tmp_path / "run"
    assert [p.name for p in list_checkpoints(run)] == ["step-00000004", "step-00000005"]
    newest = latest_checkpoint(run)
    assert newest is not None
    info = json.loads((newest / "checkpoint.json").read_text())
    assert info["step"] == 5 and info["config"]["training"]["max_steps"] == 5
    from transformers import AutoModelForCausalLM

    loaded = AutoModelForCausalLM.from_pretrained(newest / "model")
    weights = load_file(str(next((newest / "model").glob("*.safetensors"))))
    for name, param in trainer.policy.named_parameters():
        if name in weights:
            assert torch.equal(weights[name], param.detach()), name
    assert loaded.config.vocab_size == trainer.policy.config.vocab_size


def test_a_half_written_checkpoint_is_ignored_and_cleaned(tmp_path: Path) -> None:
    trainer = _trainer(tmp_path, max_steps=2)
    trainer.train()
    root = tmp_path / "run" / CHECKPOINTS
    torn = root / ".step-00000004.tmp-999"
    torn.mkdir()
    (torn / "trainer_state.pt").write_bytes(b"\0" * 10)
    incomplete = root / "step-00000009"  # no checkpoint.json: never renamed into place whole
    incomplete.mkdir()
    assert latest_checkpoint(tmp_path / "run") == root / "step-00000002"
    resumed = _trainer(tmp_path, max_steps=3, resume="auto")
    resumed.train()
    assert resumed.step_count == 3 and not torn.exists()


def test_resume_refuses_unsafe_config_changes_and_names_them(tmp_path: Path) -> None:
    _trainer(tmp_path, max_steps=2).train()
    with pytest.raises(ConfigError) as info:
        _trainer(tmp_path, max_steps=4, resume="auto", num_generations=2, learning_rate=0.5).train()
    message = str(info.value)
    assert "rollout.num_generations: 4 -> 2" in message
    assert "training.learning_rate: 0.001 -> 0.5" in message
    assert "max_steps" not in message  # safe to change
    # safe changes are accepted
    ok = _trainer(tmp_path, max_steps=3, resume="auto", logging_steps=1, **{"eval.after": True})
    summary = ok.train()
    assert ok.step_count == 3 and "eval_after" in summary


def test_fresh_start_refuses_an_existing_run_unless_told(tmp_path: Path) -> None:
    _trainer(tmp_path, max_steps=1).train()
    with pytest.raises(ConfigError, match=r"resume=auto.*overwrite_output_dir=true"):
        _trainer(tmp_path, max_steps=1).train()
    again = _trainer(tmp_path, max_steps=1, overwrite_output_dir=True)
    again.train()
    assert [m["step"] for m in _metrics(tmp_path / "run")] == [1]
    with pytest.raises(ConfigError, match="training.resume: no checkpoint directory"):
        _trainer(tmp_path, max_steps=1, resume=str(tmp_path / "nope")).train()


# ---------------------------------------------------------------------------- across processes
def _launch(tmp_path: Path, *extra: str, driver: str | None = None) -> subprocess.Popen[str]:
    args = [*_overrides(tmp_path, max_steps=6, save_final=True), *extra]
    code = driver or ""
    code += "\nimport sys\nfrom groupwise.cli import main\nsys.exit(main(sys.argv[1:]))\n"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(TESTS), *sys.path]))
    return subprocess.Popen(
        [sys.executable, "-c", code, "train", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


def _wait_for_step(run: Path, step: int, proc: subprocess.Popen[str]) -> None:
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        metrics = run / "metrics.jsonl"
        if metrics.exists() and len(metrics.read_text().splitlines()) >= step:
            return
        if proc.poll() is not None:
            raise AssertionError(f"run ended early: {proc.communicate()}")
        time.sleep(0.05)
    raise AssertionError("timed out")


def _final_weights(run: Path) -> dict[str, torch.Tensor]:
    return load_file(str(run / "final" / "model.safetensors"))


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The uninterrupted 6-step run every interrupted one must reproduce."""
    root = tmp_path_factory.mktemp("reference")
    proc = _launch(root)
    _out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err
    return root / "run"


def _assert_same_run(run: Path, reference: Path) -> None:
    assert _metrics(run) == _metrics(reference)
    assert [m["step"] for m in _metrics(run)] == [1, 2, 3, 4, 5, 6]
    assert _completion_steps(run) == [1, 2, 3, 4, 5, 6]
    a, b = _final_weights(run), _final_weights(reference)
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name


def test_sigkill_mid_run_then_resume_matches(tmp_path: Path, reference_run: Path) -> None:
    proc = _launch(tmp_path)
    _wait_for_step(tmp_path / "run", 3, proc)  # past the step-2 checkpoint, mid-run
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert latest_checkpoint(tmp_path / "run") is not None
    resumed = _launch(tmp_path, "resume=auto")
    out, err = resumed.communicate(timeout=600)
    assert resumed.returncode == 0, err
    assert "resumed from" in out
    _assert_same_run(tmp_path / "run", reference_run)


KILL_WHILE_SAVING_STEP_4 = """
import os, signal, torch
_save = torch.save
def _save_then_die(obj, f, *args, **kwargs):
    _save(obj, f, *args, **kwargs)
    if "step-00000004" in str(f):  # trainer state written, checkpoint not yet renamed
        os.kill(os.getpid(), signal.SIGKILL)
torch.save = _save_then_die
"""


@pytest.mark.slow
def test_sigkill_while_writing_a_checkpoint_then_resume_matches(
    tmp_path: Path, reference_run: Path
) -> None:
    proc = _launch(tmp_path, driver=KILL_WHILE_SAVING_STEP_4)
    proc.wait(timeout=600)
    assert proc.returncode == -signal.SIGKILL
    run = tmp_path / "run"
    assert [p.name for p in list_checkpoints(run)] == ["step-00000002"]
    assert list((run / CHECKPOINTS).glob(".step-00000004.tmp-*"))  # the torn one is there
    resumed = _launch(tmp_path, "resume=auto")
    out, err = resumed.communicate(timeout=600)
    assert resumed.returncode == 0, err
    assert "resumed from" in out and "step-00000002" in out
    _assert_same_run(run, reference_run)


@pytest.mark.parametrize(
    "sig", [signal.SIGTERM, pytest.param(signal.SIGINT, marks=pytest.mark.slow)]
)
def test_signal_checkpoints_and_exits_with_a_resume_hint(
    tmp_path: Path, reference_run: Path, sig: int
) -> None:
    proc = _launch(tmp_path, "save_steps=0")  # only the signal writes a checkpoint
    _wait_for_step(tmp_path / "run", 1, proc)
    proc.send_signal(sig)
    _out, err = proc.communicate(timeout=600)
    assert proc.returncode == 128 + sig, err
    assert "resume=auto" in err and signal.Signals(sig).name in err
    checkpoint = latest_checkpoint(tmp_path / "run")
    assert checkpoint is not None
    step = json.loads((checkpoint / "checkpoint.json").read_text())["step"]
    assert 1 <= step < 6 and len(_metrics(tmp_path / "run")) == step
    resumed = _launch(tmp_path, "save_steps=0", "resume=auto")
    _out, err = resumed.communicate(timeout=600)
    assert resumed.returncode == 0, err
    _assert_same_run(tmp_path / "run", reference_run)


# ---------------------------------------------------------------------------- guarded updates
def test_non_finite_updates_are_skipped_then_stop_the_run(tmp_path: Path) -> None:
    """From step 2 on every gradient is NaN (as a diverging run or a bad reward would make it)."""
    from groupwise.train.guards import NonFiniteUpdatesError

    config = load_config(
        overrides=_overrides(tmp_path, max_steps=6, save_steps=1, max_nonfinite_updates=2)
    )
    after_step_1: dict[str, torch.Tensor] = {}

    def poison_after_step_1(trainer: GRPOTrainer, metrics: dict[str, float]) -> None:
        if trainer.step_count != 1:
            return
        after_step_1.update(_weights(trainer))
        for p in trainer.policy.parameters():
            if p.requires_grad:
                p.register_hook(lambda grad: grad * float("nan"))

    trainer = GRPOTrainer(config, callbacks=[poison_after_step_1])
    with pytest.raises(NonFiniteUpdatesError) as info:
        trainer.train()
    message = str(info.value)
    assert "2 non-finite updates in a row" in message and "step 3" in message
    assert "training.max_nonfinite_updates" in message and "step-00000002" in message
    assert [m["skipped_updates"] for m in _metrics(tmp_path / "run")] == [0.0, 1.0, 2.0]
    for name, value in _weights(trainer).items():  # the skipped updates changed nothing
        assert torch.equal(value, after_step_1[name]), name


# ---------------------------------------------------------------------------- bad input, nothing lost
def test_a_hung_reward_stops_the_run_promptly_and_resume_continues(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The reward hangs at step 3: the run stops with an error naming it after
    rewards.timeout_s, before step 3's update, so step 2's checkpoint is where it resumes."""
    from groupwise.rewards import RewardError
    from tests.tests_helpers import varied_reward

    hang, release = threading.Event(), threading.Event()
    after_step_2: dict[str, torch.Tensor] = {}
    hung_at: list[float] = []

    def flaky(prompts: list[Any], completions: list[str], **kwargs: Any) -> list[float]:
        if hang.is_set():
            release.wait(60)
        return varied_reward(prompts, completions)

    def hang_after_step_2(trainer: GRPOTrainer, metrics: dict[str, float]) -> None:
        if trainer.step_count == 2:
            after_step_2.update(_weights(trainer))
            hang.set()
            hung_at.append(time.monotonic())

    overrides = _overrides(tmp_path, max_steps=4, save_steps=1, **{"rewards.timeout_s": 2})
    trainer = GRPOTrainer(
        load_config(overrides=overrides), reward_funcs=[flaky], callbacks=[hang_after_step_2]
    )
    try:
        with pytest.raises(RewardError) as info:
            trainer.train()
        waited = time.monotonic() - hung_at[0]
    finally:
        release.set()  # the abandoned reward thread may finish now
    message = str(info.value)
    assert "reward function 'flaky' did not return within 2.0 s (rewards.timeout_s)" in message
    assert 2 <= waited < 30, waited  # step 3's rollout, then the timeout: not the 60 s hang
    run = tmp_path / "run"
    assert [p.name for p in list_checkpoints(run)] == ["step-00000001", "step-00000002"]
    assert [m["step"] for m in _metrics(run)] == [1, 2]
    for name, value in _weights(trainer).items():  # step 3's update was never made
        assert torch.equal(value, after_step_2[name]), name
    capsys.readouterr()
    resumed = GRPOTrainer(
        load_config(overrides=[*overrides, "resume=auto"]), reward_funcs=[varied_reward]
    )
    resumed.train()
    assert (
        f"resumed from {run / CHECKPOINTS / 'step-00000002'} at step 2" in capsys.readouterr().out
    )
    assert resumed.step_count == 4
    assert [m["step"] for m in _metrics(run)] == [1, 2, 3, 4]


def _fill_disk_writing_trainer_state(monkeypatch: pytest.MonkeyPatch, trainer: Any) -> None:
    """torch.save of step 4's trainer state writes part of the file, then the disk is full."""
    real_save = torch.save

    def save(obj: Any, f: Any, *args: Any, **kwargs: Any) -> None:
        if "step-00000004" in str(f):
            Path(f).write_bytes(b"PK\x03\x04" + b"\0" * 64)
            raise OSError(errno.ENOSPC, "No space left on device", str(f))
        real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", save)


def _fill_disk_writing_weights(monkeypatch: pytest.MonkeyPatch, trainer: Any) -> None:
    """Writing step 4's weights fails as safetensors reports a full disk (not an OSError)."""
    real_save = trainer.policy.save_pretrained

    def save_pretrained(directory: str, *args: Any, **kwargs: Any) -> None:
        if "step-00000004" not in directory:
            return real_save(directory, *args, **kwargs)
        Path(directory).mkdir(parents=True, exist_ok=True)
        (Path(directory) / "model.safetensors").write_bytes(b"\0" * 64)
        raise RuntimeError(
            "Error while serializing: I/O error: No space left on device (os error 28)"
        )

    monkeypatch.setattr(trainer.policy, "save_pretrained", save_pretrained)


@pytest.mark.parametrize(
    "fill_disk",
    [_fill_disk_writing_trainer_state, _fill_disk_writing_weights],
    ids=["trainer-state", "weights"],
)
def test_a_full_disk_while_checkpointing_keeps_the_previous_checkpoint(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    fill_disk: Any,
) -> None:
    from groupwise.run.checkpoint import checkpoint_problem
    from groupwise.run.io import DiskFullError

    trainer = _trainer(tmp_path, max_steps=4, save_steps=2)
    fill_disk(monkeypatch, trainer)
    with pytest.raises(DiskFullError) as info:
        trainer.train()
    root = tmp_path / "run" / CHECKPOINTS
    assert str(info.value) == (
        f"no space left on device while writing checkpoint {root / 'step-00000004'}; "
        f"the previous checkpoint {root / 'step-00000002'} is intact; free space and resume "
        "with training.resume=auto"
    )
    assert isinstance(info.value, OSError) and info.value.errno == errno.ENOSPC
    assert sorted(p.name for p in root.iterdir()) == ["step-00000002"]  # no temporary dir left
    assert checkpoint_problem(root / "step-00000002") is None
    monkeypatch.undo()
    capsys.readouterr()
    resumed = _trainer(tmp_path, max_steps=4, save_steps=2, resume="auto")
    resumed.train()
    assert f"resumed from {root / 'step-00000002'} at step 2" in capsys.readouterr().out
    assert resumed.step_count == 4
    assert [p.name for p in list_checkpoints(tmp_path / "run")] == [
        "step-00000002",
        "step-00000004",
    ]


def test_a_failed_write_on_a_nearly_full_disk_counts_as_a_full_disk(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """torch.save reports a full disk only as "unexpected pos": the free space tells."""
    import shutil

    from groupwise.run import io

    bare = RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 576 vs 534")
    assert not io.is_disk_full(bare, tmp_path)
    assert io.is_disk_full(OSError(errno.EDQUOT, "Disk quota exceeded"), tmp_path)
    usage = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(io.shutil, "disk_usage", lambda p: usage._replace(free=4096))
    assert io.is_disk_full(bare, tmp_path)


def test_resume_skips_a_damaged_newest_checkpoint(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from groupwise.run.checkpoint import checkpoint_problem, latest_valid_checkpoint

    _trainer(tmp_path, max_steps=4, save_steps=2).train()
    run, root = tmp_path / "run", tmp_path / "run" / CHECKPOINTS
    newest = root / "step-00000004"
    state = newest / "trainer_state.pt"
    state.write_bytes(state.read_bytes()[: state.stat().st_size // 2])
    problem = checkpoint_problem(newest)
    assert problem is not None and problem.startswith("trainer_state.pt is truncated or unreadable")
    assert latest_valid_checkpoint(run) == root / "step-00000002"
    capsys.readouterr()
    resumed = _trainer(tmp_path, max_steps=4, save_steps=2, resume="auto")
    resumed.train()
    out, err = capsys.readouterr()
    assert f"skipping checkpoint {newest}: trainer_state.pt is truncated or unreadable" in err
    assert f"resuming from {root / 'step-00000002'}" in err
    assert f"resumed from {root / 'step-00000002'} at step 2" in out
    assert resumed.step_count == 4 and [m["step"] for m in _metrics(run)] == [1, 2, 3, 4]
    # the damaged one was moved aside (kept, never pruned or resumed from) and step 4 rewritten
    assert len(list(root.glob("step-00000004.damaged-*"))) == 1
    assert [p.name for p in list_checkpoints(run)] == ["step-00000002", "step-00000004"]
    assert checkpoint_problem(newest) is None


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size - 10])


DAMAGES: dict[str, tuple[Any, str]] = {
    "no-info": (lambda c: (c / "checkpoint.json").unlink(), "checkpoint.json is missing"),
    "bad-info": (
        lambda c: (c / "checkpoint.json").write_text("{"),
        "checkpoint.json is unreadable",
    ),
    "no-state": (lambda c: (c / "trainer_state.pt").unlink(), "trainer_state.pt is missing"),
    "no-weights": (
        lambda c: (c / "model" / "model.safetensors").unlink(),
        "the model weights are missing (no model/*.safetensors)",
    ),
    "short-weights": (
        lambda c: _truncate(c / "model" / "model.safetensors"),
        "model/model.safetensors is truncated",
    ),
}


def test_each_kind_of_damage_is_named_and_explicit_resume_refuses(tmp_path: Path) -> None:
    import shutil

    from groupwise.run.checkpoint import checkpoint_problem

    _trainer(tmp_path, max_steps=2, save_steps=2).train()
    good = tmp_path / "run" / CHECKPOINTS / "step-00000002"
    for name, (damage, expected) in DAMAGES.items():
        copy = tmp_path / name / "step-00000002"
        shutil.copytree(good, copy)
        damage(copy)
        problem = checkpoint_problem(copy)
        assert problem is not None and problem.startswith(expected), (name, problem)
    with pytest.raises(ConfigError) as info:
        damaged = tmp_path / "short-weights" / "step-00000002"
        _trainer(tmp_path, max_steps=3, resume=str(damaged)).train()
    assert "training.resume: cannot resume from" in str(info.value)
    assert f"the newest usable one here is {good}" in str(info.value)
