"""The run directory: start fresh or resume, checkpoints, and the state a resume restores.

``RUN_DIR`` holds ``config.yaml`` (with what ``auto`` settings resolved to), ``plan.json`` (the
run plan: every ``auto`` setting resolved, read back on resume), ``metrics.jsonl``,
``completions.jsonl``, ``eval_samples.jsonl``, ``checkpoints/step-XXXXXXXX`` (see :mod:`groupwise.run.checkpoint`),
``final/``, ``summary.json`` and the report. Rank 0 decides and writes; every rank loads the
same checkpoint (a shared file system on several nodes).

While a run uses the directory, rank 0 holds ``RUN_DIR/.lock`` (:class:`RunLock`): a second run
on the same directory refuses to start, naming the first one's pid. ``resume=auto`` resumes from
the newest checkpoint whose files are whole, moving damaged newer ones aside and saying why.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import random
import shutil
import socket
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from groupwise.config import Config, ConfigError, config_to_dict
from groupwise.data.sampler import PromptSampler
from groupwise.distributed import barrier, broadcast_object, is_main, world_size
from groupwise.models.plan import PLAN_FILE, RunPlan
from groupwise.models.precision import PrecisionChoice
from groupwise.run.checkpoint import (
    CHECKPOINTS,
    Counters,
    checkpoint_problem,
    latest_checkpoint,
    latest_valid_checkpoint,
)
from groupwise.run.io import truncate_jsonl, write_json_atomic, write_text_atomic

LOGS = ("metrics.jsonl", "completions.jsonl", "eval_samples.jsonl")
LOCK_FILE = ".lock"
"""In the run directory while a run uses it: the owner's pid and host, locked with ``flock``."""


class OutputDirInUseError(ConfigError):
    """Another run holds ``training.output_dir``'s lock; the message names its pid."""


_HELD: dict[str, tuple[int, RunLock]] = {}
"""Locks this process holds: resolved lock path -> (file descriptor, owner)."""


class RunLock:
    """``RUN_DIR/.lock``: one run at a time per run directory.

    The file holds the owner's pid, host and start time, and stays ``flock``-ed while the run
    lasts, so the kernel frees it however the owner ends: a lock file whose owner is gone is
    taken over, saying whose it was. A process may take a lock it holds already (a second
    trainer on the same directory in one program); the lock then belongs to the newer one.
    """

    def __init__(self, directory: Path) -> None:
        self.path = Path(directory) / LOCK_FILE
        self._fd: int | None = None
        self._key = ""

    def acquire(self) -> None:
        """Take the lock; raises :class:`OutputDirInUseError` if another process holds it."""
        key = self._key = str(self.path.resolve())
        if key in _HELD:  # ours already: hand it on to this owner
            self._fd = _HELD[key][0]
            _HELD[key] = (self._fd, self)
            return
        fd = self._lock_file()
        previous = _read_holder(fd)
        if previous:
            print(
                f"groupwise: taking over the lock {self.path} left by {_describe(previous)}, "
                "which is no longer running",
                file=sys.stderr,
                flush=True,
            )
        holder = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.ctime()}
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(holder) + "\n").encode(), 0)
        os.fsync(fd)
        self._fd = fd
        _HELD[key] = (fd, self)

    def release(self) -> None:
        """Give the lock up (removing the file), unless it was handed on; safe to repeat."""
        fd, self._fd = self._fd, None
        if fd is None or _HELD.get(self._key, (None, None))[1] is not self:
            return
        del _HELD[self._key]
        self.path.unlink(missing_ok=True)  # before unlocking: a run waiting opens a new file
        os.close(fd)

    def _lock_file(self) -> int:
        """Open and ``flock`` the lock file (the one at ``path`` now, not one just unlinked)."""
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            if not _try_flock(fd):
                holder = _read_holder(fd)
                os.close(fd)
                raise OutputDirInUseError(_in_use_message(self.path, holder))
            try:
                if os.fstat(fd).st_ino == os.stat(self.path).st_ino:
                    return fd
            except FileNotFoundError:
                pass
            os.close(fd)  # released (and removed) between our open and flock: try again


def _try_flock(fd: int) -> bool:
    """``flock`` the file without waiting: False if another open file holds it. Where the file
    system has no ``flock`` (some network mounts), the pid written in it decides instead."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False
    except OSError as exc:
        if exc.errno not in (errno.ENOLCK, errno.EINVAL, errno.EOPNOTSUPP, errno.ENOSYS):
            raise
    holder = _read_holder(fd)
    mine = holder.get("pid") == os.getpid() and holder.get("host") == socket.gethostname()
    return not holder or mine or _alive(holder) is False  # mine: not in _HELD, so a past life


def _read_holder(fd: int) -> dict[str, Any]:
    """The pid, host and start time in an open lock file ({} if empty or unreadable)."""
    try:
        holder = json.loads(os.pread(fd, 4096, 0).decode() or "{}")
    except (OSError, ValueError):
        return {}
    return holder if isinstance(holder, dict) else {}


def _alive(holder: dict[str, Any]) -> bool | None:
    """Whether the lock holder's process runs (None: on another host, cannot tell)."""
    if holder.get("host") != socket.gethostname():
        return None
    pid = holder.get("pid")
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, OverflowError):
        return False
    except PermissionError:  # another user's process
        return True
    return True


def _describe(holder: dict[str, Any]) -> str:
    pid, host, started = holder.get("pid", "?"), holder.get("host", "?"), holder.get("started")
    return f"pid {pid} on {host}" + (f" (started {started})" if started else "")


def _in_use_message(lock: Path, holder: dict[str, Any]) -> str:
    who = _describe(holder) if holder else "another process"
    gone = (
        f" (that pid is no longer running: a process it started may still hold the lock, see "
        f"fuser -v {lock}, or a new run is just starting)"
        if holder and _alive(holder) is False
        else ""
    )
    return (
        f"training.output_dir {lock.parent} is in use by another run: {who} holds {lock}{gone}. "
        "Wait for that run to end (or stop it), or choose another training.output_dir"
    )


class RunDirectory:
    """``training.output_dir``: find what to resume from, and start (or continue) the logs."""

    def __init__(
        self, config: Config, precision: PrecisionChoice, plan: RunPlan | None = None
    ) -> None:
        self.config = config
        self.precision = precision
        self.plan = plan
        self.path = Path(config.training.output_dir)
        self.lock = RunLock(self.path)

    def find_checkpoint(self) -> Path | None:
        """The checkpoint to resume from (rank 0 decides, every rank gets the answer); clears
        an old run when ``overwrite_output_dir`` says so, refuses to mix two runs otherwise.

        Rank 0 takes the directory's lock first and keeps it until :meth:`release`.
        """
        found: tuple[str | None, str | None] = (None, None)  # (checkpoint, error)
        failure: ConfigError | None = None
        if is_main():
            try:
                self.path.mkdir(parents=True, exist_ok=True)
                self.lock.acquire()
                checkpoint = self._find()
                found = (str(checkpoint) if checkpoint else None, None)
            except ConfigError as exc:
                failure, found = exc, (None, str(exc))
            except BaseException:
                self.lock.release()
                raise
            if failure is not None:
                self.lock.release()
        checkpoint_path, error = broadcast_object(found)
        if failure is not None:
            raise failure
        if error is not None:
            raise ConfigError(error)
        return Path(checkpoint_path) if checkpoint_path is not None else None

    def release(self) -> None:
        """Give up the directory's lock (rank 0; at the end of a run, also a failed one)."""
        if is_main():
            self.lock.release()

    def start(self, step: int) -> None:
        """Drop log lines after ``step`` (the resumed checkpoint's, or all) and write
        ``config.yaml`` headed by the precision choice, and ``plan.json``."""
        if is_main():
            for log in LOGS:
                truncate_jsonl(self.path / log, step)
            text = self.precision_comment() + yaml.safe_dump(config_to_dict(self.config))
            write_text_atomic(self.path / "config.yaml", text)
            if self.plan is not None:
                write_json_atomic(self.path / PLAN_FILE, self.plan.as_dict())
        barrier()

    def precision_comment(self) -> str:
        """config.yaml's first lines: what ``training.bf16`` resolved to here, and why."""
        p = self.precision
        return (
            f"# training.bf16: {p.setting} -> {'true' if p.bf16 else 'false'}\n# why: {p.reason}\n"
            f"# training.param_dtype: {p.param_dtype} ({p.param_reason})\n"
        )

    def _find(self) -> Path | None:
        t = self.config.training
        if t.resume == "auto":
            return self._latest_usable()
        if t.resume:
            checkpoint = Path(t.resume)
            if not checkpoint.is_dir():
                raise ConfigError(f"training.resume: no checkpoint directory at {checkpoint}")
            problem = checkpoint_problem(checkpoint)
            if problem is not None:
                usable = latest_valid_checkpoint(self.path)
                hint = f"; the newest usable one here is {usable}" if usable else ""
                raise ConfigError(
                    f"training.resume: cannot resume from {checkpoint}: {problem}{hint}"
                )
            return checkpoint
        if any((self.path / log).exists() for log in LOGS) or (self.path / CHECKPOINTS).exists():
            if not t.overwrite_output_dir:
                raise ConfigError(
                    f"training.output_dir {self.path} already holds a run; continue it with "
                    "resume=auto, start over with overwrite_output_dir=true (deletes its logs "
                    "and checkpoints), or choose another output_dir"
                )
            shutil.rmtree(self.path / CHECKPOINTS, ignore_errors=True)
        return None

    def _latest_usable(self) -> Path | None:
        """``resume=auto``: the newest checkpoint whose files are whole. Damaged newer ones are
        moved aside (``step-XXXXXXXX.damaged-<time>``: never resumed from, never counted when
        old checkpoints are pruned), saying why; if none is usable, this refuses."""
        skipped: list[tuple[Path, str]] = []
        found = latest_valid_checkpoint(self.path, lambda p, why: skipped.append((p, why)))
        if found is None and skipped:
            problems = "\n  ".join(f"{p.name}: {why}" for p, why in skipped)
            raise ConfigError(
                f"training.resume=auto: no usable checkpoint in {self.path / CHECKPOINTS}:\n  "
                f"{problems}\nPoint training.resume at a good copy, or start over with "
                "training.resume='' training.overwrite_output_dir=true"
            )
        for path, why in skipped:
            aside = path.with_name(f"{path.name}.damaged-{int(time.time())}")
            os.replace(path, aside)
            print(
                f"groupwise: skipping checkpoint {path}: {why}; moved it to {aside.name} and "
                f"resuming from {found}",
                file=sys.stderr,
                flush=True,
            )
        return found


def resumed_plan_file(config: Config) -> Path | None:
    """The ``plan.json`` of the run this one continues: ``output_dir``'s when ``resume=auto``
    finds a checkpoint there, the run directory holding ``resume=<checkpoint>``; None for a
    fresh start or a run saved without one (its ``auto`` settings are then resolved afresh).
    Read before the run directory is locked: it only looks, :meth:`RunDirectory.find_checkpoint`
    decides."""
    t = config.training
    if t.resume == "auto":
        run_dir = Path(t.output_dir)
        found = run_dir if latest_checkpoint(run_dir) is not None else None
    else:
        found = Path(t.resume).parent.parent if t.resume else None
    plan = found / PLAN_FILE if found is not None else None
    return plan if plan is not None and plan.is_file() else None


@dataclass
class ResumableState:
    """The objects whose state a checkpoint keeps besides the weights."""

    counters: Counters
    run_state: dict[str, Any]  # eval_before, train_time_s: kept across resumes
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    sampler: PromptSampler
    generator: torch.Generator
    precision: PrecisionChoice
    ahead: Any = None
    """What was generated ahead for the next step (``state_dict()`` / ``load_state_dict()``:
    :class:`groupwise.train.rollouts.RolloutSource`); kept as ``rollout_ahead`` when not None."""
    entropy: Any = None
    """The entropy bonus's coefficient (``state_dict()`` / ``load_state_dict()``:
    :class:`groupwise.train.entropy.EntropyBonus`); kept as ``entropy_control`` when its state
    is not None (the bonus is on)."""

    def state_dict(self, optimizer: dict[str, Any] | None = None) -> dict[str, Any]:
        """Everything besides the weights that the next step depends on.

        Every rank holds the same counters, data position and RNG states (same seed, same
        draws), so rank 0's state stands for all. ``optimizer``: a full optimizer state
        gathered under FSDP (default: this rank's own, complete under DDP).
        """
        c = self.counters
        scheduler = {k: v for k, v in self.scheduler.state_dict().items() if k != "lr_lambdas"}
        cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
        ahead = self.ahead.state_dict() if self.ahead is not None else None
        entropy = self.entropy.state_dict() if self.entropy is not None else None  # None: off
        return {
            "step": c.step,
            "num_tokens": c.num_tokens,
            "skipped_updates": c.skipped_updates,
            "nonfinite_in_a_row": c.nonfinite_in_a_row,
            "run_state": dict(self.run_state),
            "optimizer": optimizer if optimizer is not None else self.optimizer.state_dict(),
            "world_size": world_size(),
            "param_dtype": self.precision.param_dtype,
            "scheduler": scheduler,
            "sampler": self.sampler.state_dict(),
            "rng": {
                "python": random.getstate(),
                "numpy": np.random.get_state(),
                "torch": torch.get_rng_state(),
                "cuda": cuda,
                "generator": self.generator.get_state(),
            },
            **({"rollout_ahead": ahead} if ahead is not None else {}),
            **({"entropy_control": entropy} if entropy is not None else {}),
        }

    def load_state_dict(self, state: dict[str, Any], load_optimizer: Any = None) -> None:
        """Restore what :meth:`state_dict` returned (weights are loaded separately).
        ``load_optimizer(state)``: how to load a full optimizer state (FSDP shards it)."""
        p = self.precision
        saved_dtype = state.get("param_dtype", p.param_dtype)
        if saved_dtype != p.param_dtype:  # e.g. auto resolved on another CPU
            raise ConfigError(
                f"cannot resume: the checkpoint trained {saved_dtype} weights and this run "
                f"would train {p.param_dtype} ones ({p.param_reason}); "
                f"set training.param_dtype={saved_dtype}"
            )
        c = self.counters
        c.step, c.num_tokens = int(state["step"]), int(state["num_tokens"])
        c.skipped_updates = int(state["skipped_updates"])
        c.nonfinite_in_a_row = int(state["nonfinite_in_a_row"])
        self.run_state.clear()
        self.run_state.update(state["run_state"])
        (load_optimizer or self.optimizer.load_state_dict)(state["optimizer"])
        saved_world = int(state.get("world_size", 1))
        if saved_world != world_size() and is_main():
            print(
                f"groupwise: resuming a {saved_world}-process run with {world_size()} processes: "
                "completions per step = per_device_train_batch_size * gradient_accumulation_steps "
                "* processes changes with it",
                file=sys.stderr,
            )
        # keep this run's schedule function (max_steps may have grown), restore its position
        lambdas = [None] * len(self.scheduler.lr_lambdas)  # type: ignore[attr-defined]
        self.scheduler.load_state_dict(dict(state["scheduler"], lr_lambdas=lambdas))
        self.sampler.load_state_dict(state["sampler"])
        rng = state["rng"]
        random.setstate(rng["python"])
        np.random.set_state(rng["numpy"])
        torch.set_rng_state(rng["torch"])
        if rng["cuda"] is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(rng["cuda"])
        self.generator.set_state(rng["generator"])
        if self.ahead is not None:
            self.ahead.load_state_dict(state.get("rollout_ahead"))
        if self.entropy is not None and state.get("entropy_control") is not None:
            self.entropy.load_state_dict(state["entropy_control"])
