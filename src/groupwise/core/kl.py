"""Per-token KL penalty estimators (Schulman's k1/k2/k3, http://joschu.net/blog/kl-approx.html).

Each estimator is registered in :data:`KL_ESTIMATORS` under its ``algorithm.kl_estimator`` name
and maps ``x = ref_logp - logp`` (log of pi_ref / pi_theta at the sampled token, any shape,
e.g. ``[B, T]``) to a per-token estimate of ``KL(pi_theta || pi_ref)`` of the same shape.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from groupwise.registry import Registry

KLEstimatorFn = Callable[[Tensor], Tensor]
"""``f(x) -> KL_it`` with ``x = ref_logp - logp``, both ``[B, T]``; no masking."""

KL_ESTIMATORS: Registry[KLEstimatorFn] = Registry("algorithm.kl_estimator")
"""KL estimators by name (``algorithm.kl_estimator``): k1, k2, k3."""

# exp(20) ~ 4.9e8: large enough to never bind for a sane policy, small enough that exp(x) and
# its gradient stay finite in float32 / bfloat16.
_K3_LOG_RATIO_CLAMP = 20.0


@KL_ESTIMATORS.register("k1")
def k1(x: Tensor) -> Tensor:
    """``k1 = -x = logp - ref_logp``: unbiased, can be negative (the naive estimator)."""
    return -x  # [B, T]


@KL_ESTIMATORS.register("k2")
def k2(x: Tensor) -> Tensor:
    """``k2 = x^2 / 2``: biased, non-negative, low variance when pi_theta ~ pi_ref."""
    return 0.5 * x.square()  # [B, T]


@KL_ESTIMATORS.register("k3")
def k3(x: Tensor) -> Tensor:
    """``k3 = exp(x) - x - 1``: unbiased, non-negative (DeepSeekMath, arXiv 2402.03300).

    ``x`` is clamped to ``[-20, 20]`` before ``exp`` so that a large disagreement with the
    reference cannot overflow to ``inf`` (the gradient is zero beyond the clamp).
    """
    x = x.clamp(min=-_K3_LOG_RATIO_CLAMP, max=_K3_LOG_RATIO_CLAMP)  # [B, T]
    return torch.exp(x) - x - 1.0  # [B, T]


def kl_penalty(logp: Tensor, ref_logp: Tensor, estimator: str = "k3") -> Tensor:
    """Per-token estimate of KL(pi_theta || pi_ref) from samples of pi_theta.

    With ``x = ref_logp - logp`` (log of pi_ref / pi_theta at the sampled token)::

        k1 = -x                    # unbiased, can be negative
        k2 = x^2 / 2               # biased, non-negative
        k3 = exp(x) - x - 1        # unbiased, non-negative (DeepSeekMath, arXiv 2402.03300)

    For k3 only, ``x`` is clamped to ``[-20, 20]`` before ``exp`` so that a large disagreement
    with the reference cannot overflow to ``inf`` (gradient is zero beyond the clamp).
    ``estimator`` is a name in :data:`KL_ESTIMATORS`. Returns a tensor of the same shape as
    ``logp`` (e.g. ``[B, T]``); no masking is applied.
    """
    fn = KL_ESTIMATORS.get(estimator)
    if logp.shape != ref_logp.shape:
        raise ValueError(
            f"logp and ref_logp shapes differ: {tuple(logp.shape)} vs {tuple(ref_logp.shape)}"
        )
    x = ref_logp - logp  # [B, T]
    return fn(x)  # [B, T]
