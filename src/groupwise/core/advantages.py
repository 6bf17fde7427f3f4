"""Group-relative advantages (GRPO, arXiv 2402.03300; Dr. GRPO, arXiv 2503.20783)."""

from __future__ import annotations

import torch
from torch import Tensor

SCALE_REWARDS: tuple[str, ...] = ("group", "batch", "none")


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

    Standard deviations use Bessel's correction (unbiased, ``/(n - 1)``). A group whose rewards
    are all equal gets ``A_i = 0`` exactly in every mode.

    Returns ``(advantages [B] float32, zero_std [B // G] bool)`` where ``zero_std`` flags the
    groups whose rewards are all equal (they carry no learning signal).
    """
    if scale_rewards not in SCALE_REWARDS:
        raise ValueError(
            f"unknown scale_rewards {scale_rewards!r}; valid: {', '.join(SCALE_REWARDS)}"
        )
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
    if scale_rewards == "group":
        advantages = centered / (r.std(dim=1, keepdim=True, correction=1) + eps)  # [P, G]
    elif scale_rewards == "batch":
        advantages = centered / (r.std(correction=1) + eps)  # [P, G]
    else:
        advantages = centered  # [P, G]
    advantages = torch.where(zero_std[:, None], torch.zeros_like(advantages), advantages)  # [P, G]
    return advantages.reshape(-1), zero_std  # [B], [P]
