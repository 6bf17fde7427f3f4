"""groupwise's C++ training RMSNorm kernels against the torch function they replace
(groupwise.kernels.fused), kernel by kernel and through a routed model's gradients."""

from __future__ import annotations

import copy

import pytest
import torch

from groupwise.kernels import native
from groupwise.kernels.fused import NATIVE_FLAG, RMSNormFunction, install_fused_kernels

pytestmark = pytest.mark.skipif(
    native.buildable() is not None, reason=f"native kernels: {native.buildable()}"
)
ops = native.load() if native.buildable() is None else None
BF16 = torch.bfloat16
SHAPES = [(423, 576), (7, 40)]  # a B1 micro-batch of SmolLM2-135M, and a small odd one


def _close_bf16(got: torch.Tensor, want: torch.Tensor, share: float = 1e-3) -> None:
    """Within one bf16 step everywhere, and bitwise equal but for a ``share`` of elements
    (float32 values within rounding of a bf16 boundary)."""
    torch.testing.assert_close(got, want, atol=1e-30, rtol=2**-7)
    assert (got != want).float().mean() <= share


@pytest.mark.parametrize("dtype", [BF16, torch.float32])
@pytest.mark.parametrize(("rows", "width"), SHAPES)
def test_rms_norm_forward_and_backward_equal_the_torch_function(
    dtype: torch.dtype, rows: int, width: int
) -> None:
    g = torch.Generator().manual_seed(rows)
    x = (torch.randn(rows, width, generator=g) * 3).to(dtype)
    w = (1 + torch.randn(width, generator=g) * 0.1).to(dtype)
    dy = torch.randn(rows, width, generator=g).to(dtype)
    xr, wr = x.clone().requires_grad_(), w.clone().requires_grad_()
    want_y = RMSNormFunction.apply(xr, wr, 1e-5)
    want_y.backward(dy)
    y, rstd = ops.rms_norm_forward(x, w, 1e-5)
    dx, dw = ops.rms_norm_backward(dy, x, w, rstd)
    want_r = torch.rsqrt(x.float().pow(2).mean(-1) + 1e-5)
    torch.testing.assert_close(rstd, want_r, atol=0, rtol=2e-7)
    if dtype == BF16:
        _close_bf16(y, want_y.detach(), share=1e-4)
        _close_bf16(dx, xr.grad)
        _close_bf16(dw, wr.grad, share=0.05)  # a sum over the rows, rounded once
    else:
        for got, want in ((y, want_y.detach()), (dx, xr.grad), (dw, wr.grad)):
            torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_rms_norm_backward_by_hand() -> None:
    """One row x = (3, 4), w = (1, 2), eps = 0: r = 1 / sqrt(12.5), xh = x r; with dy = (1, 0):
    g = (1, 0), dx = r (g - xh mean(g xh)), dw = (xh_0, 0)."""
    x, w = torch.tensor([[3.0, 4.0]]), torch.tensor([1.0, 2.0])
    y, rstd = ops.rms_norm_forward(x, w, 0.0)
    r = 1 / 12.5**0.5
    torch.testing.assert_close(rstd, torch.tensor([r]))
    torch.testing.assert_close(y, torch.tensor([[3 * r, 8 * r]]))
    dx, dw = ops.rms_norm_backward(torch.tensor([[1.0, 0.0]]), x, w, rstd)
    xh = x[0] * r
    mean = (xh[0] * 1.0) / 2
    torch.testing.assert_close(dx, (r * (torch.tensor([1.0, 0.0]) - xh * mean))[None])
    torch.testing.assert_close(dw, torch.tensor([float(xh[0]), 0.0]))


def test_bad_input_names_the_argument() -> None:
    x = torch.randn(4, 8, dtype=BF16)
    with pytest.raises(RuntimeError, match="weight"):
        ops.rms_norm_forward(x, torch.randn(7, dtype=BF16), 1e-5)
    with pytest.raises(RuntimeError, match="share shape and dtype"):
        ops.rms_norm_backward(x.float(), x, torch.randn(8, dtype=BF16), torch.zeros(4))
    with pytest.raises(RuntimeError, match="rstd"):
        ops.rms_norm_backward(x, x, torch.randn(8, dtype=BF16), torch.zeros(3))


def _tiny_llama() -> torch.nn.Module:
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=300,
        hidden_size=64,
        intermediate_size=160,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
    )
    torch.manual_seed(0)
    return LlamaForCausalLM(config).to(BF16)


def test_a_routed_model_has_the_gradients_of_the_torch_functions() -> None:
    """A bf16 Llama routed through the fused functions with and without the C++ kernels: the
    same logits bitwise but for rare elements, and every weight gradient within bf16 rounding."""
    base = _tiny_llama()
    models = {on: copy.deepcopy(base) for on in (False, True)}
    for on, model in models.items():
        counts = install_fused_kernels(model, native_kernels=on)
        assert counts == {"norm": 5, "mlp": 2}
        norms = [m for m in model.modules() if hasattr(m, NATIVE_FLAG)]
        assert len(norms) == 5 and all(getattr(m, NATIVE_FLAG) == on for m in norms)
    ids = torch.randint(0, 300, (2, 19), generator=torch.Generator().manual_seed(1))
    coef = torch.randn(2, 19, 300, generator=torch.Generator().manual_seed(2)).to(BF16)
    out = {}
    for on, model in models.items():
        logits = model(input_ids=ids).logits
        (logits.float() * coef.float()).sum().backward()
        out[on] = (logits.detach(), {n: p.grad for n, p in model.named_parameters()})
    (logits_t, grads_t), (logits_n, grads_n) = out[False], out[True]
    torch.testing.assert_close(logits_n, logits_t, atol=0.05, rtol=2**-6)
    for name, want in grads_t.items():
        got = grads_n[name]
        assert got is not None and want is not None, name
        scale = float(want.float().abs().max())
        torch.testing.assert_close(got.float(), want.float(), atol=0.02 * scale, rtol=0.05)
