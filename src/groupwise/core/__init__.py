"""Pure GRPO algorithm math on tensors: advantages, KL penalty, clipped losses, log-probs.

Algorithm choices (defaults in parentheses):

- Advantages are group-relative outcome advantages, ``A_i = (r_i - mean_g) / (std_g + eps)``,
  with Bessel-corrected std (``scale_rewards="group"``); ``"batch"`` scales by the batch std,
  ``"none"`` is Dr. GRPO's unscaled ``r_i - mean_g``. Groups with equal rewards get ``A = 0``
  exactly and are flagged ``zero_std``.
- The KL penalty to the reference policy is a per-token estimator of ``KL(pi_theta || pi_ref)``
  added to the loss (not to the reward): ``k3 = exp(x) - x - 1``, ``x = ref_logp - logp``
  (DeepSeekMath), with ``k1``/``k2`` available. ``beta = 0`` (no penalty) by default.
- The per-token objective is PPO's clipped surrogate (``objective="clip"``) with optional
  asymmetric clipping (``epsilon_low = 0.2``, ``epsilon_high = epsilon_low``; DAPO clip-higher
  uses 0.28); ``"cispo"`` (MiniMax-M1) clips the detached importance weight instead and keeps
  every token's gradient, ``"sapo"`` (Qwen) replaces the hard clip by a sigmoid gate of the
  ratio. An optional entropy mask keeps the policy gradient of the top fraction of tokens by
  entropy only (arXiv 2506.01939).
- An optional entropy bonus ``-coef * mean_token(H)`` (TRL's ``entropy_coef``; off by default)
  is added to the aggregated loss, not rescaled by the aggregation; its coefficient may adapt
  to a target entropy (Skywork-OR1, arXiv 2505.22312; the controller lives in ``train/``).
- The importance ratio is per token (``"token"``), or GSPO's length-normalised sequence ratio
  (``"sequence"``) in the stop-gradient "GSPO-token" form.
- Aggregation: ``"dapo"`` token mean (default), ``"grpo"`` per-sequence mean then mean over
  sequences, ``"dr_grpo"`` sum divided by ``num_sequences * max_completion_length``. Global
  normalisers can be passed so that micro-batch losses sum to the full-batch loss.
- Engine-mismatch correction (off unless the rollout engine reports its own log-probs):
  importance weights ``exp(old_logp - behaviour_logp)`` per token or per sequence, truncated
  or masked to ``[C_min, C_max]`` (TRL's ``vllm_importance_sampling_*``), scale the policy term.
- Log-probs are computed through the LM head in row chunks with a custom autograd function, so
  no ``[tokens, vocab]`` float32 tensor is kept for backward.

Each named choice is an entry of a :class:`~groupwise.registry.Registry` keyed by its config
name: :data:`ADVANTAGE_SCALINGS` (``algorithm.scale_rewards``), :data:`KL_ESTIMATORS`
(``algorithm.kl_estimator``), :data:`OBJECTIVES` (``algorithm.objective``),
:data:`IMPORTANCE_RATIOS` (``algorithm.importance_sampling_level``), :data:`AGGREGATIONS`
(``algorithm.loss_type``) and :data:`CORRECTIONS` (``algorithm.vllm_importance_sampling_mode``). Registering a function there makes it selectable by name.
"""

from groupwise.core.advantages import ADVANTAGE_SCALINGS, SCALE_REWARDS, group_advantages
from groupwise.core.correction import (
    CORRECTIONS,
    CorrectionBounds,
    ImportanceCorrection,
    correction_metrics,
    importance_correction,
)
from groupwise.core.kl import KL_ESTIMATORS, kl_penalty
from groupwise.core.logprobs import chunked_token_logp, entropy_from_logits, naive_token_logp
from groupwise.core.loss import (
    AGGREGATIONS,
    IMPORTANCE_RATIOS,
    IMPORTANCE_SAMPLING_LEVELS,
    LOSS_TYPES,
    Normalisers,
    aggregate_loss,
    entropy_bonus,
    importance_ratio,
    policy_loss,
)
from groupwise.core.objectives import (
    OBJECTIVES,
    ObjectiveParams,
    clipped_surrogate,
    entropy_mask,
)

__all__ = [
    "ADVANTAGE_SCALINGS",
    "AGGREGATIONS",
    "CORRECTIONS",
    "IMPORTANCE_RATIOS",
    "IMPORTANCE_SAMPLING_LEVELS",
    "KL_ESTIMATORS",
    "LOSS_TYPES",
    "OBJECTIVES",
    "SCALE_REWARDS",
    "CorrectionBounds",
    "ImportanceCorrection",
    "Normalisers",
    "ObjectiveParams",
    "aggregate_loss",
    "chunked_token_logp",
    "clipped_surrogate",
    "correction_metrics",
    "entropy_bonus",
    "entropy_from_logits",
    "entropy_mask",
    "group_advantages",
    "importance_correction",
    "importance_ratio",
    "kl_penalty",
    "naive_token_logp",
    "policy_loss",
]
