"""The run directory: start fresh or resume, checkpoints, and the state a resume restores.

``RUN_DIR`` holds ``config.yaml`` (with what ``auto`` settings resolved to), ``metrics.jsonl``,
``completions.jsonl``, ``checkpoints/step-XXXXXXXX`` (see :mod:`groupwise.checkpoint`),
``final/``, ``summary.json`` and the report. Rank 0 decides and writes; every rank loads the
same checkpoint (a shared file system on several nodes).
"""

from __future__ import annotations

import random
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from groupwise.checkpoint import CHECKPOINTS, latest_checkpoint
from groupwise.config import Config, ConfigError, config_to_dict
from groupwise.data.sampler import PromptSampler
from groupwise.distributed import barrier, broadcast_object, is_main, world_size
from groupwise.metrics import truncate_jsonl
from groupwise.precision import PrecisionChoice
from groupwise.step import Counters

LOGS = ("metrics.jsonl", "completions.jsonl")


class RunDirectory:
    """``training.output_dir``: find what to resume from, and start (or continue) the logs."""

    def __init__(self, config: Config, precision: PrecisionChoice) -> None:
        self.config = config
        self.precision = precision
        self.path = Path(config.training.output_dir)

    def find_checkpoint(self) -> Path | None:
        """The checkpoint to resume from (rank 0 decides, every rank gets the answer); clears
        an old run when ``overwrite_output_dir`` says so, refuses to mix two runs otherwise."""
        found: tuple[str | None, str | None] = (None, None)  # (checkpoint, error)
        if is_main():
            try:
                checkpoint = self._find()
                found = (str(checkpoint) if checkpoint else None, None)
            except ConfigError as exc:
                found = (None, str(exc))
        checkpoint_path, error = broadcast_object(found)
        if error is not None:
            raise ConfigError(error)
        return Path(checkpoint_path) if checkpoint_path is not None else None

    def start(self, step: int) -> None:
        """Drop log lines after ``step`` (the resumed checkpoint's, or all) and write
        ``config.yaml`` headed by the precision choice."""
        if is_main():
            for log in LOGS:
                truncate_jsonl(self.path / log, step)
            text = self.precision_comment() + yaml.safe_dump(config_to_dict(self.config))
            (self.path / "config.yaml").write_text(text)
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
        self.path.mkdir(parents=True, exist_ok=True)
        if t.resume == "auto":
            return latest_checkpoint(self.path)
        if t.resume:
            checkpoint = Path(t.resume)
            if not checkpoint.is_dir():
                raise ConfigError(f"training.resume: no checkpoint directory at {checkpoint}")
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

    def state_dict(self, optimizer: dict[str, Any] | None = None) -> dict[str, Any]:
        """Everything besides the weights that the next step depends on.

        Every rank holds the same counters, data position and RNG states (same seed, same
        draws), so rank 0's state stands for all. ``optimizer``: a full optimizer state
        gathered under FSDP (default: this rank's own, complete under DDP).
        """
        c = self.counters
        scheduler = {k: v for k, v in self.scheduler.state_dict().items() if k != "lr_lambdas"}
        cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
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
