import math

import pytest
import torch

from groupwise.core import chunked_token_logp, entropy_from_logits, naive_token_logp

N, H, V = 37, 16, 48


def _inputs(
    dtype: torch.dtype = torch.float32, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(N, H, generator=g).to(dtype)
    weight = torch.randn(V, H, generator=g).to(dtype)
    targets = torch.randint(0, V, (N,), generator=g)
    upstream = torch.randn(N, generator=g)  # d loss / d logp
    return hidden, weight, targets, upstream


def _grads(
    fn: str, hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, up: torch.Tensor,
    **kw: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:  # fmt: skip
    h = hidden.clone().requires_grad_(True)
    w = weight.clone().requires_grad_(True)
    if fn == "chunked":
        logp, ent = chunked_token_logp(h, w, targets, **kw)
    else:
        logp, ent = naive_token_logp(h, w, targets, **kw)
    (logp * up).sum().backward()
    assert h.grad is not None and w.grad is not None and ent is not None
    return logp.detach(), ent, h.grad, w.grad


def test_entropy_from_logits_hand_values() -> None:
    # uniform over 2 -> ln 2; p = [1/4, 3/4] -> -(.25 ln .25 + .75 ln .75) = 0.5623351446188083
    logits = torch.tensor([[0.0, 0.0], [0.0, math.log(3.0)]])
    torch.testing.assert_close(
        entropy_from_logits(logits), torch.tensor([math.log(2.0), 0.5623351446188083])
    )


def test_tiny_hand_case() -> None:
    # h = [1, 0], W rows [1,0], [0,0] -> logits [1, 0]; T=2 -> [0.5, 0]
    # logp(target 0) = 0.5 - ln(e^0.5 + 1) = -0.47407698418010663
    h = torch.tensor([[1.0, 0.0]])
    w = torch.tensor([[1.0, 0.0], [0.0, 0.0]])
    logp, _ = chunked_token_logp(h, w, torch.tensor([0]), temperature=2.0)
    assert logp.item() == pytest.approx(-0.47407698418010663, abs=1e-7)


@pytest.mark.parametrize("chunk_size", [1, 8, 10, 37, 1024])
@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_chunked_matches_naive_float32(chunk_size: int, temperature: float) -> None:
    hidden, weight, targets, up = _inputs()
    lp_c, ent_c, gh_c, gw_c = _grads(
        "chunked", hidden, weight, targets, up, temperature=temperature, chunk_size=chunk_size
    )
    lp_n, ent_n, gh_n, gw_n = _grads("naive", hidden, weight, targets, up, temperature=temperature)
    for got, want in ((lp_c, lp_n), (ent_c, ent_n), (gh_c, gh_n), (gw_c, gw_n)):
        torch.testing.assert_close(got, want, rtol=0.0, atol=1e-5)
    assert lp_c.dtype == ent_c.dtype == torch.float32


@pytest.mark.parametrize("chunk_size", [10, 1024])  # several chunks; one (no fp32 accumulator)
@pytest.mark.parametrize("weight_dtype", [torch.bfloat16, torch.float32])
def test_bf16_hidden_matches_naive_bf16(weight_dtype: torch.dtype, chunk_size: int) -> None:
    hidden, weight, targets, up = _inputs(torch.bfloat16)
    weight = weight.to(weight_dtype)
    lp_c, ent_c, gh_c, gw_c = _grads("chunked", hidden, weight, targets, up, chunk_size=chunk_size)
    lp_n, ent_n, gh_n, gw_n = _grads("naive", hidden, weight, targets, up)
    assert lp_c.dtype == torch.float32
    assert gh_c.dtype == torch.bfloat16 and gw_c.dtype == weight_dtype
    torch.testing.assert_close(lp_c, lp_n, rtol=1e-3, atol=1e-3)
    torch.testing.assert_close(ent_c, ent_n, rtol=1e-3, atol=1e-3)
    torch.testing.assert_close(gh_c.float(), gh_n.float(), rtol=2e-2, atol=2e-2)
    torch.testing.assert_close(gw_c.float(), gw_n.float(), rtol=2e-2, atol=2e-2)


def test_tied_weight_accumulates() -> None:
    # weight is both the embedding and the LM head: its grad gets both contributions
    _, weight0, targets, up = _inputs()
    ids = torch.randint(0, V, (N,), generator=torch.Generator().manual_seed(3))
    grads = []
    for fn in (chunked_token_logp, naive_token_logp):
        weight = weight0.clone().requires_grad_(True)
        hidden = torch.tanh(weight[ids] * 0.5)  # [N, H], depends on weight
        logp = fn(hidden, weight, targets)[0]
        ((logp * up).sum() + weight.square().sum()).backward()
        assert weight.grad is not None
        grads.append(weight.grad)
    torch.testing.assert_close(grads[0], grads[1], rtol=0, atol=1e-5)


def test_partial_requires_grad_and_no_entropy() -> None:
    hidden, weight, targets, up = _inputs()
    h = hidden.clone().requires_grad_(True)
    logp, ent = chunked_token_logp(h, weight, targets, chunk_size=8, compute_entropy=False)
    assert ent is None
    (logp * up).sum().backward()
    assert h.grad is not None and weight.grad is None
    w = weight.clone().requires_grad_(True)
    logp, ent = chunked_token_logp(hidden, w, targets, chunk_size=8)
    assert ent is not None and not ent.requires_grad
    (logp * up).sum().backward()
    assert w.grad is not None and hidden.grad is None
    _, _, gh_n, gw_n = _grads("naive", hidden, weight, targets, up)
    torch.testing.assert_close(h.grad, gh_n, rtol=0, atol=1e-5)
    torch.testing.assert_close(w.grad, gw_n, rtol=0, atol=1e-5)
    # no grad anywhere: plain values
    logp, _ = chunked_token_logp(hidden, weight, targets)
    assert not logp.requires_grad


def test_forward_saves_no_full_logits() -> None:
    hidden, weight, targets, up = _inputs()

    def saved_numels(fn: str) -> list[int]:
        numels: list[int] = []

        def pack(t: torch.Tensor) -> torch.Tensor:
            numels.append(t.numel())
            return t

        h = hidden.clone().requires_grad_(True)
        w = weight.clone().requires_grad_(True)
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            if fn == "chunked":
                logp = chunked_token_logp(h, w, targets, chunk_size=8)[0]
            else:
                logp = naive_token_logp(h, w, targets)[0]
        (logp * up).sum().backward()
        return numels

    chunked = saved_numels("chunked")
    assert chunked and max(chunked) < N * V
    assert max(saved_numels("naive")) >= N * V  # sanity: the hook does see [N, V] tensors


def test_empty_and_validation() -> None:
    h = torch.zeros(0, H, requires_grad=True)
    logp, ent = chunked_token_logp(h, torch.randn(V, H), torch.zeros(0, dtype=torch.long))
    assert logp.shape == (0,) and ent is not None and ent.shape == (0,)
    logp.sum().backward()
    hidden, weight, targets, _ = _inputs()
    with pytest.raises(ValueError, match="chunk_size"):
        chunked_token_logp(hidden, weight, targets, chunk_size=0)
    with pytest.raises(ValueError, match="temperature"):
        chunked_token_logp(hidden, weight, targets, temperature=0.0)
    with pytest.raises(ValueError, match="targets"):
        chunked_token_logp(hidden, weight, targets.int())
    with pytest.raises(ValueError, match="weight"):
        chunked_token_logp(hidden, weight[:, :3], targets)


def test_entropy_ignores_banned_tokens() -> None:
    # a -inf logit (EOS banned by min_new_tokens) has p = 0 and adds 0, not NaN
    logits = torch.tensor([[0.0, 0.0, float("-inf")]])
    torch.testing.assert_close(entropy_from_logits(logits), torch.tensor([math.log(2.0)]))


@pytest.mark.parametrize("chunk_size", [10, 1024])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_float32_rows_split_changes_nothing(
    monkeypatch: pytest.MonkeyPatch, chunk_size: int, dtype: torch.dtype
) -> None:
    """The float32 temporaries taken FLOAT_ROWS rows at a time (here 4, with a partial last
    block in every chunk) give bitwise the values of one block per chunk, and match naive."""
    from groupwise.core import logprobs

    hidden, weight, targets, up = _inputs(dtype)
    kw = {"temperature": 0.7, "chunk_size": chunk_size}
    whole = _grads("chunked", hidden, weight, targets, up, **kw)
    monkeypatch.setattr(logprobs, "FLOAT_ROWS", 4)
    split = _grads("chunked", hidden, weight, targets, up, **kw)
    for got, want in zip(split, whole, strict=True):
        assert torch.equal(got, want)
    if dtype == torch.float32:
        naive = _grads("naive", hidden, weight, targets, up, temperature=0.7)
        for got, want in zip(split, naive, strict=True):
            torch.testing.assert_close(got, want, rtol=0.0, atol=1e-5)


# ---------------------------------------------------------------------------- entropy gradient


def _entropy_grads(
    fn: str, hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
    up_logp: torch.Tensor, up_ent: torch.Tensor, **kw: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:  # fmt: skip
    """(entropy, d/dh, d/dW) of sum(up_logp * logp) + sum(up_ent * H)."""
    h = hidden.clone().requires_grad_(True)
    w = weight.clone().requires_grad_(True)
    if fn == "chunked":
        logp, ent = chunked_token_logp(h, w, targets, entropy_grad=True, **kw)
    else:
        logp, ent = naive_token_logp(h, w, targets, entropy_grad=True, **kw)
    assert ent is not None and ent.requires_grad
    ((logp * up_logp).sum() + (ent * up_ent).sum()).backward()
    assert h.grad is not None and w.grad is not None
    return ent.detach(), h.grad, w.grad


@pytest.mark.parametrize("chunk_size", [1, 8, 37, 1024])
@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_entropy_gradient_matches_naive_float32(chunk_size: int, temperature: float) -> None:
    hidden, weight, targets, up = _inputs()
    up_ent = torch.randn(N, generator=torch.Generator().manual_seed(5))
    kw = {"temperature": temperature}
    got = _entropy_grads(
        "chunked", hidden, weight, targets, up, up_ent, chunk_size=chunk_size, **kw
    )
    want = _entropy_grads("naive", hidden, weight, targets, up, up_ent, **kw)
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w, rtol=0.0, atol=2e-5)
    # the entropy's own part is large enough here for a wrong dH/dz to show
    _, gh_logp_only, _ = _entropy_grads("naive", hidden, weight, targets, up, 0 * up_ent, **kw)
    assert (want[1] - gh_logp_only).abs().max() > 1e-2


@pytest.mark.parametrize("chunk_size", [10, 1024])
@pytest.mark.parametrize("weight_dtype", [torch.bfloat16, torch.float32])
def test_entropy_gradient_matches_naive_bf16(weight_dtype: torch.dtype, chunk_size: int) -> None:
    hidden, weight, targets, up = _inputs(torch.bfloat16)
    weight = weight.to(weight_dtype)
    up_ent = torch.randn(N, generator=torch.Generator().manual_seed(5))
    kw = {"temperature": 0.7}
    ent_c, gh_c, gw_c = _entropy_grads(
        "chunked", hidden, weight, targets, up, up_ent, chunk_size=chunk_size, **kw
    )
    ent_n, gh_n, gw_n = _entropy_grads("naive", hidden, weight, targets, up, up_ent, **kw)
    assert gh_c.dtype == torch.bfloat16 and gw_c.dtype == weight_dtype
    torch.testing.assert_close(ent_c, ent_n, rtol=1e-3, atol=1e-3)
    torch.testing.assert_close(gh_c.float(), gh_n.float(), rtol=2e-2, atol=3e-2)
    torch.testing.assert_close(gw_c.float(), gw_n.float(), rtol=2e-2, atol=3e-2)


@pytest.mark.parametrize("chunk_size", [8, 1024])
def test_unused_or_zero_entropy_gradient_leaves_the_logp_gradient_bitwise(chunk_size: int) -> None:
    hidden, weight, targets, up = _inputs()
    kw = {"temperature": 0.7, "chunk_size": chunk_size}
    _, _, gh, gw = _grads("chunked", hidden, weight, targets, up, **kw)
    for scale in (None, 0.0):  # entropy not in the loss; in it with a zero coefficient
        h = hidden.clone().requires_grad_(True)
        w = weight.clone().requires_grad_(True)
        logp, ent = chunked_token_logp(h, w, targets, entropy_grad=True, **kw)
        assert ent is not None
        loss = (logp * up).sum() + (0.0 if scale is None else scale * ent.sum())
        loss.backward()
        assert torch.equal(h.grad, gh) and torch.equal(w.grad, gw)


def test_entropy_gradient_saves_no_full_logits_and_needs_the_entropy() -> None:
    hidden, weight, targets, _ = _inputs()
    numels: list[int] = []

    def pack(t: torch.Tensor) -> torch.Tensor:
        numels.append(t.numel())
        return t

    h = hidden.clone().requires_grad_(True)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        logp, ent = chunked_token_logp(h, weight, targets, chunk_size=8, entropy_grad=True)
    assert ent is not None
    (logp.sum() + ent.sum()).backward()
    assert numels and max(numels) < N * V
    with pytest.raises(ValueError, match="compute_entropy"):
        chunked_token_logp(hidden, weight, targets, compute_entropy=False, entropy_grad=True)
