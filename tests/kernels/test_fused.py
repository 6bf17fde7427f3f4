"""groupwise.kernels.fused against transformers' modules run op by op under autograd."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import Tensor, nn
from transformers import LlamaConfig
from transformers.models.llama.modeling_llama import LlamaMLP, LlamaRMSNorm

from groupwise.kernels.fused import install_fused_kernels, softmax_probs
from groupwise.models import tiny_random_model

BF16_TOL = {"atol": 2e-2, "rtol": 2e-2}


def _grads(module: nn.Module, x: Tensor, dy: Tensor) -> tuple[Tensor, list[Tensor]]:
    """Output and gradients (input first, then parameters) of ``module`` for ``sum(y * dy)``."""
    x = x.detach().clone().requires_grad_(True)
    y = module(x)
    params = [p for p in module.parameters() if p.requires_grad]
    grads = torch.autograd.grad((y.to(dy.dtype) * dy).sum(), [x, *params])
    return y.detach(), list(grads)


def _pair(module: nn.Module) -> tuple[nn.Module, nn.Module]:
    fused = copy.deepcopy(module)
    holder = nn.Sequential(fused)
    counts = install_fused_kernels(holder)
    assert sum(counts.values()) == 1, counts
    return module, fused


def _config() -> LlamaConfig:
    return LlamaConfig(
        hidden_size=24, intermediate_size=40, hidden_act="silu", num_attention_heads=4
    )


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_rmsnorm_equals_transformers(dtype: torch.dtype) -> None:
    gen = torch.Generator().manual_seed(0)
    plain = LlamaRMSNorm(24, eps=1e-5).to(dtype)
    with torch.no_grad():
        plain.weight.copy_(1 + 0.3 * torch.randn(24, generator=gen))
    plain, fused = _pair(plain)
    x = (3 * torch.randn(2, 5, 24, generator=gen)).to(dtype)
    dy = torch.randn(2, 5, 24, generator=gen)
    y_ref, g_ref = _grads(plain, x, dy)
    y, g = _grads(fused, x, dy)
    assert torch.equal(y, y_ref)  # the same ops forward: bitwise
    tol = {"atol": 1e-5, "rtol": 1e-5} if dtype == torch.float32 else BF16_TOL
    for got, want in zip(g, g_ref, strict=True):
        torch.testing.assert_close(got, want, **tol)


def test_rmsnorm_gradient_matches_hand_derivation() -> None:
    """dx = r (g - xh mean(g xh)), dw = sum(dy xh), for one row worked out by hand."""
    x = torch.tensor([[1.0, -2.0, 3.0]])
    w = torch.tensor([0.5, 1.0, 2.0])
    dy = torch.tensor([[1.0, 0.0, -1.0]])
    norm = LlamaRMSNorm(3, eps=0.0)
    with torch.no_grad():
        norm.weight.copy_(w)
    _, fused = _pair(norm)
    _, (dx, dw) = _grads(fused, x, dy)
    r = (3 / 14) ** 0.5  # rsqrt(mean(1, 4, 9))
    xh = [r, -2 * r, 3 * r]
    g = [0.5, 0.0, -2.0]  # dy * w
    mean_gxh = (0.5 * r + 0.0 - 6.0 * r) / 3  # mean(g xh) = -11 r / 6
    want_dx = [r * (gi - xi * mean_gxh) for gi, xi in zip(g, xh, strict=True)]
    want_dw = [xh[0], 0.0, -xh[2]]  # dy * xh
    torch.testing.assert_close(dx, torch.tensor([want_dx]), atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(dw, torch.tensor(want_dw), atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_swiglu_mlp_equals_transformers(dtype: torch.dtype) -> None:
    torch.manual_seed(0)
    plain, fused = _pair(LlamaMLP(_config()).to(dtype))
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(3, 4, 24, generator=gen).to(dtype)
    dy = torch.randn(3, 4, 24, generator=gen)
    y_ref, g_ref = _grads(plain, x, dy)
    y, g = _grads(fused, x, dy)
    assert torch.equal(y, y_ref)
    tol = {"atol": 1e-5, "rtol": 1e-5} if dtype == torch.float32 else BF16_TOL
    assert len(g) == 4  # x, gate, up, down
    for got, want in zip(g, g_ref, strict=True):
        torch.testing.assert_close(got, want, **tol)


def test_float32_mlp_under_autocast_takes_silu_mul_and_equals_transformers() -> None:
    """float32 weights under bf16 autocast: the projections stay autocast's (its cast cache
    keeps one bf16 copy of each weight per forward) and only silu(a) * b is fused."""
    torch.manual_seed(0)
    plain, fused = _pair(LlamaMLP(_config()))
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(2, 6, 24, generator=gen)
    dy = torch.randn(2, 6, 24, generator=gen)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y_ref, g_ref = _grads(plain, x, dy)
        y, g = _grads(fused, x, dy)
        out = fused(x.clone().requires_grad_(True))
    names, seen, todo = set(), set(), [out.grad_fn]
    while todo:  # every node of the backward graph
        fn = todo.pop()
        if fn is not None and id(fn) not in seen:
            seen.add(id(fn))
            names.add(type(fn).__name__)
            todo.extend(f for f, _ in fn.next_functions)
    assert "SiluMulFunctionBackward" in names and "SwiGLUFunctionBackward" not in names, names
    assert y.dtype == torch.bfloat16 and torch.equal(y, y_ref)
    for got, want in zip(g, g_ref, strict=True):
        assert got.dtype == want.dtype == torch.float32
        torch.testing.assert_close(got, want, **BF16_TOL)


def test_mlp_with_wrapped_projections_uses_silu_mul() -> None:
    """A projection that is not a plain nn.Linear (here: one with a hook, like an adapter
    wrapper) keeps the module's own projections and fuses only silu(a) * b."""
    torch.manual_seed(0)
    plain = LlamaMLP(_config())
    plain.gate_proj.register_forward_hook(lambda m, i, o: o * 2)
    plain, fused = _pair(plain)
    x = torch.randn(2, 3, 24)
    dy = torch.randn(2, 3, 24)
    y_ref, g_ref = _grads(plain, x, dy)
    y, g = _grads(fused, x, dy)
    assert torch.equal(y, y_ref)
    for got, want in zip(g, g_ref, strict=True):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_softmax_saves_narrow_probabilities_and_matches_float32() -> None:
    gen = torch.Generator().manual_seed(3)
    z = (2 * torch.randn(2, 3, 7, generator=gen)).to(torch.bfloat16).requires_grad_(True)
    dp = torch.randn(2, 3, 7, generator=gen)
    p = softmax_probs(z, torch.bfloat16)
    assert type(p.grad_fn).__name__ == "SoftmaxFunctionBackward"
    saved = p.grad_fn.saved_tensors  # type: ignore[union-attr]
    assert [t.dtype for t in saved] == [torch.bfloat16]
    (dz,) = torch.autograd.grad((p.float() * dp).sum(), z)
    zf = z.detach().float().requires_grad_(True)
    pf = torch.softmax(zf, dim=-1)
    (dz_ref,) = torch.autograd.grad((pf * dp).sum(), zf)
    assert torch.equal(p, pf.detach().to(torch.bfloat16))
    torch.testing.assert_close(dz.float(), dz_ref, **BF16_TOL)
    # float32 probabilities have nothing narrower to save: the plain op
    q = softmax_probs(z.detach().float().requires_grad_(True), torch.float32)
    assert "SoftmaxFunction" not in type(q.grad_fn).__name__


def _saved_bytes(model: nn.Module, ids: Tensor) -> int:
    """Bytes of the distinct non-parameter tensors autograd saves for a forward of ``ids``."""
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    seen: dict[int, int] = {}

    def pack(t: Tensor) -> Tensor:
        ptr = t.untyped_storage().data_ptr()
        if ptr not in params:
            seen[ptr] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(input_ids=ids).logits.sum()
    return sum(seen.values())


def test_tiny_model_same_logits_same_gradients_less_saved_memory() -> None:
    model, _ = tiny_random_model(seed=0)
    model = model.to(torch.bfloat16)
    fused = copy.deepcopy(model)
    counts = install_fused_kernels(fused)
    assert counts == {"norm": 5, "mlp": 2}  # 2 per layer + the final norm; 1 MLP per layer
    ids = torch.randint(0, 1000, (2, 9), generator=torch.Generator().manual_seed(0))
    out_ref = model(input_ids=ids).logits
    out = fused(input_ids=ids).logits
    assert torch.equal(out, out_ref)
    out_ref.float().logsumexp(-1).sum().backward()
    out.float().logsumexp(-1).sum().backward()
    for (name, p), q in zip(model.named_parameters(), fused.parameters(), strict=True):
        assert p.grad is not None and q.grad is not None, name
        torch.testing.assert_close(q.grad, p.grad, **BF16_TOL, msg=name)
    assert _saved_bytes(fused, ids) < 0.8 * _saved_bytes(model, ids)


def test_no_grad_runs_the_modules_own_code() -> None:
    model, _ = tiny_random_model(seed=0)
    install_fused_kernels(model)
    ids = torch.randint(0, 1000, (1, 5), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        out = model(input_ids=ids).logits
    assert out.grad_fn is None
    x = torch.randn(1, 3, 64, requires_grad=True)
    norm = model.model.norm  # type: ignore[union-attr]
    assert type(norm(x).grad_fn).__name__ == "RMSNormFunctionBackward"
    with torch.no_grad():
        assert torch.equal(norm(x), type(norm).forward(norm, x))
