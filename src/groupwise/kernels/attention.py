"""Grouped-query attention without ``repeat_kv`` copies, as a transformers attention function.

For H query heads sharing KV heads in groups of ``r = H / H_kv`` (query head ``i`` reads KV head
``i // r``), the queries of one KV head are stacked along the sequence axis::

    Q [B, H, q, D] -> [B, H_kv, r*q, D];   S = Q K^T * scale + mask;   O = softmax(S) V

which is exactly eager attention, but the keys and values are read in place instead of being
expanded to ``[B, H, L, D]`` at every layer and every decoded token.

Long sequences go to torch's fused ``scaled_dot_product_attention`` with ``enable_gqa=True``
instead (also no KV copies): eager attention keeps ``[B, H, q, L]`` probabilities for the
backward pass, which grows with the square of the length: the grouped kernel is the faster one
for short completions, SDPA the faster and far leaner one for long ones (measured in
benchmarks/README.md, docs/log.md). ``SDPA_MIN_LENGTH`` is the switch.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from groupwise.kernels.fused import softmax_probs

GROUPED_ATTENTION = "groupwise_grouped"
SDPA_MIN_LENGTH = 256
"""Key length from which multi-token queries use fused SDPA instead of the grouped kernel."""


def grouped_attention(
    module: nn.Module,
    query: Tensor,
    key: Tensor,
    value: Tensor,
    attention_mask: Tensor | None,
    scaling: float,
    dropout: float = 0.0,
    **_: Any,
) -> tuple[Tensor, None]:
    """Attention output ``[B, q, H, D]`` (transformers' layout) for GQA inputs."""
    b, h, q, d = query.shape
    kv, length = key.shape[1], key.shape[2]
    if q > 1 and length >= SDPA_MIN_LENGTH:
        mask = attention_mask[:, :, :, :length] if attention_mask is not None else None
        fused = nn.functional.scaled_dot_product_attention(
            query,
            key,
            value,
            attn_mask=mask,  # additive, [B, 1, q, L]
            dropout_p=dropout if module.training else 0.0,
            scale=scaling,
            enable_gqa=True,
        )  # [B, H, q, D]
        return fused.transpose(1, 2).contiguous(), None
    rep = h // kv
    scores = torch.matmul(query.reshape(b, kv, rep * q, d), key.transpose(2, 3))  # [B,kv,r*q,L]
    scores = scores * scaling
    if attention_mask is not None:
        mask = attention_mask[:, :, :, :length]  # [B, 1, q, L] additive
        scores = (scores.view(b, kv, rep, q, length) + mask[:, :, None]).view(
            b, kv, rep * q, length
        )
    probs = softmax_probs(scores, query.dtype)  # [B,kv,r*q,L]; keeps bf16 probs for backward
    if dropout > 0 and module.training:
        probs = nn.functional.dropout(probs, p=dropout)
    out = torch.matmul(probs, value)  # [B, kv, r*q, D]
    return out.view(b, h, q, d).transpose(1, 2).contiguous(), None


def register_grouped_attention() -> str:
    """Register ``grouped_attention`` (with eager's additive mask) and return its name."""
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, eager_mask

    AttentionInterface.register(GROUPED_ATTENTION, grouped_attention)
    ALL_MASK_ATTENTION_FUNCTIONS.register(GROUPED_ATTENTION, eager_mask)
    return GROUPED_ATTENTION
