"""The GRPO trainer: one step is one rollout followed by mu policy updates.

Algorithm (DeepSeekMath, arXiv 2402.03300, Alg. 1, with the variants of groupwise.core)::

    for step in 1..max_steps:
        prompts  <- next batch of P prompts
        groups   <- G completions per prompt from pi_theta              (generate)
        r        <- weighted sum of reward functions                    (score)
        A        <- group-relative advantages of r                      (score)
        old_logp <- log pi_theta_old(o)   only if mu > 1                (old_logp)
        ref_logp <- log pi_ref(o)         only if beta > 0              (ref_logp)
        repeat mu times:                                                (update)
            loss <- clipped surrogate + beta * KL, aggregated by loss_type,
                    accumulated over micro-batches with global normalisers
            clip grad norm, AdamW step, schedule step
        rollout copy <- pi_theta                                        (sync)

Each phase is timed under its name (``time/<phase>`` in metrics.jsonl).

Under ``torchrun`` (see ``groupwise.distributed``) every rank draws the same global batch of
prompts and keeps its contiguous slice, so all G completions of a prompt live on one rank.
Sampling draws come from the global row index (``rollout.generate(total_rows=...)``), the loss
normalisers are summed over ranks, and the loss is scaled by the world size before the
backward (DDP and FSDP average gradients): N ranks take the same step as one process with
the whole batch. Metrics are reduced over ranks; only rank 0 writes logs, reports, checkpoints
(full weights and a full optimizer state, gathered to rank 0 under FSDP) and runs evaluation.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from torch import Tensor

from groupwise.checkpoint import (
    CHECKPOINTS,
    latest_checkpoint,
    load_policy_weights,
    load_trainer_state,
    read_checkpoint_info,
    save_checkpoint,
)
from groupwise.config import (
    Config,
    ConfigError,
    check_merge_in_place_dtype,
    config_to_dict,
    resume_conflicts,
)
from groupwise.core import group_advantages, policy_loss
from groupwise.data import Row, Task, build_task
from groupwise.data.sampler import PromptSampler
from groupwise.distributed import (
    all_gather_cat,
    all_gather_objects,
    all_reduce_floats,
    all_reduce_sum,
    barrier,
    broadcast_object,
    full_model_state,
    full_state_dicts,
    full_tensor,
    init_distributed,
    is_main,
    is_sharded,
    load_full_optimizer_state,
    rank,
    rank_slice,
    world_size,
    wrap_policy,
)
from groupwise.evaluation import EvalResult, eos_token_ids, evaluate_accuracy, row_columns
from groupwise.forward import autocast_context, completion_logp
from groupwise.guards import NonFiniteUpdatesError, StopSignals, TrainingInterrupted
from groupwise.kernels.fused import install_fused_kernels
from groupwise.live import LiveView
from groupwise.metrics import (
    MetricsAccumulator,
    PhaseTimer,
    append_jsonl,
    completion_metrics,
    reward_metrics,
    truncate_jsonl,
    write_json_atomic,
)
from groupwise.models import (
    LoraSettings,
    MappedSnapshot,
    ReferencePolicy,
    apply_lora,
    cache_dir,
    enable_gradient_checkpointing,
    load_base_model,
    lora_base_weights,
    make_rollout_model,
    make_rollout_shell,
    merge_lora_in_place,
    sync_rollout_model,
)
from groupwise.optim import build_optimizer, build_scheduler
from groupwise.precision import PrecisionChoice, resolve_param_dtype, resolve_precision
from groupwise.rewards.base import (
    AnyRewardFunc,
    RewardRunner,
    resolve_reward,
    rewards_from_config,
)
from groupwise.rollout import (
    Rollout,
    generate,
    group_rows,
    select_groups,
    take_groups,
    tokenize_prompts,
    used_width,
)
from groupwise.tracking import Tracker, build_trackers, close_trackers, completions_markdown


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


REFERENCE_TOKENS = 4096
"""Completion tokens per forward of the reference pass (B1: 1.6 vs 1.9 s with micro-batches)."""
REFERENCE_CHUNK = 256
"""At most this many rows of reference logits at a time (a span's are not all held at once)."""


@dataclass
class StepBatch:
    """Everything the update phase needs about one rollout.

    ``rollout`` holds the groups that take part in the loss: with ``beta == 0`` a group whose
    advantages are all 0 contributes exactly 0 to the loss and its gradient, so it is left out
    of the forward/backward (``skip_zero_advantage_groups``). The normalisers still count every
    completion of the step, so the loss and its gradient are unchanged.
    """

    rollout: Rollout
    advantages: Tensor  # [b] of the kept groups
    loss_mask: Tensor  # [b, Lc]
    num_sequences: float  # completions in the step (global normaliser)
    num_tokens: float  # loss tokens in the step (global normaliser)
    micro: list[tuple[int, int]]  # group ranges of the micro-batches, within ``rollout``
    old_logp: list[Tensor | None]  # per micro-batch [b, lc]
    ref_logp: list[Tensor | None]  # per micro-batch [b, lc]


class LogpModule(torch.nn.Module):
    """The policy's per-token log-probs as a module, the unit DDP/FSDP wrap.

    The forward reaches into the model (body, then the output-embedding weight), so the
    data-parallel wrapper must sit around *this* call for its hooks to run.
    """

    def __init__(self, policy: torch.nn.Module) -> None:
        super().__init__()
        self.policy = policy

    def forward(
        self, rollout: Rollout, temperature: float, chunk_size: int, prefix_cache: bool
    ) -> tuple[Tensor, Tensor | None]:
        """``completion_logp`` of the policy (no entropy)."""
        return completion_logp(
            self.policy,
            rollout,
            temperature=temperature,
            chunk_size=chunk_size,
            compute_entropy=False,
            prefix_cache=prefix_cache,
        )


class GRPOTrainer:
    """Trains ``config.model`` on ``task`` (default: ``config.data``) with GRPO.

    ``reward_funcs`` (callables or names) replace ``config.rewards.funcs`` and the task's
    defaults. ``task`` lets a program pass its own rows (``groupwise.data.Task``).
    """

    def __init__(
        self,
        config: Config,
        *,
        reward_funcs: Sequence[AnyRewardFunc | str] | None = None,
        task: Task | None = None,
    ) -> None:
        self.config = config
        t = config.training
        if t.num_threads > 0:
            torch.set_num_threads(t.num_threads)
        seed_everything(t.seed)
        self.device = init_distributed(t.device)  # joins the process group under torchrun
        self.out_dir = Path(t.output_dir)
        self.task = task or build_task(
            config.data.task,
            train_size=config.data.train_size,
            eval_size=config.data.eval_size,
            seed=config.data.seed,
            params=config.data.params,
        )
        self.rewards = self._build_rewards(reward_funcs)
        self.sampler = PromptSampler(self.task.train, seed=t.seed)
        self.precision = self._resolve_precision()
        self.amp_dtype = torch.bfloat16 if self.precision.bf16 else None
        self._build_models()
        self.generator = torch.Generator(device=self.device).manual_seed(t.seed)
        self.step_count = 0
        self.num_tokens = 0
        self.skipped_updates = 0
        self.nonfinite_in_a_row = 0
        self.run_state: dict[str, Any] = {}  # eval_before, train_time_s: kept across resumes
        self.last_checkpoint: Path | None = None
        self.last_completions: list[dict[str, Any]] = []
        self.trackers: list[Tracker] = []

    def _resolve_precision(self) -> PrecisionChoice:
        """``training.bf16`` and ``training.param_dtype`` for this device (rank 0 decides: a
        probe per rank would differ)."""
        t, m = self.config.training, self.config.model
        choice = None
        if is_main():
            choice = resolve_precision(t.bf16, self.device, param_dtype=t.param_dtype)
            choice = resolve_param_dtype(
                t.param_dtype,
                choice,
                self.device,
                lora=m.lora,
                merge_in_place=m.lora_merge_in_place,
                world_size=world_size(),
            )
            compute = "bf16" if choice.bf16 else "float32"
            print(f"precision: {compute} compute ({choice.reason})", flush=True)
            print(f"precision: {choice.param_dtype} weights ({choice.param_reason})", flush=True)
        shared = broadcast_object(choice)
        assert shared is not None
        return shared

    def _build_rewards(self, reward_funcs: Sequence[AnyRewardFunc | str] | None) -> RewardRunner:
        r = self.config.rewards
        if reward_funcs:
            funcs = [resolve_reward(s) for s in reward_funcs]
        else:
            funcs = rewards_from_config(
                r,
                max_completion_length=self.config.rollout.max_completion_length,
                defaults=self.task.reward_funcs,
            )
        return RewardRunner(funcs, r.weights, concurrent=r.concurrent)

    def _build_models(self) -> None:
        m, t, a = self.config.model, self.config.training, self.config.algorithm
        lora = (
            LoraSettings(m.lora_r, m.lora_alpha, m.lora_dropout, m.lora_target_modules)
            if m.lora
            else None
        )
        dtype = getattr(torch, self.precision.param_dtype)
        if dtype == torch.bfloat16 and world_size() > 1:
            raise ConfigError(
                "training.param_dtype=bfloat16 is single-process only for now (its multi-process "
                "equivalence is not tested); use training.param_dtype=float32 under torchrun"
            )
        base, self.tokenizer = load_base_model(
            m.name,
            seed=t.seed,
            device=self.device,
            attn_implementation=m.attn_implementation,
            dtype=dtype,
        )
        if t.fused_kernels:
            install_fused_kernels(base)  # before any copy: copies keep the routing
        low = torch.bfloat16 if self.precision.bf16 else torch.float32
        # the policy decodes itself (no copy) under pure bf16 training, and under LoRA when asked
        shared = lora is None and dtype == low == torch.bfloat16
        lora_decodes_itself = lora is not None and not m.lora_rollout_copy
        in_place = lora is not None and m.lora_merge_in_place
        if in_place:
            check_merge_in_place_dtype(self.precision.param_dtype, self.precision.bf16)
        if in_place and self.device.type != "cpu":
            raise ConfigError(
                "model.lora_merge_in_place=true keeps its snapshot in CPU memory; the model runs "
                f"on {self.device}: set it to false"
            )
        if shared or lora_decodes_itself:
            self.rollout_model = base
        elif in_place:  # the rollout model's weights are the base's own
            self.rollout_model = make_rollout_shell(base)
        else:
            self.rollout_model = make_rollout_model(base, low)
        if t.gradient_checkpointing:
            enable_gradient_checkpointing(base)
        pure_bf16 = dtype == torch.bfloat16
        self.policy = apply_lora(base, lora, pure_bf16) if lora is not None else base
        if lora_decodes_itself:
            self.rollout_model = self.policy  # through the unmerged adapters
        self.lora_snapshot = (
            MappedSnapshot(lora_base_weights(self.policy), cache_dir() / "mapped")
            if in_place
            else None
        )
        self._sync_rollout()
        if m.reference_on_disk and self.device.type != "cpu":
            raise ConfigError(
                "model.reference_on_disk=true maps the reference into CPU memory; "
                f"the model runs on {self.device}: set it to false"
            )
        on_disk = cache_dir() / "mapped" if m.reference_on_disk else None
        self.reference = ReferencePolicy(self.policy, low, on_disk) if a.beta > 0 else None
        self.eos_ids = eos_token_ids(self.tokenizer, self.policy)
        # under fsdp this shards self.policy's parameters in place: the optimizer comes after
        self.train_module = wrap_policy(LogpModule(self.policy), t.strategy, self.device)
        self.optimizer = build_optimizer(
            self.policy.parameters(),
            lr=t.learning_rate,
            betas=(t.adam_beta1, t.adam_beta2),
            weight_decay=t.weight_decay,
            bf16_rounding=t.bf16_rounding,
            seed=t.seed,
        )
        total_updates = t.max_steps * a.num_iterations
        self.scheduler = build_scheduler(
            self.optimizer, t.lr_scheduler_type, t.warmup_steps, total_updates
        )

    # ------------------------------------------------------------------ the step
    @property
    def prompts_per_step(self) -> int:
        """P: prompts per step on this rank (its completions per step / G)."""
        t = self.config.training
        completions = t.per_device_train_batch_size * t.gradient_accumulation_steps
        return completions // self.config.rollout.num_generations

    def step(self) -> dict[str, float]:
        """One GRPO step (the algorithm box in the module docstring); returns its metrics."""
        timer = PhaseTimer()
        start = time.perf_counter()
        with timer("generate"):
            every_row = self.sampler.next_batch(self.prompts_per_step * world_size())
            rows = every_row[rank_slice(len(every_row))]  # this rank's prompts, whole groups
            rollout = self._generate(rows)
        with timer("score"):
            texts, metrics, advantages = self._score(rows, rollout)
        batch = self._prepare(rollout, advantages)
        with timer("old_logp"):
            if self.config.algorithm.num_iterations > 1:
                batch.old_logp = self._logp_no_grad(self.policy, batch)
        with timer("ref_logp"):
            if self.reference is not None:
                batch.ref_logp = self._reference_logp(batch)
        learning_rate = float(self.scheduler.get_last_lr()[0])  # the rate this step uses
        with timer("update"):
            metrics.update(self._update(batch))
        with timer("sync"):
            self._sync_rollout()
        self.step_count += 1
        metrics.update(self._rollout_metrics(rollout))
        metrics.update(all_reduce_floats(timer.metrics(), {}))
        metrics.update(
            step=self.step_count,
            num_tokens=self.num_tokens,
            learning_rate=learning_rate,
            step_time=time.perf_counter() - start,
        )
        records = self._completion_records(rows, texts, rollout, advantages)
        self.last_completions = [r for part in all_gather_objects(records) for r in part]
        if self.config.training.log_completions and is_main():
            self._write_completions(self.last_completions)
        return metrics

    def _rollout_metrics(self, rollout: Rollout) -> dict[str, float]:
        """Token count, lengths and entropy over the global batch (every rank's rollout)."""
        mask = rollout.completion_mask
        entropy = rollout.entropy if rollout.entropy is not None else torch.zeros_like(mask)
        sums = torch.tensor(
            [
                float(mask.sum()),
                float(rollout.prompts.attention_mask.sum() * rollout.group_size),
                float((entropy * mask).sum()),
            ],
            dtype=torch.float64,
        )
        tokens, prompt_tokens, entropy_sum = all_reduce_sum(sums).tolist()
        self.num_tokens += int(tokens + prompt_tokens)
        lengths = all_gather_cat(rollout.completion_lengths)
        out = completion_metrics(lengths, all_gather_cat(rollout.truncated))
        if rollout.entropy is not None:
            out["entropy"] = entropy_sum / max(tokens, 1.0)
        return out

    def _generate(self, rows: list[Row]) -> Rollout:
        r = self.config.rollout
        prompts = tokenize_prompts(self.tokenizer, [row["prompt"] for row in rows], self.device)
        local_rows = len(rows) * r.num_generations
        # torch.multinomial in one process; rank-invariant draws when N > 1 (or when asked)
        invariant = r.rank_invariant_sampling or world_size() > 1
        self.rollout_model.eval()  # it may be the policy itself (pure bf16 training)
        with self._rollout_weights():
            return generate(
                self.rollout_model,
                prompts,
                group_size=r.num_generations,
                max_completion_length=r.max_completion_length,
                eos_token_ids=self.eos_ids,
                pad_token_id=self.tokenizer.pad_token_id,
                temperature=r.temperature,
                top_p=r.top_p,
                top_k=r.top_k,
                generator=self.generator,
                min_new_tokens=r.min_new_tokens,
                row_offset=rank() * local_rows,
                total_rows=local_rows * world_size() if invariant else None,
                compile_decode=r.compile,
            )

    def _sync_rollout(self) -> None:
        """Bring the rollout model up to the policy (nothing to do when LoRA merges in place:
        the merge happens under :meth:`_rollout_weights`)."""
        if self.lora_snapshot is None:
            sync_rollout_model(self.policy, self.rollout_model)

    @contextmanager
    def _rollout_weights(self) -> Iterator[None]:
        """Under ``model.lora_merge_in_place``: the adapters merged into the base weights for
        the block, which are then restored bitwise from their snapshot."""
        if self.lora_snapshot is None:
            yield
            return
        merge_lora_in_place(self.policy)
        try:
            yield
        finally:
            self.lora_snapshot.restore()

    def _score(
        self, rows: list[Row], rollout: Rollout
    ) -> tuple[list[str], dict[str, float], Tensor]:
        g = rollout.group_size
        texts = self.tokenizer.batch_decode(rollout.completion_ids, skip_special_tokens=True)
        prompts = [row["prompt"] for row in rows for _ in range(g)]
        ids = [
            row[m.bool()].tolist()
            for row, m in zip(rollout.completion_ids, rollout.completion_mask, strict=True)
        ]
        result = self.rewards(
            prompts,
            texts,
            completion_ids=ids,
            truncated=rollout.truncated.tolist(),
            **row_columns(rows, g),
        )
        advantages, zero_std = group_advantages(
            result.total, g, scale_rewards=self.config.algorithm.scale_rewards
        )
        self._last_rewards = result
        per_func = {k: all_gather_cat(v) for k, v in result.per_func.items()}
        metrics = reward_metrics(
            all_gather_cat(result.total), per_func, g, all_gather_cat(zero_std)
        )  # over the global batch
        return texts, metrics, advantages

    def _prepare(self, rollout: Rollout, advantages: Tensor) -> StepBatch:
        g = rollout.group_size
        loss_mask = rollout.completion_mask.clone()  # [B, Lc]
        if self.config.algorithm.mask_truncated_completions:
            loss_mask[rollout.truncated] = 0
        counts = torch.tensor([loss_mask.shape[0], loss_mask.sum()], dtype=torch.float64)
        num_sequences, num_tokens = all_reduce_sum(counts).tolist()  # global normalisers
        advantages = advantages.to(self.device)
        groups = torch.arange(rollout.prompts.input_ids.shape[0], device=self.device)
        skip = self.config.training.skip_zero_advantage_groups and world_size() == 1
        if skip and self.reference is None:  # ranks must run equally many backward passes
            groups = groups[(advantages.view(-1, g) != 0).any(dim=1)]
        rollout = take_groups(rollout, groups)
        rows = group_rows(groups, g)
        t = self.config.training
        per_micro = groups_per_microbatch(
            rollout, t.per_device_train_batch_size // g, t.max_tokens_per_microbatch
        )
        n = groups.numel()
        micro = [(s, min(s + per_micro, n)) for s in range(0, n, per_micro)]
        none: list[Tensor | None] = [None] * len(micro)
        return StepBatch(
            rollout=rollout,
            advantages=advantages[rows],
            loss_mask=loss_mask[rows, : rollout.completion_ids.shape[1]],
            num_sequences=num_sequences,
            num_tokens=num_tokens,
            micro=micro,
            old_logp=none,
            ref_logp=list(none),
        )

    @torch.no_grad()
    def _logp_no_grad(self, model: torch.nn.Module, batch: StepBatch) -> list[Tensor | None]:
        out: list[Tensor | None] = []
        for start, stop in batch.micro:
            sub = select_groups(batch.rollout, start, stop)
            with autocast_context(self.device, self.amp_dtype):
                if model is self.policy:  # through the DDP/FSDP wrapper (FSDP must unshard)
                    logp, _ = self._policy_forward(sub)
                else:
                    logp, _ = self._forward(model, sub, entropy=False)
            out.append(logp.detach())
        return out

    def _reference_logp(self, batch: StepBatch) -> list[Tensor | None]:
        """ref_logp per micro-batch. The reference keeps no activations, so it runs spans of up
        to ``REFERENCE_TOKENS`` completion tokens (bigger matmuls) instead of micro-batches."""
        assert self.reference is not None
        model, ctx = self.reference.context()
        rollout, g = batch.rollout, batch.rollout.group_size
        num_groups = rollout.prompts.input_ids.shape[0]
        per_span = max(1, REFERENCE_TOKENS // (g * rollout.completion_ids.shape[1]))
        spans = [(s, min(s + per_span, num_groups)) for s in range(0, num_groups, per_span)]
        full = torch.zeros(rollout.completion_ids.shape, device=self.device)  # [B, Lc]
        with ctx, torch.no_grad():
            for start, stop in spans:
                with autocast_context(self.device, self.amp_dtype):
                    sub = select_groups(rollout, start, stop)
                    logp, _ = self._forward(model, sub, entropy=False, chunk=REFERENCE_CHUNK)
                full[start * g : stop * g, : logp.shape[1]] = logp  # [b, lc]
        self.reference.release()
        out: list[Tensor | None] = []
        for start, stop in batch.micro:  # each micro-batch's rows and width (as select_groups)
            width = used_width(rollout.completion_mask[start * g : stop * g])
            out.append(full[start * g : stop * g, :width])
        return out

    def _forward(
        self, model: torch.nn.Module, rollout: Rollout, *, entropy: bool, chunk: int | None = None
    ) -> tuple[Tensor, Tensor | None]:
        chunk_size = self.config.training.logprob_chunk_size
        return completion_logp(
            model,
            rollout,
            temperature=max(self.config.rollout.temperature, 1e-6),
            chunk_size=chunk_size if chunk is None else min(chunk, chunk_size),
            compute_entropy=entropy,
        )

    def _policy_forward(self, rollout: Rollout) -> tuple[Tensor, Tensor | None]:
        """Log-probs of the policy through its data-parallel wrapper."""
        out: tuple[Tensor, Tensor | None] = self.train_module(
            rollout,
            max(self.config.rollout.temperature, 1e-6),
            self.config.training.logprob_chunk_size,
            not self.config.training.gradient_checkpointing,
        )
        return out

    def _grad_sync(self, enabled: bool) -> AbstractContextManager[Any]:
        """DDP: skip the gradient all-reduce on all but the last micro-batch of an update."""
        no_sync = getattr(self.train_module, "no_sync", None)
        if enabled or no_sync is None:
            return nullcontext()
        context: AbstractContextManager[Any] = no_sync()
        return context

    def _update(self, batch: StepBatch) -> dict[str, float]:
        """mu optimizer updates over the rollout, each accumulated over the micro-batches."""
        a, t = self.config.algorithm, self.config.training
        acc = MetricsAccumulator()
        self.policy.train()
        for p in self.policy.parameters():
            if p.requires_grad and p.grad is None:
                p.grad = torch.zeros_like(p)
        # DDP/FSDP average gradients over ranks; each rank's loss is already a share of the
        # global loss (global normalisers), so scaling by N makes the average their sum
        scale = float(world_size())
        for _ in range(a.num_iterations):
            # zeros, not None: with every group skipped AdamW must still take its (momentum) step
            self.optimizer.zero_grad(set_to_none=False)
            loss_total = 0.0
            for i, (start, stop) in enumerate(batch.micro):
                with self._grad_sync(i == len(batch.micro) - 1):
                    loss, stats = self._micro_loss(batch, i, start, stop)
                    (loss * scale).backward()
                loss_total += float(loss.detach())
                acc.add(stats)
            grad_norm = self._clip_and_step(t.max_grad_norm)
            acc.add({"loss": loss_total, "grad_norm": grad_norm})
        ops = {"loss": "sum", "clip_ratio/low_min": "min", "clip_ratio/high_max": "max"}
        out = all_reduce_floats(acc.summary(), ops)  # loss: each rank holds a share of it
        out["skipped_updates"] = float(self.skipped_updates)
        return out

    def _micro_loss(
        self, batch: StepBatch, index: int, start: int, stop: int
    ) -> tuple[Tensor, dict[str, Tensor]]:
        a, g = self.config.algorithm, batch.rollout.group_size
        sub = select_groups(batch.rollout, start, stop)
        mask = batch.loss_mask[start * g : stop * g, : sub.completion_ids.shape[1]]  # [b, lc]
        with autocast_context(self.device, self.amp_dtype):
            logp, _ = self._policy_forward(sub)
        old_logp = batch.old_logp[index]
        loss, stats = policy_loss(
            logp,
            old_logp if old_logp is not None else logp.detach(),
            batch.advantages[start * g : stop * g],
            mask,
            ref_logp=batch.ref_logp[index],
            beta=a.beta,
            epsilon_low=a.epsilon,
            epsilon_high=a.epsilon_high,
            loss_type=a.loss_type,
            importance_sampling_level=a.importance_sampling_level,
            kl_estimator=a.kl_estimator,
            max_completion_length=self.config.rollout.max_completion_length,
            num_sequences=batch.num_sequences,
            num_tokens=batch.num_tokens,
        )
        return loss, stats

    def _clip_and_step(self, max_norm: float) -> float:
        params = [p for p in self.policy.parameters() if p.requires_grad]
        limit = max_norm if max_norm > 0 else float("inf")
        grad_norm = float(full_tensor(torch.nn.utils.clip_grad_norm_(params, limit)))
        if not np.isfinite(grad_norm):
            self.skipped_updates += 1
            self.nonfinite_in_a_row += 1
            self.optimizer.zero_grad(set_to_none=False)
            print(
                f"groupwise: step {self.step_count + 1}: non-finite loss or gradient (grad norm "
                f"{grad_norm}); update skipped ({self.nonfinite_in_a_row} in a row)",
                file=sys.stderr,
                flush=True,
            )
        else:
            self.nonfinite_in_a_row = 0
            self.optimizer.step()
        self.scheduler.step()
        return grad_norm

    # ------------------------------------------------------------------ the run
    def evaluate(self) -> EvalResult:
        """Greedy accuracy on the task's held-out rows (with the current policy)."""
        if self.task.correctness is None:
            raise ValueError(f"task {self.task.name!r} has no correctness check to evaluate")
        e = self.config.eval
        self._sync_rollout()  # every rank (a collective on FSDP)
        result: EvalResult | None = None
        if is_main():  # the others wait for rank 0's result
            with self._rollout_weights():
                result = evaluate_accuracy(
                    self.rollout_model,
                    self.tokenizer,
                    self.task.eval,
                    self.task.correctness,
                    batch_size=e.batch_size,
                    max_new_tokens=e.max_new_tokens,
                )
        shared = broadcast_object(result)
        assert shared is not None
        return shared

    def train(self) -> dict[str, Any]:
        """Run (or continue) the steps up to ``max_steps`` with evaluation; returns the summary.

        Writes a checkpoint every ``save_steps`` steps and at the end. On SIGINT/SIGTERM it
        finishes the step, checkpoints and raises :class:`TrainingInterrupted`.
        """
        t = self.config.training
        wall_start = time.perf_counter()
        self._prepare_run_dir()
        summary: dict[str, Any] = {
            "model": self.config.model.name,
            "task": self.task.name,
            "run_dir": str(self.out_dir),
            "world_size": world_size(),
            "precision": self.precision.as_dict(),
        }
        if is_main():
            self.trackers = build_trackers(t.report_to, self.out_dir, config_to_dict(self.config))
        try:
            with StopSignals() as stop:
                self._train_loop(summary, stop)
        finally:
            close_trackers(self.trackers)
        if t.save_final:
            summary["final_model"] = str(self.save(self.out_dir / "final"))
        summary["wall_time_s"] = time.perf_counter() - wall_start
        if is_main():
            write_json_atomic(self.out_dir / "summary.json", summary)
            if t.report:
                self._write_report()
        barrier()
        return summary

    def _train_loop(self, summary: dict[str, Any], stop: StopSignals) -> None:
        """Evaluate, run the steps (logging and checkpointing), evaluate again."""
        t, e = self.config.training, self.config.eval
        has_eval = self.task.correctness is not None and len(self.task.eval) > 0
        if self.step_count == 0 and e.before and has_eval:
            self.run_state["eval_before"] = self._eval_and_log("before", step=0)
        summary.update(self.run_state)
        view = LiveView(
            t.max_steps,
            enabled=t.progress and is_main(),
            log_completions_steps=t.log_completions_steps,
            num_completions=t.num_completions_to_print,
            initial=self.step_count,
        )
        if "eval_before" in self.run_state:
            view.set_eval_accuracy(self.run_state["eval_before"])
        train_start, time_before = time.perf_counter(), self.run_state.get("train_time_s", 0.0)
        try:
            while self.step_count < t.max_steps:
                metrics = self.step()
                last = self.step_count == t.max_steps and e.after  # evaluated just below
                if e.every_steps and has_eval and self.step_count % e.every_steps == 0 and not last:
                    metrics["eval_accuracy"] = self._eval_and_log(
                        f"step {self.step_count}", step=None
                    )
                    view.set_eval_accuracy(metrics["eval_accuracy"])
                log_due = self.step_count % t.logging_steps == 0 or self.step_count == t.max_steps
                if log_due and is_main():
                    append_jsonl(self.out_dir / "metrics.jsonl", metrics)
                    for tracker in self.trackers:
                        tracker.log(metrics, self.step_count)
                view.update(self.step_count, metrics, self.last_completions)
                self.run_state["train_time_s"] = time_before + time.perf_counter() - train_start
                self._guard_and_checkpoint(stop)
        finally:
            view.close()
        summary["train_time_s"] = time_before + time.perf_counter() - train_start
        summary["steps"] = self.step_count
        if e.after and has_eval:
            summary["eval_after"] = self._eval_and_log("after", step=self.step_count)

    def _guard_and_checkpoint(self, stop: StopSignals) -> None:
        """After a step: stop on runaway non-finite updates, checkpoint when due or asked to."""
        t = self.config.training
        if t.max_nonfinite_updates and self.nonfinite_in_a_row >= t.max_nonfinite_updates:
            last = str(self.last_checkpoint) if self.last_checkpoint else None
            raise NonFiniteUpdatesError(self.nonfinite_in_a_row, self.step_count, last)
        due = t.save_steps > 0 and (
            self.step_count % t.save_steps == 0 or self.step_count == t.max_steps
        )
        # ranks see a signal at different moments: all stop after the step in which any saw it
        requested = next((r for r in all_gather_objects(stop.requested) if r is not None), None)
        if due or requested is not None:
            self.save_checkpoint()
        if requested is not None:
            raise TrainingInterrupted(requested, self.step_count, str(self.last_checkpoint))

    # ------------------------------------------------------------------ checkpoints and resume
    def state_dict(self, optimizer: dict[str, Any] | None = None) -> dict[str, Any]:
        """Everything besides the weights that the next step depends on.

        Every rank holds the same counters, data position and RNG states (same seed, same
        draws), so rank 0's state stands for all. ``optimizer``: a full optimizer state
        gathered under FSDP (default: this rank's own, complete under DDP).
        """
        scheduler = {k: v for k, v in self.scheduler.state_dict().items() if k != "lr_lambdas"}
        cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
        return {
            "step": self.step_count,
            "num_tokens": self.num_tokens,
            "skipped_updates": self.skipped_updates,
            "nonfinite_in_a_row": self.nonfinite_in_a_row,
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

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned (weights are loaded separately)."""
        saved_dtype = state.get("param_dtype", self.precision.param_dtype)
        if saved_dtype != self.precision.param_dtype:  # e.g. auto resolved on another CPU
            raise ConfigError(
                f"cannot resume: the checkpoint trained {saved_dtype} weights and this run "
                f"would train {self.precision.param_dtype} ones ({self.precision.param_reason}); "
                f"set training.param_dtype={saved_dtype}"
            )
        self.step_count = int(state["step"])
        self.num_tokens = int(state["num_tokens"])
        self.skipped_updates = int(state["skipped_updates"])
        self.nonfinite_in_a_row = int(state["nonfinite_in_a_row"])
        self.run_state = dict(state["run_state"])
        if is_sharded(self.policy):
            load_full_optimizer_state(self.policy, self.optimizer, state["optimizer"])
        else:
            self.optimizer.load_state_dict(state["optimizer"])
        saved_world = int(state.get("world_size", 1))
        if saved_world != world_size() and is_main():
            print(
                f"groupwise: resuming a {saved_world}-process run with {world_size()} processes: "
                "completions per step = per_device_train_batch_size * gradient_accumulation_steps "
                "* processes changes with it",
                file=sys.stderr,
            )
        # keep this run's schedule function (max_steps may have grown), restore its position
        scheduler = dict(state["scheduler"], lr_lambdas=[None] * len(self.scheduler.lr_lambdas))
        self.scheduler.load_state_dict(scheduler)
        self.sampler.load_state_dict(state["sampler"])
        rng = state["rng"]
        random.setstate(rng["python"])
        np.random.set_state(rng["numpy"])
        torch.set_rng_state(rng["torch"])
        if rng["cuda"] is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(rng["cuda"])
        self.generator.set_state(rng["generator"])

    def save_checkpoint(self) -> Path:
        """Write ``output_dir/checkpoints/step-<step>`` (atomic; older ones pruned).

        Rank 0 writes; under FSDP the full weights and optimizer state are gathered to it first.
        """
        t = self.config.training
        model_state, optimizer = None, None
        if is_sharded(self.policy):  # a collective: every rank takes part
            model_state, optimizer = full_state_dicts(self.policy, self.optimizer)
        self.last_checkpoint = self.out_dir / CHECKPOINTS / f"step-{self.step_count:08d}"
        if is_main():
            self.last_checkpoint = save_checkpoint(
                self.out_dir,
                self.step_count,
                self.policy,
                self.tokenizer,
                self.state_dict(optimizer),
                config_to_dict(self.config),
                keep=t.save_total_limit,
                model_state=model_state,
            )
        barrier()
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
        self._sync_rollout()
        self.load_state_dict(load_trainer_state(path))
        self.last_checkpoint = Path(path)
        print(f"resumed from {path} at step {self.step_count}", flush=True)

    def _prepare_run_dir(self) -> None:
        """Resume (``training.resume``) or start fresh, never silently mixing two runs.

        Rank 0 decides and prepares the directory; every rank then loads the same checkpoint
        (read from the run directory: a shared file system on several nodes).
        """
        found: tuple[str | None, str | None] = (None, None)  # (checkpoint, error)
        if is_main():
            try:
                checkpoint = self._find_checkpoint()
                found = (str(checkpoint) if checkpoint else None, None)
            except ConfigError as exc:
                found = (None, str(exc))
        checkpoint_path, error = broadcast_object(found)
        if error is not None:
            raise ConfigError(error)
        if checkpoint_path is not None:
            self.resume_from(Path(checkpoint_path))
        if is_main():
            for log in [self.out_dir / "metrics.jsonl", self.out_dir / "completions.jsonl"]:
                truncate_jsonl(log, self.step_count)  # drop steps after the checkpoint (or all)
            config_yaml = self._precision_comment() + yaml.safe_dump(config_to_dict(self.config))
            (self.out_dir / "config.yaml").write_text(config_yaml)
        barrier()

    def _precision_comment(self) -> str:
        """config.yaml's first lines: what ``training.bf16`` resolved to here, and why."""
        p = self.precision
        return (
            f"# training.bf16: {p.setting} -> {'true' if p.bf16 else 'false'}\n# why: {p.reason}\n"
            f"# training.param_dtype: {p.param_dtype} ({p.param_reason})\n"
        )

    def _find_checkpoint(self) -> Path | None:
        """The checkpoint to resume from (or None), clearing an old run when told to."""
        t = self.config.training
        self.out_dir.mkdir(parents=True, exist_ok=True)
        logs = [self.out_dir / "metrics.jsonl", self.out_dir / "completions.jsonl"]
        checkpoint: Path | None = None
        if t.resume == "auto":
            checkpoint = latest_checkpoint(self.out_dir)
        elif t.resume:
            checkpoint = Path(t.resume)
            if not checkpoint.is_dir():
                raise ConfigError(f"training.resume: no checkpoint directory at {checkpoint}")
        elif any(p.exists() for p in logs) or (self.out_dir / CHECKPOINTS).exists():
            if not t.overwrite_output_dir:
                raise ConfigError(
                    f"training.output_dir {self.out_dir} already holds a run; continue it with "
                    "resume=auto, start over with overwrite_output_dir=true (deletes its logs "
                    "and checkpoints), or choose another output_dir"
                )
            shutil.rmtree(self.out_dir / CHECKPOINTS, ignore_errors=True)
        return checkpoint

    def _write_report(self) -> None:
        try:
            from groupwise.report import write_report  # lazy: matplotlib is slow to import

            print(f"report: {write_report(self.out_dir)}", flush=True)
        except Exception as exc:  # never lose a finished run to a plotting error
            print(f"groupwise: could not write the report: {exc}", file=sys.stderr)

    def _eval_and_log(self, label: str, step: int | None) -> float:
        result = self.evaluate()
        if is_main():
            print(
                f"held-out greedy accuracy ({label}): {result.accuracy:.1%} on "
                f"{len(result.scores)}",
                flush=True,
            )
        if step is not None:
            for tracker in self.trackers:
                tracker.log({"eval_accuracy": result.accuracy}, step)
        return result.accuracy

    def save(self, path: Path) -> Path:
        """Save the policy (full model, or merged model plus ``adapter/`` under LoRA).

        Rank 0 writes; under FSDP every rank must call this (the weights are gathered to rank 0).
        """
        from groupwise.checkpoint import save_pretrained_atomic

        model_state = None
        if is_sharded(self.policy):
            model_state = full_model_state(self.policy)
        if is_main():
            save_pretrained_atomic(self.policy, self.tokenizer, path, model_state=model_state)
        barrier()
        return path

    def _completion_records(
        self, rows: list[Row], texts: list[str], rollout: Rollout, advantages: Tensor
    ) -> list[dict[str, Any]]:
        """One record per completion: step, prompt, completion, rewards, advantage."""
        g = rollout.group_size
        per_func = self._last_rewards.per_func
        records = []
        for i, text in enumerate(texts):
            records.append(
                {
                    "step": self.step_count,
                    "prompt": rows[i // g]["prompt"],
                    "completion": text,
                    "rewards": {k: _finite_or_none(float(v[i])) for k, v in per_func.items()},
                    "reward": float(self._last_rewards.total[i]),
                    "advantage": float(advantages[i]),
                    "truncated": bool(rollout.truncated[i]),
                }
            )
        return records

    def _write_completions(self, records: list[dict[str, Any]]) -> None:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        path = self.out_dir / "completions.jsonl"
        with open(path, "a", encoding="utf-8") as handle:
            handle.write("".join(json.dumps(r) + "\n" for r in records))
            handle.flush()
            os.fsync(handle.fileno())
        for tracker in self.trackers:
            tracker.log_text("completions", completions_markdown(records), self.step_count)


def groups_per_microbatch(rollout: Rollout, cap: int, max_tokens: int) -> int:
    """Groups per forward/backward: at most ``cap``, and at most ``max_tokens`` tokens each.

    A group costs its prompt once (the shared-prompt forward) plus G completions at the
    rollout's width. The same on every rank (the minimum), so FSDP's collectives pair up.
    """
    if max_tokens <= 0:
        return cap
    g = rollout.group_size
    per_group = rollout.prompts.input_ids.shape[1] + g * rollout.completion_ids.shape[1]
    fit = float(min(cap, max(1, max_tokens // per_group)))
    return int(all_reduce_floats({"fit": fit}, {"fit": "min"})["fit"])


def _finite_or_none(value: float) -> float | None:
    return value if np.isfinite(value) else None
