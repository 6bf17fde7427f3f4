"""Per-token log-probabilities through the LM head without a full ``[N, V]`` float32 tensor.

``chunked_token_logp`` computes, for rows ``n`` of ``hidden`` ``[N, H]`` and the LM-head weight
``W`` ``[V, H]``, the log-probability of ``targets[n]`` under ``softmax(h_n W^T / temperature)``.
It is a custom ``torch.autograd.Function``: the forward keeps only ``hidden``, ``W``, ``targets``
and one log-sum-exp per row; the backward recomputes each chunk's logits (or, with a single
chunk, reuses the forward's compute-dtype logits and overwrites them with their gradient). Peak
extra memory is ``O(chunk_size * V)`` in the compute dtype plus ``FLOAT_ROWS * V`` in float32,
instead of ``O(N * V)`` float32.

The per-row entropy ``H_n`` is a detached diagnostic by default; with ``entropy_grad=True`` it
is differentiable too (for an entropy bonus in the loss), its gradient recomputed per chunk in
the same backward: no ``[N, V]`` tensor is saved either way, only the ``[N]`` entropies.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

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


def torch_rows_forward(
    raw: Tensor, targets: Tensor, temperature: float, compute_entropy: bool
) -> tuple[Tensor, Tensor, Tensor | None]:
    """Log-probs, log-sum-exps and entropies of ``r`` rows of logits, ``FLOAT_ROWS`` at a time::

        z = raw / T (float32),  lse = logsumexp_v(z),  logp = z[y] - lse
        H = log s - sum_v e_v z'_v / s,  z' = z - max z,  e = exp(z'),  s = sum_v e_v

    ``raw`` ``[r, V]`` compute dtype, ``targets`` ``[r]``; returns float32 ``[r]`` each
    (entropy None unless ``compute_entropy``).
    """
    n = raw.shape[0]
    logp = torch.empty(n, dtype=torch.float32, device=raw.device)  # [r]
    lse = torch.empty(n, dtype=torch.float32, device=raw.device)  # [r]
    entropy = torch.empty(n, dtype=torch.float32, device=raw.device) if compute_entropy else None
    for a in range(0, n, FLOAT_ROWS):  # float32 temporaries of FLOAT_ROWS rows
        b = min(a + FLOAT_ROWS, n)
        z = _scale(raw[a:b], temperature, copy=True)  # [r, V] float32
        z_max = z.amax(dim=-1, keepdim=True)  # [r, 1]
        target_logit = z.gather(-1, targets[a:b, None]).squeeze(-1)  # [r]
        z.sub_(z_max)  # shifted logits z' = z - max, in place
        e = torch.exp(z) if entropy is not None else z.exp_()  # [r, V] (z' kept for entropy)
        total = e.sum(dim=-1)  # [r]
        lse_c = z_max.squeeze(-1) + total.log()  # [r]
        logp[a:b] = target_logit - lse_c
        lse[a:b] = lse_c
        if entropy is not None:
            # H = log s - sum_v e_v z'_v / s with e = exp(z'), s = sum e: both terms are small
            # when H ~ 0, so no cancellation (unlike lse - sum p z)
            dot = e.mul_(z).sum(dim=-1)  # [r] sum_v e_v z'_v (e is not needed after)
            entropy[a:b] = total.log() - dot / total
    return logp, lse, entropy


def torch_rows_backward(
    raw: Tensor,
    lse: Tensor,
    targets: Tensor,
    grad_logp: Tensor,
    temperature: float,
    entropy: tuple[Tensor, Tensor] | None = None,
) -> None:
    """Overwrite ``r`` rows of logits ``raw`` ``[r, V]`` with ``dL / d raw`` (see
    :func:`_grad_rows`), ``FLOAT_ROWS`` at a time, rounded to ``raw``'s dtype."""
    for a in range(0, raw.shape[0], FLOAT_ROWS):
        b = min(a + FLOAT_ROWS, raw.shape[0])
        ent_rows = None if entropy is None else (entropy[0][a:b], entropy[1][a:b])
        raw[a:b] = _grad_rows(
            raw[a:b], lse[a:b], targets[a:b], grad_logp[a:b], temperature, ent_rows
        )


class LogpRows(NamedTuple):
    """The per-row work of :func:`chunked_token_logp` on one chunk's logits: torch's
    operations (:data:`TORCH_ROWS`), or a fused kernel computing the same formulas."""

    forward: Callable[[Tensor, Tensor, float, bool], tuple[Tensor, Tensor, Tensor | None]]
    """``(raw [r, V], targets [r], temperature, compute_entropy) -> (logp, lse, entropy)``
    as :func:`torch_rows_forward`."""
    backward: Callable[[Tensor, Tensor, Tensor, Tensor, float], None]
    """``(raw [r, V], lse [r], targets [r], grad_logp [r], temperature)``: ``raw``
    overwritten with ``dL / d raw`` of the log-probs alone, as :func:`torch_rows_backward`
    (an entropy's gradient always takes torch's operations)."""


TORCH_ROWS = LogpRows(torch_rows_forward, torch_rows_backward)
"""The row work in torch's operations (float32 temporaries of ``FLOAT_ROWS`` rows)."""


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
        entropy_grad: bool,
        rows: LogpRows,
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
            logp_c, lse_c, ent_c = rows.forward(raw, targets[start:end], temperature, n_ent > 0)
            logp[start:end], lse[start:end] = logp_c, lse_c
            if ent_c is not None:
                entropy[start:end] = ent_c
            raw_kept = raw if keep_raw else None
            del raw
        if entropy_grad:  # H [N] is needed by dH/dz; nothing of size V is kept
            ctx.save_for_backward(hidden, weight, targets, lse, entropy)
        else:
            ctx.save_for_backward(hidden, weight, targets, lse)
            ctx.mark_non_differentiable(entropy)
        ctx.raw_logits = raw_kept
        ctx.temperature = temperature
        ctx.chunk_size = chunk_size
        ctx.rows = rows
        return logp, entropy

    @staticmethod
    @once_differentiable
    def backward(
        ctx: Any, grad_logp: Tensor, grad_entropy: Tensor | None
    ) -> tuple[Tensor | None, Tensor | None, None, None, None, None, None, None]:
        # dz/dh = W / temperature, dz/dW = h / temperature; per row the gradient w.r.t. z is
        # d logp / dz (and d H / dz when the entropy has a nonzero gradient): see _grad_rows
        hidden, weight, targets, lse, *saved_entropy = ctx.saved_tensors
        need_hidden, need_weight = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        temperature: float = ctx.temperature
        w = weight.to(hidden.dtype)  # [V, H]
        grad_logp = grad_logp.to(torch.float32)  # [N]
        ent_grad = None  # (H [N], dL/dH [N]) only when the entropy's gradient is not all 0
        if saved_entropy and grad_entropy is not None and bool(grad_entropy.any()):
            ent_grad = (saved_entropy[0], grad_entropy.to(torch.float32))
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
            # overwrite raw with dL / d raw, in place
            if ent_grad is None:
                ctx.rows.backward(
                    raw, lse[start:end], targets[start:end], grad_logp[start:end], temperature
                )
            else:
                ent_slice = (ent_grad[0][start:end], ent_grad[1][start:end])
                torch_rows_backward(
                    raw,
                    lse[start:end],
                    targets[start:end],
                    grad_logp[start:end],
                    temperature,
                    ent_slice,
                )
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
        return grad_hidden, grad_weight, None, None, None, None, None, None


def _grad_rows(
    raw: Tensor,
    lse: Tensor,
    targets: Tensor,
    grad_logp: Tensor,
    temperature: float,
    entropy: tuple[Tensor, Tensor] | None,
) -> Tensor:
    """``dL / d raw`` of ``r`` rows in float32 ``[r, V]``, for ``z = raw / T``::

        d logp / d z_v = onehot(y)_v - p_v
        d H / d z_v    = -p_v (log p_v + H)          # only when ``entropy`` = (H [r], g_H [r])
        dL / d raw_v   = (g_l onehot(y)_v - p_v (g_l + g_H (log p_v + H))) / T

    ``raw`` ``[r, V]`` compute dtype (the forward's logits), ``lse`` ``[r]`` the forward's
    ``logsumexp(z)``, ``grad_logp`` ``[r]`` = ``g_l``. Without ``entropy`` (``g_H = 0``) the
    logp-only gradient takes two in-place passes and no further ``[r, V]`` temporary.
    """
    g_r = grad_logp[:, None]  # [r, 1]
    grad_z = _scale(raw, temperature, copy=True)  # [r, V] z
    if entropy is None:
        grad_z.sub_(lse[:, None]).exp_()  # softmax p, in place
        grad_z.mul_(-g_r / temperature)  # -g p / T
    else:
        ent, g_h = entropy[0][:, None], entropy[1][:, None]  # [r, 1] each
        log_p = grad_z.sub_(lse[:, None])  # [r, V] log p, in place
        p = log_p.exp()  # [r, V]
        grad_z = log_p.add_(ent).mul_(g_h).add_(g_r).mul_(p).mul_(-1.0 / temperature)
    grad_z.scatter_add_(-1, targets[:, None], g_r / temperature)
    return grad_z


def chunked_token_logp(
    hidden: Tensor,
    weight: Tensor,
    targets: Tensor,
    *,
    temperature: float = 1.0,
    chunk_size: int = 1024,
    compute_entropy: bool = True,
    entropy_grad: bool = False,
    rows: LogpRows = TORCH_ROWS,
) -> tuple[Tensor, Tensor | None]:
    """Log-probability of each target token, computed ``chunk_size`` rows at a time::

        z_n    = (h_n W^T) / temperature        # matmul in hidden.dtype, then float32
        logp_n = z_n[y_n] - logsumexp_v(z_n)
        H_n    = logsumexp_v(z_n) - sum_v softmax(z_n)_v z_nv     # entropy

    ``hidden`` ``[N, H]``, ``weight`` ``[V, H]`` (cast to ``hidden.dtype`` for the matmul),
    ``targets`` ``[N]`` int64 valid token ids (use any valid id, e.g. pad, on masked positions).
    Returns ``(logp [N] float32, entropy [N] float32 or None)``. ``logp`` is differentiable
    w.r.t. ``hidden`` and ``weight`` (gradients in their own dtypes; over several chunks the
    weight gradient is accumulated in float32). The entropy is a detached diagnostic unless
    ``entropy_grad`` (which needs ``compute_entropy``): then it is differentiable as well, with
    ``dH_n / dz_nv = -p_nv (log p_nv + H_n)`` (so ``dH_n / d(h_n W^T)_v`` carries a further
    ``1 / temperature``); an entropy gradient that is None or all 0 takes the logp-only backward.
    The forward saves no ``[N, V]`` tensor; the backward recomputes logits per chunk (one extra
    matmul per chunk). ``rows`` does the per-row work on each chunk's logits (torch's
    operations by default; a fused kernel, e.g. ``groupwise.kernels.native.logp_rows()``).
    """
    _check_inputs(hidden, weight, targets, temperature, chunk_size)
    if entropy_grad and not compute_entropy:
        raise ValueError(
            "entropy_grad=True needs compute_entropy=True (the entropy it differentiates)"
        )
    logp, entropy = _ChunkedTokenLogp.apply(
        hidden,
        weight,
        targets,
        float(temperature),
        int(chunk_size),
        bool(compute_entropy),
        bool(entropy_grad),
        rows,
    )
    return logp, (entropy if compute_entropy else None)


def naive_token_logp(
    hidden: Tensor,
    weight: Tensor,
    targets: Tensor,
    *,
    temperature: float = 1.0,
    entropy_grad: bool = False,
) -> tuple[Tensor, Tensor]:
    """Reference twin of :func:`chunked_token_logp` that materialises all logits::

        logp_n = log_softmax(h_n W^T / temperature)[y_n]     # float32 log-softmax

    Returns ``(logp [N] float32, entropy [N] float32)``, the entropy detached unless
    ``entropy_grad`` (then plain autograd through the full softmax). Memory is ``O(N * V)``.
    """
    _check_inputs(hidden, weight, targets, temperature, 1)
    logits = (hidden @ weight.to(hidden.dtype).T).to(torch.float32) / temperature  # [N, V]
    logp_all = F.log_softmax(logits, dim=-1)  # [N, V]
    logp = logp_all.gather(-1, targets[:, None]).squeeze(-1)  # [N]
    entropy = entropy_from_logits(logits if entropy_grad else logits.detach())  # [N]
    return logp, entropy
