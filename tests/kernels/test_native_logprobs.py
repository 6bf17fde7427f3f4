"""groupwise's C++ log-prob row kernels against core's torch rows and hand-computed values."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from groupwise.core import chunked_token_logp, naive_token_logp
from groupwise.core.logprobs import (
    TORCH_ROWS,
    LogpRows,
    torch_rows_backward,
    torch_rows_forward,
)
from groupwise.kernels import native
from groupwise.models import plan as run_plan
from tests.tests_helpers import tiny_overrides

pytestmark = pytest.mark.skipif(
    native.buildable() is not None, reason=f"native kernels: {native.buildable()}"
)
PAIR = native.logp_rows() if native.buildable() is None else None
ROWS = LogpRows(*PAIR) if PAIR is not None else TORCH_ROWS
BF16 = torch.bfloat16


def _logits(rows: int, vocab: int, dtype: torch.dtype, seed: int) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    raw = (torch.randn(rows, vocab, generator=g) * 3).to(dtype)
    targets = torch.randint(0, vocab, (rows,), generator=g)
    targets[0], targets[-1] = 0, vocab - 1  # both ends of a row
    return raw, targets, torch.randn(rows, generator=g)


def test_forward_matches_hand_computed_values() -> None:
    """One row [0, ln 2, ln 3, -inf-like] at T = 1: s = 1 + 2 + 3, p = (1, 2, 3) / 6."""
    raw = torch.tensor([[0.0, math.log(2), math.log(3), -1e4]])
    logp, lse, entropy = ROWS.forward(raw, torch.tensor([2]), 1.0, True)
    p = torch.tensor([1.0, 2.0, 3.0]) / 6
    torch.testing.assert_close(lse, torch.tensor([math.log(6)]), atol=1e-6, rtol=0)
    torch.testing.assert_close(logp, torch.tensor([math.log(0.5)]), atol=1e-6, rtol=0)
    torch.testing.assert_close(entropy, -(p * p.log()).sum()[None], atol=1e-6, rtol=0)
    # T = 2 halves every logit: log p_0 = 0 - log(1 + sqrt 2 + sqrt 3)
    logp2, _, _ = ROWS.forward(raw, torch.tensor([0]), 2.0, False)
    want = -math.log(1 + math.sqrt(2) + math.sqrt(3))
    torch.testing.assert_close(logp2, torch.tensor([want]), atol=1e-6, rtol=0)


@pytest.mark.parametrize("dtype", [BF16, torch.float32])
@pytest.mark.parametrize("temperature", [1.0, 0.7])
@pytest.mark.parametrize(("rows", "vocab"), [(70, 49152), (5, 1001)])
def test_rows_equal_the_torch_rows(
    dtype: torch.dtype, temperature: float, rows: int, vocab: int
) -> None:
    """Forward: log-probs, log-sum-exps and entropies to float32 rounding of sums over the
    vocabulary. Backward: the gradient rounded to the logits' dtype, equal but for an element
    whose float32 value lies within rounding of a bf16 boundary."""
    raw, targets, grad = _logits(rows, vocab, dtype, seed=rows + vocab)
    want = torch_rows_forward(raw, targets, temperature, True)
    got = ROWS.forward(raw, targets, temperature, True)
    for w, g in zip(want, got, strict=True):
        torch.testing.assert_close(g, w, atol=2e-5, rtol=1e-6)
    assert ROWS.forward(raw, targets, temperature, False)[2] is None
    want_grad, got_grad = raw.clone(), raw.clone()
    torch_rows_backward(want_grad, want[1], targets, grad, temperature)
    ROWS.backward(got_grad, want[1], targets, grad, temperature)
    if dtype == BF16:
        torch.testing.assert_close(got_grad, want_grad, atol=1e-30, rtol=2**-7)  # 1 bf16 step
        assert (got_grad != want_grad).float().mean() < 1e-3
    else:
        torch.testing.assert_close(got_grad, want_grad, atol=1e-10, rtol=1e-6)
    hit = got_grad.float()[torch.arange(rows), targets]  # (1 - p_y) g / T at the target
    p_y = want[0].exp()
    torch.testing.assert_close(hit, (1 - p_y) * grad / temperature, atol=1e-5, rtol=1e-2)


@pytest.mark.parametrize("entropy_grad", [False, True])
def test_chunked_logp_and_its_gradients_equal_the_torch_rows(entropy_grad: bool) -> None:
    """chunked_token_logp with the kernels against its torch rows, in bf16 over three chunks
    and in one (whose forward logits the backward reuses); an entropy gradient takes torch's
    backward rows either way, so there the gradients are equal up to the forward's sums."""
    g = torch.Generator().manual_seed(3)
    hidden = torch.randn(20, 64, generator=g).to(BF16)
    weight = (torch.randn(3000, 64, generator=g) * 0.2).to(BF16)
    targets = torch.randint(0, 3000, (20,), generator=g)
    coef = torch.randn(20, generator=g)
    for chunk in (8, 1024):
        grads = []
        for rows in (TORCH_ROWS, ROWS):
            h = hidden.clone().requires_grad_()
            w = weight.clone().requires_grad_()
            logp, ent = chunked_token_logp(
                h, w, targets, chunk_size=chunk, entropy_grad=entropy_grad, rows=rows
            )
            assert ent is not None
            loss = (logp * coef).sum() + (ent.sum() if entropy_grad else 0)
            loss.backward()
            grads.append((logp.detach(), ent.detach(), h.grad, w.grad))
        for want, got in zip(*grads, strict=True):
            assert got is not None and want is not None
            torch.testing.assert_close(got.float(), want.float(), atol=2e-5, rtol=2**-7)
    naive, _ = naive_token_logp(hidden.float(), weight.float(), targets)
    torch.testing.assert_close(grads[1][0], naive, atol=0.05, rtol=0)  # bf16 matmul vs float32


def test_bad_input_names_the_argument() -> None:
    raw = torch.randn(3, 10)
    with pytest.raises(RuntimeError, match="targets"):
        ROWS.forward(raw, torch.tensor([0, 1, 10]), 1.0, False)
    with pytest.raises(RuntimeError, match="targets must be int64"):
        ROWS.forward(raw, torch.tensor([0, 1, 2], dtype=torch.int32), 1.0, False)
    with pytest.raises(RuntimeError, match="temperature"):
        ROWS.forward(raw, torch.tensor([0, 1, 2]), 0.0, False)
    with pytest.raises(ValueError, match="contiguous"):
        ROWS.backward(
            raw.t(), torch.zeros(10), torch.zeros(10, dtype=torch.long), torch.zeros(10), 1.0
        )


def test_the_plan_computes_logprobs_with_them_where_they_build() -> None:
    from groupwise.config import load_config

    config = load_config(None, ["model.name=tiny-random"])
    assert config.training.native_kernels == "auto"
    cpu = torch.device("cpu")
    assert run_plan.resolve_plan(config, cpu).training_native_kernels == (
        run_plan.resolve_plan(config, cpu).bf16
    )
    off = load_config(None, ["model.name=tiny-random", "training.native_kernels=false"])
    assert not run_plan.resolve_plan(off, cpu).training_native_kernels


def test_the_trainer_computes_both_passes_with_them(tmp_path: Path) -> None:
    """On the tiny model in bf16 with a KL term: the plan's setting reaches the update's and the
    reference's log-probs; on a rollout the policy's log-probs and its weight gradients equal
    those of torch's rows up to bf16 rounding, and a step runs."""
    from groupwise.config import load_config
    from groupwise.train.build import LogpModule
    from groupwise.train.trainer import GRPOTrainer

    for on in (False, True):
        overrides = tiny_overrides(
            tmp_path / str(on),
            bf16=True,
            **{"algorithm.beta": 0.04, "training.native_kernels": on},
        )
        trainer = GRPOTrainer(load_config(overrides=overrides), reward_funcs=["length_penalty"])
        assert (trainer.parts.logp_rows == ROWS) == on
        assert (trainer.parts.train_module.rows == ROWS) == on
    metrics = trainer.step()
    assert metrics["kl"] >= 0
    rollout = trainer.grpo_step.generate(trainer.next_rows())
    coef = torch.randn(rollout.completion_ids.shape, generator=torch.Generator().manual_seed(0))
    results = []
    for rows in (TORCH_ROWS, ROWS):
        trainer.policy.zero_grad()
        with torch.autocast("cpu", dtype=BF16):
            logp, _ = LogpModule(trainer.policy, rows)(rollout, 1.0, 1024, True)
        (logp * coef).sum().backward()
        grads = [p.grad.clone() for p in trainer.policy.parameters() if p.grad is not None]
        results.append((logp.detach(), grads))
    (logp_t, grads_t), (logp_n, grads_n) = results
    torch.testing.assert_close(logp_n, logp_t, atol=2e-5, rtol=1e-5)
    assert len(grads_n) == len(grads_t) > 0
    for got, want in zip(grads_n, grads_t, strict=True):
        torch.testing.assert_close(got, want, atol=1e-4, rtol=2**-6)
