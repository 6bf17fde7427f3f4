"""One GRPO step as the algorithm box: each phase a public, timed method on typed records.

Algorithm (DeepSeekMath, arXiv 2402.03300, Alg. 1, with the variants of groupwise.core)::

    groups   <- G completions per prompt from pi_theta              (generate)
    r        <- weighted sum of reward functions                    (score)
    A        <- group-relative advantages of r                      (score)
    groups   <- only groups with reward variance, refilled to P     (refill: DAPO, opt-in)
    batch    <- loss masks, normalisers, micro-batches              (prepare)
    old_logp <- log pi_theta_old(o)   only if mu > 1, and only with dropout on (old_logp);
                otherwise the first update's forward gives it (the weights have not moved)
    ref_logp <- log pi_ref(o)         only if beta > 0              (ref_logp)
    repeat mu times:                                                (update)
        w    <- engine-mismatch weights from old_logp and the engine's log-probs
                (only when correcting; core/correction; 1 otherwise)
        loss <- w * clipped surrogate + beta * KL, aggregated by loss_type,
                accumulated over micro-batches with global normalisers
        clip grad norm, AdamW step, schedule step
    rollout weights <- pi_theta                                     (sync)

Where the rollout comes from is the step's :class:`~groupwise.train.rollouts.RolloutSource`:
generated at the step's start (``rollout.max_staleness=0``), or one step ahead by the engine in
its own process while the previous step trained (``max_staleness=1``: generate then takes the
rollout made during the last step and submits the next one; sync waits for it first).

Each phase is timed under its name (``time/<phase>`` in metrics.jsonl). The step does no file
I/O: it returns a :class:`StepResult` (metrics and completion records) for the run's logger.
Under ``torchrun`` the loss normalisers are summed over ranks and the loss is scaled by the
world size before the backward (DDP and FSDP average gradients), so N ranks take the same
step as one process with the whole batch; metrics are reduced over ranks.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from groupwise.config import Config, ConfigError
from groupwise.core import entropy_mask, group_advantages, policy_loss
from groupwise.data import Row
from groupwise.distributed import (
    all_gather_cat,
    all_gather_objects,
    all_reduce_floats,
    all_reduce_sum,
    full_tensor,
    rank,
    world_size,
)
from groupwise.rewards.base import RewardRunner
from groupwise.rollout import (
    PromptBatch,
    Rollout,
    RolloutRequest,
    SamplingParams,
    group_rows,
    take_groups,
    tokenize_prompts,
)
from groupwise.rollout.records import row_columns
from groupwise.run.checkpoint import Counters
from groupwise.run.records import CompletionRecord
from groupwise.train.batch import (
    Scored,
    StepBatch,
    completion_records,
    grad_sync,
    groups_per_microbatch,
    micro_ranges,
    mismatch_correction,
    wants_behaviour_logp,
    within_budget,
)
from groupwise.train.build import TrainingParts
from groupwise.train.dynamic import Generated, dynamic_sampling
from groupwise.train.entropy import EntropyBonus
from groupwise.train.forward import autocast_context, has_active_dropout
from groupwise.train.metrics import (
    MetricsAccumulator,
    PhaseTimer,
    completion_metrics,
    score_metrics,
)
from groupwise.train.rollouts import RolloutSource, rollout_source


@dataclass
class StepResult:
    """What one step hands to the run: its metrics and the global batch's completions."""

    metrics: dict[str, float]
    records: list[CompletionRecord]


class GRPOStep:
    """The phases of a step over the parts the trainer built (policy, engine, optimizer...).

    ``draw``: this rank's rows for a step from the run's sampler (:meth:`next_rows` asks it,
    now or a step ahead).
    """

    def __init__(
        self,
        config: Config,
        parts: TrainingParts,
        rewards: RewardRunner,
        counters: Counters,
        draw: Callable[[], list[Row]] | None = None,
    ) -> None:
        self.config = config
        self.parts = parts
        self.rewards = rewards
        self.counters = counters
        self.generator = torch.Generator(device=parts.device).manual_seed(config.training.seed)
        self.entropy = EntropyBonus.from_config(config.algorithm)  # off by default
        self.rollouts: RolloutSource = rollout_source(
            config, parts.engine, draw or _no_draw, self.request, self.steps_left
        )
        self.dynamic = dynamic_sampling(config, parts.tokenizer.pad_token_id)  # None when off
        self.reuse_old_logp = not has_active_dropout(parts.policy)
        """With mu > 1, take ``old_logp`` from the first update's forward instead of a pass of
        its own: every micro-batch of the first update runs before its optimizer step, so the
        weights are pi_theta_old's and ``logp.detach()`` is ``old_logp`` (one forward per step
        fewer). Not under active dropout, where a training-mode forward is not the policy's."""

    def next_rows(self) -> list[Row]:
        """This rank's prompts for the next step (drawn now, or drawn a step ahead)."""
        return self.rollouts.next_rows()

    def steps_left(self) -> int:
        """Steps after the one under way (``training.max_steps`` minus those taken, minus 1)."""
        return self.config.training.max_steps - self.counters.step - 1

    def __call__(self, rows: list[Row]) -> StepResult:
        """One step on this rank's prompts ``rows`` (whole groups)."""
        timer, start = PhaseTimer(), time.perf_counter()
        with timer("generate"):
            rollout = self.rollouts.take(rows)  # generated now, or during the last step
        with timer("score"):
            generated = kept = Generated(rows, rollout, self.score(rows, rollout))
        if self.dynamic is not None:
            with timer("refill"):  # more generation batches until P groups have variance
                generated, kept = self.dynamic(generated, self, self.counters.step + 1)
        rows, rollout, scored = generated.rows, generated.rollout, generated.scored  # all of them
        with timer("prepare"):
            batch = self.prepare(kept.rollout, kept.scored.advantages)
        with timer("old_logp"):
            if self.config.algorithm.num_iterations > 1 and not self.reuse_old_logp:
                batch.old_logp = self.logp_no_grad(batch)
        with timer("ref_logp"):
            if self.parts.reference is not None:
                batch.ref_logp = self.ref_logp(batch)
        learning_rate = float(self.parts.scheduler.get_last_lr()[0])  # the rate this step uses
        with timer("update"):
            update_metrics = self.update(batch)
        with timer("sync"):
            self.sync()
        self.counters.step += 1
        tokens, rollout_stats = rollout_metrics(rollout)
        self.counters.num_tokens += tokens
        metrics = {**scored.metrics, **update_metrics, **rollout_stats}
        metrics.update(self.rollouts.metrics())
        metrics.update(all_reduce_floats(timer.metrics(), {}))
        metrics.update(
            step=self.counters.step,
            num_tokens=self.counters.num_tokens,
            learning_rate=learning_rate,
            step_time=time.perf_counter() - start,
        )
        decode = self.parts.tokenizer.decode
        records = completion_records(self.counters.step, rows, scored, rollout, decode)
        return StepResult(metrics, [r for part in all_gather_objects(records) for r in part])

    # ------------------------------------------------------------------ generate
    def generate(self, rows: list[Row]) -> Rollout:
        """G completions for each prompt of ``rows`` from the rollout engine, now."""
        return self.parts.engine.generate(*self.request(rows))

    def request(self, rows: list[Row]) -> tuple[PromptBatch, RolloutRequest]:
        """The prompts of ``rows`` and what to generate for them (drawing from the step's
        generator)."""
        r, p = self.config.rollout, self.parts
        prompts = tokenize_prompts(p.tokenizer, [row["prompt"] for row in rows], p.device)
        local_rows = len(rows) * r.num_generations
        # torch.multinomial in one process; rank-invariant draws when N > 1 (or when asked)
        invariant = r.rank_invariant_sampling or world_size() > 1
        request = RolloutRequest(
            group_size=r.num_generations,
            sampling=SamplingParams.of(r),
            generator=self.generator,
            row_offset=rank() * local_rows,
            total_rows=local_rows * world_size() if invariant else None,
            rows=rows,
            behaviour_logp=wants_behaviour_logp(self.config),
        )
        return prompts, request

    # ------------------------------------------------------------------ score
    def score(self, rows: list[Row], rollout: Rollout) -> Scored:
        """Rewards of every completion and their group-relative advantages."""
        g = rollout.group_size
        texts = self.parts.tokenizer.batch_decode(rollout.completion_ids, skip_special_tokens=True)
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
            **(rollout.columns or {}),
        )
        advantages, zero_std = group_advantages(
            result.total, g, scale_rewards=self.config.algorithm.scale_rewards
        )
        metrics = score_metrics(texts, rollout.completion_lengths, result, zero_std, g)
        return Scored(texts, result, advantages, metrics)

    # ------------------------------------------------------------------ prepare
    def prepare(self, rollout: Rollout, advantages: Tensor) -> StepBatch:
        """Loss mask (the policy's tokens), global normalisers and micro-batches.

        With ``beta == 0`` and no entropy bonus a group whose advantages are all 0 adds exactly
        0 to the loss and its gradient, so it is left out (``skip_zero_advantage_groups``); the
        normalisers still count every completion, so the loss and its gradient are unchanged.
        """
        g, t, device = rollout.group_size, self.config.training, self.parts.device
        loss_mask = rollout.policy_mask.clone()  # [B, Lc]
        if self.config.algorithm.mask_truncated_completions:
            loss_mask[rollout.truncated] = 0
        selected = self.select_tokens(rollout, loss_mask)  # over the whole batch
        counts = torch.tensor([loss_mask.shape[0], loss_mask.sum()], dtype=torch.float64)
        num_sequences, num_tokens = all_reduce_sum(counts).tolist()  # global normalisers
        advantages = advantages.to(device)
        groups = torch.arange(rollout.prompts.input_ids.shape[0], device=device)
        skip = t.skip_zero_advantage_groups and world_size() == 1 and not self.entropy.enabled
        if skip and self.parts.reference is None:  # ranks must run equally many backwards
            groups = groups[(advantages.view(-1, g) != 0).any(dim=1)]
        rows = group_rows(groups, g)
        kept, parts = within_budget(take_groups(rollout, groups), self.parts.token_budget.split)
        per_micro = groups_per_microbatch(
            kept, t.per_device_train_batch_size // g * parts, self.parts.token_budget.pack
        )
        micro = micro_ranges(groups.numel() * parts, per_micro)
        none: list[Tensor | None] = [None] * len(micro)
        return StepBatch(
            rollout=kept,
            advantages=advantages[rows],
            loss_mask=loss_mask[rows, : kept.completion_ids.shape[1]],
            num_sequences=num_sequences,
            num_tokens=num_tokens,
            micro=micro,
            old_logp=none,
            ref_logp=list(none),
            entropy_mask=None
            if selected is None
            else selected[rows, : kept.completion_ids.shape[1]],
            correction=mismatch_correction(
                self.config.algorithm, rollout, self.parts.engine_name, len(micro)
            ),
        )

    def select_tokens(self, rollout: Rollout, loss_mask: Tensor) -> Tensor | None:
        """``algorithm.top_entropy_quantile < 1``: the batch's highest-entropy loss tokens,
        by the sampling policy's entropy (the policy's own when mu = 1), ``[B, Lc]``."""
        q = self.config.algorithm.top_entropy_quantile
        if q >= 1.0:
            return None
        if rollout.entropy is None:
            raise ConfigError(
                "algorithm.top_entropy_quantile < 1 needs per-token entropies, and the rollout "
                f"engine {self.parts.engine_name!r} returns none; set it to 1"
            )
        if world_size() > 1:
            raise ConfigError(
                "algorithm.top_entropy_quantile < 1 is single-process for now (its threshold "
                "would be taken per rank); set it to 1 under torchrun"
            )
        return entropy_mask(rollout.entropy, loss_mask, q)

    # ------------------------------------------------------------------ old_logp, ref_logp
    @torch.no_grad()
    def logp_no_grad(self, batch: StepBatch) -> list[Tensor | None]:
        """log pi_theta_old per micro-batch (mu > 1), through the data-parallel wrapper."""
        out: list[Tensor | None] = []
        for start, stop in batch.micro:
            with autocast_context(self.parts.device, self.parts.amp_dtype):
                logp, _ = self.parts.policy_logp(batch.sub(start, stop))
            out.append(logp.detach())
        return out

    def ref_logp(self, batch: StepBatch) -> list[Tensor | None]:
        """log pi_ref per micro-batch (beta > 0); see :meth:`TrainingParts.reference_logp`."""
        return self.parts.reference_logp(batch)

    # ------------------------------------------------------------------ update
    def update(self, batch: StepBatch) -> dict[str, float]:
        """mu optimizer updates over the rollout, each accumulated over the micro-batches."""
        a, t, p = self.config.algorithm, self.config.training, self.parts
        acc = MetricsAccumulator()
        p.policy.train()
        for param in p.policy.parameters():
            if param.requires_grad and param.grad is None:
                param.grad = torch.zeros_like(param)
        # DDP/FSDP average gradients over ranks; each rank's loss is already a share of the
        # global loss (global normalisers), so scaling by N makes the average their sum
        scale = float(world_size())
        self.entropy.start_step(batch.loss_mask, batch.entropy_mask)
        for _ in range(a.num_iterations):
            # zeros, not None: with every group skipped AdamW must still take its (momentum) step
            p.optimizer.zero_grad(set_to_none=False)
            loss_total = 0.0
            for i in range(len(batch.micro)):
                with grad_sync(p.train_module, i == len(batch.micro) - 1):
                    loss, stats = self.loss(batch, i)
                    (loss * scale).backward()
                loss_total += float(loss.detach())
                acc.add(stats)
            grad_norm = self.optimizer_step(t.max_grad_norm)
            acc.add({"loss": loss_total, "grad_norm": grad_norm, **self.entropy.end_update()})
        ops = {"loss": "sum", "clip_ratio/low_min": "min", "clip_ratio/high_max": "max"}
        out = all_reduce_floats(acc.summary(), ops)  # loss: each rank holds a share of it
        out["skipped_updates"] = float(self.counters.skipped_updates)
        if batch.correction is not None:
            out.update(batch.correction.metrics())
        return out

    def loss(self, batch: StepBatch, index: int) -> tuple[Tensor, dict[str, Tensor]]:
        """The loss of micro-batch ``index`` (a share of the step's loss) and its statistics."""
        a, g = self.config.algorithm, batch.rollout.group_size
        start, stop = batch.micro[index]
        sub = batch.sub(start, stop)
        mask = batch.loss_mask[start * g : stop * g, : sub.completion_ids.shape[1]]  # [b, lc]
        with autocast_context(self.parts.device, self.parts.amp_dtype):
            logp, entropy = self.parts.policy_logp(sub, entropy=self.entropy.enabled)
        old_logp, selected = batch.old_logp[index], batch.entropy_mask
        if old_logp is None:  # the first update: pi_theta_old is the policy as it is now
            old_logp = batch.old_logp[index] = logp.detach()  # kept for updates 2..mu
        selected = None if selected is None else selected[start * g : stop * g, : mask.shape[1]]
        c = batch.correction
        loss, stats = policy_loss(
            logp,
            old_logp,
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
            objective=a.objective,
            sapo_temperature_pos=a.sapo_temperature_pos,
            sapo_temperature_neg=a.sapo_temperature_neg,
            entropy_mask=selected,
            token_weights=None if c is None else c.weights_for(index, sub, old_logp, mask),
        )
        return self.entropy.add_to(loss, entropy, mask, selected), stats  # - c_k H_k if on

    def optimizer_step(self, max_norm: float) -> float:
        """Clip the gradient norm and step, or skip a non-finite update; returns the norm."""
        p, c = self.parts, self.counters
        params = [q for q in p.policy.parameters() if q.requires_grad]
        limit = max_norm if max_norm > 0 else float("inf")
        grad_norm = float(full_tensor(torch.nn.utils.clip_grad_norm_(params, limit)))
        if not np.isfinite(grad_norm):
            c.skipped_updates += 1
            c.nonfinite_in_a_row += 1
            p.optimizer.zero_grad(set_to_none=False)
            print(
                f"groupwise: step {c.step + 1}: non-finite loss or gradient (grad norm "
                f"{grad_norm}); update skipped ({c.nonfinite_in_a_row} in a row)",
                file=sys.stderr,
                flush=True,
            )
        else:
            c.nonfinite_in_a_row = 0
            p.optimizer.step()
        p.scheduler.step()
        return grad_norm

    # ------------------------------------------------------------------ sync
    def sync(self) -> None:
        """The rollout engine takes the policy's new weights (once it holds the rollout it
        generates ahead, if any)."""
        self.rollouts.sync()


def _no_draw() -> list[Row]:
    raise RuntimeError("this GRPOStep draws no rows: pass draw= (the trainer passes its sampler)")


def rollout_metrics(rollout: Rollout) -> tuple[int, dict[str, float]]:
    """Tokens of the global batch (prompt + completion), lengths, entropy, turns."""
    mask, policy = rollout.completion_mask, rollout.policy_mask
    entropy = rollout.entropy if rollout.entropy is not None else torch.zeros_like(mask)
    sums = torch.tensor(
        [
            float(mask.sum()),
            float(rollout.prompts.attention_mask.sum() * rollout.group_size),
            float((entropy * policy).sum()),
            float(policy.sum()),
        ],
        dtype=torch.float64,
    )
    tokens, prompt_tokens, entropy_sum, policy_tokens = all_reduce_sum(sums).tolist()
    lengths = all_gather_cat(rollout.completion_lengths)
    out = completion_metrics(lengths, all_gather_cat(rollout.truncated))
    if rollout.entropy is not None:
        out["entropy"] = entropy_sum / max(policy_tokens, 1.0)
    if rollout.metrics:  # the engine's own (tool calls, environment time): rank means
        out.update(all_reduce_floats(rollout.metrics, {}))
    if rollout.loss_mask is not None:  # an episode: tokens the environment inserted
        rows = float(all_gather_cat(rollout.truncated).numel())
        out["tokens/policy_mean"] = policy_tokens / rows
        out["tokens/environment_mean"] = (tokens - policy_tokens) / rows
        out["turns/mean"] = float(all_gather_cat(rollout.num_turns).float().mean())
    return int(tokens + prompt_tokens), out
