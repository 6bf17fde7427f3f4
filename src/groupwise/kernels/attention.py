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

Under :func:`shared_prefix_layout` the same function reads one flattened sequence of P prompts
and the B = P*G completion rows that share them (see :class:`PrefixLayout`): every linear layer
of the model then runs once over all their tokens, and only the attention splits them again.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from groupwise.kernels.fused import softmax_probs

GROUPED_ATTENTION = "groupwise_grouped"
SDPA_MIN_LENGTH = 256
"""Key length from which multi-token queries use fused SDPA instead of the grouped kernel."""


@dataclass(frozen=True)
class PrefixLayout:
    """Where the tokens of a flattened shared-prefix batch are, and who attends to whom.

    The sequence ``[1, T]``, ``T = P*Lp + B*Lc``, holds the P left-padded prompts (``Lp``
    tokens each) and then the ``B = P*G`` completion rows (``Lc`` tokens each; rows of one
    prompt contiguous). A prompt token attends causally within its prompt; a completion token
    to its prompt's real tokens and causally within its own row. That is exactly the attention
    of a prompt pass whose KV cache is repeated G times for a completion pass.
    """

    prompts: int  # P
    prompt_len: int  # Lp
    group: int  # G
    completion_len: int  # Lc
    prompt_mask: Tensor  # [P, 1, Lp, Lp] additive (0 or the dtype's min)
    completion_mask: Tensor  # [B, 1, Lc, Lp + Lc] additive

    @property
    def tokens(self) -> int:
        """T, the flattened sequence's length."""
        return self.prompts * (self.prompt_len + self.group * self.completion_len)


def prefix_layout(
    prompt_mask: Tensor, group: int, completion_len: int, dtype: torch.dtype
) -> PrefixLayout:
    """The layout of P prompts (``prompt_mask`` [P, Lp], 1 = real token, left-padded) each
    followed by G completion rows of ``completion_len`` tokens; additive masks in ``dtype``."""
    p, lp = prompt_mask.shape
    lc, device = completion_len, prompt_mask.device
    blocked = torch.finfo(dtype).min
    real = prompt_mask.bool()[:, None, None, :]  # [P, 1, 1, Lp]
    causal_p = torch.ones(lp, lp, dtype=torch.bool, device=device).tril()  # [Lp, Lp]
    allow_p = causal_p[None, None] & real  # [P, 1, Lp, Lp]
    allow_p |= torch.eye(lp, dtype=torch.bool, device=device)  # a padding query sees itself
    causal_c = torch.ones(lc, lc, dtype=torch.bool, device=device).tril()  # [Lc, Lc]
    allow_c = torch.cat(
        [real.expand(p, 1, lc, lp), causal_c[None, None].expand(p, 1, lc, lc)], dim=3
    ).repeat_interleave(group, dim=0)  # [B, 1, Lc, Lp + Lc]
    zero = torch.zeros((), dtype=dtype, device=device)
    return PrefixLayout(
        prompts=p,
        prompt_len=lp,
        group=group,
        completion_len=lc,
        prompt_mask=torch.where(allow_p, zero, blocked),
        completion_mask=torch.where(allow_c, zero, blocked),
    )


_LAYOUT: ContextVar[PrefixLayout | None] = ContextVar("groupwise_prefix_layout", default=None)


@contextmanager
def shared_prefix_layout(layout: PrefixLayout) -> Iterator[None]:
    """Within this block :func:`grouped_attention` reads its inputs as ``layout`` says."""
    token = _LAYOUT.set(layout)
    try:
        yield
    finally:
        _LAYOUT.reset(token)


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
    """Attention output ``[B, q, H, D]`` (transformers' layout) for GQA inputs; under
    :func:`shared_prefix_layout` ``attention_mask`` is not read (the layout has the masks)."""
    layout = _LAYOUT.get()
    if layout is not None:
        return _shared_prefix_attention(module, query, key, value, layout, scaling, dropout), None
    return _grouped(module, query, key, value, attention_mask, scaling, dropout), None


def _shared_prefix_attention(
    module: nn.Module,
    query: Tensor,
    key: Tensor,
    value: Tensor,
    layout: PrefixLayout,
    scaling: float,
    dropout: float,
) -> Tensor:
    """Attention ``[1, T, H, D]`` of a flattened shared-prefix sequence (see PrefixLayout)."""
    if query.shape[0] != 1 or query.shape[2] != layout.tokens:
        raise ValueError(
            f"shared-prefix attention expects one sequence of {layout.tokens} tokens, got "
            f"queries of shape {tuple(query.shape)}"
        )
    p, lp, lc = layout.prompts, layout.prompt_len, layout.completion_len
    b, n = p * layout.group, p * lp

    def rows(t: Tensor, start: int, count: int, length: int) -> Tensor:
        heads, d = t.shape[1], t.shape[3]  # [1, heads, T, D] -> [count, heads, length, D]
        return t[0, :, start : start + count * length].view(heads, count, length, d).transpose(0, 1)

    q_p, k_p, v_p = (rows(t, 0, p, lp) for t in (query, key, value))  # [P, ., Lp, D]
    out_p = _grouped(module, q_p, k_p, v_p, layout.prompt_mask, scaling, dropout)  # [P,Lp,H,D]
    if lc == 0:
        return out_p.reshape(1, n, *out_p.shape[2:])
    q_c, k_c, v_c = (rows(t, n, b, lc) for t in (query, key, value))  # [B, ., Lc, D]
    g = layout.group
    keys = torch.cat([k_p.repeat_interleave(g, dim=0), k_c], dim=2)  # [B, KV, Lp + Lc, D]
    values = torch.cat([v_p.repeat_interleave(g, dim=0), v_c], dim=2)
    out_c = _grouped(module, q_c, keys, values, layout.completion_mask, scaling, dropout)
    heads, d = out_p.shape[2], out_p.shape[3]
    return torch.cat([out_p.reshape(n, heads, d), out_c.reshape(b * lc, heads, d)])[None]


def _grouped(
    module: nn.Module,
    query: Tensor,
    key: Tensor,
    value: Tensor,
    attention_mask: Tensor | None,
    scaling: float,
    dropout: float,
) -> Tensor:
    """Grouped-query attention ``[B, q, H, D]`` with an additive ``[B, 1, q, >=L]`` mask."""
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
        return fused.transpose(1, 2).contiguous()
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
    return out.view(b, h, q, d).transpose(1, 2).contiguous()


def register_grouped_attention() -> str:
    """Register ``grouped_attention`` (with eager's additive mask) and return its name."""
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, eager_mask

    AttentionInterface.register(GROUPED_ATTENTION, grouped_attention)
    ALL_MASK_ATTENTION_FUNCTIONS.register(GROUPED_ATTENTION, eager_mask)
    return GROUPED_ATTENTION
