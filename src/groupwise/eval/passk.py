"""pass@k and maj@k: accuracy metrics over several sampled answers per problem.

pass@k is the unbiased estimator of Chen et al. 2021 (HumanEval, arXiv 2107.03374): with
``n >= k`` samples of which ``c`` are correct, the probability that at least one of ``k``
samples drawn without replacement is correct is ``1 - C(n-c, k) / C(n, k)``. The ratio of
binomials is evaluated as the product ``prod_{i=n-c+1}^{n} (1 - k/i)``, which stays in [0, 1]
and never forms the huge binomials themselves.

maj@k (self-consistency, Wang et al. 2022) is the accuracy of the most frequent answer among
the first ``k`` samples of each problem.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence

Normalizer = Callable[[str], str]


def _check_int(name: str, value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from ``n`` samples with ``c`` correct (0 <= c <= n, 1 <= k <= n)."""
    for name, value in (("n", n), ("c", c), ("k", k)):
        _check_int(name, value)
    if n < 1:
        raise ValueError(f"n (samples per problem) must be >= 1, got {n}")
    if not 0 <= c <= n:
        raise ValueError(f"c (correct samples) must be in [0, n={n}], got {c}")
    if not 1 <= k <= n:
        raise ValueError(f"k must be in [1, n={n}], got {k}: pass@k needs at least k samples")
    if n - c < k:  # every draw of k samples includes a correct one
        return 1.0
    all_wrong = 1.0  # C(n-c, k) / C(n, k)
    for i in range(n - c + 1, n + 1):
        all_wrong *= 1.0 - k / i
    return 1.0 - all_wrong


def mean_pass_at_k(correct_counts: Sequence[int], n: int, k: int) -> float:
    """pass@k averaged over problems, each with ``n`` samples and ``correct_counts[i]`` correct."""
    if len(correct_counts) == 0:
        raise ValueError("mean_pass_at_k needs at least one problem")
    return sum(pass_at_k(n, c, k) for c in correct_counts) / len(correct_counts)


_NUMBER = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")


def normalize_answer(answer: str) -> str:
    """A canonical form for comparing answers.

    Whitespace is collapsed, case folded, surrounding ``$`` and a trailing period dropped; a
    plain number loses thousands separators and trailing zeros (``"1,000.0"`` -> ``"1000"``).
    """
    text = " ".join(answer.split()).lstrip("$ ").rstrip("$ .").casefold()
    number = text.replace(",", "")
    if _NUMBER.fullmatch(number):
        value = float(number)
        if value.is_integer() and abs(value) < 2**53:
            return str(int(value))
        return repr(value)
    return text


def majority_vote(
    answers: Sequence[str | None], normalize: Normalizer = normalize_answer
) -> str | None:
    """The most frequent normalised non-None answer; ties go to the one seen first.

    None (no answer could be extracted) never wins; all-None gives None.
    """
    counts: dict[str, int] = {}  # insertion order = first occurrence
    for answer in answers:
        if answer is None:
            continue
        key = normalize(answer)
        counts[key] = counts.get(key, 0) + 1
    if not counts:
        return None
    best = max(counts.values())
    return next(key for key, count in counts.items() if count == best)


def maj_at_k(
    answers_per_problem: Sequence[Sequence[str | None]],
    references: Sequence[str],
    k: int,
    normalize: Normalizer = normalize_answer,
) -> float:
    """Share of problems whose majority answer among the first ``k`` samples is the reference.

    Answers and references are compared after ``normalize``. Raises ValueError when the
    lengths differ, there are no problems, ``k < 1`` or a problem has fewer than ``k`` samples.
    """
    _check_int("k", k)
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if len(answers_per_problem) != len(references):
        raise ValueError(
            f"{len(answers_per_problem)} answer lists but {len(references)} references"
        )
    if not references:
        raise ValueError("maj_at_k needs at least one problem")
    hits = 0
    for i, (answers, reference) in enumerate(zip(answers_per_problem, references, strict=True)):
        if len(answers) < k:
            raise ValueError(f"problem {i} has {len(answers)} samples, fewer than k={k}")
        vote = majority_vote(answers[:k], normalize)
        hits += vote is not None and vote == normalize(reference)
    return hits / len(references)


__all__ = ["maj_at_k", "majority_vote", "mean_pass_at_k", "normalize_answer", "pass_at_k"]
