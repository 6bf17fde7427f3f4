"""Per-token log-probabilities through the LM head without a full ``[N, V]`` float32 tensor.

``chunked_token_logp`` computes, for rows ``n`` of ``hidden`` ``[N, H]`` and the LM-head weight
``W`` ``[V, H]``, the log-probability of ``targets[n]`` under ``softmax(h_n W^T / temperature)``.
It is a custom ``torch.autograd.Function``: the forward keeps only ``hidden``, ``W``, ``targets``
and one log-sum-exp per row; the backward recomputes each chunk's logits (or, with a single
chunk, reuses the forward's compute-dtype logits and overwrites them with their gradient). Peak
extra memory is ``O(chunk_size * V)`` in the compute dtype plus ``FLOAT_ROWS * V`` in float32,
instead of ``O(N * V)`` float32.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import once_differentiable

FLOAT_ROWS = 64
"""Rows per float32 temporary: the ``[rows, V]`` float32 logits are made this many rows at a time
from the compute-dtype matmul output (12.6 MB for V = 49152 instead of 75 MB for 384 rows)."""


def entropy_from_logits(logits: Tensor) -> Tensor:
    """Entropy of ``softmax(logits)`` over the last dim, in float32::

        H = -sum_v p_v log p_v,   p = softmax(logits),   0 log 0 = 0

    ``logits`` is ``[..., V]`` (``-inf`` entries, e.g. a banned EOS, count as p = 0); returns
    ``[...]``.
    """
    logp_all = F.log_softmax(logits.to(torch.float32), dim=-1)  # [..., V]
    p = logp_all.exp()  # [..., V]
    return -(p * logp_all.masked_fill(p == 0, 0.0)).sum(dim=-1)  # [...]


def _check_inputs(
    hidden: Tensor, weight: Tensor, targets: Tensor, temperature: float, chunk_size: int
) -> None:
    if hidden.dim() != 2 or weight.dim() != 2 or hidden.shape[1] != weight.shape[1]:
        raise ValueError(
            f"hidden must be [N, H] and weight [V, H]; got {tuple(hidden.shape)}, "
            f"{tuple(weight.shape)}"
        )
    if targets.shape != (hidden.shape[0],) or targets.dtype != torch.long:
        raise ValueError(
            f"targets must be int64 [N]={hidden.shape[0]}, got {targets.dtype} "
            f"{tuple(targets.shape)}"
        )
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")


def _scale(raw: Tensor, temperature: float, copy: bool = False) -> Tensor:
    """``raw / temperature`` in float32 (``raw`` itself when it is float32, unless ``copy``)."""
    z = raw.to(torch.float32, copy=copy)  # [n, V]
    if temperature != 1.0:
        z.div_(temperature)
    return z


class _ChunkedTokenLogp(torch.autograd.Function):
    """logp_n = z_n[y_n] - logsumexp(z_n), z_n = (h_n W^T) / temperature, chunked over rows."""

    @staticmethod
    def forward(
        ctx: Any,
        hidden: Tensor,
        weight: Tensor,
        targets: Tensor,
        temperature: float,
        chunk_size: int,
        compute_entropy: bool,
    ) -> tuple[Tensor, Tensor]:
        n_rows = hidden.shape[0]
        w = weight.to(hidden.dtype)  # [V, H] compute dtype
        logp = torch.empty(n_rows, dtype=torch.float32, device=hidden.device)  # [N]
        lse = torch.empty(n_rows, dtype=torch.float32, device=hidden.device)  # [N]
        n_ent = n_rows if compute_entropy else 0
        entropy = torch.empty(n_ent, dtype=torch.float32, device=hidden.device)  # [N] or [0]
        # one chunk with a backward to come: keep the matmul's logits (compute dtype) for it
        # instead of recomputing them there (same values)
        keep_raw = n_rows <= chunk_size and any(ctx.needs_input_grad[:2])
        raw_kept = None
        for start in range(0, n_rows, chunk_size):
            end = min(start + chunk_size, n_rows)
            raw = hidden[start:end] @ w.T  # [n, V] compute dtype
            for a in range(start, end, FLOAT_ROWS):  # float32 temporaries of FLOAT_ROWS rows
                b = min(a + FLOAT_ROWS, end)
                z = _scale(raw[a - start : b - start], temperature, copy=True)  # [r, V] float32
                z_max = z.amax(dim=-1, keepdim=True)  # [r, 1]
                target_logit = z.gather(-1, targets[a:b, None]).squeeze(-1)  # [r]
                z.sub_(z_max)  # shifted logits z' = z - max, in place
                e = torch.exp(z) if compute_entropy else z.exp_()  # [r, V] (z' kept for entropy)
                total = e.sum(dim=-1)  # [r]
                lse_c = z_max.squeeze(-1) + total.log()  # [r]
                logp[a:b] = target_logit - lse_c
                lse[a:b] = lse_c
                if compute_entropy:
                    # H = log s - sum_v e_v z'_v / s with e = exp(z'), s = sum e: both terms are
                    # small when H ~ 0, so no cancellation (unlike lse - sum p z)
                    dot = e.mul_(z).sum(dim=-1)  # [r] sum_v e_v z'_v (e is not needed after)
                    entropy[a:b] = total.log() - dot / total
            raw_kept = raw if keep_raw else None
            del raw
        ctx.save_for_backward(hidden, weight, targets, lse)
        ctx.raw_logits = raw_kept
        ctx.temperature = temperature
        ctx.chunk_size = chunk_size
        ctx.mark_non_differentiable(entropy)
        return logp, entropy

    @staticmethod
    @once_differentiable
    def backward(
        ctx: Any, grad_logp: Tensor, grad_entropy: Tensor | None
    ) -> tuple[Tensor | None, Tensor | None, None, None, None, None]:
        # d logp_n / d z_nv = onehot(y_n)_v - p_nv;  dz/dh = W / temperature, dz/dW = h / temperature
        hidden, weight, targets, lse = ctx.saved_tensors
        need_hidden, need_weight = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        temperature: float = ctx.temperature
        w = weight.to(hidden.dtype)  # [V, H]
        grad_logp = grad_logp.to(torch.float32)  # [N]
        grad_hidden = torch.empty_like(hidden) if need_hidden else None  # [N, H]
        one_chunk = hidden.shape[0] <= ctx.chunk_size  # no float32 [V, H] accumulator needed
        grad_weight = (
            torch.zeros(weight.shape, dtype=torch.float32, device=weight.device)  # [V, H]
            if need_weight and not one_chunk
            else None
        )
        for start in range(0, hidden.shape[0], ctx.chunk_size):
            end = min(start + ctx.chunk_size, hidden.shape[0])
            h_c = hidden[start:end]  # [n, H]
            raw, ctx.raw_logits = ctx.raw_logits, None  # kept by a one-chunk forward
            if raw is None:
                raw = h_c @ w.T  # [n, V] compute dtype, the forward's values
            for a in range(start, end, FLOAT_ROWS):  # overwrite raw with d logp / d z, in place
                b = min(a + FLOAT_ROWS, end)
                g_r = grad_logp[a:b, None]  # [r, 1]
                grad_z = _scale(raw[a - start : b - start], temperature, copy=True)  # [r, V]
                grad_z.sub_(lse[a:b, None]).exp_()  # softmax p, in place
                grad_z.mul_(-g_r / temperature)  # -g p / T
                grad_z.scatter_add_(-1, targets[a:b, None], g_r / temperature)
                raw[a - start : b - start] = grad_z  # rounded to the compute dtype
            grad_logits_lp = raw  # [n, V] compute dtype
            if grad_hidden is not None:
                grad_hidden[start:end] = grad_logits_lp @ w  # [n, H]
            if need_weight and one_chunk:
                grad_weight = (grad_logits_lp.T @ h_c).to(weight.dtype)  # [V, H]
            elif grad_weight is not None:
                grad_weight += (grad_logits_lp.T @ h_c).to(torch.float32)  # [V, H]
            del raw, grad_logits_lp
        if grad_weight is not None:
            grad_weight = grad_weight.to(weight.dtype)
        return grad_hidden, grad_weight, None, None, None, None


def chunked_token_logp(
    hidden: Tensor,
    weight: Tensor,
    targets: Tensor,
    *,
    temperature: float = 1.0,
    chunk_size: int = 1024,
    compute_entropy: bool = True,
) -> tuple[Tensor, Tensor | None]:
    """Log-probability of each target token, computed ``chunk_size`` rows at a time::

        z_n    = (h_n W^T) / temperature        # matmul in hidden.dtype, then float32
        logp_n = z_n[y_n] - logsumexp_v(z_n)
        H_n    = logsumexp_v(z_n) - sum_v softmax(z_n)_v z_nv     # entropy

    ``hidden`` ``[N, H]``, ``weight`` ``[V, H]`` (cast to ``hidden.dtype`` for the matmul),
    ``targets`` ``[N]`` int64 valid token ids (use any valid id, e.g. pad, on masked positions).
    Returns ``(logp [N] float32, entropy [N] float32 or None)``. ``logp`` is differentiable
    w.r.t. ``hidden`` and ``weight`` (gradients in their own dtypes; over several chunks the
    weight gradient is accumulated in float32). The entropy is a detached diagnostic: no gradient.
    The forward saves no ``[N, V]`` tensor; the backward recomputes logits per chunk (one extra
    matmul per chunk).
    """
    _check_inputs(hidden, weight, targets, temperature, chunk_size)
    logp, entropy = _ChunkedTokenLogp.apply(
        hidden, weight, targets, float(temperature), int(chunk_size), bool(compute_entropy)
    )
    return logp, (entropy if compute_entropy else None)


def naive_token_logp(
    hidden: Tensor, weight: Tensor, targets: Tensor, *, temperature: float = 1.0
) -> tuple[Tensor, Tensor]:
    """Reference twin of :func:`chunked_token_logp` that materialises all logits::

        logp_n = log_softmax(h_n W^T / temperature)[y_n]     # float32 log-softmax

    Returns ``(logp [N] float32, entropy [N] float32, detached)``. Memory is ``O(N * V)``.
    """
    _check_inputs(hidden, weight, targets, temperature, 1)
    logits = (hidden @ weight.to(hidden.dtype).T).to(torch.float32) / temperature  # [N, V]
    logp_all = F.log_softmax(logits, dim=-1)  # [N, V]
    logp = logp_all.gather(-1, targets[:, None]).squeeze(-1)  # [N]
    entropy = entropy_from_logits(logits.detach())  # [N]
    return logp, entropy
