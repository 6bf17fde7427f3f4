"""groupwise's C++ decode kernels against the torch operations they replace (their twins)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from groupwise.kernels import native
from groupwise.kernels.packed_decode import _rope, _signed_sin
from groupwise.models import plan as run_plan

pytestmark = pytest.mark.skipif(
    native.buildable() is not None, reason=f"native kernels: {native.buildable()}"
)
ops = native.load() if native.buildable() is None else None
BF16 = torch.bfloat16
# SmolLM2-135M's decode shapes (32 rows, 9 heads over 3 KV heads of 64) and a small odd one
SHAPES = [(32, 9, 3, 64, 576, 1536), (5, 4, 2, 16, 48, 40)]


def _exact(dtype: torch.dtype) -> dict[str, float]:
    """bf16: bitwise; float32: within the order of float32 sums."""
    return {"atol": 0, "rtol": 0} if dtype == BF16 else {"atol": 2e-6, "rtol": 2e-6}


def _rms(x: torch.Tensor, w: torch.Tensor, eps: float) -> torch.Tensor:
    xf = x.to(torch.float32, copy=True)
    scale = xf.pow(2).mean(-1, keepdim=True).add_(eps).rsqrt_()
    return xf.mul_(scale).to(x.dtype).mul_(w)


@pytest.mark.parametrize("dtype", [BF16, torch.float32])
@pytest.mark.parametrize(("rows", "heads", "kv", "d", "hidden", "ffn"), SHAPES)
def test_rms_norm_and_silu_mul_equal_torch(
    dtype: torch.dtype, rows: int, heads: int, kv: int, d: int, hidden: int, ffn: int
) -> None:
    g = torch.Generator().manual_seed(0)
    x = (torch.randn(rows, hidden, generator=g) * 3).to(dtype)
    w = torch.randn(hidden, generator=g).to(dtype)
    torch.testing.assert_close(ops.rms_norm(x, w, 1e-5), _rms(x, w, 1e-5), **_exact(dtype))
    gate_up = (torch.randn(rows, 2 * ffn, generator=g) * 4).to(dtype)
    gate, up = gate_up.chunk(2, dim=-1)
    want = F.silu(gate.clone()).mul_(up)
    torch.testing.assert_close(ops.silu_mul(gate_up), want, **_exact(dtype))


def _cache(rows: int, kv: int, d: int, cap: int, dtype: torch.dtype, seed: int):
    g = torch.Generator().manual_seed(seed)
    keys = torch.randn(rows, kv, d, cap, generator=g).to(dtype)  # [R, H_kv, D, cap]
    values = torch.randn(rows, kv, cap, d, generator=g).to(dtype)  # [R, H_kv, cap, D]
    return keys, values


@pytest.mark.parametrize("dtype", [BF16, torch.float32])
@pytest.mark.parametrize(("rows", "heads", "kv", "d", "hidden", "ffn"), SHAPES)
def test_rope_cache_writes_what_torch_writes(
    dtype: torch.dtype, rows: int, heads: int, kv: int, d: int, hidden: int, ffn: int
) -> None:
    g = torch.Generator().manual_seed(1)
    qkv = torch.randn(rows, (heads + 2 * kv) * d, generator=g).to(dtype)
    cos = torch.randn(rows, 1, d, generator=g).to(dtype)
    sin = _signed_sin(torch.randn(rows, 1, d, generator=g).to(dtype))
    keys, values = _cache(rows, kv, d, 20, dtype, 2)
    want_k, want_v = keys.clone(), values.clone()
    slot = 13
    qk = _rope(qkv[:, : (heads + kv) * d].view(rows, heads + kv, d), cos, sin)
    want_k[..., slot] = qk[:, heads:]
    want_v[:, :, slot] = qkv[:, (heads + kv) * d :].view(rows, kv, d)
    q = ops.rope_cache(qkv, cos, sin, keys, values, slot, heads, kv)
    torch.testing.assert_close(q, qk[:, :heads], **_exact(dtype))
    torch.testing.assert_close(keys, want_k, **_exact(dtype))
    assert torch.equal(values, want_v)  # a copy


@pytest.mark.parametrize("dtype", [BF16, torch.float32])
@pytest.mark.parametrize(("rows", "heads", "kv", "d", "hidden", "ffn"), SHAPES)
@pytest.mark.parametrize("n", [1, 17, 64, 95])
def test_attention_equals_the_packed_step_attention(
    dtype: torch.dtype, rows: int, heads: int, kv: int, d: int, hidden: int, ffn: int, n: int
) -> None:
    """Scores rounded to the dtype, scaled, masked (left padding: -inf), softmax in float32;
    n below, at and above one block of 64 keys."""
    cap = 100
    keys, values = _cache(rows, kv, d, cap, dtype, 3)
    q = torch.randn(rows, heads, d, generator=torch.Generator().manual_seed(4)).to(dtype)
    mask = torch.zeros(rows, cap, dtype=dtype)
    mask[0, : min(n - 1, 7)] = float("-inf")  # row 0 left-padded (its last key stays visible)
    scale = d**-0.5
    grouped = q.view(rows, kv, heads // kv, d)
    scores = torch.matmul(grouped, keys[..., :n]).mul_(scale)
    scores.add_(mask[:, None, None, :n])
    probs = torch.softmax(scores, dim=-1, dtype=torch.float32).to(dtype)
    want = torch.matmul(probs, values[:, :, :n]).reshape(rows, heads * d)
    got = ops.attention(q, keys, values, mask, n, scale)
    # bf16: one rounding step of the output where float32 sums in another order land on the
    # other side of a bf16 rounding boundary; float32 within its sums' rounding
    tol = {"atol": 1e-2, "rtol": 8e-3} if dtype == BF16 else {"atol": 1e-5, "rtol": 1e-5}
    torch.testing.assert_close(got, want, **tol)
    if dtype == BF16:
        assert (got != want).float().mean() < 0.01  # all but a rare element bitwise


def test_bad_input_names_the_argument() -> None:
    x = torch.randn(4, 8, dtype=BF16)
    with pytest.raises(RuntimeError, match="weight"):
        ops.rms_norm(x, torch.randn(7, dtype=BF16), 1e-5)
    with pytest.raises(RuntimeError, match="contiguous"):
        ops.rms_norm(x.t(), torch.randn(4, dtype=BF16), 1e-5)


def test_the_plan_uses_them_where_they_build(monkeypatch: pytest.MonkeyPatch) -> None:
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert run_plan.decide_native_kernels("auto", cpu, bf16=True)
    assert not run_plan.decide_native_kernels("auto", cpu, bf16=False)  # float32 decoding
    assert not run_plan.decide_native_kernels("auto", cuda, bf16=True)
    assert not run_plan.decide_native_kernels(False, cpu, bf16=True)
    monkeypatch.setattr(native, "capability", lambda: "AVX2")
    assert native.buildable() == "the CPU capability is AVX2, the kernels need AVX512"
    assert not run_plan.decide_native_kernels("auto", cpu, bf16=True)


def _torch_draw(logits: torch.Tensor, temperature: float, uniform: torch.Tensor):
    from groupwise.rollout.sampling import sample_token

    return sample_token(logits, temperature=temperature, uniform=uniform, logp=True)


@pytest.mark.parametrize("dtype", [BF16, torch.float32])
@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_sample_draws_what_the_torch_sampler_draws(dtype: torch.dtype, temperature: float) -> None:
    """Tokens, entropies and log-probs against sampling.sample_token on a vocabulary of
    SmolLM2's size; a draw may only differ where its target lies within float32 rounding of a
    token's boundary (none here)."""
    from groupwise.rollout.sampling import sample_token

    g = torch.Generator().manual_seed(5)
    logits = (torch.randn(64, 49152, generator=g) * 4).to(dtype)
    logits[:, 7] = float("-inf")  # a masked token (EOS under min_new_tokens)
    uniform = torch.rand(64, generator=g)
    want = _torch_draw(logits, temperature, uniform)
    got = sample_token(logits, temperature=temperature, uniform=uniform, logp=True, kernels=ops)
    assert torch.equal(got.token, want.token)
    torch.testing.assert_close(got.entropy, want.entropy, atol=2e-5, rtol=1e-5)
    torch.testing.assert_close(got.logp, want.logp, atol=2e-5, rtol=1e-5)


def test_sample_follows_the_distribution() -> None:
    """Over 20,000 evenly spaced draws, each token's share is its probability (to 1/20,000 of
    the inverse CDF's resolution); a -inf token is never drawn; a draw at the very top end
    lands on a token with probability."""
    logits = torch.tensor([[0.0, 1.0, float("-inf"), 2.0, -1.0]]).repeat(20000, 1)
    uniform = (torch.arange(20000, dtype=torch.float32) + 0.5) / 20000
    token, entropy, logp = ops.sample(logits.contiguous(), 1.0, uniform)
    p = torch.softmax(logits[0], dim=-1)
    share = torch.bincount(token, minlength=5).float() / 20000
    torch.testing.assert_close(share, p, atol=1e-4, rtol=0)
    want_h = -(p[p > 0] * p[p > 0].log()).sum()
    torch.testing.assert_close(entropy, want_h.expand(20000), atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(logp, p.log()[token], atol=1e-6, rtol=1e-6)
    for u in (0.99999994, 1.0):  # the largest float32 below 1, and past the end
        top = ops.sample(logits[:1].contiguous(), 1.0, torch.tensor([u]))[0]
        assert p[int(top)] > 0  # never the -inf token


def test_ninja_comes_from_the_package_when_not_on_path(monkeypatch: pytest.MonkeyPatch) -> None:
    """The ``ninja`` dependency's executable is used where PATH has none (a venv's python run
    without activating the venv)."""
    import shutil

    ninja = pytest.importorskip("ninja")
    real = shutil.which
    monkeypatch.setattr(native.shutil, "which", lambda n: None if n == "ninja" else real(n))
    assert native._ninja_dir() == str(ninja.BIN_DIR)
    assert native.buildable() is None
