"""Training-time RMSNorm, SwiGLU MLP and attention softmax that save bf16 inputs, not copies.

Run op by op under autograd, transformers' modules save what each small op needs for its
backward pass: RMSNorm a float32 copy of its input and its bf16 normalised output, the SwiGLU
MLP the gate projection, SiLU(gate), the up projection and their product, attention float32
probabilities next to the bf16 ones its value matmul keeps. For a SmolLM2-135M micro-batch in
bf16 these copies are a large share of the saved activations (measured with saved-tensor hooks;
benchmarks/README.md, docs/log.md).

The functions here run the forward with the very ops transformers runs (same dtypes, so the
outputs are bitwise equal) and keep only the bf16 inputs; the backward recomputes the cheap
element-wise parts: RMSNorm's in float32, the MLP's with the ops autograd itself would run on
them (aten's ``silu_backward``) (notation: ``dy`` the incoming gradient, ``s`` = sigmoid)::

    RMSNorm   y = w * bf16(x r),  r = rsqrt(mean(x^2) + eps)           saves x, r
              g = float(dy * w), xh = x r:  dx = r (g - xh mean(g xh)),  dw = sum(dy xh)
    SwiGLU    o = h Wd^T,  h = silu(a) * b,  a = x Wg^T,  b = x Wu^T    saves x, a, b
              dWd = do^T h (h recomputed),  dh = do Wd,  db = dh silu(a),
              da = dh b s(a) (1 + a (1 - s(a))),  dx = da Wg + db Wu,  dWg = da^T x,  dWu = db^T x
    softmax   p = bf16(softmax(float(z)))                                saves p (bf16)
              dz = p (dp - sum(dp p))

The backward reads the bf16 probabilities where transformers reads float32 ones (a relative
difference of at most 2^-8 in each ``p``, below the bf16 rounding of ``dz`` itself); RMSNorm's
equals transformers' gradient up to float32 rounding. :func:`install_fused_kernels` routes the
supported modules' forward through them when autograd records (under ``no_grad`` the modules
run their own code, which is what compiled decoding traces); modules it does not recognise are
left alone.
"""

from __future__ import annotations

import types
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.autograd.function import FunctionCtx

from groupwise.kernels import native

FUSED_NORMS = frozenset({"LlamaRMSNorm", "MistralRMSNorm", "Qwen2RMSNorm", "Qwen3RMSNorm"})
"""RMSNorm classes whose forward is ``w * bf16(x * rsqrt(mean(x^2) + eps))`` (no ``1 + w``)."""
FUSED_MLPS = frozenset({"LlamaMLP", "MistralMLP", "Qwen2MLP", "Qwen3MLP"})
"""MLP classes whose forward is ``down_proj(act_fn(gate_proj(x)) * up_proj(x))``."""
_SILU = frozenset({"SiLU", "SiLUActivation"})
NATIVE_FLAG = "_groupwise_native_kernels"
"""The attribute :func:`install_fused_kernels` sets on a routed module: use the C++ kernels."""


def _records(*tensors: Tensor) -> bool:
    """True when autograd will record an op on ``tensors``."""
    return torch.is_grad_enabled() and any(t.requires_grad for t in tensors)


def _rows(t: Tensor) -> Tensor:
    return t.reshape(-1, t.shape[-1])  # [N, C]


class RMSNormFunction(torch.autograd.Function):
    """``y = w * bf16(x * rsqrt(mean(x^2) + eps))`` saving ``x`` and ``r`` (module docstring)."""

    @staticmethod
    def forward(ctx: FunctionCtx, x: Tensor, weight: Tensor, eps: float) -> Tensor:
        xf = x.to(torch.float32)  # [..., H]
        rstd = torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)  # [..., 1]
        ctx.save_for_backward(x, weight, rstd)
        return weight * (xf * rstd).to(x.dtype)  # [..., H]

    @staticmethod
    def backward(ctx: FunctionCtx, dy: Tensor) -> tuple[Tensor | None, Tensor | None, None]:
        x, weight, rstd = ctx.saved_tensors  # type: ignore[attr-defined]
        xh = x.to(torch.float32) * rstd  # [..., H]
        dx = dw = None
        if ctx.needs_input_grad[0]:  # type: ignore[attr-defined]
            g = (dy * weight).to(torch.float32)  # [..., H] as transformers: bf16 product, upcast
            dx = (rstd * (g - xh * (g * xh).mean(-1, keepdim=True))).to(x.dtype)  # [..., H]
        if ctx.needs_input_grad[1]:  # type: ignore[attr-defined]
            prod = dy.to(torch.float32) * xh.to(x.dtype)  # [..., H]
            dw = _rows(prod).sum(0).to(weight.dtype)  # [H]
        return dx, dw, None


class NativeRMSNormFunction(torch.autograd.Function):
    """:class:`RMSNormFunction`'s formulas and roundings in two C++ kernels
    (``groupwise.kernels.native``: ``rms_norm_forward``, ``rms_norm_backward``), for ``x`` and
    ``weight`` of one dtype; saves ``x`` and ``r`` as well."""

    @staticmethod
    def forward(ctx: FunctionCtx, x: Tensor, weight: Tensor, eps: float, ops: Any) -> Tensor:
        y, rstd = ops.rms_norm_forward(_rows(x).contiguous(), weight.contiguous(), eps)
        ctx.save_for_backward(x, weight, rstd)
        ctx.ops = ops  # type: ignore[attr-defined]
        return y.view(x.shape)

    @staticmethod
    def backward(ctx: FunctionCtx, dy: Tensor) -> tuple[Tensor | None, Tensor | None, None, None]:
        x, weight, rstd = ctx.saved_tensors  # type: ignore[attr-defined]
        need = ctx.needs_input_grad  # type: ignore[attr-defined]
        rows = (_rows(dy).contiguous(), _rows(x).contiguous(), weight.contiguous(), rstd)
        dx, dw = ctx.ops.rms_norm_backward(*rows)  # type: ignore[attr-defined]
        return (dx.view(x.shape) if need[0] else None), (dw if need[1] else None), None, None


class SwiGLUFunction(torch.autograd.Function):
    """``o = (silu(x Wg^T) * (x Wu^T)) Wd^T`` saving ``x``, ``a``, ``b`` (module docstring).

    ``x`` and the three weights share one dtype, the compute dtype (:func:`_mlp_forward` sends
    anything else, e.g. float32 weights under bf16 autocast, to :class:`SiluMulFunction`, so that
    autocast's cast cache keeps serving one bf16 copy of each weight per forward).
    """

    @staticmethod
    def forward(ctx: FunctionCtx, x: Tensor, wg: Tensor, wu: Tensor, wd: Tensor) -> Tensor:
        with torch.autocast(x.device.type, enabled=False):
            a = F.linear(x, wg)  # [..., I]
            b = F.linear(x, wu)  # [..., I]
            out = F.linear(F.silu(a) * b, wd)  # [..., H]
        ctx.save_for_backward(x, wg, wu, wd, a, b)
        return out

    @staticmethod
    def backward(ctx: FunctionCtx, do: Tensor) -> tuple[Tensor | None, ...]:
        xc, wgc, wuc, wdc, a, b = ctx.saved_tensors  # type: ignore[attr-defined]
        need = ctx.needs_input_grad  # type: ignore[attr-defined]
        do2 = _rows(do.to(wdc.dtype))  # [N, H]
        act = F.silu(_rows(a))  # [N, I] bitwise the forward's
        dwd = None
        if need[3]:
            dwd = do2.t() @ (act * _rows(b))  # [H, I]
        dh = do2 @ wdc  # [N, I]
        da, db = _silu_mul_grads(dh, _rows(a), _rows(b), act)  # [N, I] each
        del dh, act
        dx = dwg = dwu = None
        if need[0]:
            dx = (da @ wgc + db @ wuc).view(xc.shape)  # [..., H]
        x2 = _rows(xc)  # [N, H]
        if need[1]:
            dwg = da.t() @ x2  # [I, H]
        if need[2]:
            dwu = db.t() @ x2  # [I, H]
        return dx, dwg, dwu, dwd


def _silu_mul_grads(dh: Tensor, a: Tensor, b: Tensor, act: Tensor) -> tuple[Tensor, Tensor]:
    """Gradients of ``h = silu(a) * b`` given ``dh`` and ``act = silu(a)``, with the ops (and
    dtypes) autograd uses for transformers' MLP: ``db = dh silu(a)``,
    ``da = silu'(a) (dh b)`` (aten's fused ``silu_backward``, float32 inside)."""
    db = dh * act  # [..., I]
    da = torch.ops.aten.silu_backward(dh * b, a)  # [..., I]
    return da, db


class SiluMulFunction(torch.autograd.Function):
    """``h = silu(a) * b`` saving ``a`` and ``b`` only (not ``silu(a)``)."""

    @staticmethod
    def forward(ctx: FunctionCtx, a: Tensor, b: Tensor) -> Tensor:
        ctx.save_for_backward(a, b)
        return F.silu(a) * b  # [..., I]

    @staticmethod
    def backward(ctx: FunctionCtx, dh: Tensor) -> tuple[Tensor, Tensor]:
        a, b = ctx.saved_tensors  # type: ignore[attr-defined]
        return _silu_mul_grads(dh, a, b, F.silu(a))


class SoftmaxFunction(torch.autograd.Function):
    """``p = softmax(float(z)).to(dtype)`` saving the ``dtype`` probabilities only."""

    @staticmethod
    def forward(ctx: FunctionCtx, z: Tensor, dtype: torch.dtype) -> Tensor:
        p = torch.softmax(z, dim=-1, dtype=torch.float32).to(dtype)  # [..., L]
        ctx.save_for_backward(p)
        ctx.z_dtype = z.dtype  # type: ignore[attr-defined]
        return p

    @staticmethod
    def backward(ctx: FunctionCtx, dp: Tensor) -> tuple[Tensor, None]:
        (p,) = ctx.saved_tensors  # type: ignore[attr-defined]
        dz = torch._softmax_backward_data(dp.float(), p.float(), -1, torch.float32)  # [..., L]
        return dz.to(ctx.z_dtype), None  # type: ignore[attr-defined]


def softmax_probs(scores: Tensor, dtype: torch.dtype) -> Tensor:
    """``softmax(float(scores)).to(dtype)``; under autograd, through :class:`SoftmaxFunction`
    when ``dtype`` is narrower than float32 (saves the narrow probabilities only)."""
    if dtype != torch.float32 and _records(scores):
        out: Tensor = SoftmaxFunction.apply(scores, dtype)
        return out
    return torch.softmax(scores, dim=-1, dtype=torch.float32).to(dtype)


def _native_ops(module: nn.Module, *tensors: Tensor) -> Any:
    """The C++ kernels where ``module`` was routed to them and ``tensors`` are bf16 on CPU,
    else None."""
    if not getattr(module, NATIVE_FLAG, False):
        return None
    if any(t.dtype != torch.bfloat16 or t.device.type != "cpu" for t in tensors):
        return None
    return native.load()


def _norm_forward(self: Any, hidden_states: Tensor) -> Tensor:
    if _records(hidden_states, self.weight):
        ops = _native_ops(self, hidden_states, self.weight)
        if ops is not None:
            y: Tensor = NativeRMSNormFunction.apply(
                hidden_states, self.weight, self.variance_epsilon, ops
            )
            return y
        out: Tensor = RMSNormFunction.apply(hidden_states, self.weight, self.variance_epsilon)
        return out
    return type(self).forward(self, hidden_states)


def _plain_linear(module: Any) -> bool:
    """A bias-free ``nn.Linear`` (not a peft/quantised wrapper) without hooks of its own."""
    return (
        type(module) is nn.Linear
        and module.bias is None
        and not module._forward_hooks
        and not module._forward_pre_hooks
    )


def _mlp_forward(self: Any, x: Tensor) -> Tensor:
    if not torch.is_grad_enabled():
        return type(self).forward(self, x)
    projections = (self.gate_proj, self.up_proj, self.down_proj)
    autocast = torch.is_autocast_enabled(x.device.type)
    dtype = torch.get_autocast_dtype(x.device.type) if autocast else x.dtype
    if all(_plain_linear(p) and p.weight.dtype == dtype for p in projections) and (
        x.dtype == dtype
    ):
        out: Tensor = SwiGLUFunction.apply(x, *(p.weight for p in projections))
        return out
    h: Tensor = SiluMulFunction.apply(self.gate_proj(x), self.up_proj(x))
    return self.down_proj(h)


def install_fused_kernels(model: nn.Module, native_kernels: bool = False) -> dict[str, int]:
    """Route the training forward of ``model``'s supported RMSNorm and MLP modules through the
    fused functions (idempotent); returns how many of each were routed. ``native_kernels``: the
    RMSNorms' forward and backward in bf16 on CPU through the C++ kernels of
    ``groupwise.kernels.native`` (where those are built; torch's operations otherwise)."""
    counts = {"norm": 0, "mlp": 0}
    for module in model.modules():
        name = type(module).__name__
        if name in FUSED_NORMS and hasattr(module, "variance_epsilon"):
            module.forward = types.MethodType(_norm_forward, module)
            counts["norm"] += 1
            setattr(module, NATIVE_FLAG, native_kernels)
        elif name in FUSED_MLPS and _is_swiglu(module):
            module.forward = types.MethodType(_mlp_forward, module)
            counts["mlp"] += 1
    return counts


def _is_swiglu(module: nn.Module) -> bool:
    act: Any = getattr(module, "act_fn", None)
    parts = ("gate_proj", "up_proj", "down_proj")
    return type(act).__name__ in _SILU and all(hasattr(module, p) for p in parts)
