"""Each entry of core's registries, called directly, against hand-computed numbers."""

import pytest
import torch

from groupwise.core import (
    ADVANTAGE_SCALINGS,
    AGGREGATIONS,
    IMPORTANCE_RATIOS,
    IMPORTANCE_SAMPLING_LEVELS,
    KL_ESTIMATORS,
    LOSS_TYPES,
    OBJECTIVES,
    SCALE_REWARDS,
    Normalisers,
)
from groupwise.registry import UnknownNameError

MASK = torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0]])


def test_names_and_compatibility_tuples() -> None:
    assert AGGREGATIONS.names() == LOSS_TYPES == ("grpo", "dapo", "dr_grpo")
    assert KL_ESTIMATORS.names() == ("k1", "k2", "k3")
    assert ADVANTAGE_SCALINGS.names() == SCALE_REWARDS == ("group", "batch", "none")
    assert IMPORTANCE_RATIOS.names() == IMPORTANCE_SAMPLING_LEVELS == ("token", "sequence")
    assert OBJECTIVES.names() == ("clip", "cispo", "sapo")
    assert isinstance(LOSS_TYPES, tuple) and isinstance(SCALE_REWARDS, tuple)


@pytest.mark.parametrize(
    ("registry", "key", "valid"),
    [
        (AGGREGATIONS, "algorithm.loss_type", "grpo, dapo, dr_grpo"),
        (KL_ESTIMATORS, "algorithm.kl_estimator", "k1, k2, k3"),
        (ADVANTAGE_SCALINGS, "algorithm.scale_rewards", "group, batch, none"),
        (IMPORTANCE_RATIOS, "algorithm.importance_sampling_level", "token, sequence"),
        (OBJECTIVES, "algorithm.objective", "clip, cispo, sapo"),
    ],
)
def test_unknown_names_list_the_valid_ones(registry: object, key: str, valid: str) -> None:
    with pytest.raises(UnknownNameError, match=f"^{key}: unknown name 'nope'; valid: {valid}$"):
        registry.get("nope")  # type: ignore[attr-defined]


def test_kl_estimator_entries() -> None:
    # x = ref_logp - logp = [-1, 1, 0, 30]; k3 clamps 30 to 20: e^20 - 21 = 485165174.40979
    x = torch.tensor([-1.0, 1.0, 0.0, 30.0])
    torch.testing.assert_close(KL_ESTIMATORS.get("k1")(x), torch.tensor([1.0, -1.0, 0.0, -30.0]))
    torch.testing.assert_close(KL_ESTIMATORS.get("k2")(x), torch.tensor([0.5, 0.5, 0.0, 450.0]))
    k3 = KL_ESTIMATORS.get("k3")(x)
    expected = torch.tensor([0.36787944117144233, 0.7182818284590451, 0.0, 485165174.40979])
    torch.testing.assert_close(k3, expected, rtol=1e-7, atol=1e-7)


def test_advantage_scaling_entries() -> None:
    # rewards [[1, 0], [3, 1]]: centred [[0.5, -0.5], [1, -1]]; group stds (Bessel) 0.70710678,
    # 1.41421356; batch std of [1, 0, 3, 1] (mean 1.25): sqrt(4.75 / 3) = 1.25830574
    r = torch.tensor([[1.0, 0.0], [3.0, 1.0]])
    c = r - r.mean(dim=1, keepdim=True)
    eps = 1e-4
    group = ADVANTAGE_SCALINGS.get("group")(c, r, eps)
    torch.testing.assert_close(
        group,
        torch.tensor([[0.5, -0.5], [1.0, -1.0]]) / torch.tensor([[0.70710678 + eps], [1.41421356 + eps]]),
        rtol=1e-6,
        atol=0,
    )  # fmt: skip
    batch = ADVANTAGE_SCALINGS.get("batch")(c, r, eps)
    torch.testing.assert_close(
        batch, torch.tensor([[0.5, -0.5], [1.0, -1.0]]) / (1.25830574 + eps), rtol=1e-6, atol=0
    )
    assert ADVANTAGE_SCALINGS.get("none")(c, r, eps) is c


def test_importance_ratio_entries() -> None:
    old = torch.tensor([[-1.0, -1.0, -1.0], [-2.0, -2.0, -2.0]])
    logp = old + torch.tensor([[0.2, -0.4, 5.0], [0.1, 7.0, 7.0]])
    token = IMPORTANCE_RATIOS.get("token")(logp, old, MASK)
    torch.testing.assert_close(
        token, torch.tensor([[0.2, -0.4, 5.0], [0.1, 7.0, 7.0]]).exp(), rtol=1e-6, atol=0
    )
    # sequence: masked mean log-ratio, row 0 (0.2 - 0.4) / 2 = -0.1, row 1 0.1 / 1
    seq = IMPORTANCE_RATIOS.get("sequence")(logp, old, MASK)
    s0, s1 = torch.tensor(-0.1).exp().item(), torch.tensor(0.1).exp().item()
    torch.testing.assert_close(seq, torch.tensor([[s0] * 3, [s1] * 3]), rtol=1e-6, atol=0)


def test_aggregation_entries() -> None:
    # per-token [[1, 2, 3], [4, 5, 6]] masked -> [[1, 2, 0], [4, 0, 0]]
    masked = torch.tensor([[1.0, 2.0, 0.0], [4.0, 0.0, 0.0]])
    norm = Normalisers(num_sequences=2.0, num_tokens=None, max_completion_length=3)
    # grpo: (3 / 2 + 4 / 1) / 2 = 2.75; dapo: 7 / 3; dr_grpo: 7 / (2 * 3)
    assert AGGREGATIONS.get("grpo")(masked, MASK, norm).item() == pytest.approx(2.75, abs=1e-7)
    assert AGGREGATIONS.get("dapo")(masked, MASK, norm).item() == pytest.approx(7 / 3, abs=1e-7)
    assert AGGREGATIONS.get("dr_grpo")(masked, MASK, norm).item() == pytest.approx(7 / 6)
    # dapo with a global token count; dr_grpo without max_completion_length fails
    tokens = Normalisers(2.0, num_tokens=10.0, max_completion_length=3)
    assert AGGREGATIONS.get("dapo")(masked, MASK, tokens).item() == pytest.approx(0.7)
    with pytest.raises(ValueError, match="requires max_completion_length"):
        AGGREGATIONS.get("dr_grpo")(masked, MASK, Normalisers(2.0))


def test_variants_registered_outside_the_package_are_used_by_name() -> None:
    """The recipe in docs/architecture.md: register an aggregation and an objective here and
    select them by name through policy_loss."""
    from groupwise.core import ObjectiveParams, policy_loss

    def batch_sum(masked: torch.Tensor, mask: torch.Tensor, norm: Normalisers) -> torch.Tensor:
        return masked.sum()  # no normaliser at all

    def reinforce(
        ratio: torch.Tensor, advantages: torch.Tensor, logp: torch.Tensor, params: ObjectiveParams
    ) -> torch.Tensor:
        return -advantages[:, None] * logp  # plain REINFORCE

    AGGREGATIONS.add("test_batch_sum", batch_sum)
    OBJECTIVES.add("test_reinforce", reinforce)
    try:
        logp = torch.tensor([[-1.0, -2.0, -3.0], [-0.5, -1.5, -2.5]], requires_grad=True)
        adv = torch.tensor([1.0, -2.0])
        loss, _ = policy_loss(
            logp, logp.detach(), adv, MASK, loss_type="test_batch_sum", objective="test_reinforce"
        )
        # -(1 * (-1 - 2)) - (-2 * -0.5) = 3 - 1 = 2, over the mask's tokens only
        assert loss.item() == pytest.approx(2.0, abs=1e-6)
        loss.backward()
        assert logp.grad is not None
        torch.testing.assert_close(logp.grad, torch.tensor([[-1.0, -1.0, 0.0], [2.0, 0.0, 0.0]]))
    finally:
        AGGREGATIONS.unregister("test_batch_sum")
        OBJECTIVES.unregister("test_reinforce")
    assert "test_batch_sum" not in AGGREGATIONS and "test_reinforce" not in OBJECTIVES
