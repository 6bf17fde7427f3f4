"""Per-token objectives (clip, CISPO, SAPO) and the entropy mask, against hand-computed numbers."""

import math

import pytest
import torch

from groupwise.core import (
    OBJECTIVES,
    ObjectiveParams,
    aggregate_loss,
    clipped_surrogate,
    entropy_mask,
    importance_ratio,
    kl_penalty,
    policy_loss,
)

# 2x3 example: row 0 has 2 real tokens, row 1 has 1 (as in test_loss.py).
MASK = torch.tensor([[1, 1, 0], [1, 0, 0]])


def _logp_for(ratios: list[list[float]]) -> tuple[torch.Tensor, torch.Tensor]:
    """``(logp, old_logp)`` with ``old = -1`` and ``exp(logp - old) = ratios``."""
    old = torch.full((len(ratios), len(ratios[0])), -1.0)
    return (old + torch.tensor(ratios).log()).requires_grad_(True), old


def test_registered_objectives() -> None:
    assert OBJECTIVES.names() == ("clip", "cispo", "sapo")


# ----------------------------------------------------------------------------- clip


def test_clip_objective_is_the_clipped_surrogate() -> None:
    ratio = torch.tensor([[1.5, 0.5, 1.1], [1.5, 0.5, 1.0]])
    adv = torch.tensor([1.0, -1.0])
    params = ObjectiveParams(epsilon_low=0.2, epsilon_high=0.28)
    out = OBJECTIVES.get("clip")(ratio, adv, torch.zeros(2, 3), params)
    # A=+1: -min(1.5, 1.28) = -1.28, -min(0.5, 0.8) = -0.5, -1.1
    # A=-1: -min(-1.5, -1.28) = 1.5, -min(-0.5, -0.8) = 0.8, 1.0
    expected = torch.tensor([[-1.28, -0.5, -1.1], [1.5, 0.8, 1.0]])
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-7)
    assert torch.equal(out, clipped_surrogate(ratio, adv, 0.2, 0.28))


def test_clip_policy_loss_is_bitwise_the_composition() -> None:
    # objective="clip" without an entropy mask: the same ops, in the same order, as
    # aggregate(clipped_surrogate(ratio) + beta * kl)
    torch.manual_seed(3)
    logp0 = -torch.rand(4, 5) * 3
    old = logp0 + 0.3 * torch.randn(4, 5)
    ref = logp0 + 0.3 * torch.randn(4, 5)
    adv = torch.randn(4)
    mask = torch.tensor([[1] * n + [0] * (5 - n) for n in (5, 2, 0, 3)])
    for lt in ("grpo", "dapo", "dr_grpo"):
        a = logp0.clone().requires_grad_(True)
        loss_a, _ = policy_loss(
            a, old, adv, mask, ref_logp=ref, beta=0.04, epsilon_high=0.28, loss_type=lt,
            max_completion_length=5, num_sequences=6.0, num_tokens=13.0,
        )  # fmt: skip
        loss_a.backward()
        b = logp0.clone().requires_grad_(True)
        per_token = clipped_surrogate(importance_ratio(b, old, mask), adv, 0.2, 0.28)
        per_token = per_token + 0.04 * kl_penalty(b, ref)
        loss_b = aggregate_loss(
            per_token, mask, lt, max_completion_length=5, num_sequences=6.0, num_tokens=13.0
        )
        loss_b.backward()
        assert torch.equal(loss_a, loss_b)
        assert a.grad is not None and b.grad is not None
        assert torch.equal(a.grad, b.grad)


# ----------------------------------------------------------------------------- CISPO


def test_cispo_values_and_gradient_by_hand() -> None:
    # old = -1, ratios row 0 [0.5, 1, 2] (A = 2), row 1 [1.1, 1.5, 0.8] (A = -1);
    # eps_high 0.28 -> weight w = min(ratio, 1.28) = [[0.5, 1, 1.28], [1.1, 1.28, 0.8]]
    # logp = -1 + ln(ratio) = [[-1.693147181, -1, -0.306852819], [-0.904689820, -0.594534892,
    # -1.223143551]];  L = -w A logp
    logp, old = _logp_for([[0.5, 1.0, 2.0], [1.1, 1.5, 0.8]])
    adv = torch.tensor([2.0, -1.0])
    ratio = importance_ratio(logp, old, torch.ones(2, 3))
    out = OBJECTIVES.get("cispo")(ratio, adv, logp, ObjectiveParams(0.2, 0.28))
    expected = torch.tensor(
        [
            [0.5 * 2 * 1.693147181, 2.0, 1.28 * 2 * 0.306852819],
            [-1.1 * 0.904689820, -1.28 * 0.594534892, -0.8 * 1.223143551],
        ]
    )
    torch.testing.assert_close(out, expected, rtol=0, atol=2e-7)
    out.sum().backward()
    # the weight is detached: d L / d logp = -w A, also where the ratio is capped (1.28)
    assert logp.grad is not None
    grad = torch.tensor([[-1.0, -2.0, -2.56], [1.1, 1.28, 0.8]])
    torch.testing.assert_close(logp.grad, grad, rtol=0, atol=2e-7)


def test_cispo_policy_loss_keeps_capped_tokens_gradient() -> None:
    # ratio 2 with A = +1: the clip objective drops the token's gradient, CISPO keeps
    # -min(2, 1.2) = -1.2 of it (eps_high = eps_low = 0.2); dapo over 3 real tokens
    logp, old = _logp_for([[2.0, 1.0, 1.0], [0.5, 1.0, 1.0]])
    adv = torch.tensor([1.0, -1.0])
    loss, _ = policy_loss(logp, old, adv, MASK, objective="cispo")
    # L = -w A logp on the real tokens (logp = -1 + ln r):
    #   -1.2 * 1 * -0.306852819, -1 * 1 * -1, -0.5 * -1 * -1.693147181;  dapo: sum / 3
    expected = (1.2 * 0.306852819 + 1.0 * 1.0 - 0.5 * 1.693147181) / 3
    assert loss.item() == pytest.approx(expected, abs=1e-7)
    loss.backward()
    assert logp.grad is not None
    torch.testing.assert_close(
        logp.grad,
        torch.tensor([[-1.2 / 3, -1 / 3, 0.0], [0.5 / 3, 0.0, 0.0]]),
        rtol=0,
        atol=1e-7,
    )
    clip_lp = logp.detach().clone().requires_grad_(True)
    policy_loss(clip_lp, old, adv, MASK)[0].backward()
    assert clip_lp.grad is not None and clip_lp.grad[0, 0].item() == 0.0  # clipped away


# ----------------------------------------------------------------------------- SAPO


def test_sapo_values_and_gradient_by_hand() -> None:
    # tau = 1 for A = +1 (row 0), tau = 1.05 for A = -1 (row 1) (the defaults);
    # g = sigmoid(tau (r - 1)) * 4 / tau, L = -g A, dL/dlogp = -A r 4 s (1 - s), s = sigmoid(.)
    # row 0, r = [1, 1.5, 0.5]: L = [-2, -4 s(0.5), -4 s(-0.5)] = [-2, -2.489837325, -1.510162675]
    #   dL/dlogp = [-1, -1.5 * 4 s(.5) s(-.5), -0.5 * same] = [-1, -1.410022273, -0.470007424]
    # row 1, r = [1, 2, 0.8]: L = [2 / 1.05, 4 s(1.05) / 1.05, 4 s(-0.21) / 1.05]
    #   = [1.904761905, 2.821999616, 1.705493678];  dL/dlogp = [1, 1.536219583, 0.791244424]
    logp, old = _logp_for([[1.0, 1.5, 0.5], [1.0, 2.0, 0.8]])
    adv = torch.tensor([1.0, -1.0])
    ratio = importance_ratio(logp, old, torch.ones(2, 3))
    out = OBJECTIVES.get("sapo")(ratio, adv, logp, ObjectiveParams())
    expected = torch.tensor(
        [[-2.0, -2.489837325, -1.510162675], [1.904761905, 2.821999616, 1.705493678]]
    )
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-6)
    out.sum().backward()
    assert logp.grad is not None
    grad = torch.tensor([[-1.0, -1.410022273, -0.470007424], [1.0, 1.536219583, 0.791244424]])
    torch.testing.assert_close(logp.grad, grad, rtol=0, atol=1e-6)


def test_sapo_temperatures_are_used() -> None:
    ratio = torch.tensor([[2.0], [2.0]])
    adv = torch.tensor([1.0, -1.0])
    out = OBJECTIVES.get("sapo")(ratio, adv, ratio, ObjectiveParams(0.2, 0.2, 2.0, 0.5))
    # tau 2: -4 sigmoid(2) / 2 = -1.761594156; tau 0.5: +4 sigmoid(0.5) / 0.5 = 4.979674650
    torch.testing.assert_close(
        out, torch.tensor([[-1.761594156], [4.979674650]]), rtol=0, atol=1e-6
    )


@pytest.mark.parametrize("objective", ["sapo", "cispo"])
@pytest.mark.parametrize("loss_type", ["grpo", "dapo", "dr_grpo"])
def test_gradient_at_ratio_one_is_the_plain_surrogate(objective: str, loss_type: str) -> None:
    # on-policy (old_logp = logp.detach()): d L_it / d logp_it = -A_i for every objective and
    # any SAPO temperature (4 sigmoid'(0) = 1)
    torch.manual_seed(4)
    logp0 = -torch.rand(3, 4) * 2
    adv = torch.tensor([0.7, -1.3, 2.0])
    mask = torch.tensor([[1, 1, 1, 0], [1, 0, 0, 0], [1, 1, 1, 1]])
    grads = []
    for name, temps in ((objective, (0.5, 3.0)), (objective, (1.0, 1.05)), ("clip", (1.0, 1.05))):
        lp = logp0.clone().requires_grad_(True)
        loss, _ = policy_loss(
            lp, lp.detach(), adv, mask, loss_type=loss_type, objective=name,
            max_completion_length=4, sapo_temperature_pos=temps[0],
            sapo_temperature_neg=temps[1],
        )  # fmt: skip
        loss.backward()
        assert lp.grad is not None
        grads.append(lp.grad)
    torch.testing.assert_close(grads[0], grads[2], rtol=0, atol=1e-7)
    torch.testing.assert_close(grads[1], grads[2], rtol=0, atol=1e-7)
    assert grads[2].abs().sum() > 0


def test_objective_params_validation() -> None:
    with pytest.raises(ValueError, match="epsilons must be >= 0"):
        ObjectiveParams(epsilon_low=-0.1)
    with pytest.raises(ValueError, match="SAPO temperatures must be > 0"):
        ObjectiveParams(sapo_temperature_neg=0.0)
    z = torch.zeros(2, 3)
    with pytest.raises(ValueError, match="SAPO temperatures must be > 0"):
        policy_loss(z, z, torch.zeros(2), MASK, objective="sapo", sapo_temperature_pos=-1.0)


def test_unknown_objective_lists_valid_ones() -> None:
    z = torch.zeros(2, 3)
    with pytest.raises(
        ValueError, match="algorithm.objective: unknown name 'ppo'; valid: clip, cispo, sapo"
    ):
        policy_loss(z, z, torch.zeros(2), MASK, objective="ppo")


def test_a_registered_objective_is_selectable(monkeypatch: pytest.MonkeyPatch) -> None:
    def reinforce(ratio, advantages, logp, params):  # type: ignore[no-untyped-def]
        return -advantages[:, None] * logp  # [B, T]

    monkeypatch.setitem(OBJECTIVES._entries, "reinforce", reinforce)
    logp = torch.tensor([[-1.0, -2.0, -3.0], [-0.5, -0.1, -9.0]])
    loss, _ = policy_loss(logp, logp, torch.tensor([1.0, -2.0]), MASK, objective="reinforce")
    # dapo: (1 + 2 + 2 * -0.5) / 3
    assert loss.item() == pytest.approx(2 / 3, abs=1e-7)


# ----------------------------------------------------------------------------- entropy mask


def test_entropy_mask_quantiles() -> None:
    # real tokens' entropies {0.1, 2, 1, 3}; the padding (9, 7, 8, 5) is the highest
    entropy = torch.tensor([[0.1, 2.0, 9.0, 7.0], [1.0, 3.0, 8.0, 5.0]])
    mask = torch.tensor([[1, 1, 0, 0], [1, 1, 0, 0]])
    # q = 1: threshold = min = 0.1, every real token, no padding
    assert entropy_mask(entropy, mask, 1.0).tolist() == [[1, 1, 0, 0], [1, 1, 0, 0]]
    # q = 0.5: threshold = Quantile_0.5{0.1, 1, 2, 3} = 1.5 -> {2, 3}, the top half
    assert entropy_mask(entropy, mask, 0.5).tolist() == [[0, 1, 0, 0], [0, 1, 0, 0]]
    # q = 0.25: Quantile_0.75 = 2 + 0.25 * (3 - 2) = 2.25 -> {3}
    assert entropy_mask(entropy, mask, 0.25).tolist() == [[0, 0, 0, 0], [0, 1, 0, 0]]
    # q = 0: only the maximum
    assert entropy_mask(entropy, mask, 0.0).tolist() == [[0, 0, 0, 0], [0, 1, 0, 0]]
    assert entropy_mask(entropy, mask, 0.5).dtype == torch.bool


def test_entropy_mask_ties_and_edge_cases() -> None:
    # ties at the threshold are all kept (TRL's >= rule): 4 equal entropies, q = 0.5 -> all 4
    flat = torch.full((2, 3), 1.5)
    assert entropy_mask(flat, MASK, 0.5).tolist() == MASK.bool().tolist()
    # Quantile_0.5 over {1, 2, 2} = 2 -> both 2s (2 of 3 tokens)
    tied = torch.tensor([[1.0, 2.0, 0.0], [2.0, 0.0, 0.0]])
    assert entropy_mask(tied, MASK, 0.5).tolist() == [[0, 1, 0], [1, 0, 0]]
    # no real token: nothing selected
    assert not entropy_mask(flat, torch.zeros(2, 3), 0.5).any()
    with pytest.raises(ValueError, match=r"quantile must be in \[0, 1\]"):
        entropy_mask(flat, MASK, 1.5)
    with pytest.raises(ValueError, match="entropy and mask"):
        entropy_mask(flat, torch.ones(2, 4), 0.5)


def test_entropy_mask_in_policy_loss_masks_the_surrogate_not_the_kl() -> None:
    # on-policy, A = [1, -2], logp = -1, ref = -2 -> k3 = e^-1 at every token, beta = 0.5;
    # E selects token (0, 1) only; dapo normaliser stays 3 real tokens:
    # loss = (-A_0 * 1 + beta * 3 e^-1) / 3;  grad = (-A_i E_it + beta (1 - e^-1)) M_it / 3
    logp = torch.full((2, 3), -1.0, requires_grad=True)
    ref = torch.full((2, 3), -2.0)
    adv = torch.tensor([1.0, -2.0])
    sel = torch.tensor([[0, 1, 0], [0, 0, 0]], dtype=torch.bool)
    loss, stats = policy_loss(
        logp, logp.detach(), adv, MASK, ref_logp=ref, beta=0.5, entropy_mask=sel
    )
    e = math.exp(-1)
    assert loss.item() == pytest.approx((-1.0 + 0.5 * 3 * e) / 3, abs=1e-7)
    loss.backward()
    k = 0.5 * (1 - e) / 3
    assert logp.grad is not None
    torch.testing.assert_close(
        logp.grad, torch.tensor([[k, -1 / 3 + k, 0.0], [k, 0.0, 0.0]]), rtol=0, atol=1e-7
    )
    assert stats["kl"].item() == pytest.approx(e, abs=1e-7)  # over every real token


def test_entropy_mask_of_ones_changes_nothing() -> None:
    torch.manual_seed(5)
    logp = -torch.rand(2, 3)
    old = logp + 0.2 * torch.randn(2, 3)
    adv = torch.tensor([0.5, -1.5])
    base, _ = policy_loss(logp, old, adv, MASK)
    ones, _ = policy_loss(logp, old, adv, MASK, entropy_mask=torch.ones(2, 3, dtype=torch.bool))
    assert torch.equal(base, ones)
    with pytest.raises(ValueError, match="entropy_mask"):
        policy_loss(logp, old, adv, MASK, entropy_mask=torch.ones(2, 4))
