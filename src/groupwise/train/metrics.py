"""Metrics: per-step statistics under TRL's names, phase timers and the JSONL log.

Logged per step (TRL's names where one exists):
- ``reward``, ``reward_std`` (mean over groups of the within-group std), ``rewards/<f>/mean|std``
- ``frac_reward_zero_std``: share of groups whose rewards are all equal (no learning signal)
- ``completions/mean_length|min_length|max_length|mean_terminated_length|clipped_ratio``
- ``entropy``: mean per-token entropy of the tempered sampling distribution, taken during
  generation (no extra pass; covers every completion)
- ``kl`` (when beta > 0), ``clip_ratio/low_mean|low_min|high_mean|high_max|
  region_mean``, ``loss``, ``grad_norm``, ``learning_rate``, ``num_tokens`` (cumulative)
- ``step_time`` and ``time/<phase>`` for generate, score, old_logp, ref_logp, update, sync.
- with ``rollout.max_staleness=1``: ``sampling/staleness`` (0 or 1: updates between the weights
  that sampled the batch and the policy's) and ``time/wait_rollout`` (seconds ``sync`` waited
  for the engine's process to finish the next step's rollout).
- with ``algorithm.dynamic_sampling``: ``sampling/dynamic/gen_batches`` (generation batches drawn),
  ``sampling/dynamic/kept_groups_frac`` (share of the groups generated with reward variance),
  ``sampling/dynamic/filled_zero_std`` (zero-variance groups filling the batch at the limit);
  the reward and completion metrics then cover every completion generated, and ``time/refill``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager

from torch import Tensor

from groupwise.distributed import all_gather_cat, all_gather_objects
from groupwise.rewards.base import RewardResult
from groupwise.run.hacking import hacking_metrics


class PhaseTimer:
    """Wall time of named phases within one step (``with timer("generate"): ...``)."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - start

    def metrics(self) -> dict[str, float]:
        """``time/<phase>`` entries."""
        return {f"time/{k}": v for k, v in self.seconds.items()}


def score_metrics(
    texts: list[str], lengths: Tensor, rewards: RewardResult, zero_std: Tensor, group_size: int
) -> dict[str, float]:
    """The score phase's metrics over the global batch (every rank's completions):
    :func:`reward_metrics` and the ``hacking/...`` flags (flags only: the rewards are unchanged).

    ``texts`` [B] decoded completions, ``lengths`` [B] their lengths in tokens, ``zero_std``
    [B // G] the groups whose rewards are all equal."""
    per_func = {k: all_gather_cat(v) for k, v in rewards.per_func.items()}
    metrics = reward_metrics(
        all_gather_cat(rewards.total), per_func, group_size, all_gather_cat(zero_std)
    )
    metrics.update(
        hacking_metrics(
            [t for part in all_gather_objects(texts) for t in part],
            all_gather_cat(lengths).tolist(),
            all_gather_cat(rewards.total),
            per_func,
            group_size,
        )
    )
    return metrics


def reward_metrics(
    total: Tensor, per_func: dict[str, Tensor], group_size: int, zero_std: Tensor
) -> dict[str, float]:
    """reward, reward_std, rewards/<name>/mean|std and frac_reward_zero_std of one batch."""
    groups = total.view(-1, group_size)  # [P, G]
    out = {
        "reward": total.mean().item(),
        "reward_std": groups.std(dim=1).mean().item(),
        "frac_reward_zero_std": zero_std.float().mean().item(),
    }
    for name, values in per_func.items():
        out[f"rewards/{name}/mean"] = _nanmean(values)
        out[f"rewards/{name}/std"] = _nanstd(values)
    return out


def _nanmean(values: Tensor) -> float:
    finite = values[~values.isnan()]
    return finite.mean().item() if finite.numel() else math.nan


def _nanstd(values: Tensor) -> float:
    finite = values[~values.isnan()]
    return finite.std().item() if finite.numel() > 1 else 0.0


def completion_metrics(lengths: Tensor, truncated: Tensor) -> dict[str, float]:
    """Length statistics of a batch of completions (in tokens)."""
    lengths = lengths.float()
    terminated = lengths[~truncated]
    return {
        "completions/mean_length": lengths.mean().item(),
        "completions/min_length": lengths.min().item(),
        "completions/max_length": lengths.max().item(),
        "completions/mean_terminated_length": (
            terminated.mean().item() if terminated.numel() else 0.0
        ),
        "completions/clipped_ratio": truncated.float().mean().item(),
    }


class MetricsAccumulator:
    """Means (and min/max where TRL logs them) of per-micro-batch statistics."""

    def __init__(self) -> None:
        self._values: dict[str, list[float]] = {}

    def add(self, stats: Mapping[str, Tensor | float]) -> None:
        """Record one micro-batch's statistics."""
        for key, value in stats.items():
            number = value.item() if isinstance(value, Tensor) else float(value)
            self._values.setdefault(key, []).append(number)

    def summary(self) -> dict[str, float]:
        """Mean of each statistic; clip_ratio low gets a min and high a max as well."""
        out: dict[str, float] = {}
        for key, values in self._values.items():
            out[key] = sum(values) / len(values)
            if key == "clip_ratio/low_mean":
                out["clip_ratio/low_min"] = min(values)
            if key == "clip_ratio/high_mean":
                out["clip_ratio/high_max"] = max(values)
        return out


def masked_mean(values: Tensor, mask: Tensor) -> Tensor:
    """Mean of ``values`` over positions where ``mask`` is 1 (0 if the mask is empty)."""
    mask = mask.to(values.dtype)
    return (values * mask).sum() / mask.sum().clamp(min=1)


def to_float_dict(stats: dict[str, Tensor]) -> dict[str, float]:
    """Detached scalar tensors to floats."""
    return {k: float(v.detach().float().item()) for k, v in stats.items()}


__all__ = [
    "MetricsAccumulator",
    "PhaseTimer",
    "completion_metrics",
    "masked_mean",
    "reward_metrics",
    "score_metrics",
    "to_float_dict",
]
