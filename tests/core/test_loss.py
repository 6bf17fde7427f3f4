import math

import pytest
import torch

from groupwise.core import (
    aggregate_loss,
    chunked_token_logp,
    clipped_surrogate,
    entropy_bonus,
    importance_ratio,
    kl_penalty,
    policy_loss,
)

# 2x3 example used throughout: row 0 has 2 real tokens, row 1 has 1.
MASK = torch.tensor([[1, 1, 0], [1, 0, 0]])


def _log_ratio_for(ratios: list[list[float]]) -> tuple[torch.Tensor, torch.Tensor]:
    old = torch.full((len(ratios), len(ratios[0])), -1.0)
    logp = old + torch.tensor(ratios).log()
    return logp, old


# ----------------------------------------------------------------------------- clipped surrogate


def test_clipped_surrogate_hand_cases() -> None:
    ratio = torch.tensor([[1.5], [0.5], [1.1], [1.5], [0.5]])
    adv = torch.tensor([1.0, -1.0, 1.0, -1.0, 1.0])
    # 1.5,A=+1: -min(1.5, 1.2) = -1.2 | 0.5,A=-1: -min(-0.5, -0.8) = 0.8 | 1.1,A=1: -1.1
    # 1.5,A=-1: -min(-1.5, -1.2) = 1.5 (not clipped) | 0.5,A=+1: -min(0.5, 0.8) = -0.5
    expected = torch.tensor([[-1.2], [0.8], [-1.1], [1.5], [-0.5]])
    torch.testing.assert_close(clipped_surrogate(ratio, adv), expected, rtol=0, atol=1e-7)


def test_clipped_surrogate_asymmetric_and_grad() -> None:
    ratio = torch.tensor([[1.5, 1.25, 0.7, 0.75]], requires_grad=True)
    adv = torch.tensor([1.0])
    # eps_low 0.2, eps_high 0.28 (DAPO): 1.5 -> -1.28 (clipped); 1.25 -> -1.25 (not clipped);
    # 0.7 -> -min(0.7, 0.8) = -0.7 (A>0 never clips below); 0.75 -> -0.75
    out = clipped_surrogate(ratio, adv, 0.2, 0.28)
    torch.testing.assert_close(out, torch.tensor([[-1.28, -1.25, -0.7, -0.75]]), rtol=0, atol=1e-6)
    out.sum().backward()
    assert ratio.grad is not None
    assert ratio.grad.tolist() == [[0.0, -1.0, -1.0, -1.0]]
    # A<0, eps_low 0.1: 0.85 clipped at 0.9 -> 0.9 ; 1.3 with A<0 not clipped -> 1.3
    neg = clipped_surrogate(torch.tensor([[0.85, 1.3]]), torch.tensor([-1.0]), 0.1, 0.28)
    torch.testing.assert_close(neg, torch.tensor([[0.9, 1.3]]), rtol=0, atol=1e-6)


# ----------------------------------------------------------------------------- aggregation


def test_aggregate_each_loss_type_by_hand() -> None:
    per_token = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
    # grpo: ((1+2)/2 + 4/1) / 2 = 2.75 ; dapo: (1+2+4)/3 = 7/3 ; dr_grpo: 7 / (2*3) = 7/6
    assert aggregate_loss(per_token, MASK, "grpo").item() == pytest.approx(2.75, abs=1e-7)
    assert aggregate_loss(per_token, MASK, "dapo").item() == pytest.approx(7 / 3, abs=1e-7)
    dr = aggregate_loss(per_token, MASK, "dr_grpo", max_completion_length=3)
    assert dr.item() == pytest.approx(7 / 6, abs=1e-7)
    # explicit normalisers: grpo 5.5 / 4, dapo 7 / 10, dr_grpo 7 / (4 * 5)
    kw = {"num_sequences": 4.0, "num_tokens": 10.0}
    assert aggregate_loss(per_token, MASK, "grpo", **kw).item() == pytest.approx(5.5 / 4)
    assert aggregate_loss(per_token, MASK, "dapo", **kw).item() == pytest.approx(0.7)
    dr = aggregate_loss(per_token, MASK, "dr_grpo", max_completion_length=5, **kw)
    assert dr.item() == pytest.approx(7 / 20)


def test_aggregate_all_masked_is_zero_not_nan() -> None:
    per_token = torch.ones(2, 3)
    zero = torch.zeros(2, 3)
    for lt in ("grpo", "dapo", "dr_grpo"):
        assert aggregate_loss(per_token, zero, lt, max_completion_length=3).item() == 0.0
    assert aggregate_loss(per_token, zero, "dapo", num_tokens=0.0).item() == 0.0


def test_aggregate_errors() -> None:
    with pytest.raises(
        ValueError, match="algorithm.loss_type: unknown name 'foo'; valid: grpo, dapo, dr_grpo"
    ):
        aggregate_loss(torch.ones(2, 3), MASK, "foo")
    with pytest.raises(ValueError, match="max_completion_length"):
        aggregate_loss(torch.ones(2, 3), MASK, "dr_grpo")
    with pytest.raises(ValueError, match="mask"):
        aggregate_loss(torch.ones(2, 3), torch.ones(2, 4), "dapo")


# ----------------------------------------------------------------------------- policy loss


@pytest.mark.parametrize(
    ("loss_type", "expected_grad"),
    [
        # A = [1, -2]; dL/dlogp_it = -A_i * w_it with w the normaliser weights:
        ("dapo", [[-1 / 3, -1 / 3, 0.0], [2 / 3, 0.0, 0.0]]),  # w = M / 3 tokens
        ("grpo", [[-1 / 4, -1 / 4, 0.0], [1.0, 0.0, 0.0]]),  # w = M / (|o_i| * 2 seqs)
        ("dr_grpo", [[-1 / 6, -1 / 6, 0.0], [2 / 6, 0.0, 0.0]]),  # w = M / (2 seqs * 3)
    ],
)
def test_on_policy_gradient_is_not_zero(loss_type: str, expected_grad: list[list[float]]) -> None:
    logp = torch.tensor([[-1.0, -2.0, -3.0], [-0.5, -0.1, -9.0]], requires_grad=True)
    adv = torch.tensor([1.0, -2.0])
    loss, stats = policy_loss(
        logp, logp.detach(), adv, MASK, loss_type=loss_type, max_completion_length=3
    )
    # ratio = 1 -> per-token loss = -A_i; dapo: (-1-1+2)/3 = 0; grpo: (-1 + 2)/2 = 0.5;
    # dr_grpo: (-1-1+2)/6 = 0
    assert loss.item() == pytest.approx({"dapo": 0.0, "grpo": 0.5, "dr_grpo": 0.0}[loss_type])
    loss.backward()
    assert logp.grad is not None
    torch.testing.assert_close(logp.grad, torch.tensor(expected_grad), rtol=0, atol=1e-7)
    assert stats["clipfrac"].item() == 0.0
    assert "kl" not in stats


def test_masked_tokens_do_not_contribute() -> None:
    torch.manual_seed(0)
    logp = torch.randn(2, 3) - 1
    old = logp + 0.1 * torch.randn(2, 3)
    ref = logp + 0.1 * torch.randn(2, 3)
    adv = torch.tensor([0.7, -1.3])
    for lt in ("grpo", "dapo", "dr_grpo"):
        losses, grads = [], []
        for garbage in (0.0, 5.0):
            lp = (logp + garbage * (1 - MASK)).requires_grad_(True)
            o = old - garbage * (1 - MASK)
            loss, _ = policy_loss(
                lp, o, adv, MASK, ref_logp=ref, beta=0.1, loss_type=lt, max_completion_length=3
            )
            loss.backward()
            assert lp.grad is not None
            losses.append(loss.item())
            grads.append(lp.grad)
        assert losses[0] == pytest.approx(losses[1], abs=1e-7)
        assert (grads[1][MASK == 0] == 0).all()
        torch.testing.assert_close(grads[0], grads[1], rtol=0, atol=1e-7)


@pytest.mark.parametrize("level", ["token", "sequence"])
@pytest.mark.parametrize("loss_type", ["grpo", "dapo", "dr_grpo"])
def test_micro_batch_invariance(loss_type: str, level: str) -> None:
    torch.manual_seed(1)
    b, t = 6, 5
    logp0 = -torch.rand(b, t) * 3
    old = logp0 + 0.3 * torch.randn(b, t)
    ref = logp0 + 0.3 * torch.randn(b, t)
    adv = torch.randn(b)
    mask = torch.tensor([[1] * n + [0] * (t - n) for n in (5, 2, 0, 3, 1, 4)])
    kw = {
        "beta": 0.05,
        "epsilon_high": 0.28,
        "loss_type": loss_type,
        "importance_sampling_level": level,
        "max_completion_length": t,
    }
    full_lp = logp0.clone().requires_grad_(True)
    full, _ = policy_loss(full_lp, old, adv, mask, ref_logp=ref, **kw)
    full.backward()

    split_lp = logp0.clone().requires_grad_(True)
    total = torch.zeros(())
    for sl in (slice(0, 2), slice(2, 6)):
        part, _ = policy_loss(
            split_lp[sl],
            old[sl],
            adv[sl],
            mask[sl],
            ref_logp=ref[sl],
            num_sequences=float(b),
            num_tokens=float(mask.sum()),
            **kw,
        )
        part.backward()
        total = total + part.detach()
    assert total.item() == pytest.approx(full.item(), abs=1e-6)
    assert full_lp.grad is not None and split_lp.grad is not None
    torch.testing.assert_close(split_lp.grad, full_lp.grad, rtol=0, atol=1e-7)


def test_kl_term_and_stat() -> None:
    # logp=-1, ref=-2 at every real token -> k3 = e^-1 = 0.36787944; ratio 1, A = 0
    logp = torch.full((2, 3), -1.0, requires_grad=True)
    ref = torch.full((2, 3), -2.0)
    loss, stats = policy_loss(
        logp, logp.detach(), torch.zeros(2), MASK, ref_logp=ref, beta=0.5, loss_type="dapo"
    )
    assert stats["kl"].item() == pytest.approx(math.exp(-1), abs=1e-7)
    assert loss.item() == pytest.approx(0.5 * math.exp(-1), abs=1e-7)
    loss.backward()
    # d k3 / d logp = 1 - e^x = 1 - e^-1, times beta / 3 tokens
    g = 0.5 * (1 - math.exp(-1)) / 3
    assert logp.grad is not None
    torch.testing.assert_close(
        logp.grad, torch.tensor([[g, g, 0.0], [g, 0.0, 0.0]]), rtol=0, atol=1e-7
    )
    assert not stats["kl"].requires_grad
    # beta = 0 with ref_logp: stat reported, loss unchanged
    loss0, stats0 = policy_loss(logp, logp.detach(), torch.zeros(2), MASK, ref_logp=ref)
    assert loss0.item() == 0.0 and "kl" in stats0
    k2 = kl_penalty(logp.detach(), ref, "k2")[0, 0].item()
    _, stats2 = policy_loss(logp, logp, torch.zeros(2), MASK, ref_logp=ref, kl_estimator="k2")
    assert stats2["kl"].item() == pytest.approx(k2) == 0.5


def test_clip_ratio_stats_by_hand() -> None:
    # row 0, A=-1: ratio 0.5 < 0.8 -> low; 1.0; 1.5 (A<0, no "high")
    # row 1, A=+1: 0.5 (A>0, no "low"); 1.5 > 1.2 -> high; 2.0 masked out
    logp, old = _log_ratio_for([[0.5, 1.0, 1.5], [0.5, 1.5, 2.0]])
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    _, stats = policy_loss(logp, old, torch.tensor([-1.0, 1.0]), mask)
    assert stats["clip_ratio/low_mean"].item() == pytest.approx(1 / 5)
    assert stats["clip_ratio/high_mean"].item() == pytest.approx(1 / 5)
    assert stats["clip_ratio/region_mean"].item() == pytest.approx(2 / 5)
    assert stats["clipfrac"].item() == pytest.approx(2 / 5)
    # with eps_high 0.6, 1.5 is no longer clipped
    _, stats = policy_loss(logp, old, torch.tensor([-1.0, 1.0]), mask, epsilon_high=0.6)
    assert stats["clip_ratio/high_mean"].item() == 0.0
    assert stats["clipfrac"].item() == pytest.approx(1 / 5)


# ----------------------------------------------------------------------------- GSPO


def test_sequence_ratio_values_and_gradient() -> None:
    # row 0: log-ratios [0.1, -0.3, (9 masked)] -> mean -0.1 -> s_0 = exp(-0.1) = 0.9048374180
    # row 1: log-ratios [0.2, 0.2, 0.2]        -> s_1 = exp(0.2) = 1.2214027582 (> 1.2: clipped)
    old = torch.tensor([[-1.0, -2.0, -3.0], [-1.0, -1.0, -1.0]])
    logp = (old + torch.tensor([[0.1, -0.3, 9.0], [0.2, 0.2, 0.2]])).requires_grad_(True)
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]])
    ratio = importance_ratio(logp, old, mask, "sequence")
    s0, s1 = math.exp(-0.1), math.exp(0.2)
    torch.testing.assert_close(
        ratio, torch.tensor([[s0] * 3, [s1] * 3]), rtol=1e-6, atol=0, check_dtype=False
    )
    loss, stats = policy_loss(
        logp,
        old,
        torch.tensor([1.0, 1.0]),
        mask,
        loss_type="grpo",
        importance_sampling_level="sequence",
    )
    # loss = (-s0 + -1.2) / 2 ; grad logp_0t = -A_0 * s_0 / |o_0| / B = -s0 / 4, row 1 clipped: 0
    assert loss.item() == pytest.approx((-s0 - 1.2) / 2, abs=1e-6)
    loss.backward()
    assert logp.grad is not None
    torch.testing.assert_close(
        logp.grad, torch.tensor([[-s0 / 4, -s0 / 4, 0.0], [0.0, 0.0, 0.0]]), rtol=1e-6, atol=1e-7
    )
    assert stats["clip_ratio/high_mean"].item() == pytest.approx(3 / 5)


def test_sequence_ratio_matches_plain_gspo_gradient() -> None:
    # Plain GSPO: s_i = exp(mean_t log-ratio) as a [B, 1] differentiable ratio, grad
    # s_i * mean_t grad logp_it. The GSPO-token form must give the same gradient.
    torch.manual_seed(2)
    old = -torch.rand(3, 4) * 2
    logp0 = old + 0.05 * torch.randn(3, 4)
    mask = torch.tensor([[1, 1, 1, 0], [1, 0, 0, 0], [1, 1, 1, 1]])
    adv = torch.tensor([0.5, -1.0, 2.0])
    m = mask.float()
    for lt in ("grpo", "dapo", "dr_grpo"):
        a = logp0.clone().requires_grad_(True)
        loss_a, _ = policy_loss(
            a, old, adv, mask, loss_type=lt, importance_sampling_level="sequence",
            max_completion_length=4,
        )  # fmt: skip
        loss_a.backward()
        b = logp0.clone().requires_grad_(True)
        s = torch.exp(((b - old) * m).sum(-1) / m.sum(-1))[:, None].expand(3, 4)  # [B, T]
        per_token = clipped_surrogate(s, adv)
        loss_b = aggregate_loss(per_token, mask, lt, max_completion_length=4)
        loss_b.backward()
        assert loss_a.item() == pytest.approx(loss_b.item(), abs=1e-6)
        assert a.grad is not None and b.grad is not None
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-5, atol=1e-7)
    # empty sequence: ratio 1, no NaN
    r = importance_ratio(logp0, old, torch.zeros(3, 4), "sequence")
    torch.testing.assert_close(r, torch.ones(3, 4))


# ----------------------------------------------------------------------------- validation


def test_policy_loss_validation() -> None:
    z = torch.zeros(2, 3)
    adv = torch.zeros(2)
    with pytest.raises(
        ValueError, match="algorithm.loss_type: unknown name 'x'; valid: grpo, dapo, dr_grpo"
    ):
        policy_loss(z, z, adv, MASK, loss_type="x")
    with pytest.raises(
        ValueError,
        match="algorithm.importance_sampling_level: unknown name 'seq'; valid: token, sequence",
    ):
        policy_loss(z, z, adv, MASK, importance_sampling_level="seq")
    with pytest.raises(
        ValueError, match="algorithm.kl_estimator: unknown name 'k9'; valid: k1, k2, k3"
    ):
        policy_loss(z, z, adv, MASK, kl_estimator="k9")
    with pytest.raises(ValueError, match="requires ref_logp"):
        policy_loss(z, z, adv, MASK, beta=0.1)
    with pytest.raises(ValueError, match="advantages"):
        policy_loss(z, z, torch.zeros(3), MASK)
    with pytest.raises(ValueError, match="old_logp"):
        importance_ratio(z, torch.zeros(2, 4), MASK)
    with pytest.raises(ValueError, match="algorithm.importance_sampling_level: unknown name 'foo'"):
        importance_ratio(z, z, MASK, "foo")


# ----------------------------------------------------------------------------- entropy bonus


def test_entropy_bonus_gradient_by_hand() -> None:
    # one token, vocabulary 3, a linear head W = [[1, 0], [0, 1], [0, 0]], T = 0.5 and
    # h = [ln2 / 2, 0]: z = W h / T = [ln2, 0, 0], p = [1/2, 1/4, 1/4],
    # H = -(1/2 ln 1/2 + 2 * 1/4 ln 1/4) = 1.5 ln2
    # dH/dz_v = -p_v (log p_v + H) = [-1/4 ln2, 1/8 ln2, 1/8 ln2]   (sums to 0)
    # B = -c H / N with c = 0.1, N = 2 (the step's tokens: another micro-batch holds the other)
    # dB/dh   = -c/N * W^T dH/dz / T = -0.05 * [-1/4 ln2, 1/8 ln2] * 2 = [0.025, -0.0125] ln2
    # dB/dW_v = -c/N * dH/dz_v * h / T = -0.05 * dH/dz_v * [ln2, 0] -> column 0 only
    ln2 = math.log(2.0)
    h = torch.tensor([[ln2 / 2, 0.0]], requires_grad=True)
    w = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 0.0]], requires_grad=True)
    _, entropy = chunked_token_logp(h, w, torch.tensor([1]), temperature=0.5, entropy_grad=True)
    assert entropy is not None
    torch.testing.assert_close(entropy, torch.tensor([1.5 * ln2]))
    bonus = entropy_bonus(entropy[None, :], torch.ones(1, 1), 0.1, num_tokens=2)
    torch.testing.assert_close(bonus, torch.tensor(-0.1 * 1.5 * ln2 / 2))
    bonus.backward()
    assert h.grad is not None and w.grad is not None
    torch.testing.assert_close(h.grad, torch.tensor([[0.025 * ln2, -0.0125 * ln2]]))
    dh_dz = torch.tensor([-0.25 * ln2, 0.125 * ln2, 0.125 * ln2])
    want_w = torch.zeros(3, 2)
    want_w[:, 0] = -0.05 * dh_dz * ln2
    torch.testing.assert_close(w.grad, want_w)


def test_entropy_bonus_is_a_global_token_mean() -> None:
    entropy = torch.tensor([[1.0, 2.0, 9.0], [3.0, 9.0, 9.0]])
    # masked tokens: 1 + 2 + 3 = 6 over 3 tokens -> mean 2; B = -0.5 * 2
    assert entropy_bonus(entropy, MASK, 0.5).item() == pytest.approx(-1.0)
    # two micro-batches with the step's count add up to the whole batch's term
    halves = [entropy_bonus(entropy[i : i + 1], MASK[i : i + 1], 0.5, num_tokens=3) for i in (0, 1)]
    assert sum(x.item() for x in halves) == pytest.approx(-1.0)
    assert entropy_bonus(entropy, torch.zeros_like(MASK), 0.5).item() == 0.0  # no NaN
