"""The generic text penalties: repeated n-grams and length outside a range."""

from __future__ import annotations

import pytest

from groupwise.rewards.text import length_penalty, repetition_penalty


@pytest.mark.parametrize(
    ("text", "n", "expected"),
    [
        ("the cat sat on the mat", 3, 0.0),
        ("a b c a b c a b c", 3, -4 / 7),
        ("yes yes yes yes", 1, -0.75),
        ("Yes, YES! yes.", 1, -2 / 3),
        ("too short", 3, 0.0),
        ("", 3, 0.0),
    ],
)
def test_repetition_penalty(text: str, n: int, expected: float) -> None:
    assert repetition_penalty(["p"], [text], ngram_size=n) == [pytest.approx(expected)]


def test_length_penalty() -> None:
    texts = ["", "one two", "one two three four five", " ".join(["w"] * 15), " ".join(["w"] * 40)]
    got = length_penalty(["p"] * 5, texts, min_words=5, max_words=10)
    assert got == pytest.approx([-1.0, -0.6, 0.0, -0.5, -1.0])
    with pytest.raises(ValueError, match="min_words <= max_words"):
        length_penalty(["p"], ["x"], min_words=5, max_words=2)
