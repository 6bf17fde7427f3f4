"""DAPO's dynamic sampling (arXiv 2503.14476, section 3.2; ``algorithm.dynamic_sampling``).

A group whose rewards are all equal (every completion right, or every one wrong) has zero
advantages and gives no gradient, so a batch with many such groups learns from fewer prompts
than it pays for. Dynamic sampling over-samples and filters::

    kept <- groups of the step's generation batch whose rewards differ
    while |kept| < P and generation batches drawn < max_num_gen_batches:
        draw P more prompts from the run's sampler, generate and score their groups
        kept <- kept + their groups whose rewards differ
    batch <- the first P of kept, in generation order; if fewer than P (the limit was
             reached): all of kept and the first zero-variance groups generated to fill P
    A     <- group-relative advantages over the batch's rewards

so the update always sees P groups of G completions, as without dynamic sampling. The reward
metrics and the completion records cover every completion generated in the step (what the
policy did); the loss covers the batch. The extra draws come from the run's sampler and
generator, whose states are checkpointed after the step: a resumed run takes the same draws.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Protocol

import torch
from torch import Tensor

from groupwise.config import Config, ConfigError
from groupwise.core import group_advantages
from groupwise.data import Row
from groupwise.distributed import world_size
from groupwise.rewards.base import RewardResult
from groupwise.rollout import PromptBatch, Rollout, concat_rollouts, group_rows, take_groups
from groupwise.train.batch import Scored
from groupwise.train.metrics import score_metrics


@dataclass
class Generated:
    """Prompts, their rollout and its scores: one generation batch, or several merged."""

    rows: list[Row]  # [P] one per group
    rollout: Rollout
    scored: Scored


class Phases(Protocol):
    """The step's phases the refill calls (:class:`~groupwise.train.step.GRPOStep` has them)."""

    def next_rows(self) -> list[Row]:
        """This rank's prompts for another generation batch, from the run's sampler."""
        ...

    def generate(self, rows: list[Row]) -> Rollout:
        """G completions for each prompt of ``rows``, now."""
        ...

    def score(self, rows: list[Row], rollout: Rollout) -> Scored:
        """Rewards and group-relative advantages of ``rollout``."""
        ...


def dynamic_sampling(config: Config, pad_token_id: int) -> DynamicSampling | None:
    """The refill phase when ``algorithm.dynamic_sampling`` is on, else None."""
    if not config.algorithm.dynamic_sampling:
        return None
    return DynamicSampling(config, pad_token_id)


class DynamicSampling:
    """The refill phase of a step (see the module docstring). Single process only: under
    ``torchrun`` each rank would draw a different number of generation batches."""

    def __init__(self, config: Config, pad_token_id: int) -> None:
        if world_size() > 1:
            raise ConfigError(
                "algorithm.dynamic_sampling=true is single-process for now (ranks would draw "
                "different numbers of generation batches); set algorithm.dynamic_sampling=false "
                "under torchrun"
            )
        self.max_batches = config.algorithm.max_num_gen_batches
        self.scale_rewards = config.algorithm.scale_rewards
        self.pad_token_id = pad_token_id

    def __call__(
        self, first: Generated, phases: Phases, step: int = 0
    ) -> tuple[Generated, Generated]:
        """``(generated, batch)``: every group generated in step ``step`` (``first``, the
        step's own generation batch, then those drawn, generated and scored by ``phases``)
        and the batch of exactly P groups the loss is taken over.

        ``generated.scored`` holds the metrics over every completion generated, the
        ``sampling/dynamic/...`` metrics among them, and the advantages the loss uses (0 for a
        completion left out of the batch)."""
        num_groups = len(first.rows)
        parts = [first]
        found = int(varied_groups(first.scored.rewards.total, first.rollout.group_size).sum())
        while found < num_groups and len(parts) < self.max_batches:
            rows = phases.next_rows()
            rollout = phases.generate(rows)
            part = Generated(rows, rollout, phases.score(rows, rollout))
            parts.append(part)
            found += int(varied_groups(part.scored.rewards.total, part.rollout.group_size).sum())
        generated = merge_generated(parts, self.pad_token_id)
        g = generated.rollout.group_size
        varied = varied_groups(generated.scored.rewards.total, g)
        groups, filled = choose_groups(varied, num_groups)
        batch = take_generated(generated, groups, self.scale_rewards)
        advantages = torch.zeros_like(generated.scored.rewards.total, dtype=torch.float32)
        advantages[group_rows(groups, g)] = batch.scored.advantages
        generated.scored.advantages = advantages
        metrics = score_metrics(
            generated.scored.texts,
            generated.rollout.completion_lengths,
            generated.scored.rewards,
            ~varied,
            g,
        )
        metrics["sampling/dynamic/gen_batches"] = float(len(parts))
        metrics["sampling/dynamic/kept_groups_frac"] = int(varied.sum()) / varied.numel()
        metrics["sampling/dynamic/filled_zero_std"] = float(filled)
        generated.scored.metrics = metrics
        if filled:
            print(
                f"groupwise: step {step}: dynamic sampling drew algorithm.max_num_gen_batches="
                f"{self.max_batches} generation batches and found {num_groups - filled} of "
                f"{num_groups} groups with reward variance; {filled} zero-variance groups fill "
                "the batch",
                file=sys.stderr,
                flush=True,
            )
        return generated, batch


def varied_groups(total: Tensor, group_size: int) -> Tensor:
    """[P] True for the groups of ``total`` [P * G] whose rewards are not all equal (the
    complement of :func:`~groupwise.core.group_advantages`' ``zero_std``)."""
    r = total.view(-1, group_size)
    return ~(r == r[:, :1]).all(dim=1)


def choose_groups(varied: Tensor, num_groups: int) -> tuple[Tensor, int]:
    """``(groups, filled)``: the indices (ascending) of the ``num_groups`` groups a batch
    keeps out of those generated, ``varied`` [N] flagging the ones with reward variance: the
    first ``num_groups`` of those, or, when there are fewer, all of them and the first
    ``filled`` zero-variance groups."""
    if varied.numel() < num_groups:
        raise ValueError(f"{varied.numel()} groups generated, fewer than the {num_groups} needed")
    with_variance = varied.nonzero().flatten()[:num_groups]
    filled = num_groups - with_variance.numel()
    without = (~varied).nonzero().flatten()[:filled]
    return torch.cat([with_variance, without]).sort().values, filled


def merge_generated(parts: list[Generated], pad_token_id: int) -> Generated:
    """The generation batches ``parts`` as one, groups in order (their metrics dropped)."""
    if len(parts) == 1:
        return Generated(parts[0].rows, parts[0].rollout, _copy(parts[0].scored))
    rewards = [p.scored.rewards for p in parts]
    merged = RewardResult(
        total=torch.cat([r.total for r in rewards]),
        per_func={k: torch.cat([r.per_func[k] for r in rewards]) for k in rewards[0].per_func},
    )
    scored = Scored(
        texts=[t for p in parts for t in p.scored.texts],
        rewards=merged,
        advantages=torch.cat([p.scored.advantages for p in parts]),
        metrics={},
    )
    rows = [row for p in parts for row in p.rows]
    return Generated(rows, concat_rollouts([p.rollout for p in parts], pad_token_id), scored)


def take_generated(generated: Generated, groups: Tensor, scale_rewards: str) -> Generated:
    """The groups ``groups`` of ``generated``, their advantages computed over them alone
    (``scale_rewards=batch`` takes the std over this batch); prompt columns that are padding
    in every kept row are dropped."""
    g = generated.rollout.group_size
    rows = group_rows(groups, g)
    index = rows.tolist()
    total = generated.scored.rewards.total[rows]
    rewards = RewardResult(
        total, {k: v[rows] for k, v in generated.scored.rewards.per_func.items()}
    )
    advantages, _ = group_advantages(total, g, scale_rewards=scale_rewards)
    texts = [generated.scored.texts[i] for i in index]
    return Generated(
        rows=[generated.rows[i] for i in groups.tolist()],
        rollout=trim_prompts(take_groups(generated.rollout, groups)),
        scored=Scored(texts, rewards, advantages, {}),
    )


def trim_prompts(rollout: Rollout) -> Rollout:
    """``rollout`` without the leading prompt columns that are padding in every row."""
    mask = rollout.prompts.attention_mask
    used = mask.any(dim=0).nonzero()
    start = int(used[0]) if used.numel() else 0
    if start == 0:
        return rollout
    rollout.prompts = PromptBatch(rollout.prompts.input_ids[:, start:], mask[:, start:])
    return rollout


def _copy(scored: Scored) -> Scored:
    return Scored(scored.texts, scored.rewards, scored.advantages, dict(scored.metrics))
