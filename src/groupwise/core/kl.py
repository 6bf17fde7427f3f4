"""Per-token KL penalty estimators (Schulman's k1/k2/k3, http://joschu.net/blog/kl-approx.html)."""

from __future__ import annotations

import torch
from torch import Tensor

KL_ESTIMATORS: tuple[str, ...] = ("k1", "k2", "k3")

# exp(20) ~ 4.9e8: large enough to never bind for a sane policy, small enough that exp(x) and
# its gradient stay finite in float32 / bfloat16.
_K3_LOG_RATIO_CLAMP = 20.0


def kl_penalty(logp: Tensor, ref_logp: Tensor, estimator: str = "k3") -> Tensor:
    """Per-token estimate of KL(pi_theta || pi_ref) from samples of pi_theta.

    With ``x = ref_logp - logp`` (log of pi_ref / pi_theta at the sampled token)::

        k1 = -x                    # unbiased, can be negative
        k2 = x^2 / 2               # biased, non-negative
        k3 = exp(x) - x - 1        # unbiased, non-negative (DeepSeekMath, arXiv 2402.03300)

    For k3 only, ``x`` is clamped to ``[-20, 20]`` before ``exp`` so that a large disagreement
    with the reference cannot overflow to ``inf`` (gradient is zero beyond the clamp).
    Returns a tensor of the same shape as ``logp`` (e.g. ``[B, T]``); no masking is applied.
    """
    if estimator not in KL_ESTIMATORS:
        raise ValueError(f"unknown estimator {estimator!r}; valid: {', '.join(KL_ESTIMATORS)}")
    if logp.shape != ref_logp.shape:
        raise ValueError(
            f"logp and ref_logp shapes differ: {tuple(logp.shape)} vs {tuple(ref_logp.shape)}"
        )
    x = ref_logp - logp  # [B, T]
    if estimator == "k1":
        return -x  # [B, T]
    if estimator == "k2":
        return 0.5 * x.square()  # [B, T]
    x = x.clamp(min=-_K3_LOG_RATIO_CLAMP, max=_K3_LOG_RATIO_CLAMP)  # [B, T]
    return torch.exp(x) - x - 1.0  # [B, T]
