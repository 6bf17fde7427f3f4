"""CompensatedAdamW (pure bf16 training) against the AdamW formulas and float32 AdamW."""

from __future__ import annotations

import copy
import math
import shutil

import pytest
import torch

from groupwise.train.optim import (
    CompensatedAdamW,
    StochasticRoundingAdamW,
    build_optimizer,
    stochastic_round_bf16,
)


def test_one_step_matches_the_formula() -> None:
    # k = 1: m = (1-b1) g, v = (1-b2) g^2, m_hat = g, v_hat = g^2
    # u = -lr (g / (|g| + eps) + wd p) = -lr (sign(g) + wd p) for |g| >> eps
    p = torch.nn.Parameter(torch.tensor([1.0, -2.0, 0.5], dtype=torch.bfloat16))
    p.grad = torch.tensor([0.5, -0.25, 2.0], dtype=torch.bfloat16)
    lr, wd = 0.01, 0.1
    opt = CompensatedAdamW([p], lr=lr, betas=(0.9, 0.99), eps=1e-8, weight_decay=wd)
    opt.step()
    start = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)
    g = torch.tensor([0.5, -0.25, 2.0], dtype=torch.float64)
    want = start - lr * (g / (g.abs() + 1e-8) + wd * start)  # [0.989, -1.988, 0.4895]
    state = opt.state[p]
    got = p.double() + state["compensation"].double()  # the compensated weight p + c
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
    torch.testing.assert_close(state["exp_avg"].double(), 0.1 * g, atol=1e-4, rtol=1e-2)
    torch.testing.assert_close(state["exp_avg_sq"].double(), 0.01 * g * g, atol=0, rtol=1e-6)
    assert state["exp_avg"].dtype == torch.bfloat16
    assert state["exp_avg_sq"].dtype == torch.float32


def test_small_updates_accumulate_where_plain_bf16_loses_them() -> None:
    """lr 1e-4 against weights of ~1 (a bf16 ulp there is 2^-7): 200 steps of float32 AdamW
    move each weight ~0.02; plain bf16 AdamW rounds every update away, compensated tracks fp32."""
    g = torch.Generator().manual_seed(0)
    start = 1.0 + torch.rand(64, generator=g)  # [64]
    grads = [1.0 + 0.5 * torch.randn(64, generator=g) for _ in range(200)]  # a steady drift

    def run(dtype: torch.dtype, compensated: bool) -> torch.Tensor:
        p = torch.nn.Parameter(start.to(dtype, copy=True))
        opt: torch.optim.Optimizer
        if compensated:
            opt = CompensatedAdamW([p], lr=1e-4, betas=(0.9, 0.99))
        else:
            opt = torch.optim.AdamW([p], lr=1e-4, betas=(0.9, 0.99), weight_decay=0.0)
        for grad in grads:
            p.grad = grad.to(dtype)
            opt.step()
        if compensated:
            return p.detach().double() + opt.state[p]["compensation"].double()
        return p.detach().double()

    fp32 = run(torch.float32, False)
    moved = (fp32 - start.double()).abs()
    assert float(moved.mean()) > 5e-3  # the updates are real
    plain = run(torch.bfloat16, False)
    comp = run(torch.bfloat16, True)
    assert float((plain - start.to(torch.bfloat16).double()).abs().max()) == 0.0  # all lost
    start_bf16 = start.to(torch.bfloat16).double()  # where the bf16 runs begin
    err = ((comp - start_bf16) - (fp32 - start.double())).abs()  # displacement vs float32's
    assert float(err.max()) < 0.02 * float(moved.mean()), (float(err.max()), float(moved.mean()))


def test_large_tensors_go_through_in_chunks() -> None:
    g = torch.Generator().manual_seed(1)
    w = torch.randn(10, 7, generator=g).to(torch.bfloat16)
    grad = torch.randn(10, 7, generator=g).to(torch.bfloat16)
    results = []
    for chunk in (1 << 20, 3):
        p = torch.nn.Parameter(w.clone())
        opt = CompensatedAdamW([p], lr=1e-3, weight_decay=0.01, chunk_size=chunk)
        for _ in range(3):
            p.grad = grad.clone()
            opt.step()
        results.append((p.detach().clone(), opt.state[p]["compensation"].clone()))
    assert torch.equal(results[0][0], results[1][0])
    assert torch.equal(results[0][1], results[1][1])


def test_build_optimizer_picks_by_dtype() -> None:
    fp32 = torch.nn.Linear(2, 2)
    assert isinstance(
        build_optimizer(fp32.parameters(), lr=1e-3, betas=(0.9, 0.99), weight_decay=0),
        torch.optim.AdamW,
    )
    bf16 = torch.nn.Linear(2, 2).to(torch.bfloat16)
    opt = build_optimizer(bf16.parameters(), lr=1e-3, betas=(0.9, 0.99), weight_decay=0)
    assert isinstance(opt, CompensatedAdamW)
    mixed = [torch.nn.Parameter(torch.zeros(2)), torch.nn.Parameter(torch.zeros(2).bfloat16())]
    with pytest.raises(ValueError, match="mix dtypes"):
        build_optimizer(mixed, lr=1e-3, betas=(0.9, 0.99), weight_decay=0)


def test_state_dict_round_trip_continues_exactly() -> None:
    g = torch.Generator().manual_seed(2)
    grads = [torch.randn(5, generator=g).bfloat16() for _ in range(4)]
    p = torch.nn.Parameter(torch.ones(5, dtype=torch.bfloat16))
    opt = CompensatedAdamW([p], lr=1e-3)
    for grad in grads[:2]:
        p.grad = grad
        opt.step()
    saved_p, saved = p.detach().clone(), copy.deepcopy(opt.state_dict())
    for grad in grads[2:]:
        p.grad = grad
        opt.step()
    q = torch.nn.Parameter(saved_p)
    opt2 = CompensatedAdamW([q], lr=1e-3)
    opt2.load_state_dict(saved)
    for grad in grads[2:]:
        q.grad = grad
        opt2.step()
    assert torch.equal(p, q)
    assert math.isclose(float(opt2.state[q]["step"]), 4.0)
    for key in ("exp_avg", "exp_avg_sq", "compensation"):  # dtypes kept (torch would cast)
        assert opt2.state[q][key].dtype == opt.state[p][key].dtype, key
        assert torch.equal(opt2.state[q][key], opt.state[p][key]), key


# ---------------------------------------------------------------- stochastic rounding


def test_stochastic_round_hand_computed_neighbours() -> None:
    # 1 + 2^-9 lies a quarter of the way from 1 to the next bf16 value 1 + 2^-7 (ulp 2^-7):
    # bits(x) = 0x3F804000; low 16 bits 0x4000 = 16384, so noise >= 65536 - 16384 rounds up
    x = torch.full((4,), 1.0 + 2**-9)
    noise = torch.tensor([0, 49151, 49152, 65535], dtype=torch.int32)
    got = stochastic_round_bf16(x, noise)
    want = torch.tensor([1.0, 1.0, 1.0 + 2**-7, 1.0 + 2**-7], dtype=torch.bfloat16)
    assert torch.equal(got, want)
    neg = stochastic_round_bf16(-x, noise)  # the magnitude rounds the same way
    assert torch.equal(neg, -want)
    exact = torch.tensor([0.0, -2.5, 1.0 + 2**-7, float("inf")])  # already bf16: unchanged
    assert torch.equal(
        stochastic_round_bf16(exact, torch.full((4,), 65535, dtype=torch.int32)),
        exact.to(torch.bfloat16),
    )
    with pytest.raises(ValueError, match="float32 x and int32 noise"):
        stochastic_round_bf16(x.double(), noise)


def test_stochastic_round_is_unbiased() -> None:
    g = torch.Generator().manual_seed(3)
    x = 1.0 + torch.rand(200, generator=g) * 0.01  # [200] between bf16 grid points
    draws = torch.stack(
        [
            stochastic_round_bf16(
                x, torch.randint(0, 65536, (200,), dtype=torch.int32, generator=g)
            ).double()
            for _ in range(2000)
        ]
    )  # [2000, 200]
    ulp = 2.0**-7
    nearest = (x.to(torch.bfloat16).double() - x.double()).abs()
    assert float(nearest.max()) > 0.2 * ulp  # round-to-nearest would be biased here
    # mean of 2000 draws: standard error <= ulp / (2 sqrt(2000)) ~ 0.011 ulp
    assert float((draws.mean(dim=0) - x.double()).abs().max()) < 0.06 * ulp


def test_stochastic_adamw_one_step_matches_the_formula() -> None:
    p = torch.nn.Parameter(torch.tensor([1.0, -2.0, 0.5], dtype=torch.bfloat16))
    p.grad = torch.tensor([0.5, -0.25, 2.0], dtype=torch.bfloat16)
    lr, wd = 0.01, 0.1
    opt = StochasticRoundingAdamW([p], lr=lr, betas=(0.9, 0.99), weight_decay=wd)
    opt.step()
    start = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)
    g = torch.tensor([0.5, -0.25, 2.0], dtype=torch.float64)
    want = start - lr * (g / (g.abs() + 1e-8) + wd * start)  # [0.989, -1.988, 0.4895]
    ulp = torch.tensor([2**-7, 2**-7, 2**-9], dtype=torch.float64)  # bf16 spacing near want
    assert bool(((p.double() - want).abs() < ulp).all())  # one of the two neighbours
    state = opt.state[p]
    assert set(state) == {"step", "exp_avg", "exp_avg_sq"}  # no compensation buffer
    assert state["exp_avg_sq"].dtype == torch.bfloat16
    v_ulp = 0.01 * g * g * 2**-7  # bf16 spacing of v relative to its value
    assert bool(((state["exp_avg_sq"].double() - 0.01 * g * g).abs() <= v_ulp).all())


def test_stochastic_adamw_tracks_float32_where_plain_bf16_stalls() -> None:
    """The drift test above: lr 1e-4 against weights of ~1, 200 steps; averaged over the
    weights, the stochastically rounded run moves as far as float32's (each weight by +-1 ulp)."""
    g = torch.Generator().manual_seed(0)
    start = 1.0 + torch.rand(256, generator=g)  # [256]
    grads = [1.0 + 0.5 * torch.randn(256, generator=g) for _ in range(200)]

    def run(dtype: torch.dtype) -> torch.Tensor:
        p = torch.nn.Parameter(start.to(dtype, copy=True))
        opt: torch.optim.Optimizer
        if dtype == torch.bfloat16:
            opt = StochasticRoundingAdamW([p], lr=1e-4, betas=(0.9, 0.99), seed=5)
        else:
            opt = torch.optim.AdamW([p], lr=1e-4, betas=(0.9, 0.99), weight_decay=0.0)
        for grad in grads:
            p.grad = grad.to(dtype)
            opt.step()
        return p.detach().double()

    fp32_moved = run(torch.float32) - start.double()  # [256] ~ -0.02 each
    sr_moved = run(torch.bfloat16) - start.to(torch.bfloat16).double()
    assert float(fp32_moved.abs().mean()) > 5e-3
    # per weight within a few ulps (2^-7..2^-6 here); on average within 5% of float32's move
    assert float((sr_moved - fp32_moved).abs().max()) < 4 * 2**-6
    assert abs(float(sr_moved.mean() / fp32_moved.mean()) - 1.0) < 0.05


def test_stochastic_adamw_is_seeded_and_resumes_exactly() -> None:
    g = torch.Generator().manual_seed(2)
    grads = [torch.randn(1000, generator=g).bfloat16() for _ in range(4)]

    def fresh(seed: int) -> tuple[torch.nn.Parameter, StochasticRoundingAdamW]:
        p = torch.nn.Parameter(torch.ones(1000, dtype=torch.bfloat16))
        return p, StochasticRoundingAdamW([p], lr=1e-3, seed=seed, chunk_size=300)

    p, opt = fresh(0)
    for grad in grads[:2]:
        p.grad = grad
        opt.step()
    saved_p, saved = p.detach().clone(), copy.deepcopy(opt.state_dict())
    for grad in grads[2:]:
        p.grad = grad
        opt.step()
    q, opt2 = fresh(0)
    with torch.no_grad():
        q.copy_(saved_p)
    opt2.load_state_dict(saved)
    for grad in grads[2:]:
        q.grad = grad
        opt2.step()
    assert torch.equal(p, q)
    other, opt3 = fresh(1)  # another seed draws other noise
    for grad in grads:
        other.grad = grad
        opt3.step()
    assert not torch.equal(p, other)


def test_build_optimizer_picks_the_bf16_rounding() -> None:
    bf16 = torch.nn.Linear(2, 2).to(torch.bfloat16)
    opt = build_optimizer(
        bf16.parameters(), lr=1e-3, betas=(0.9, 0.99), weight_decay=0, bf16_rounding="stochastic"
    )
    assert isinstance(opt, StochasticRoundingAdamW)
    hybrid = build_optimizer(
        bf16.parameters(), lr=1e-3, betas=(0.9, 0.99), weight_decay=0, bf16_rounding="kahan_sr_v"
    )
    assert isinstance(hybrid, CompensatedAdamW) and hybrid.bf16_second_moment
    with pytest.raises(ValueError, match="valid: kahan, kahan_sr_v, stochastic"):
        build_optimizer(
            bf16.parameters(), lr=1e-3, betas=(0.9, 0.99), weight_decay=0, bf16_rounding="nearest"
        )


# ---------------------------------------------- Kahan weights, stochastically rounded bf16 v


def test_bf16_second_moment_one_step_matches_the_formula() -> None:
    # as test_one_step_matches_the_formula: the step uses the exact v' = 0.01 g^2; the stored v
    # is one of its two bf16 neighbours
    p = torch.nn.Parameter(torch.tensor([1.0, -2.0, 0.5], dtype=torch.bfloat16))
    p.grad = torch.tensor([0.5, -0.25, 2.0], dtype=torch.bfloat16)
    opt = CompensatedAdamW(
        [p], lr=0.01, betas=(0.9, 0.99), weight_decay=0.1, bf16_second_moment=True
    )
    opt.step()
    start = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)
    g = torch.tensor([0.5, -0.25, 2.0], dtype=torch.float64)
    want = start - 0.01 * (g / (g.abs() + 1e-8) + 0.1 * start)  # [0.989, -1.988, 0.4895]
    state = opt.state[p]
    torch.testing.assert_close(p.double() + state["compensation"].double(), want, atol=1e-5, rtol=0)
    v, exact = state["exp_avg_sq"], 0.01 * g * g  # [0.0025, 0.000625, 0.04]
    assert v.dtype == torch.bfloat16
    ulp = 2.0 ** (torch.floor(torch.log2(exact)) - 7)  # bf16 keeps 8 significant bits
    assert bool(((v.double() - exact).abs() < ulp).all()), (v, exact)


def test_bf16_second_moment_decays_where_nearest_rounding_stalls() -> None:
    """After a burst of gradients, 400 steps of g = 0 multiply v by b2^400 = 0.670 (b2 = 0.999).
    Each step changes v by 0.1%, under half a bf16 ulp (0.2-0.4%): rounded to nearest v would
    never move; rounded stochastically it decays on average as float32's does."""
    n, b2 = 4096, 0.999
    p = torch.nn.Parameter(torch.ones(n, dtype=torch.bfloat16))
    opt = CompensatedAdamW([p], lr=1e-4, betas=(0.9, b2), bf16_second_moment=True, seed=3)
    p.grad = torch.full((n,), 2.0, dtype=torch.bfloat16)
    opt.step()  # v = 0.001 * 4 = 0.004 (its bf16 neighbours)
    v0 = opt.state[p]["exp_avg_sq"].double().mean()
    p.grad = torch.zeros(n, dtype=torch.bfloat16)
    for _ in range(400):
        opt.step()
    ratio = float(opt.state[p]["exp_avg_sq"].double().mean() / v0)
    assert abs(ratio - b2**400) < 0.01, ratio
    nearest = torch.tensor(0.004, dtype=torch.bfloat16)
    assert nearest.mul(b2).to(torch.bfloat16) == nearest  # the stall it avoids


@pytest.mark.parametrize("bf16_second_moment", [False, True])
def test_compensated_tracks_float32_with_either_second_moment(bf16_second_moment: bool) -> None:
    """The drift test: Kahan-summed weights follow float32 AdamW's displacement to 2% whether v
    is float32 or stochastically rounded bf16."""
    g = torch.Generator().manual_seed(0)
    start = 1.0 + torch.rand(64, generator=g)  # [64]
    grads = [1.0 + 0.5 * torch.randn(64, generator=g) for _ in range(200)]
    ref = torch.nn.Parameter(start.clone())
    fp32 = torch.optim.AdamW([ref], lr=1e-4, betas=(0.9, 0.99), weight_decay=0.0)
    p = torch.nn.Parameter(start.to(torch.bfloat16))
    opt = CompensatedAdamW(
        [p], lr=1e-4, betas=(0.9, 0.99), bf16_second_moment=bf16_second_moment, seed=1
    )
    for grad in grads:
        ref.grad, p.grad = grad.clone(), grad.to(torch.bfloat16)
        fp32.step()
        opt.step()
    moved = (ref.detach().double() - start.double()).abs()  # [64]
    got = p.detach().double() + opt.state[p]["compensation"].double()
    err = (got - start.to(torch.bfloat16).double()) - (ref.detach().double() - start.double())
    assert float(moved.mean()) > 5e-3
    assert float(err.abs().max()) < 0.02 * float(moved.mean())


def test_bf16_second_moment_is_seeded_and_resumes_exactly() -> None:
    g = torch.Generator().manual_seed(2)
    grads = [torch.randn(1000, generator=g).bfloat16() for _ in range(4)]

    def fresh(seed: int) -> tuple[torch.nn.Parameter, CompensatedAdamW]:
        p = torch.nn.Parameter(torch.ones(1000, dtype=torch.bfloat16))
        opt = CompensatedAdamW([p], lr=1e-3, bf16_second_moment=True, seed=seed, chunk_size=300)
        return p, opt

    p, opt = fresh(0)
    for grad in grads[:2]:
        p.grad = grad
        opt.step()
    saved_p, saved = p.detach().clone(), copy.deepcopy(opt.state_dict())
    for grad in grads[2:]:
        p.grad = grad
        opt.step()
    q, opt2 = fresh(0)
    with torch.no_grad():
        q.copy_(saved_p)
    opt2.load_state_dict(saved)
    assert opt2.state[q]["exp_avg_sq"].dtype == torch.bfloat16
    for grad in grads[2:]:
        q.grad = grad
        opt2.step()
    assert torch.equal(p, q)
    assert torch.equal(opt.state[p]["exp_avg_sq"], opt2.state[q]["exp_avg_sq"])
    other, opt3 = fresh(1)  # another seed rounds v otherwise
    for grad in grads:
        other.grad = grad
        opt3.step()
    assert not torch.equal(opt.state[p]["exp_avg_sq"], opt3.state[other]["exp_avg_sq"])


# ---------------------------------------------- the compiled step against its eager twin


@pytest.mark.skipif(
    not any(shutil.which(n) for n in ("c++", "g++", "clang++")),
    reason="torch.compile's CPU backend needs a C++ compiler (the step falls back to eager)",
)
@pytest.mark.parametrize("bf16_second_moment", [False, True])
def test_compiled_step_equals_the_eager_step_to_float32_rounding(bf16_second_moment: bool) -> None:
    """Five steps (the learning rate changing, weight decay on, slices of uneven length) of
    ``compile_step=True`` against the eager update from the same state and noise. The kernel
    rounds differently in float32 (fused multiply-adds), which can flip the bf16 rounding of an
    ``m`` or ``v`` element by one ulp; the next steps carry that into the weight. So: ``m`` and
    ``v`` within one bf16 ulp, the weight ``p + c`` within a quarter of a bf16 ulp and equal on
    average to a thousandth of one, and not one kernel compile per step (the scalars are tensor
    inputs)."""
    import torch._dynamo

    g = torch.Generator().manual_seed(5)
    shapes = [(300, 7), (1000,), (33,)]
    start = [(0.02 * torch.randn(s, generator=g)).bfloat16() for s in shapes]
    grads = [[(1e-3 * torch.randn(s, generator=g)).bfloat16() for s in shapes] for _ in range(5)]

    def run(compile_step: bool) -> tuple[list[torch.nn.Parameter], CompensatedAdamW]:
        params = [torch.nn.Parameter(x.clone()) for x in start]
        opt = CompensatedAdamW(
            params,
            lr=1e-3,
            betas=(0.9, 0.99),
            weight_decay=0.1,
            bf16_second_moment=bf16_second_moment,
            seed=4,
            chunk_size=512,
            compile_step=compile_step,
        )
        for k, step_grads in enumerate(grads):
            for param, grad in zip(params, step_grads, strict=True):
                param.grad = grad.clone()
            opt.param_groups[0]["lr"] = 1e-3 * (1.0 - 0.1 * k)
            opt.step()
        return params, opt

    torch._dynamo.reset()
    eager_params, eager = run(False)
    torch._dynamo.utils.counters.clear()
    compiled_params, compiled = run(True)
    assert compiled.compile_step  # it compiled: no fallback to eager
    frames = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    assert 1 <= frames <= 4, frames  # static then dynamic length, at most
    for i, (p, q) in enumerate(zip(eager_params, compiled_params, strict=True)):
        a, b = eager.state[p], compiled.state[q]
        want = p.detach().double() + a["compensation"].double()
        got = q.detach().double() + b["compensation"].double()
        moved = float((want - start[i].double()).abs().max())  # the largest displacement
        assert float((got - want).abs().max()) <= 0.01 * moved
        assert float((got - want).abs().mean()) <= 1e-4 * moved  # nearly all equal
        for key in ("exp_avg", "exp_avg_sq"):
            x, y = a[key].double(), b[key].double()
            rel = 2.0**-7 if a[key].dtype == torch.bfloat16 else 2.0**-20  # about one ulp
            torch.testing.assert_close(y, x, rtol=rel, atol=rel * float(x.abs().max()), msg=key)
            if a[key].dtype == torch.bfloat16:
                assert float((x == y).double().mean()) > 0.99, key
