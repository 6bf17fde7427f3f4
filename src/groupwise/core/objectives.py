"""Per-token policy objectives (PPO clip, CISPO, SAPO) and entropy-selective token masks.

An objective maps the importance ratio ``ratio`` ``[B, T]`` (from
:func:`~groupwise.core.loss.importance_ratio`), the advantages ``A`` ``[B]`` and the policy's
log-probs ``logp`` ``[B, T]`` to a per-token loss ``L_it`` ``[B, T]`` to be minimised; masking,
the KL term and the reduction to a scalar are :func:`~groupwise.core.loss.policy_loss`'s. Each
is registered in :data:`OBJECTIVES` under its ``algorithm.objective`` name. ``sg`` is the
stop-gradient. At ``ratio = 1`` (a single update per rollout) every objective here has the
plain policy gradient ``d L_it / d logp_it = -A_i``; they differ in how they damp the
gradient of tokens whose ratio has moved away from 1::

    clip:  L = -min(ratio A, clip(ratio, 1 - eps_low, 1 + eps_high) A)   # PPO / GRPO
    cispo: L = -sg(min(ratio, 1 + eps_high)) A logp                      # MiniMax-M1
    sapo:  L = -(4 / tau) sigmoid(tau (ratio - 1)) A,  tau = tau_pos if A > 0 else tau_neg

:func:`entropy_mask` selects the tokens of highest entropy (arXiv 2506.01939); ``policy_loss``
multiplies the objective by it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch
from torch import Tensor

from groupwise.registry import Registry


@dataclass(frozen=True)
class ObjectiveParams:
    """The hyper-parameters an objective may read (each uses its own subset)."""

    epsilon_low: float = 0.2
    """Lower clip range: clip objective, ``ratio >= 1 - epsilon_low``."""
    epsilon_high: float = 0.2
    """Upper clip range: clip objective, and CISPO's cap ``1 + epsilon_high`` on the weight."""
    sapo_temperature_pos: float = 1.0
    """SAPO gate temperature for tokens with ``A > 0``."""
    sapo_temperature_neg: float = 1.05
    """SAPO gate temperature for tokens with ``A <= 0`` (larger: faster decay)."""

    def __post_init__(self) -> None:
        if self.epsilon_low < 0 or self.epsilon_high < 0:
            raise ValueError(
                f"epsilons must be >= 0, got low={self.epsilon_low}, high={self.epsilon_high}"
            )
        if self.sapo_temperature_pos <= 0 or self.sapo_temperature_neg <= 0:
            raise ValueError(
                f"SAPO temperatures must be > 0, got pos={self.sapo_temperature_pos}, "
                f"neg={self.sapo_temperature_neg}"
            )


class ObjectiveFn(Protocol):
    """``f(ratio [B, T], advantages [B], logp [B, T], params) -> L [B, T]`` (to be minimised)."""

    def __call__(
        self, ratio: Tensor, advantages: Tensor, logp: Tensor, params: ObjectiveParams
    ) -> Tensor: ...


OBJECTIVES: Registry[ObjectiveFn] = Registry("algorithm.objective")
"""Per-token objectives by name (``algorithm.objective``): clip, cispo, sapo."""


def _per_token(advantages: Tensor, ratio: Tensor) -> Tensor:
    """``advantages`` ``[B]`` as ``[B, 1]`` (or ``[B, T]`` as is), checked against ``ratio``."""
    adv = advantages[:, None] if advantages.dim() == 1 else advantages  # [B, 1] or [B, T]
    if ratio.dim() != 2 or adv.shape[0] != ratio.shape[0]:
        raise ValueError(
            f"ratio must be [B, T] and advantages [B]; got {tuple(ratio.shape)}, "
            f"{tuple(advantages.shape)}"
        )
    return adv


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
    adv = _per_token(advantages, ratio)  # [B, 1] or [B, T]
    unclipped = ratio * adv  # [B, T]
    clipped = torch.clamp(ratio, 1.0 - epsilon_low, 1.0 + eps_high) * adv  # [B, T]
    return -torch.minimum(unclipped, clipped)  # [B, T]


@OBJECTIVES.register("clip")
def clip_objective(
    ratio: Tensor, advantages: Tensor, logp: Tensor, params: ObjectiveParams
) -> Tensor:
    """PPO's clipped surrogate (PPO, arXiv 1707.06347; GRPO, arXiv 2402.03300)::

        L_it = -min(ratio_it A_i, clip(ratio_it, 1 - eps_low, 1 + eps_high) A_i)

    A token whose ratio left the band in the direction of its advantage gets no gradient.
    ``logp`` is unused (the ratio carries the gradient). See :func:`clipped_surrogate`.
    """
    return clipped_surrogate(ratio, advantages, params.epsilon_low, params.epsilon_high)


@OBJECTIVES.register("cispo")
def cispo_objective(
    ratio: Tensor, advantages: Tensor, logp: Tensor, params: ObjectiveParams
) -> Tensor:
    """CISPO, clipped importance-sampling-weight policy optimisation (MiniMax-M1, arXiv 2506.13585)::

        L_it = -sg(min(ratio_it, 1 + eps_high)) * A_i * logp_it
        d L_it / d logp_it = -min(ratio_it, 1 + eps_high) * A_i

    The importance weight is capped and detached instead of the update being clipped, so every
    token keeps a gradient (PPO's clip drops the gradient of exactly the rare, high-ratio
    tokens that reflections such as "wait" start with). No lower bound, as in the paper. The
    loss value itself is not meaningful (it contains ``logp``), only its gradient is.

    TRL's ``loss_type="cispo"`` caps at ``epsilon_high`` itself (ScaleRL's ``eps_max``, arXiv
    2510.13786, recommended 5.0); here the cap is ``1 + epsilon_high`` like the clip objective's
    upper bound, so TRL's ``epsilon_high=5.0`` is ``epsilon_high=4.0`` here.
    """
    adv = _per_token(advantages, ratio)  # [B, 1] or [B, T]
    weight = torch.clamp(ratio, max=1.0 + params.epsilon_high).detach()  # [B, T]
    return -weight * adv * logp  # [B, T]


@OBJECTIVES.register("sapo")
def sapo_objective(
    ratio: Tensor, advantages: Tensor, logp: Tensor, params: ObjectiveParams
) -> Tensor:
    """SAPO, soft adaptive policy optimisation (Qwen, arXiv 2511.20347)::

        tau_i = tau_pos if A_i > 0 else tau_neg
        g_it  = sigmoid(tau_i * (ratio_it - 1)) * 4 / tau_i                # soft gate
        L_it  = -g_it * A_i
        d L_it / d logp_it = -A_i * ratio_it * sech^2(tau_i (ratio_it - 1) / 2)

    (``4 sigmoid'(x) = sech^2(x / 2)``.) The gate replaces the hard clip: at ``ratio = 1`` the
    gradient is the plain ``-A_i`` whatever ``tau`` (``sigmoid'(0) = 1/4``), and it decays
    smoothly as the ratio moves away from 1, faster for larger ``tau``; ``tau_neg > tau_pos``
    damps negative-advantage tokens more (defaults 1.0 / 1.05, as the paper and TRL). The loss
    value at ``ratio = 1`` is ``-2 A_i / tau_i``. The paper averages per sequence
    (``loss_type="grpo"``).
    """
    adv = _per_token(advantages, ratio)  # [B, 1] or [B, T]
    tau = torch.where(
        adv > 0,
        torch.tensor(params.sapo_temperature_pos, dtype=adv.dtype, device=adv.device),
        torch.tensor(params.sapo_temperature_neg, dtype=adv.dtype, device=adv.device),
    )  # [B, 1] or [B, T]
    gate = torch.sigmoid(tau * (ratio - 1.0)) * (4.0 / tau)  # [B, T]
    return -gate * adv  # [B, T]


def entropy_mask(entropy: Tensor, mask: Tensor, quantile: float) -> Tensor:
    """Tokens in the top ``quantile`` fraction by entropy, among the real ones, ``[B, T]`` bool.

    Entropy-selective training ("Beyond the 80/20 Rule", arXiv 2506.01939; TRL's
    ``top_entropy_quantile``, the paper's rho = 0.2): only the high-entropy "forking" tokens
    get the policy gradient. With ``H = {entropy_it : mask_it = 1}`` (all real tokens of the
    tensors passed in, so pass the whole batch the threshold should be taken over)::

        tau_H = Quantile_{1 - quantile}(H)        # torch.quantile, linear interpolation
        E_it  = (entropy_it >= tau_H) and mask_it

    This is TRL's rule (``get_high_entropy_mask``): ties at the threshold are all kept, so a
    little more than ``quantile`` of the tokens can be selected; ``quantile = 1`` keeps every
    real token (``tau_H = min H``), ``quantile = 0`` only the maximal one(s). Padding is never
    selected; with no real token the mask is all False. ``entropy`` and ``mask`` are ``[B, T]``;
    the comparison is in float32.
    """
    if not 0.0 <= quantile <= 1.0:
        raise ValueError(f"quantile must be in [0, 1], got {quantile}")
    if entropy.dim() != 2 or entropy.shape != mask.shape:
        raise ValueError(
            f"entropy and mask must both be [B, T]; got {tuple(entropy.shape)}, {tuple(mask.shape)}"
        )
    real = mask.bool()  # [B, T]
    h = entropy.detach().to(torch.float32)  # [B, T]
    values = h[real]  # [N] real tokens' entropies
    if values.numel() == 0:
        return torch.zeros_like(real)
    threshold = torch.quantile(values, 1.0 - quantile)  # []
    return (h >= threshold) & real  # [B, T]
