"""Clipped policy-gradient loss of GRPO and its variants (DAPO, Dr. GRPO, GSPO).

Shapes: ``[B, T]`` tensors, ``B = num_prompts * G`` completions, ``T`` completion tokens;
``mask`` is 1 on real completion tokens and 0 on padding.
"""

from __future__ import annotations

import torch
from torch import Tensor

from groupwise.core.kl import KL_ESTIMATORS, kl_penalty

LOSS_TYPES: tuple[str, ...] = ("grpo", "dapo", "dr_grpo")
IMPORTANCE_SAMPLING_LEVELS: tuple[str, ...] = ("token", "sequence")


def _check_choice(kind: str, value: str, valid: tuple[str, ...]) -> None:
    if value not in valid:
        raise ValueError(f"unknown {kind} {value!r}; valid: {', '.join(valid)}")


def _check_2d(name: str, x: Tensor, like: Tensor) -> None:
    if x.dim() != 2 or x.shape != like.shape:
        raise ValueError(f"{name} must have shape {tuple(like.shape)} [B, T], got {tuple(x.shape)}")


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
    """
    _check_choice("importance_sampling_level", level, IMPORTANCE_SAMPLING_LEVELS)
    _check_2d("old_logp", old_logp, logp)
    _check_2d("mask", mask, logp)
    log_ratio = logp - old_logp  # [B, T]
    if level == "token":
        return torch.exp(log_ratio)  # [B, T]
    m = mask.to(log_ratio.dtype)  # [B, T]
    seq_log_ratio = (log_ratio * m).sum(dim=-1) / m.sum(dim=-1).clamp(min=1.0)  # [B]
    log_importance = logp - logp.detach() + seq_log_ratio.detach()[:, None]  # [B, T]
    return torch.exp(log_importance)  # [B, T]


def clipped_surrogate(
    ratio: Tensor,
    advantages: Tensor,
    epsilon_low: float = 0.2,
    epsilon_high: float | None = None,
) -> Tensor:
    """PPO clipped surrogate loss per token, ``[B, T]`` (to be minimised)::

        L_it = -min( ratio_it * A_i, clip(ratio_it, 1 - eps_low, 1 + eps_high) * A_i )

    ``eps_high`` defaults to ``eps_low`` (symmetric PPO clip, 0.2 in GRPO); DAPO's clip-higher
    uses ``eps_low = 0.2, eps_high = 0.28`` (arXiv 2503.14476). ``advantages`` is ``[B]``
    (broadcast over tokens) or already ``[B, T]``.
    """
    eps_high = epsilon_low if epsilon_high is None else epsilon_high
    if epsilon_low < 0 or eps_high < 0:
        raise ValueError(f"epsilons must be >= 0, got low={epsilon_low}, high={eps_high}")
    adv = advantages[:, None] if advantages.dim() == 1 else advantages  # [B, 1] or [B, T]
    if ratio.dim() != 2 or adv.shape[0] != ratio.shape[0]:
        raise ValueError(
            f"ratio must be [B, T] and advantages [B]; got {tuple(ratio.shape)}, "
            f"{tuple(advantages.shape)}"
        )
    unclipped = ratio * adv  # [B, T]
    clipped = torch.clamp(ratio, 1.0 - epsilon_low, 1.0 + eps_high) * adv  # [B, T]
    return -torch.minimum(unclipped, clipped)  # [B, T]


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

    ``num_sequences`` / ``num_tokens`` default to this batch's ``B`` and ``sum_it M_it``. Pass
    the GLOBAL counts (over all micro-batches of an optimizer step and all processes) to make the
    sum of the micro-batch losses equal the loss of the full batch. Every denominator is clamped
    to at least 1, so an all-padding batch gives a loss of 0 instead of NaN.
    """
    _check_choice("loss_type", loss_type, LOSS_TYPES)
    _check_2d("mask", mask, per_token_loss)
    if loss_type == "dr_grpo" and max_completion_length is None:
        raise ValueError("loss_type 'dr_grpo' requires max_completion_length")
    m = mask.to(per_token_loss.dtype)  # [B, T]
    masked = per_token_loss * m  # [B, T]
    n_seq = float(per_token_loss.shape[0]) if num_sequences is None else float(num_sequences)
    n_seq = max(n_seq, 1.0)
    if loss_type == "grpo":
        seq_loss = masked.sum(dim=-1) / m.sum(dim=-1).clamp(min=1.0)  # [B]
        return seq_loss.sum() / n_seq
    if loss_type == "dapo":
        if num_tokens is None:
            return masked.sum() / m.sum().clamp(min=1.0)
        return masked.sum() / max(float(num_tokens), 1.0)
    assert max_completion_length is not None
    return masked.sum() / (n_seq * max(float(max_completion_length), 1.0))


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
) -> tuple[Tensor, dict[str, Tensor]]:
    """GRPO-family policy loss and detached statistics.

    Per token, with ``ratio`` from :func:`importance_ratio` and ``A_i`` = ``advantages`` ``[B]``::

        L_it = -min(ratio_it A_i, clip(ratio_it, 1 - eps_low, 1 + eps_high) A_i)
               + beta * KL_it                    # KL_it = kl_penalty(logp, ref_logp), if beta != 0

    then reduced by :func:`aggregate_loss` (``loss_type``, normalisers). With a single update
    per rollout (``old_logp = logp.detach()``) the ratio is 1 but ``d L_it / d logp_it = -A_i``.

    Stats (all detached scalars, masked token means over this batch): ``"kl"`` (only when
    ``ref_logp`` is given), ``"clip_ratio/low_mean"`` (ratio < 1 - eps_low and A < 0),
    ``"clip_ratio/high_mean"`` (ratio > 1 + eps_high and A > 0), ``"clip_ratio/region_mean"``
    (either) and ``"clipfrac"`` (alias of region_mean).
    """
    _check_choice("loss_type", loss_type, LOSS_TYPES)
    _check_choice(
        "importance_sampling_level", importance_sampling_level, IMPORTANCE_SAMPLING_LEVELS
    )
    _check_choice("kl_estimator", kl_estimator, KL_ESTIMATORS)
    if beta != 0.0 and ref_logp is None:
        raise ValueError(f"beta={beta} != 0 requires ref_logp")
    if advantages.dim() != 1 or advantages.shape[0] != logp.shape[0]:
        raise ValueError(
            f"advantages must be [B]={logp.shape[0]}, got shape {tuple(advantages.shape)}"
        )
    eps_high = epsilon_low if epsilon_high is None else epsilon_high

    ratio = importance_ratio(logp, old_logp, mask, importance_sampling_level)  # [B, T]
    per_token_loss = clipped_surrogate(ratio, advantages, epsilon_low, eps_high)  # [B, T]
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
