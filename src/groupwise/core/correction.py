"""Correction for the mismatch between the sampling engine and the trainer (TRL's
``vllm_importance_sampling_correction``; verl's rollout correction, IcePop).

An inference engine samples from its own copy of the weights with its own kernels, so the
probability it gave a sampled token (``behaviour_logp``) differs from the trainer's probability
of that token under the same weights (``old_logp``). The policy-gradient term of each token is
reweighted by the importance weight of the trainer's distribution against the engine's::

    log_ratio_it = M_it (old_logp_it - behaviour_logp_it)          # [B, T], 0 on padding
    token modes:     ratio_it = exp(log_ratio_it)                    # per token
    sequence modes:  ratio_it = exp(sum_t log_ratio_it)              # product over the sequence
    truncate:  w_it = clamp(ratio_it, C_min, C_max)                  # a missing bound is open
    mask:      w_it = ratio_it if C_min <= ratio_it <= C_max else 0  # zero outside the bounds

and ``L_it = w_it * J_it + beta * KL_it`` (:func:`~groupwise.core.loss.policy_loss`'s
``token_weights``; as in TRL the KL term is not reweighted and a masked token still counts in
the loss normalisers). The weights are detached: they rescale the gradient, they carry none.
Each mode is registered in :data:`CORRECTIONS` under its ``algorithm.vllm_importance_sampling_mode``
name (TRL's names: ``token_truncate``, ``token_mask``, ``sequence_truncate``, ``sequence_mask``).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import torch
from torch import Tensor

from groupwise.registry import Registry


@dataclass(frozen=True)
class CorrectionBounds:
    """``[C_min, C_max]``: truncate modes clamp the ratio to it, mask modes zero it outside."""

    clip_min: float | None = None
    """``C_min`` (TRL's ``vllm_importance_sampling_clip_min``); None = no lower bound."""
    clip_max: float | None = 3.0
    """``C_max`` (TRL's ``vllm_importance_sampling_clip_max``); None = no upper bound."""

    def __post_init__(self) -> None:
        lo, hi = self.clip_min, self.clip_max
        if (lo is not None and lo < 0) or (hi is not None and hi <= 0):
            raise ValueError(f"importance sampling bounds must be >= 0 / > 0, got [{lo}, {hi}]")
        if lo is not None and hi is not None and lo >= hi:
            raise ValueError(f"importance sampling clip_min ({lo}) must be < clip_max ({hi})")

    @property
    def low(self) -> float:
        """``C_min``, or ``-inf`` when open."""
        return -math.inf if self.clip_min is None else self.clip_min

    @property
    def high(self) -> float:
        """``C_max``, or ``inf`` when open."""
        return math.inf if self.clip_max is None else self.clip_max


class CorrectionFn(Protocol):
    """``f(log_ratio, mask, bounds) -> (weights, kept)``: ``log_ratio`` ``[B, T]`` is
    ``M (old_logp - behaviour_logp)`` (0 on padding), ``mask`` ``[B, T]`` bool; ``weights``
    ``[B, T]`` (0 on padding and on dropped tokens), ``kept`` ``[B, T]`` bool (mask tokens the
    correction keeps). A mode named ``sequence_*`` gives every token of a row the same weight
    and its ratio statistics are taken per sequence; any other mode's per token."""

    def __call__(
        self, log_ratio: Tensor, mask: Tensor, bounds: CorrectionBounds
    ) -> tuple[Tensor, Tensor]: ...


CORRECTIONS: Registry[CorrectionFn] = Registry("algorithm.vllm_importance_sampling_mode")
"""Correction modes by name (``algorithm.vllm_importance_sampling_mode``): token_truncate,
token_mask, sequence_truncate, sequence_mask."""


def _sequence_ratio(log_ratio: Tensor, mask: Tensor) -> Tensor:
    """``exp(sum_t log_ratio_it)`` on every token of row ``i``, ``[B, T]``."""
    return torch.exp(log_ratio.sum(dim=-1, keepdim=True)).expand_as(mask)  # [B, T]


def _truncate(ratio: Tensor, mask: Tensor, bounds: CorrectionBounds) -> tuple[Tensor, Tensor]:
    weights = ratio.clamp(min=bounds.clip_min, max=bounds.clip_max)  # [B, T]
    return torch.where(mask, weights, torch.zeros_like(weights)), mask.clone()


def _mask(ratio: Tensor, mask: Tensor, bounds: CorrectionBounds) -> tuple[Tensor, Tensor]:
    kept = mask & (ratio >= bounds.low) & (ratio <= bounds.high)  # [B, T]
    return torch.where(kept, ratio, torch.zeros_like(ratio)), kept


@CORRECTIONS.register("token_truncate")
def token_truncate(
    log_ratio: Tensor, mask: Tensor, bounds: CorrectionBounds
) -> tuple[Tensor, Tensor]:
    """``w_it = clamp(exp(log_ratio_it), C_min, C_max)``: truncated per-token IS (TIS)."""
    return _truncate(torch.exp(log_ratio), mask, bounds)


@CORRECTIONS.register("token_mask")
def token_mask(log_ratio: Tensor, mask: Tensor, bounds: CorrectionBounds) -> tuple[Tensor, Tensor]:
    """``w_it = r_it [C_min <= r_it <= C_max]``, ``r_it = exp(log_ratio_it)``: masked
    per-token IS (IcePop drops the tokens outside the band)."""
    return _mask(torch.exp(log_ratio), mask, bounds)


@CORRECTIONS.register("sequence_truncate")
def sequence_truncate(
    log_ratio: Tensor, mask: Tensor, bounds: CorrectionBounds
) -> tuple[Tensor, Tensor]:
    """``w_it = clamp(s_i, C_min, C_max)``, ``s_i = exp(sum_t log_ratio_it)``: one truncated
    weight for every token of a sequence."""
    return _truncate(_sequence_ratio(log_ratio, mask), mask, bounds)


@CORRECTIONS.register("sequence_mask")
def sequence_mask(
    log_ratio: Tensor, mask: Tensor, bounds: CorrectionBounds
) -> tuple[Tensor, Tensor]:
    """``w_it = s_i [C_min <= s_i <= C_max]``, ``s_i = exp(sum_t log_ratio_it)``: a sequence
    whose ratio leaves the band is dropped whole (TRL's default mode)."""
    return _mask(_sequence_ratio(log_ratio, mask), mask, bounds)


@dataclass(frozen=True)
class ImportanceCorrection:
    """The result of :func:`importance_correction`: weights, kept tokens and what the
    statistics are taken over (all detached)."""

    weights: Tensor
    """``[B, T]`` importance weights ``w_it`` (0 on padding and on dropped tokens)."""
    kept: Tensor
    """``[B, T]`` bool: the mask tokens the correction keeps."""
    mask: Tensor
    """``[B, T]`` bool: the tokens corrected (the policy's loss tokens)."""
    logp_difference: Tensor
    """``[N]`` ``|old_logp - behaviour_logp|`` of the ``N`` mask tokens."""
    ratios: Tensor
    """The weights the ratio statistics describe: token modes one per mask token ``[N]``,
    sequence modes one per sequence with a mask token ``[S]`` (as TRL logs them)."""

    def totals(self) -> dict[str, float]:
        """Sums, counts and extremes that add up over micro-batches and ranks (op per key:
        ``*_sum``/``*_count``/``tokens*`` sum, ``*_min`` min, ``*_max`` max)."""
        diff, ratio = self.logp_difference.double(), self.ratios.double()
        return {
            "logp_difference_sum": float(diff.sum()),
            "logp_difference_count": float(diff.numel()),
            "logp_difference_max": float(diff.max()) if diff.numel() else 0.0,
            "ratio_sum": float(ratio.sum()),
            "ratio_count": float(ratio.numel()),
            "ratio_min": float(ratio.min()) if ratio.numel() else math.inf,
            "ratio_max": float(ratio.max()) if ratio.numel() else 0.0,
            "tokens": float(self.mask.sum()),
            "tokens_dropped": float((self.mask & ~self.kept).sum()),
        }


def importance_correction(
    old_logp: Tensor,
    behaviour_logp: Tensor,
    mask: Tensor,
    mode: str = "sequence_mask",
    bounds: CorrectionBounds | None = None,
) -> ImportanceCorrection:
    """Importance weights of the trainer's distribution against the sampling engine's.

    ``old_logp`` ``[B, T]``: the trainer's log-probs of the sampled tokens under the weights
    that sampled them; ``behaviour_logp`` ``[B, T]``: the engine's; ``mask`` ``[B, T]``: 1 on
    the tokens to correct (the policy's loss tokens). With ``log_ratio = M (old_logp -
    behaviour_logp)``, ``mode`` (a name in :data:`CORRECTIONS`) maps it to weights ``w``
    ``[B, T]`` (see the module docstring); ``bounds`` defaults to TRL's ``[None, 3.0]``.
    Padding gets ``w = 0`` and never counts as dropped. The result is detached.
    """
    fn = CORRECTIONS.get(mode)
    if old_logp.dim() != 2 or behaviour_logp.shape != old_logp.shape:
        raise ValueError(
            f"old_logp and behaviour_logp must both be [B, T]; got {tuple(old_logp.shape)}, "
            f"{tuple(behaviour_logp.shape)}"
        )
    if mask.shape != old_logp.shape:
        raise ValueError(f"mask must be {tuple(old_logp.shape)} [B, T], got {tuple(mask.shape)}")
    bounds = CorrectionBounds() if bounds is None else bounds
    with torch.no_grad():
        m = mask.bool()  # [B, T]
        diff = old_logp.detach().float() - behaviour_logp.detach().float()  # [B, T]
        log_ratio = torch.where(m, diff, torch.zeros_like(diff))  # [B, T]
        weights, kept = fn(log_ratio, m, bounds)  # [B, T], [B, T]
        if mode.startswith("sequence"):
            rows = m.any(dim=-1)  # [B] sequences with a token to correct
            ratios = weights[rows].amax(dim=-1)  # [S] w_i (0 for a dropped sequence)
        else:
            ratios = weights[m]  # [N]
        return ImportanceCorrection(weights, kept, m, diff[m].abs(), ratios)


TOTAL_OPS: dict[str, str] = {
    "logp_difference_sum": "sum",
    "logp_difference_count": "sum",
    "logp_difference_max": "max",
    "ratio_sum": "sum",
    "ratio_count": "sum",
    "ratio_min": "min",
    "ratio_max": "max",
    "tokens": "sum",
    "tokens_dropped": "sum",
}
"""How each key of :meth:`ImportanceCorrection.totals` combines over micro-batches and ranks."""


def empty_totals() -> dict[str, float]:
    """The totals of no token at all (the identity of :func:`merge_totals`)."""
    return {k: math.inf if op == "min" else 0.0 for k, op in TOTAL_OPS.items()}


def merge_totals(a: dict[str, float], b: dict[str, float]) -> dict[str, float]:
    """Two :meth:`ImportanceCorrection.totals` combined by :data:`TOTAL_OPS`."""
    ops: dict[str, Callable[[float, float], float]] = {
        "sum": lambda x, y: x + y,
        "min": min,
        "max": max,
    }
    return {k: float(ops[op](a[k], b[k])) for k, op in TOTAL_OPS.items()}


def correction_metrics(totals: dict[str, float]) -> dict[str, float]:
    """TRL's metrics of the correction from combined totals::

        sampling/sampling_logp_difference/mean|max   |old_logp - behaviour_logp| over the tokens
        sampling/importance_sampling_ratio/min|mean|max   the weights (per token or per sequence)
        sampling/masked_share   share of the tokens a mask mode dropped (0 for truncate modes)

    Means of nothing are 0 (as in TRL).
    """
    ratios = totals["ratio_count"]
    return {
        "sampling/sampling_logp_difference/mean": totals["logp_difference_sum"]
        / max(totals["logp_difference_count"], 1.0),
        "sampling/sampling_logp_difference/max": totals["logp_difference_max"],
        "sampling/importance_sampling_ratio/min": totals["ratio_min"] if ratios else 0.0,
        "sampling/importance_sampling_ratio/mean": totals["ratio_sum"] / max(ratios, 1.0),
        "sampling/importance_sampling_ratio/max": totals["ratio_max"],
        "sampling/masked_share": totals["tokens_dropped"] / max(totals["tokens"], 1.0),
    }
