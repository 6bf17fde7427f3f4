"""Group-relative advantages (GRPO, arXiv 2402.03300; Dr. GRPO, arXiv 2503.20783).

The scaling of the centred rewards is registered in :data:`ADVANTAGE_SCALINGS` under its
``algorithm.scale_rewards`` name. Shapes: ``[P, G]``, ``P`` prompts, ``G`` completions each.
"""

from __future__ import annotations

from typing import Protocol

import torch
from torch import Tensor

from groupwise.registry import Registry


class AdvantageScalingFn(Protocol):
    """``f(centered, rewards, eps) -> A``: ``centered = r - mean_g(r)``, all ``[P, G]``."""

    def __call__(self, centered: Tensor, rewards: Tensor, eps: float) -> Tensor: ...


ADVANTAGE_SCALINGS: Registry[AdvantageScalingFn] = Registry("algorithm.scale_rewards")
"""Advantage scalings by name (``algorithm.scale_rewards``): group, batch, none."""


@ADVANTAGE_SCALINGS.register("group")
def scale_by_group_std(centered: Tensor, rewards: Tensor, eps: float) -> Tensor:
    """``A_i = (r_i - mean_g(r)) / (std_g(r) + eps)``: GRPO (arXiv 2402.03300)."""
    return centered / (rewards.std(dim=1, keepdim=True, correction=1) + eps)  # [P, G]


@ADVANTAGE_SCALINGS.register("batch")
def scale_by_batch_std(centered: Tensor, rewards: Tensor, eps: float) -> Tensor:
    """``A_i = (r_i - mean_g(r)) / (std_B(r) + eps)``, std over the whole batch (PPO Lite)."""
    return centered / (rewards.std(correction=1) + eps)  # [P, G]


@ADVANTAGE_SCALINGS.register("none")
def no_scaling(centered: Tensor, rewards: Tensor, eps: float) -> Tensor:
    """``A_i = r_i - mean_g(r)``: Dr. GRPO (arXiv 2503.20783), no difficulty bias from std."""
    return centered  # [P, G]


SCALE_REWARDS: tuple[str, ...] = ADVANTAGE_SCALINGS.names()
"""Names of :data:`ADVANTAGE_SCALINGS` (kept for compatibility)."""


def group_advantages(
    rewards: Tensor,
    group_size: int,
    scale_rewards: str = "group",
    eps: float = 1e-4,
) -> tuple[Tensor, Tensor]:
    """Outcome advantages of each completion relative to its group.

    ``rewards`` is ``[B]`` with ``B = num_prompts * G`` and the ``G = group_size`` completions of
    one prompt contiguous. With ``mean_g`` / ``std_g`` over the group ``g`` of completion ``i``::

        "group": A_i = (r_i - mean_g(r)) / (std_g(r) + eps)
        "batch": A_i = (r_i - mean_g(r)) / (std_B(r) + eps)   # std over the whole batch
        "none":  A_i =  r_i - mean_g(r)                        # Dr. GRPO, no std scaling

    (``scale_rewards`` is a name in :data:`ADVANTAGE_SCALINGS`.) Standard deviations use
    Bessel's correction (unbiased, ``/(n - 1)``). A group whose rewards are all equal gets
    ``A_i = 0`` exactly in every mode.

    Returns ``(advantages [B] float32, zero_std [B // G] bool)`` where ``zero_std`` flags the
    groups whose rewards are all equal (they carry no learning signal).
    """
    scale = ADVANTAGE_SCALINGS.get(scale_rewards)
    if rewards.dim() != 1:
        raise ValueError(f"rewards must be 1-D [B], got shape {tuple(rewards.shape)}")
    if group_size < 2:
        raise ValueError(f"group_size must be >= 2 (std needs 2 samples), got {group_size}")
    if rewards.numel() % group_size != 0:
        raise ValueError(
            f"len(rewards)={rewards.numel()} is not divisible by group_size={group_size}"
        )
    num_nan = int(torch.isnan(rewards).sum().item())
    if num_nan > 0:
        raise ValueError(f"rewards contain {num_nan} NaN value(s) out of {rewards.numel()}")

    r = rewards.to(torch.float32).view(-1, group_size)  # [P, G]
    zero_std = (r == r[:, :1]).all(dim=1)  # [P]
    if r.shape[0] == 0:
        return r.reshape(-1), zero_std
    centered = r - r.mean(dim=1, keepdim=True)  # [P, G]
    advantages = scale(centered, r, eps)  # [P, G]
    advantages = torch.where(zero_std[:, None], torch.zeros_like(advantages), advantages)  # [P, G]
    return advantages.reshape(-1), zero_std  # [B], [P]
