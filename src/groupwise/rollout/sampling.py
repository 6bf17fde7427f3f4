"""Sampling one token per row: temperature, top-k, top-p, greedy; inverse-CDF draws.

Sampling is ours, with an explicit ``torch.Generator`` so a seed reproduces a rollout; given
per-row uniforms it samples by inverse CDF, so a row's token depends only on its draw (ranks
that decode slices sample what one process would).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from groupwise.core import entropy_from_logits


def sample_next(
    logits: Tensor,
    *,
    temperature: float,
    top_p: float = 1.0,
    top_k: int = 0,
    generator: torch.Generator | None = None,
    uniform: Tensor | None = None,
) -> Tensor:
    """Draw one token per row from ``softmax(logits / temperature)`` (greedy if temperature=0).

    top-k keeps the k largest logits; top-p keeps the smallest set of tokens whose probability
    reaches ``top_p`` (always at least the most likely token). ``uniform`` ([R] in [0, 1)):
    sample by inverse CDF from these draws instead of ``torch.multinomial``.
    """
    return sample_with_entropy(
        logits,
        temperature=temperature,
        top_p=top_p,
        top_k=top_k,
        generator=generator,
        uniform=uniform,
        entropy=False,
    )[0]


class Sample(NamedTuple):
    """One drawn token per row and what the sampler saw of its distribution."""

    token: Tensor
    """``[R]`` the drawn tokens."""
    entropy: Tensor | None
    """``[R]`` entropy of ``softmax(logits / T)`` (None if not asked or greedy)."""
    logp: Tensor | None
    """``[R]`` ``log_softmax(logits / T)`` of the drawn token over the full vocabulary, before
    top-k/top-p (None if not asked or greedy)."""


def sample_with_entropy(
    logits: Tensor,
    *,
    temperature: float,
    top_p: float = 1.0,
    top_k: int = 0,
    generator: torch.Generator | None = None,
    uniform: Tensor | None = None,
    entropy: bool = True,
) -> tuple[Tensor, Tensor | None]:
    """:func:`sample_next`, and the entropy ``[R]`` of ``softmax(logits / temperature)``
    (see :func:`sample_token`)."""
    drawn = sample_token(
        logits,
        temperature=temperature,
        top_p=top_p,
        top_k=top_k,
        generator=generator,
        uniform=uniform,
        entropy=entropy,
    )
    return drawn.token, drawn.entropy


def sample_token(
    logits: Tensor,
    *,
    temperature: float,
    top_p: float = 1.0,
    top_k: int = 0,
    generator: torch.Generator | None = None,
    uniform: Tensor | None = None,
    entropy: bool = True,
    logp: bool = False,
    kernels: Any | None = None,
) -> Sample:
    """:func:`sample_next`, with the entropy ``[R]`` of ``softmax(logits / temperature)`` and,
    when ``logp``, the log-probability of the drawn token (``Rollout.behaviour_logp``)::

        logp_r = s_r[token_r] - logsumexp_v s_rv,   s = logits / temperature

    over the full vocabulary, as the trainer computes ``logp`` (top-k/top-p only decide which
    tokens can be drawn). Neither changes the draw.

    Without top-k/top-p the entropy comes from the probabilities the draw uses, with no log per
    vocabulary entry (:func:`entropy_from_probs`).
    Entropy and log-prob are None when not asked or when ``temperature`` is 0.

    ``kernels``: groupwise's C++ kernels (:mod:`groupwise.kernels.native`); with ``uniform`` and
    neither top-k nor top-p, their ``sample`` does all of this in one pass per row (the same
    rule; its float32 sums in another order, and its ``exp`` within 2 ulp of torch's, may move
    a draw that lands within rounding of a token's boundary).
    """
    if temperature <= 0:
        return Sample(logits.argmax(dim=-1), None, None)  # [R]
    unfiltered = (top_k <= 0 or top_k >= logits.shape[-1]) and top_p >= 1.0
    if kernels is not None and uniform is not None and unfiltered:
        token, h, token_logp = kernels.sample(
            logits.contiguous(), temperature, uniform.float().contiguous()
        )
        return Sample(token, h if entropy else None, token_logp if logp else None)
    scores = logits.float()  # [R, V]
    if temperature != 1.0:  # x / 1 == x exactly: a pass over [R, V] saved at the default
        scores = scores / temperature
    full = scores
    h = None
    if entropy and (top_k > 0 or top_p < 1.0):  # the unfiltered distribution's entropy
        h = entropy_from_logits(scores)  # [R]
    if top_k > 0 and top_k < scores.shape[-1]:
        kth = torch.topk(scores, top_k, dim=-1).values[:, -1:]  # [R, 1]
        scores = scores.masked_fill(scores < kth, float("-inf"))
    if top_p < 1.0:
        sorted_scores, order = torch.sort(scores, dim=-1, descending=True)  # [R, V]
        probs = torch.softmax(sorted_scores, dim=-1)
        before = probs.cumsum(dim=-1) - probs  # mass strictly before each token
        drop_sorted = before >= top_p
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        scores = scores.masked_fill(drop, float("-inf"))
    probs = torch.softmax(scores, dim=-1)  # [R, V]
    if entropy and h is None:
        h = entropy_from_probs(probs, scores)  # [R]
    if uniform is None:  # torch.multinomial draws an exponential per vocabulary entry: ~1/3
        # of decode time on CPU for 32 x 49152 (profiled); the inverse CDF below is the fast path
        picked = torch.multinomial(probs, 1, generator=generator).squeeze(-1)  # [R]
    else:
        picked = inverse_cdf_sample(probs, uniform)  # [R]
        ok = probs.gather(-1, picked[:, None]).squeeze(-1) > 0  # rounding at the very top end
        if not bool(ok.all()):
            picked = torch.where(ok, picked, probs.argmax(dim=-1))
    return Sample(picked, h, _token_logp(full, picked) if logp else None)


def entropy_from_probs(probs: Tensor, scores: Tensor) -> Tensor:
    """The entropy ``[R]`` of ``probs = softmax(scores)`` (``[R, V]``, float32)::

        H = -sum_v p_v log p_v = -log p_max - sum_v p_v (s_v - s_max)

    since ``log p_v = s_v - lse`` and ``lse = s_max - log p_max`` (the most likely token has
    the largest score). Two max passes and one multiply-add pass over the vocabulary: a log per
    entry (``torch.special.entr``) cost about 4x as long on a [32, 49152] batch. Centring the
    scores on their max keeps the sum small where the entropy is small. Entries with
    ``p = 0`` (scores of -inf) add nothing (their ``0 * -inf`` is dropped by ``nansum``).
    """
    s_max = scores.amax(dim=-1, keepdim=True)  # [R, 1]
    p_max = probs.amax(dim=-1)  # [R]
    centred = torch.nansum(probs * (scores - s_max), dim=-1)  # [R]
    return (centred.neg_() - torch.log(p_max)).clamp_(min=0.0)


def _token_logp(scores: Tensor, token: Tensor) -> Tensor:
    """``log_softmax(scores)[r, token_r]``, ``[R]``, without a ``[R, V]`` log-softmax."""
    picked = scores.gather(-1, token[:, None]).squeeze(-1)  # [R]
    return picked - torch.logsumexp(scores, dim=-1)  # [R]


CDF_BLOCK = 256
"""Vocabulary entries per block of :func:`inverse_cdf_sample`'s two-level search."""


def inverse_cdf_sample(probs: Tensor, uniform: Tensor) -> Tensor:
    """Per row, the first token whose cumulative probability exceeds ``u * total``::

        pick_r = min { v : sum_{w <= v} p_rw > u_r * sum_w p_rw }

    ``probs`` ``[R, V]`` (unnormalised is fine), ``uniform`` ``[R]`` in [0, 1). Searched in two
    levels: the cumulative sums of blocks of ``CDF_BLOCK`` entries locate the block, then the
    cumulative sum inside that one block locates the token. A full ``cumsum`` over the
    vocabulary is a sequential scan; the block sums are one vectorised reduction (measured side
    by side in docs/log.md). May return a zero-probability token
    when rounding leaves the target past a block's last positive entry; callers check.
    """
    rows, vocab = probs.shape
    block = min(CDF_BLOCK, vocab)
    pad = -vocab % block
    padded = F.pad(probs, (0, pad)) if pad else probs  # [R, nb * block]
    blocks = padded.view(rows, -1, block)  # [R, nb, block]
    block_sums = blocks.sum(dim=-1)  # [R, nb]
    block_cdf = block_sums.cumsum(dim=-1)  # [R, nb]
    target = (uniform[:, None] * block_cdf[:, -1:]).contiguous()  # [R, 1]
    last = block_cdf.shape[1] - 1
    b = torch.searchsorted(block_cdf, target, right=True).clamp(max=last)  # [R, 1]
    before = block_cdf.gather(-1, b) - block_sums.gather(-1, b)  # [R, 1] mass before block b
    inner = blocks.gather(1, b[:, :, None].expand(rows, 1, block)).squeeze(1)  # [R, block]
    inner_cdf = inner.cumsum(dim=-1).add_(before)  # [R, block]
    j = torch.searchsorted(inner_cdf, target, right=True).clamp(max=block - 1)  # [R, 1]
    return (b * block + j).squeeze(-1).clamp(max=vocab - 1)  # [R]
