"""pass@k (Chen et al. 2021) and maj@k against hand-computed values."""

from __future__ import annotations

from math import comb

import pytest

from groupwise.eval.passk import (
    maj_at_k,
    majority_vote,
    mean_pass_at_k,
    normalize_answer,
    pass_at_k,
)


def test_pass_at_k_hand_computed() -> None:
    assert pass_at_k(5, 2, 2) == pytest.approx(1 - 3 / 10)  # 1 - C(3,2)/C(5,2)
    assert pass_at_k(4, 1, 2) == pytest.approx(1 - 3 / 6)  # 1 - C(3,2)/C(4,2)
    assert pass_at_k(10, 3, 5) == pytest.approx(1 - 21 / 252)  # 1 - C(7,5)/C(10,5)


def test_pass_at_k_edges() -> None:
    assert pass_at_k(10, 0, 1) == 0.0
    assert pass_at_k(10, 0, 10) == 0.0
    assert pass_at_k(10, 10, 3) == 1.0
    assert pass_at_k(5, 4, 2) == 1.0  # n - c = 1 < k: every pair holds a correct sample
    assert pass_at_k(1, 1, 1) == 1.0


@pytest.mark.parametrize(("n", "c"), [(1, 0), (7, 3), (16, 5), (200, 37)])
def test_pass_at_1_is_fraction_correct(n: int, c: int) -> None:
    assert pass_at_k(n, c, 1) == pytest.approx(c / n)


@pytest.mark.parametrize(("n", "c", "k"), [(20, 7, 4), (50, 10, 10), (30, 1, 29), (12, 6, 6)])
def test_pass_at_k_matches_binomials(n: int, c: int, k: int) -> None:
    assert pass_at_k(n, c, k) == pytest.approx(1 - comb(n - c, k) / comb(n, k), rel=1e-12)


def test_pass_at_k_stable_for_large_n() -> None:
    value = pass_at_k(100_000, 3, 1000)
    assert 0.0 < value < 1.0
    assert value == pytest.approx(1 - comb(99_997, 1000) / comb(100_000, 1000), rel=1e-9)


@pytest.mark.parametrize(
    ("n", "c", "k"), [(5, 2, 6), (5, 2, 0), (5, 6, 1), (5, -1, 1), (0, 0, 1), (3, 1, -2)]
)
def test_pass_at_k_rejects_bad_values(n: int, c: int, k: int) -> None:
    with pytest.raises(ValueError):
        pass_at_k(n, c, k)


def test_pass_at_k_rejects_non_ints() -> None:
    with pytest.raises(TypeError):
        pass_at_k(5.0, 2, 1)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        pass_at_k(5, True, 1)


def test_mean_pass_at_k() -> None:
    assert mean_pass_at_k([2, 0, 5], 5, 2) == pytest.approx((0.7 + 0.0 + 1.0) / 3)
    assert mean_pass_at_k([1, 3], 4, 1) == pytest.approx(0.5)
    with pytest.raises(ValueError):
        mean_pass_at_k([], 5, 1)


def test_majority_vote() -> None:
    assert majority_vote(["3", "4", "4", "3", "4"]) == "4"
    assert majority_vote(["7", "5", "5", "7"]) == "7"  # tie: first seen wins
    assert majority_vote([None, None, "2", "1", "1"]) == "1"  # None never counts
    assert majority_vote([None, None]) is None
    assert majority_vote([]) is None
    assert majority_vote([" 1,000 ", "1000.0", "999"]) == "1000"  # normalised before counting


def test_normalize_answer() -> None:
    assert normalize_answer("  $42$. ") == "42"
    assert normalize_answer("-3.50") == "-3.5"
    assert normalize_answer("Yes") == "yes"
    assert normalize_answer("x  +  1") == "x + 1"


def test_maj_at_k() -> None:
    answers = [
        ["4", "5", "4", "9"],  # first 3: 4 wins -> correct
        ["1", "2", "2", "1"],  # first 3: 2 wins -> wrong (ref 1)
        [None, None, "6", "6"],  # first 3: only "6" -> correct
        [None, None, None, "8"],  # first 3: no answer -> wrong
    ]
    refs = ["4", "1", "6", "8"]
    assert maj_at_k(answers, refs, 3) == pytest.approx(0.5)
    assert maj_at_k(answers, refs, 1) == pytest.approx(0.5)  # "4" and "1" right, two Nones
    assert maj_at_k(answers, refs, 4) == pytest.approx(1.0)  # 1,2,2,1 tie -> "1"; "8" alone


def test_maj_at_k_errors() -> None:
    with pytest.raises(ValueError, match="references"):
        maj_at_k([["1"]], ["1", "2"], 1)
    with pytest.raises(ValueError, match="fewer than k"):
        maj_at_k([["1"]], ["1"], 2)
    with pytest.raises(ValueError):
        maj_at_k([["1"]], ["1"], 0)
    with pytest.raises(ValueError):
        maj_at_k([], [], 1)


def test_voted_answer_for_maj_at_k() -> None:
    from groupwise.eval.evaluate import voted_answer

    assert voted_answer("23 + 45 = 68", "68") == "68.0"
    assert voted_answer("no number", "68") is None
    assert voted_answer("I think\nParis\n", "Paris") == "Paris"
    assert voted_answer("", "Paris") is None
