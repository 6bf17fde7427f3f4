"""Engine-mismatch correction (groupwise.core.correction) against hand-computed numbers."""

from __future__ import annotations

import math

import pytest
import torch

from groupwise.core import (
    CORRECTIONS,
    CorrectionBounds,
    correction_metrics,
    importance_correction,
    policy_loss,
)
from groupwise.core.correction import empty_totals, merge_totals
from groupwise.registry import UnknownNameError

# Three rows: the last column is padding with a large disagreement that must be ignored.
# log_ratio = old - behaviour on the mask: row 0 [0.5, -1, 0], row 1 [2], row 2 [-0.1] * 3
OLD = torch.tensor([[-1.0, -2.0, -0.5, 9.0], [-1.0, 5.0, 5.0, 5.0], [-0.2, -0.2, -0.2, -5.0]])
BEHAVIOUR = torch.tensor([[-1.5, -1.0, -0.5, -9.0], [-3.0, 0.0, 0.0, 0.0], [-0.1, -0.1, -0.1, 7.0]])
MASK = torch.tensor([[1, 1, 1, 0], [1, 0, 0, 0], [1, 1, 1, 0]])
E = math.e


def _weights(mode: str, lo: float | None, hi: float | None) -> torch.Tensor:
    return importance_correction(OLD, BEHAVIOUR, MASK, mode, CorrectionBounds(lo, hi)).weights


def test_names() -> None:
    assert CORRECTIONS.names() == (
        "token_truncate",
        "token_mask",
        "sequence_truncate",
        "sequence_mask",
    )


def test_token_truncate() -> None:
    # ratios e^0.5, e^-1, 1 | e^2 = 7.389 -> 3 | e^-0.1 (x3); padding 0
    want = [[E**0.5, E**-1, 1.0, 0.0], [3.0, 0.0, 0.0, 0.0], [E**-0.1] * 3 + [0.0]]
    torch.testing.assert_close(_weights("token_truncate", None, 3.0), torch.tensor(want))
    # a lower bound lifts e^-1 = 0.368 and e^-0.1 = 0.905 to 0.95
    want = [[E**0.5, 0.95, 1.0, 0.0], [3.0, 0.0, 0.0, 0.0], [0.95] * 3 + [0.0]]
    torch.testing.assert_close(_weights("token_truncate", 0.95, 3.0), torch.tensor(want))


def test_token_mask() -> None:
    c = importance_correction(OLD, BEHAVIOUR, MASK, "token_mask", CorrectionBounds(0.5, 3.0))
    # e^-1 = 0.368 < 0.5 and e^2 = 7.389 > 3 are dropped
    want = [[E**0.5, 0.0, 1.0, 0.0], [0.0] * 4, [E**-0.1] * 3 + [0.0]]
    torch.testing.assert_close(c.weights, torch.tensor(want))
    kept = [[True, False, True, False], [False] * 4, [True, True, True, False]]
    assert c.kept.tolist() == kept
    m = correction_metrics(c.totals())
    assert m["sampling/masked_share"] == pytest.approx(2 / 7, abs=1e-12)
    assert m["sampling/importance_sampling_ratio/min"] == 0.0  # a dropped token's weight
    assert m["sampling/importance_sampling_ratio/max"] == pytest.approx(E**0.5, rel=1e-6)
    mean = (E**0.5 + 1.0 + 3 * E**-0.1) / 7
    assert m["sampling/importance_sampling_ratio/mean"] == pytest.approx(mean, rel=1e-6)


def test_sequence_truncate() -> None:
    # s_0 = e^(0.5 - 1 + 0) = e^-0.5, s_1 = e^2 -> 3, s_2 = e^-0.3, on every token of the row
    want = [[E**-0.5] * 3 + [0.0], [3.0, 0.0, 0.0, 0.0], [E**-0.3] * 3 + [0.0]]
    c = importance_correction(OLD, BEHAVIOUR, MASK, "sequence_truncate")
    torch.testing.assert_close(c.weights, torch.tensor(want))
    assert c.kept.tolist() == MASK.bool().tolist()
    torch.testing.assert_close(c.ratios, torch.tensor([E**-0.5, 3.0, E**-0.3]))  # per sequence


def test_sequence_mask() -> None:
    # [0.65, 3]: s_0 = e^-0.5 = 0.607 and s_1 = 7.389 drop their whole rows, s_2 = 0.741 stays
    c = importance_correction(OLD, BEHAVIOUR, MASK, "sequence_mask", CorrectionBounds(0.65, 3.0))
    want = [[0.0] * 4, [0.0] * 4, [E**-0.3] * 3 + [0.0]]
    torch.testing.assert_close(c.weights, torch.tensor(want))
    assert c.kept.tolist() == [[False] * 4, [False] * 4, [True, True, True, False]]
    m = correction_metrics(c.totals())
    assert m["sampling/masked_share"] == pytest.approx(4 / 7, abs=1e-12)
    assert m["sampling/importance_sampling_ratio/mean"] == pytest.approx(E**-0.3 / 3, rel=1e-6)
    assert m["sampling/importance_sampling_ratio/min"] == 0.0
    # the default bounds [None, 3]: only s_1 > 3 is dropped (one token)
    default = importance_correction(OLD, BEHAVIOUR, MASK)
    assert default.kept.sum().item() == 6


def test_logp_difference_is_over_the_mask_only() -> None:
    m = correction_metrics(importance_correction(OLD, BEHAVIOUR, MASK, "token_truncate").totals())
    # |0.5|, |-1|, 0, |2|, 0.1 * 3; the padding's 18 and 12 are not counted
    assert m["sampling/sampling_logp_difference/mean"] == pytest.approx(3.8 / 7, rel=1e-6)
    assert m["sampling/sampling_logp_difference/max"] == pytest.approx(2.0)
    assert m["sampling/masked_share"] == 0.0


def test_a_row_without_tokens_gets_zero_weight_and_no_statistic() -> None:
    mask = MASK.clone()
    mask[1] = 0
    c = importance_correction(OLD, BEHAVIOUR, mask, "sequence_truncate")
    assert c.weights[1].tolist() == [0.0] * 4
    torch.testing.assert_close(c.ratios, torch.tensor([E**-0.5, E**-0.3]))


def test_huge_sequence_ratios_are_dropped_not_nan() -> None:
    old = torch.zeros(1, 3)
    behaviour = torch.full((1, 3), -60.0)  # e^180 overflows float32
    mask = torch.ones(1, 3)
    masked = importance_correction(old, behaviour, mask, "sequence_mask").weights
    assert masked.tolist() == [[0.0, 0.0, 0.0]]
    open_top = CorrectionBounds(0.5, None)
    truncated = importance_correction(old, behaviour, mask, "sequence_truncate", open_top)
    assert bool(torch.isinf(truncated.weights).all())  # no upper bound: as asked, not NaN


def test_weights_are_detached() -> None:
    old = OLD.clone().requires_grad_(True)
    for mode in CORRECTIONS.names():
        c = importance_correction(old, BEHAVIOUR, MASK, mode)
        assert not c.weights.requires_grad


def test_unknown_mode_lists_the_valid_names() -> None:
    valid = "token_truncate, token_mask, sequence_truncate, sequence_mask"
    with pytest.raises(
        UnknownNameError,
        match=f"^algorithm.vllm_importance_sampling_mode: unknown name 'nope'; valid: {valid}$",
    ):
        importance_correction(OLD, BEHAVIOUR, MASK, "nope")


def test_bounds_and_shapes_are_checked() -> None:
    with pytest.raises(ValueError, match="clip_min"):
        CorrectionBounds(3.0, 2.0)
    with pytest.raises(ValueError, match="mask must be"):
        importance_correction(OLD, BEHAVIOUR, MASK[:, :2])


def test_totals_of_parts_add_up_to_the_whole() -> None:
    mode, bounds = "token_mask", CorrectionBounds(0.5, 3.0)
    whole = importance_correction(OLD, BEHAVIOUR, MASK, mode, bounds).totals()
    merged = empty_totals()
    for rows in (slice(0, 1), slice(1, 3)):
        part = importance_correction(OLD[rows], BEHAVIOUR[rows], MASK[rows], mode, bounds)
        merged = merge_totals(merged, part.totals())
    assert merged == pytest.approx(whole, rel=1e-12)
    empty = correction_metrics(empty_totals())
    assert set(empty.values()) == {0.0}


def _loss(weights: torch.Tensor | None, beta: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    logp = torch.tensor([[-1.0, -2.0, -0.5], [-0.3, -0.7, -1.1]], requires_grad=True)
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 1.0]])
    ref = logp.detach() - 0.2
    loss, _ = policy_loss(
        logp, logp.detach(), torch.tensor([1.0, -2.0]), mask, ref_logp=ref, beta=beta,
        token_weights=weights,
    )  # fmt: skip
    loss.backward()
    assert logp.grad is not None
    return loss.detach(), logp.grad


def test_unit_weights_change_nothing() -> None:
    for beta in (0.0, 0.1):
        plain, plain_grad = _loss(None, beta)
        ones, ones_grad = _loss(torch.ones(2, 3), beta)
        assert torch.equal(plain, ones) and torch.equal(plain_grad, ones_grad)


def test_weights_scale_the_policy_term_only() -> None:
    w = torch.tensor([[0.5, 2.0, 7.0], [0.0, 1.0, 3.0]])
    _, grad = _loss(w)
    # ratio 1, dapo over 5 tokens: d L / d logp_it = -w_it A_i M_it / 5
    want = -torch.tensor([[0.5 * 1, 2.0 * 1, 0.0], [0.0, 1.0 * -2, 3.0 * -2]]) / 5
    torch.testing.assert_close(grad, want, rtol=1e-6, atol=1e-7)
    kl_only, _ = _loss(torch.zeros(2, 3), beta=0.1)  # all dropped: the KL term stays
    x = torch.tensor(0.2)  # ref - logp = -0.2: k3 = e^-0.2 + 0.2 - 1
    torch.testing.assert_close(kl_only, 0.1 * (torch.exp(-x) + x - 1), rtol=1e-6, atol=1e-8)
