import pytest
import torch

from groupwise.core import group_advantages

# Group [1, 0, 0, 1]: mean 0.5, deviations +-0.5, unbiased var = 4 * 0.25 / 3 = 1/3,
# std = 0.5773502691896258, A = +-0.5 / (0.5773502691896258 + 1e-4) = +-0.8658754297607016
A_1001 = 0.8658754297607016


def test_group_scaling_hand_numbers() -> None:
    adv, zero_std = group_advantages(torch.tensor([1.0, 0.0, 0.0, 1.0]), group_size=4)
    expected = torch.tensor([A_1001, -A_1001, -A_1001, A_1001])
    torch.testing.assert_close(adv, expected, rtol=0, atol=1e-6)
    assert adv.dtype == torch.float32
    assert zero_std.tolist() == [False]


def test_two_groups_group_vs_batch_vs_none() -> None:
    # group 0: [1, 0, 0, 1] (mean 0.5); group 1: [3, 1, 1, 1] (mean 1.5, dev [1.5, -.5, -.5, -.5],
    # unbiased var = (2.25 + 3 * 0.25) / 3 = 1, std = 1)
    rewards = torch.tensor([1, 0, 0, 1, 3, 1, 1, 1], dtype=torch.int64)
    group, zs = group_advantages(rewards, 4, "group")
    g1_hi, g1_lo = 1.5 / 1.0001, 0.5 / 1.0001
    torch.testing.assert_close(
        group,
        torch.tensor([A_1001, -A_1001, -A_1001, A_1001, g1_hi, -g1_lo, -g1_lo, -g1_lo]),
        rtol=0,
        atol=1e-6,
    )
    assert zs.tolist() == [False, False]
    # batch: mean 1, sum sq dev = 0+1+1+0+4+0+0+0 = 6, unbiased var = 6/7, std = 0.9258200997725514
    batch, _ = group_advantages(rewards, 4, "batch")
    d = 0.9258200997725514 + 1e-4
    torch.testing.assert_close(
        batch,
        torch.tensor([0.5, -0.5, -0.5, 0.5, 1.5, -0.5, -0.5, -0.5]) / d,
        rtol=0,
        atol=1e-6,
    )
    none, _ = group_advantages(rewards, 4, "none")
    assert none.tolist() == [0.5, -0.5, -0.5, 0.5, 1.5, -0.5, -0.5, -0.5]


@pytest.mark.parametrize("scale", ["group", "batch", "none"])
def test_equal_rewards_give_exact_zero(scale: str) -> None:
    # 0.1 is not representable: a float mean could differ from r_i by an ulp; must still be 0.
    rewards = torch.tensor([0.1, 0.1, 0.1, 1.0, 0.0, 0.0, 0.7, 0.7, 0.7])
    adv, zero_std = group_advantages(rewards, 3, scale)
    assert zero_std.tolist() == [True, False, True]
    assert adv[:3].tolist() == [0.0, 0.0, 0.0]
    assert adv[6:].tolist() == [0.0, 0.0, 0.0]
    assert adv[3] > 0 > adv[4]


def test_group_size_two() -> None:
    # [2, 0]: mean 1, unbiased std = sqrt(2) = 1.4142135623730951
    adv, _ = group_advantages(torch.tensor([2.0, 0.0]), 2)
    a = 1.0 / (1.4142135623730951 + 1e-4)
    torch.testing.assert_close(adv, torch.tensor([a, -a]), rtol=0, atol=1e-6)


@pytest.mark.parametrize(
    ("rewards", "group_size", "match"),
    [
        (torch.zeros(2, 2), 2, "1-D"),
        (torch.zeros(5), 2, "divisible"),
        (torch.zeros(4), 1, ">= 2"),
        (torch.tensor([1.0, float("nan"), float("nan"), 0.0]), 2, "2 NaN"),
    ],
)
def test_validation(rewards: torch.Tensor, group_size: int, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        group_advantages(rewards, group_size)


def test_unknown_scale_lists_valid_names() -> None:
    with pytest.raises(
        ValueError, match="algorithm.scale_rewards: unknown name 'foo'; valid: group, batch, none"
    ):
        group_advantages(torch.zeros(4), 2, "foo")
