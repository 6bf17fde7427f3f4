"""The records one step passes between its phases: the update batch, its micro-batches, the
engine-mismatch correction of the update, and the completion records the run logs
(:class:`groupwise.run.records.CompletionRecord`)."""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Any

import numpy as np
from torch import Tensor, nn

from groupwise.config import AlgorithmConfig, Config, ConfigError
from groupwise.core.correction import (
    TOTAL_OPS,
    CorrectionBounds,
    correction_metrics,
    empty_totals,
    importance_correction,
    merge_totals,
)
from groupwise.data import Row
from groupwise.distributed import all_reduce_floats
from groupwise.rewards.base import RewardResult
from groupwise.rollout import Rollout, select_groups, split_groups
from groupwise.run.records import CompletionRecord


@dataclass
class Scored:
    """The score phase's output."""

    texts: list[str]  # [B] decoded completions
    rewards: RewardResult
    advantages: Tensor  # [B]
    metrics: dict[str, float]


@dataclass
class StepBatch:
    """Everything the update phase needs about one rollout.

    ``rollout`` holds the groups that take part in the loss (see ``GRPOStep.prepare``); the
    normalisers count every completion of the step on every rank.
    """

    rollout: Rollout
    advantages: Tensor  # [b] of the kept groups
    loss_mask: Tensor  # [b, Lc] 1 on the policy's tokens that get a loss
    num_sequences: float  # completions in the step (global normaliser)
    num_tokens: float  # loss tokens in the step (global normaliser)
    micro: list[tuple[int, int]]  # group ranges of the micro-batches, within ``rollout``
    old_logp: list[Tensor | None]  # per micro-batch [b, lc]
    ref_logp: list[Tensor | None]  # per micro-batch [b, lc]
    entropy_mask: Tensor | None = None  # [b, Lc] top_entropy_quantile's tokens (None = all)
    correction: MismatchCorrection | None = None  # engine-mismatch weights (None = off)

    def sub(self, start: int, stop: int) -> Rollout:
        """The sub-rollout of groups ``start:stop`` (a micro-batch)."""
        return select_groups(self.rollout, start, stop)


@dataclass
class MismatchCorrection:
    """The engine-mismatch correction of one update (``algorithm.vllm_importance_sampling_*``):
    per micro-batch the weights of :func:`~groupwise.core.correction.importance_correction`,
    computed once (on the first update, from the old log-probs, which stay fixed), and the
    totals of their statistics."""

    mode: str
    bounds: CorrectionBounds
    weights: list[Tensor | None]  # per micro-batch [b, lc]
    totals: dict[str, float]
    apply: bool = True
    """False: measure only (the correction is off but the engine reported its log-probs): the
    metrics are recorded and the loss gets no weights."""

    def weights_for(
        self, index: int, sub: Rollout, old_logp: Tensor, mask: Tensor
    ) -> Tensor | None:
        """Micro-batch ``index``'s weights ``[b, lc]`` (``sub`` its rollout, ``mask`` its loss
        tokens, ``old_logp`` the trainer's log-probs under the sampling-time weights); None when
        only measuring."""
        cached = self.weights[index]
        if cached is not None:
            return cached if self.apply else None
        assert sub.behaviour_logp is not None  # checked by mismatch_correction
        behaviour = sub.behaviour_logp[:, : old_logp.shape[1]].to(old_logp.device)
        result = importance_correction(old_logp, behaviour, mask, self.mode, self.bounds)
        self.weights[index] = result.weights
        self.totals = merge_totals(self.totals, result.totals())
        return result.weights if self.apply else None

    def metrics(self) -> dict[str, float]:
        """TRL's ``sampling/...`` metrics over every rank's loss tokens."""
        return correction_metrics(all_reduce_floats(self.totals, TOTAL_OPS))


def wants_behaviour_logp(config: Config) -> bool:
    """Whether the step asks the engine for ``behaviour_logp``: when the correction is set to
    true, and whenever rollouts may be stale (``rollout.max_staleness`` > 0), so that the
    correction's ``auto`` (on when the batch carries them) corrects the staleness."""
    correction = config.algorithm.vllm_importance_sampling_correction
    return correction is True or config.rollout.max_staleness > 0


def mismatch_correction(
    a: AlgorithmConfig, rollout: Rollout, engine: str, num_micro: int
) -> MismatchCorrection | None:
    """The step's correction, or None when the engine reported no ``behaviour_logp`` and
    ``vllm_importance_sampling_correction`` is auto or false (true without them is an error).
    With the setting false and the log-probs reported, the mismatch is measured, not applied."""
    setting = a.vllm_importance_sampling_correction
    if setting is not True and rollout.behaviour_logp is None:
        return None
    if rollout.behaviour_logp is None:
        raise ConfigError(
            "algorithm.vllm_importance_sampling_correction=true needs the sampling log-probs, and "
            f"the rollout engine {engine!r} reports none; use an engine that does (local does) "
            "or set it to auto"
        )
    bounds = CorrectionBounds(
        a.vllm_importance_sampling_clip_min, a.vllm_importance_sampling_clip_max
    )
    return MismatchCorrection(
        a.vllm_importance_sampling_mode,
        bounds,
        [None] * num_micro,
        empty_totals(),
        apply=setting is not False,
    )


PACK_TOKENS = 512
"""``auto``'s packing budget: whole groups up to this many tokens per forward/backward (larger
packs were no faster on B1 and took more memory: benchmarks/README.md, "Memory levers")."""
SAVED_PER_TOKEN = 3
"""Activation bytes per token and layer, in units of ``(8 hidden + 2 intermediate) x the
compute dtype's size`` (about what a decoder layer saves for its backward with the fused
kernels); measured on SmolLM2-135M in bf16 at about 2.5 with the backward's temporaries (a
2,095-token group against one of 303: 2.05 GB of peak RSS apart), rounded up."""


@dataclass(frozen=True)
class TokenBudget:
    """Tokens per forward/backward: groups are packed up to ``pack``; a group longer than
    ``split`` runs in parts (0: no bound)."""

    pack: int
    split: int


DEFAULT_BUDGET = TokenBudget(PACK_TOKENS, PACK_TOKENS)
"""512 tokens for both: the budget of a plan saved before ``activation_memory`` was planned."""


def token_budget(
    setting: int | str, model_config: Any, itemsize: int, memory: int | None
) -> TokenBudget:
    """The budget of ``training.max_tokens_per_microbatch`` (``setting``) under the run plan's
    ``activation_memory`` (``memory``). An integer N packs and splits at N (the plan's memory
    is None); ``auto`` packs at ``PACK_TOKENS`` and splits where the activations of one
    forward/backward would outgrow ``memory`` bytes::

        split = memory / (SAVED_PER_TOKEN * layers * (8 hidden + 2 intermediate) * itemsize)

    ``model_config``: the policy's transformers config; ``itemsize``: bytes per element of the
    compute dtype. ``auto`` without a memory (a plan saved before it was planned, or a machine
    whose free memory cannot be read) is 512 for both.
    """
    if memory is None:
        return TokenBudget(setting, setting) if isinstance(setting, int) else DEFAULT_BUDGET
    hidden = int(model_config.hidden_size)
    inner = int(getattr(model_config, "intermediate_size", None) or 4 * hidden)
    per_token = SAVED_PER_TOKEN * model_config.num_hidden_layers * (8 * hidden + 2 * inner)
    split = max(1, memory // (per_token * itemsize))
    return TokenBudget(min(PACK_TOKENS, split), split)


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


def group_parts(rollout: Rollout, max_tokens: int) -> int:
    """Parts to run each group in (:func:`groupwise.rollout.split_groups`): 1 when a whole
    group fits in ``max_tokens`` (its prompt once plus G completions at the rollout's width),
    else the fewest parts, a divisor of G, whose prompt plus ``G / parts`` completions fit (G
    when none does). The same on every rank (the maximum), so the ranks' micro-batches pair up.
    """
    g = rollout.group_size
    prompt, width = rollout.prompts.input_ids.shape[1], rollout.completion_ids.shape[1]
    parts = 1
    if max_tokens > 0:
        divisors = [k for k in range(1, g + 1) if g % k == 0]
        parts = next((k for k in divisors if prompt + (g // k) * width <= max_tokens), g)
    return int(all_reduce_floats({"parts": float(parts)}, {"parts": "max"})["parts"])


def within_budget(rollout: Rollout, max_tokens: int) -> tuple[Rollout, int]:
    """``rollout`` with each group in :func:`group_parts` parts (the same rows, the prompts
    repeated: :func:`groupwise.rollout.split_groups`), and that number of parts."""
    parts = group_parts(rollout, max_tokens)
    return split_groups(rollout, parts), parts


def micro_ranges(num_groups: int, per_micro: int) -> list[tuple[int, int]]:
    """``[(start, stop), ...]`` group ranges of ``per_micro`` groups (the last may be short)."""
    return [(s, min(s + per_micro, num_groups)) for s in range(0, num_groups, per_micro)]


def grad_sync(module: nn.Module, enabled: bool) -> AbstractContextManager[Any]:
    """DDP: skip the gradient all-reduce on all but the last micro-batch of an update."""
    no_sync = getattr(module, "no_sync", None)
    if enabled or no_sync is None:
        return nullcontext()
    context: AbstractContextManager[Any] = no_sync()
    return context


def completion_records(
    step: int, rows: list[Row], scored: Scored, rollout: Rollout, decode: Any = None
) -> list[CompletionRecord]:
    """One record per completion (see :class:`CompletionRecord`); an episode's record also
    holds its ``turns`` (``decode``: token ids -> text)."""
    g = rollout.group_size
    per_func, total = scored.rewards.per_func, scored.rewards.total
    records = [
        CompletionRecord(
            step=step,
            prompt=rows[i // g]["prompt"],
            completion=text,
            rewards={k: _finite_or_none(float(v[i])) for k, v in per_func.items()},
            reward=float(total[i]),
            advantage=float(scored.advantages[i]),
            truncated=bool(rollout.truncated[i]),
        )
        for i, text in enumerate(scored.texts)
    ]
    if rollout.turn_index is not None and decode is not None:
        for i, record in enumerate(records):
            record.turns = conversation(rollout, i, decode)
    return records


def conversation(rollout: Rollout, row: int, decode: Any) -> list[dict[str, str]]:
    """Row ``row``'s completion as turns ``{"role", "content"}``: ``assistant`` for the
    policy's tokens, ``environment`` for the tokens an environment or a tool inserted."""
    assert rollout.turn_index is not None
    n = int(rollout.completion_mask[row].sum())
    ids = rollout.completion_ids[row, :n].tolist()
    turns = rollout.turn_index[row, :n].tolist()
    policy = rollout.policy_mask[row, :n].tolist()
    out: list[dict[str, str]] = []
    start = 0
    for end in range(1, n + 1):
        if end == n or turns[end] != turns[start]:
            role = "assistant" if policy[start] else "environment"
            out.append({"role": role, "content": decode(ids[start:end])})
            start = end
    return out


def _finite_or_none(value: float) -> float | None:
    return value if np.isfinite(value) else None
