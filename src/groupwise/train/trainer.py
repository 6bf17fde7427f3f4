"""The GRPO trainer: builds the parts from the config and runs the steps, with evaluation,
checkpoints and the run's logs around them.

Data flows one way: prompts (``groupwise.data``) -> a rollout of G completions per prompt from
the rollout engine (``groupwise.rollout``) -> rewards (``groupwise.rewards``) -> advantages and
loss (``groupwise.core``) -> the update. One step is :class:`groupwise.train.step.GRPOStep`, written
as the algorithm box; this module decides *when* things happen (steps, evaluations,
checkpoints, stop signals) and delegates the rest: ``build`` (models, engine, optimizer),
``run_dir`` (resume, checkpoints' state), ``run_logger`` (metrics, completions, trackers, view).

Under ``torchrun`` (see ``groupwise.distributed``) every rank draws the same global batch of
prompts and keeps its contiguous slice, so all G completions of a prompt live on one rank.
Only rank 0 writes logs, reports, checkpoints (full weights and a full optimizer state,
gathered to rank 0 under FSDP) and runs evaluation.
"""

from __future__ import annotations

import random
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from groupwise.compat.trl import trl_arguments
from groupwise.config import Config, ConfigError, config_to_dict, resume_conflicts
from groupwise.data import Row, Task
from groupwise.data.sampler import PromptSampler
from groupwise.data.tasks import task_from_config
from groupwise.distributed import (
    all_gather_objects,
    barrier,
    broadcast_object,
    full_model_state,
    full_state_dicts,
    init_distributed,
    is_main,
    is_sharded,
    load_full_optimizer_state,
    rank_slice,
    world_size,
)
from groupwise.eval.evaluate import EvalResult, evaluate_accuracy, scored_task
from groupwise.export.run_end import check_exports, finish_final
from groupwise.models import ReferencePolicy
from groupwise.models.plan import run_plan
from groupwise.rollout.process import RolloutEngineDied
from groupwise.run.checkpoint import (
    CHECKPOINTS,
    Counters,
    load_policy_weights,
    load_trainer_state,
    read_checkpoint_info,
    save_checkpoint,
    save_pretrained_atomic,
)
from groupwise.run.directory import ResumableState, RunDirectory, resumed_plan_file
from groupwise.run.io import write_json_atomic
from groupwise.run.logger import RunLogger
from groupwise.run.records import CompletionRecord
from groupwise.train.build import build_parts, build_rewards
from groupwise.train.callbacks import Callbacks, StepCallback
from groupwise.train.guards import NonFiniteUpdatesError, StopSignals, TrainingInterrupted
from groupwise.train.step import GRPOStep, StepResult


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


class GRPOTrainer:
    """Trains ``config.model`` on ``task`` (default: ``config.data``) with GRPO.

    ``reward_funcs`` (callables or names) replace the config's and task's rewards; ``task``
    passes a program's own rows; ``callbacks`` are ``cb(trainer, metrics)`` functions run after
    each step or TRL ``TrainerCallback`` objects (:mod:`groupwise.train.callbacks`).
    TRL's ``GRPOTrainer(model=..., args=GRPOConfig(...), ...)`` works too: its arguments are
    translated by :func:`groupwise.compat.trl.trl_arguments`.
    """

    def __init__(
        self,
        config: Config | str | nn.Module | None = None,
        reward_funcs: Any = None,
        *,
        task: Task | None = None,
        callbacks: Sequence[StepCallback | Any] = (),
        **trl: Any,
    ) -> None:
        setup = trl_arguments(config, reward_funcs, task, trl)
        self.config = config = setup.config
        t = config.training
        if t.num_threads > 0:
            torch.set_num_threads(t.num_threads)
        check_exports(config)
        seed_everything(t.seed)
        self.device = init_distributed(t.device)  # joins the process group under torchrun
        self.out_dir = Path(t.output_dir)
        self.task = setup.task or task_from_config(config)
        self.counters = Counters()
        self.rewards = build_rewards(self.config, self.task, self.counters, setup.reward_funcs)
        self.task = scored_task(self.task, self.rewards)  # a copy when rewards score held-out
        self.sampler = PromptSampler(self.task.train, seed=t.seed)
        # every auto setting, resolved once (on resume: as the run started, from its plan.json)
        self.plan = run_plan(config, self.device, world_size(), resumed_plan_file(config))
        self.precision = self.plan.precision
        self.parts = build_parts(config, self.plan, self.device, setup.base_model)
        self.grpo_step = GRPOStep(config, self.parts, self.rewards, self.counters, self.next_rows)
        self.run_state: dict[str, Any] = {}  # eval_before, train_time_s: kept across resumes
        self.resumable = ResumableState(
            self.counters,
            self.run_state,
            self.parts.optimizer,
            self.parts.scheduler,
            self.sampler,
            self.grpo_step.generator,
            self.precision,
            self.grpo_step.rollouts,
            self.grpo_step.entropy,
        )
        self.run_dir = RunDirectory(config, self.precision, self.plan)
        self.callbacks = Callbacks(callbacks, args=trl.get("args"))
        self.last_checkpoint: Path | None = None
        self.last_completions: list[CompletionRecord] = []
        self.logger: RunLogger | None = None

    # ------------------------------------------------------------------ the parts
    @property
    def policy(self) -> nn.Module:
        """The model being trained (under LoRA the peft model)."""
        return self.parts.policy

    @property
    def tokenizer(self) -> Any:
        """The policy's tokenizer."""
        return self.parts.tokenizer

    @property
    def reference(self) -> ReferencePolicy | None:
        """The frozen reference policy (None when ``beta == 0``)."""
        return self.parts.reference

    @property
    def rollout_model(self) -> nn.Module:
        """The module the local engine decodes with (the policy itself when it decodes itself)."""
        return self.parts.weights.model

    @property
    def step_count(self) -> int:
        """Steps taken so far."""
        return self.counters.step

    @property
    def prompts_per_step(self) -> int:
        """P: prompts per step on this rank (its completions per step / G)."""
        t = self.config.training
        completions = t.per_device_train_batch_size * t.gradient_accumulation_steps
        return completions // self.config.rollout.num_generations

    # ------------------------------------------------------------------ steps and evaluation
    def next_rows(self) -> list[Row]:
        """This rank's prompts for a step (every rank draws the global batch), when needed."""
        every_row = self.sampler.next_batch(self.prompts_per_step * world_size())
        return every_row[rank_slice(len(every_row))]

    def step(self) -> dict[str, float]:
        """One GRPO step on the next prompts; returns its metrics (nothing is written)."""
        result: StepResult = self.grpo_step(self.grpo_step.next_rows())
        self.last_completions = result.records
        return result.metrics

    def evaluate(self) -> EvalResult:
        """Greedy accuracy on the task's held-out rows (with the current policy)."""
        if self.task.correctness is None:
            raise ValueError(f"task {self.task.name!r} has no correctness check to evaluate")
        e, engine = self.config.eval, self.parts.engine
        engine.sync_weights()  # every rank (a collective on FSDP)
        result: EvalResult | None = None
        if is_main():  # the others wait for rank 0's result
            result = evaluate_accuracy(
                engine,
                self.tokenizer,
                self.task.eval,
                self.task.correctness,
                batch_size=e.batch_size,
                max_new_tokens=e.max_new_tokens,
                device=self.device,
            )
        shared = broadcast_object(result)
        assert shared is not None
        return shared

    # ------------------------------------------------------------------ the run
    def train(self) -> dict[str, Any]:
        """Run (or continue) the steps up to ``max_steps`` with evaluation; returns the summary.

        Writes a checkpoint every ``save_steps`` steps and at the end. On SIGINT/SIGTERM it
        finishes the step, checkpoints and raises :class:`TrainingInterrupted`.
        """
        checkpoint = self.run_dir.find_checkpoint()  # rank 0 locks output_dir until released
        try:
            return self._train(checkpoint)
        finally:
            self.run_dir.release()

    def _train(self, checkpoint: Path | None) -> dict[str, Any]:
        """:meth:`train` once the run directory is locked and the checkpoint chosen."""
        t = self.config.training
        wall_start = time.perf_counter()
        if checkpoint is not None:
            self.resume_from(checkpoint)
        self.run_dir.start(self.step_count)
        summary: dict[str, Any] = {
            "model": self.config.model.name,
            "task": self.task.name,
            "eval_metric": self.task.eval_metric,
            "run_dir": str(self.out_dir),
            "world_size": world_size(),
            "precision": self.precision.as_dict(),
        }
        self.logger = RunLogger(self.config, self.out_dir)
        try:
            with StopSignals() as stop:
                self._train_loop(summary, stop, self.logger, wall_start)
        except RolloutEngineDied as exc:  # name the checkpoint the run resumes from
            raise exc.resume_point(self.last_checkpoint) from None
        finally:
            self.logger.close()
        if t.save_final:
            summary["final_model"] = str(self.save(self.out_dir / "final"))
        summary["wall_time_s"] = time.perf_counter() - wall_start
        if is_main():
            write_json_atomic(self.out_dir / "summary.json", summary)
            if t.save_final:  # the card, and the GGUF files of training.export_gguf
                finish_final(self.out_dir, t.export_gguf)
            if t.report:
                _write_report(self.out_dir)
        barrier()
        self.callbacks.train_end(self)
        return summary

    def _train_loop(
        self, summary: dict[str, Any], stop: StopSignals, log: RunLogger, wall_start: float
    ) -> None:
        """Evaluate, run the steps (logging and checkpointing), evaluate again; each step's
        ``wall_time`` is the seconds since ``wall_start`` (this process's run) at its end, its
        evaluation included."""
        t, e = self.config.training, self.config.eval
        has_eval = self.task.correctness is not None and len(self.task.eval) > 0
        if self.step_count == 0 and e.before and has_eval:
            self.run_state["eval_before"] = self._eval_and_log(log, "before", step=0)
        summary.update(self.run_state)
        log.start_view(self.step_count, self.run_state.get("eval_before"))
        train_start, time_before = time.perf_counter(), self.run_state.get("train_time_s", 0.0)
        self.callbacks.train_begin(self)
        while self.step_count < t.max_steps:
            self.callbacks.step_begin(self)
            metrics = self.step()
            n = self.step_count
            last = n == t.max_steps and e.after  # evaluated just below
            if e.every_steps and has_eval and n % e.every_steps == 0 and not last:
                metrics["eval_accuracy"] = self._eval_and_log(log, f"step {n}", step=None)
            metrics["wall_time"] = time.perf_counter() - wall_start
            log.log_step(n, metrics, self.last_completions)
            self.run_state["train_time_s"] = time_before + time.perf_counter() - train_start
            self._guard_and_checkpoint(stop)
            if self.callbacks.step_end(self, metrics):
                break  # a TrainerCallback set control.should_training_stop
        log.close_view()
        summary["train_time_s"] = time_before + time.perf_counter() - train_start
        summary["steps"] = self.step_count
        if e.after and has_eval:
            summary["eval_after"] = self._eval_and_log(log, "after", step=self.step_count)

    def _eval_and_log(self, log: RunLogger, label: str, step: int | None) -> float:
        result = self.evaluate()
        prompts = [row["prompt"] for row in self.task.eval]
        log.log_eval(label, result, prompts, step, self.task.eval_metric, self.step_count)
        self.callbacks.evaluated(self, result.accuracy)
        return result.accuracy

    def _guard_and_checkpoint(self, stop: StopSignals) -> None:
        """After a step: stop on runaway non-finite updates, checkpoint when due or asked to."""
        t, c = self.config.training, self.counters
        if t.max_nonfinite_updates and c.nonfinite_in_a_row >= t.max_nonfinite_updates:
            last = str(self.last_checkpoint) if self.last_checkpoint else None
            raise NonFiniteUpdatesError(c.nonfinite_in_a_row, c.step, last)
        due = t.save_steps > 0 and (c.step % t.save_steps == 0 or c.step == t.max_steps)
        # ranks see a signal at different moments: all stop after the step in which any saw it
        requested = next((r for r in all_gather_objects(stop.requested) if r is not None), None)
        if due or requested is not None:
            self.save_checkpoint()
        if requested is not None:
            raise TrainingInterrupted(requested, c.step, str(self.last_checkpoint))

    # ------------------------------------------------------------------ checkpoints and resume
    def state_dict(self, optimizer: dict[str, Any] | None = None) -> dict[str, Any]:
        """Everything besides the weights that the next step depends on (see ``run_dir``)."""
        return self.resumable.state_dict(optimizer)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned (weights are loaded separately)."""
        load = None
        if is_sharded(self.policy):

            def load(full: dict[str, Any]) -> None:
                load_full_optimizer_state(self.policy, self.parts.optimizer, full)

        self.resumable.load_state_dict(state, load)

    def save_checkpoint(self) -> Path:
        """Write ``output_dir/checkpoints/step-<step>`` (atomic; older ones pruned).

        Rank 0 writes; under FSDP the full weights and optimizer state are gathered to it first.
        """
        model_state, optimizer = None, None
        if is_sharded(self.policy):  # a collective: every rank takes part
            model_state, optimizer = full_state_dicts(self.policy, self.parts.optimizer)
        self.last_checkpoint = self.out_dir / CHECKPOINTS / f"step-{self.step_count:08d}"
        if is_main():
            self.last_checkpoint = save_checkpoint(
                self.out_dir,
                self.step_count,
                self.policy,
                self.tokenizer,
                self.state_dict(optimizer),
                config_to_dict(self.config),
                keep=self.config.training.save_total_limit,
                model_state=model_state,
            )
        barrier()
        self.callbacks.saved(self)
        return self.last_checkpoint

    def resume_from(self, path: Path) -> None:
        """Load a checkpoint; refuses, naming the keys, if the config changed unsafely."""
        info = read_checkpoint_info(path)
        conflicts = resume_conflicts(info["config"], config_to_dict(self.config))
        if conflicts:
            raise ConfigError(
                f"cannot resume from {path}: these settings differ from the checkpoint's and "
                "would change the run:\n  " + "\n  ".join(conflicts) + "\nRestore them, or "
                "start a new run in another training.output_dir"
            )
        load_policy_weights(self.policy, path)
        self.parts.engine.sync_weights()
        self.load_state_dict(load_trainer_state(path))
        self.last_checkpoint = Path(path)
        print(f"resumed from {path} at step {self.step_count}", flush=True)

    def save(self, path: Path) -> Path:
        """Save the policy (full model, or merged model plus ``adapter/`` under LoRA).

        Rank 0 writes; under FSDP every rank must call this (the weights are gathered to rank 0).
        """
        model_state = full_model_state(self.policy) if is_sharded(self.policy) else None
        if is_main():
            save_pretrained_atomic(self.policy, self.tokenizer, path, model_state=model_state)
        barrier()
        return path


def _write_report(out_dir: Path) -> None:
    try:
        from groupwise.run.report import write_report  # lazy: matplotlib is slow to import

        print(f"report: {write_report(out_dir)}", flush=True)
    except Exception as exc:  # never lose a finished run to a plotting error
        print(f"groupwise: could not write the report: {exc}", file=sys.stderr)
