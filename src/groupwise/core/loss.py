"""Policy-gradient loss of GRPO and its variants (DAPO, Dr. GRPO, GSPO, CISPO, SAPO).

Shapes: ``[B, T]`` tensors, ``B = num_prompts * G`` completions, ``T`` completion tokens;
``mask`` is 1 on real completion tokens and 0 on padding.

The loss is assembled from named parts, each a registry (``groupwise.registry``) keyed by its
config name: the importance ratio (:data:`IMPORTANCE_RATIOS`, ``importance_sampling_level``),
the per-token objective (:data:`~groupwise.core.objectives.OBJECTIVES`, ``objective``), the KL
estimator (:data:`~groupwise.core.kl.KL_ESTIMATORS`, ``kl_estimator``) and the aggregation to a
scalar (:data:`AGGREGATIONS`, ``loss_type``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch
from torch import Tensor

from groupwise.core.kl import KL_ESTIMATORS, kl_penalty
from groupwise.core.objectives import OBJECTIVES, ObjectiveParams
from groupwise.core.objectives import clipped_surrogate as clipped_surrogate  # moved there
from groupwise.registry import Registry


def _check_2d(name: str, x: Tensor, like: Tensor) -> None:
    if x.dim() != 2 or x.shape != like.shape:
        raise ValueError(f"{name} must have shape {tuple(like.shape)} [B, T], got {tuple(x.shape)}")


# ----------------------------------------------------------------------------- importance ratio


class ImportanceRatioFn(Protocol):
    """``f(logp, old_logp, mask) -> ratio``, all ``[B, T]``."""

    def __call__(self, logp: Tensor, old_logp: Tensor, mask: Tensor) -> Tensor: ...


IMPORTANCE_RATIOS: Registry[ImportanceRatioFn] = Registry("algorithm.importance_sampling_level")
"""Importance ratios by name (``algorithm.importance_sampling_level``): token, sequence."""


@IMPORTANCE_RATIOS.register("token")
def token_ratio(logp: Tensor, old_logp: Tensor, mask: Tensor) -> Tensor:
    """``ratio_it = exp(logp_it - old_logp_it)``: per token (PPO, GRPO)."""
    log_ratio = logp - old_logp  # [B, T]
    return torch.exp(log_ratio)  # [B, T]


@IMPORTANCE_RATIOS.register("sequence")
def sequence_ratio(logp: Tensor, old_logp: Tensor, mask: Tensor) -> Tensor:
    """GSPO's length-normalised sequence ratio in the "GSPO-token" form (arXiv 2507.18071)::

    s_i = exp( sum_t M_it (logp_it - old_logp_it) / max(sum_t M_it, 1) )
    ratio_it = sg[s_i] * exp(logp_it - sg[logp_it])
    """
    log_ratio = logp - old_logp  # [B, T]
    m = mask.to(log_ratio.dtype)  # [B, T]
    seq_log_ratio = (log_ratio * m).sum(dim=-1) / m.sum(dim=-1).clamp(min=1.0)  # [B]
    log_importance = logp - logp.detach() + seq_log_ratio.detach()[:, None]  # [B, T]
    return torch.exp(log_importance)  # [B, T]


IMPORTANCE_SAMPLING_LEVELS: tuple[str, ...] = IMPORTANCE_RATIOS.names()
"""Names of :data:`IMPORTANCE_RATIOS` (kept for compatibility)."""


def importance_ratio(logp: Tensor, old_logp: Tensor, mask: Tensor, level: str = "token") -> Tensor:
    """Importance ratio pi_theta / pi_old per token, ``[B, T]``.

    ``"token"`` (GRPO / PPO)::

        ratio_it = exp(logp_it - old_logp_it)

    ``"sequence"`` (GSPO, arXiv 2507.18071), length-normalised sequence ratio::

        s_i = exp( sum_t M_it (logp_it - old_logp_it) / max(sum_t M_it, 1) )
        ratio_it = sg[s_i] * exp(logp_it - sg[logp_it])

    (``sg`` = stop-gradient; this is the "GSPO-token" form also used by TRL.) Every token of
    completion ``i`` has value ``s_i``, so clipping acts on whole sequences, and
    ``d ratio_it / d logp_it = s_i``. Summed over the tokens of a sequence this is exactly
    GSPO's gradient ``grad s_i = s_i * mean_t grad logp_it`` scaled by the sequence length, so
    with any of the aggregations in :func:`aggregate_loss` the gradient equals the one of the
    plain ``[B, 1]`` sequence ratio. Empty sequences (``sum_t M = 0``) get ``s_i = 1``.
    ``level`` is a name in :data:`IMPORTANCE_RATIOS`.
    """
    fn = IMPORTANCE_RATIOS.get(level)
    _check_2d("old_logp", old_logp, logp)
    _check_2d("mask", mask, logp)
    return fn(logp, old_logp, mask)  # [B, T]


# ----------------------------------------------------------------------------- aggregation


@dataclass(frozen=True)
class Normalisers:
    """The counts an aggregation divides by (global ones make micro-batch losses add up)."""

    num_sequences: float
    """Completions (already resolved: this batch's ``B`` by default; at least 1)."""
    num_tokens: float | None = None
    """Loss tokens (``None``: this batch's ``sum_it M_it``)."""
    max_completion_length: int | None = None
    """Dr. GRPO's constant length (``None`` if not given)."""


class AggregationFn(Protocol):
    """``f(masked, mask, norm) -> loss []``: ``masked = L * M`` and ``mask = M`` are ``[B, T]``
    in the loss dtype, ``norm`` the :class:`Normalisers` passed to :func:`aggregate_loss`."""

    def __call__(self, masked: Tensor, mask: Tensor, norm: Normalisers) -> Tensor: ...


AGGREGATIONS: Registry[AggregationFn] = Registry("algorithm.loss_type")
"""Loss aggregations by name (``algorithm.loss_type``): grpo, dapo, dr_grpo."""


@AGGREGATIONS.register("grpo")
def sequence_mean(masked: Tensor, mask: Tensor, norm: Normalisers) -> Tensor:
    """``sum_i( sum_t(L_it M_it) / max(sum_t M_it, 1) ) / num_sequences``: the GRPO paper's
    per-sequence mean, then mean over sequences (arXiv 2402.03300; length-biased)."""
    seq_loss = masked.sum(dim=-1) / mask.sum(dim=-1).clamp(min=1.0)  # [B]
    return seq_loss.sum() / norm.num_sequences


@AGGREGATIONS.register("dapo")
def token_mean(masked: Tensor, mask: Tensor, norm: Normalisers) -> Tensor:
    """``sum_it(L_it M_it) / max(num_tokens, 1)``: DAPO's token mean (arXiv 2503.14476);
    ``num_tokens`` defaults to this batch's ``sum_it M_it``."""
    if norm.num_tokens is None:
        return masked.sum() / mask.sum().clamp(min=1.0)
    return masked.sum() / max(float(norm.num_tokens), 1.0)


@AGGREGATIONS.register("dr_grpo")
def constant_normaliser(masked: Tensor, mask: Tensor, norm: Normalisers) -> Tensor:
    """``sum_it(L_it M_it) / (num_sequences * max(max_completion_length, 1))``: Dr. GRPO's
    constant normaliser (arXiv 2503.20783), no length bias; needs ``max_completion_length``."""
    if norm.max_completion_length is None:
        raise ValueError("loss_type 'dr_grpo' requires max_completion_length")
    return masked.sum() / (norm.num_sequences * max(float(norm.max_completion_length), 1.0))


LOSS_TYPES: tuple[str, ...] = AGGREGATIONS.names()
"""Names of :data:`AGGREGATIONS` (kept for compatibility)."""


def aggregate_loss(
    per_token_loss: Tensor,
    mask: Tensor,
    loss_type: str,
    *,
    max_completion_length: int | None = None,
    num_sequences: float | None = None,
    num_tokens: float | None = None,
) -> Tensor:
    """Reduce a ``[B, T]`` per-token loss to a scalar::

        grpo:    sum_i( sum_t(L_it M_it) / sum_t(M_it) ) / num_sequences   # GRPO paper
        dapo:    sum_it(L_it M_it) / num_tokens                            # token mean (DAPO)
        dr_grpo: sum_it(L_it M_it) / (num_sequences * max_completion_length)   # Dr. GRPO

    ``loss_type`` is a name in :data:`AGGREGATIONS`. ``num_sequences`` / ``num_tokens`` default
    to this batch's ``B`` and ``sum_it M_it``. Pass the GLOBAL counts (over all micro-batches of
    an optimizer step and all processes) to make the sum of the micro-batch losses equal the
    loss of the full batch. Every denominator is clamped to at least 1, so an all-padding batch
    gives a loss of 0 instead of NaN.
    """
    aggregate = AGGREGATIONS.get(loss_type)
    _check_2d("mask", mask, per_token_loss)
    m = mask.to(per_token_loss.dtype)  # [B, T]
    masked = per_token_loss * m  # [B, T]
    n_seq = float(per_token_loss.shape[0]) if num_sequences is None else float(num_sequences)
    n_seq = max(n_seq, 1.0)
    return aggregate(masked, m, Normalisers(n_seq, num_tokens, max_completion_length))


# ----------------------------------------------------------------------------- policy loss


def _masked_mean(x: Tensor, mask: Tensor) -> Tensor:
    m = mask.to(torch.float32)  # [B, T]
    return (x.to(torch.float32) * m).sum() / m.sum().clamp(min=1.0)


def policy_loss(
    logp: Tensor,
    old_logp: Tensor,
    advantages: Tensor,
    mask: Tensor,
    *,
    ref_logp: Tensor | None = None,
    beta: float = 0.0,
    epsilon_low: float = 0.2,
    epsilon_high: float | None = None,
    loss_type: str = "dapo",
    importance_sampling_level: str = "token",
    kl_estimator: str = "k3",
    max_completion_length: int | None = None,
    num_sequences: float | None = None,
    num_tokens: float | None = None,
    objective: str = "clip",
    sapo_temperature_pos: float = 1.0,
    sapo_temperature_neg: float = 1.05,
    entropy_mask: Tensor | None = None,
    token_weights: Tensor | None = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """GRPO-family policy loss and detached statistics.

    Per token, with ``ratio`` from :func:`importance_ratio` and ``A_i`` = ``advantages`` ``[B]``::

        L_it = W_it * E_it * J_it + beta * KL_it    # KL_it = kl_penalty(logp, ref_logp), if beta != 0
        J_it = -min(ratio_it A_i, clip(ratio_it, 1 - eps_low, 1 + eps_high) A_i)   # "clip"

    where ``J`` is the ``objective`` (a name in :data:`~groupwise.core.objectives.OBJECTIVES`:
    ``"clip"``, ``"cispo"`` or ``"sapo"``, with ``sapo_temperature_pos`` / ``_neg``) and ``E``
    the optional ``entropy_mask`` ``[B, T]`` (e.g. from
    :func:`~groupwise.core.objectives.entropy_mask`; 1 everywhere when ``None``), which
    selects the tokens that get the policy gradient but not the KL term, as in TRL. ``W`` is
    the optional ``token_weights`` ``[B, T]`` (used detached; 1 everywhere when ``None``): the
    engine-mismatch importance weights of :func:`~groupwise.core.correction.importance_correction`,
    which also scale the policy term only, as in TRL. ``L`` is then reduced by :func:`aggregate_loss` (``loss_type``, normalisers), whose normalisers
    count every real token whether the entropy mask selects it or not. With a single update
    per rollout (``old_logp = logp.detach()``) the ratio is 1 but ``d L_it / d logp_it = -A_i``
    for every objective.

    Stats (all detached scalars, masked token means over this batch): ``"kl"`` (only when
    ``ref_logp`` is given), ``"clip_ratio/low_mean"`` (ratio < 1 - eps_low and A < 0),
    ``"clip_ratio/high_mean"`` (ratio > 1 + eps_high and A > 0), ``"clip_ratio/region_mean"``
    (either) and ``"clipfrac"`` (alias of region_mean). They describe the ratio whatever the
    objective (for "clip" they are the tokens whose gradient the clip removed).
    """
    AGGREGATIONS.get(loss_type)  # unknown names fail before any work
    IMPORTANCE_RATIOS.get(importance_sampling_level)
    KL_ESTIMATORS.get(kl_estimator)
    objective_fn = OBJECTIVES.get(objective)
    if beta != 0.0 and ref_logp is None:
        raise ValueError(f"beta={beta} != 0 requires ref_logp")
    if advantages.dim() != 1 or advantages.shape[0] != logp.shape[0]:
        raise ValueError(
            f"advantages must be [B]={logp.shape[0]}, got shape {tuple(advantages.shape)}"
        )
    if entropy_mask is not None:
        _check_2d("entropy_mask", entropy_mask, logp)
    if token_weights is not None:
        _check_2d("token_weights", token_weights, logp)
    eps_high = epsilon_low if epsilon_high is None else epsilon_high
    params = ObjectiveParams(epsilon_low, eps_high, sapo_temperature_pos, sapo_temperature_neg)

    ratio = importance_ratio(logp, old_logp, mask, importance_sampling_level)  # [B, T]
    per_token_loss = objective_fn(ratio, advantages, logp, params)  # [B, T]
    if entropy_mask is not None:
        per_token_loss = per_token_loss * entropy_mask.to(per_token_loss.dtype)  # [B, T]
    if token_weights is not None:
        per_token_loss = per_token_loss * token_weights.detach().to(per_token_loss.dtype)
    stats: dict[str, Tensor] = {}
    if ref_logp is not None:
        _check_2d("ref_logp", ref_logp, logp)
        if beta != 0.0:
            kl = kl_penalty(logp, ref_logp, kl_estimator)  # [B, T]
            per_token_loss = per_token_loss + beta * kl  # [B, T]
        else:
            with torch.no_grad():
                kl = kl_penalty(logp, ref_logp, kl_estimator)  # [B, T] stat only
        stats["kl"] = _masked_mean(kl.detach(), mask)
    loss = aggregate_loss(
        per_token_loss,
        mask,
        loss_type,
        max_completion_length=max_completion_length,
        num_sequences=num_sequences,
        num_tokens=num_tokens,
    )

    with torch.no_grad():
        adv = advantages[:, None]  # [B, 1]
        is_low = (ratio < 1.0 - epsilon_low) & (adv < 0)  # [B, T]
        is_high = (ratio > 1.0 + eps_high) & (adv > 0)  # [B, T]
        stats["clip_ratio/low_mean"] = _masked_mean(is_low, mask)
        stats["clip_ratio/high_mean"] = _masked_mean(is_high, mask)
        stats["clip_ratio/region_mean"] = _masked_mean(is_low | is_high, mask)
        stats["clipfrac"] = stats["clip_ratio/region_mean"]
    return loss, stats


# ----------------------------------------------------------------------------- entropy bonus


def entropy_bonus(
    entropy: Tensor, mask: Tensor, coef: float, num_tokens: float | None = None
) -> Tensor:
    """Entropy regularisation term added to the policy loss (TRL's ``entropy_coef``)::

        B = -coef * sum_it(H_it M_it) / max(num_tokens, 1)
        L = L_policy + B                      # = L_policy - coef * mean_token(H)

    ``entropy`` ``[B, T]`` the policy's per-token entropies ``H_it = -sum_v p_v log p_v`` (with
    their gradient, e.g. ``chunked_token_logp(..., entropy_grad=True)``), ``mask`` ``[B, T]``
    the tokens the policy loss acts on (the loss mask, times the entropy mask when only the
    top-entropy tokens get the policy gradient). ``num_tokens`` defaults to this batch's
    ``sum_it M_it``; pass the step's GLOBAL count (every micro-batch and rank) so the
    micro-batch terms add up to ``-coef`` times the step's token-mean entropy (TRL divides a
    micro-batch mean by the accumulation steps instead). The term is the same whatever
    ``loss_type``: it is not rescaled by the policy loss's aggregation. A positive ``coef``
    rewards entropy (exploration); ``dB / dH_it = -coef * M_it / num_tokens``.
    """
    _check_2d("mask", mask, entropy)
    m = mask.to(torch.float32)  # [B, T]
    total = (entropy.to(torch.float32) * m).sum()  # []
    count = m.sum().clamp(min=1.0) if num_tokens is None else max(float(num_tokens), 1.0)
    return -coef * total / count
