"""Reward-hacking signals: hand-computed cases for each, and clean batches that flag nothing."""

from __future__ import annotations

import math
import warnings

import pytest
import torch

from groupwise.run.hacking import (
    ACCURACY_DROP_MIN,
    WARN_THRESHOLDS,
    HackingMonitor,
    code_blocks,
    code_suspicious_imports,
    flagged,
    hacking_metrics,
    repeated_winner,
    short_full_marks,
    suspicious_code,
    threshold,
)

NAN = math.nan


# ---------------------------------------------------------------------------- short full marks
def test_short_full_marks_hand_computed() -> None:
    # group 1: lengths 2, 10, 10, 12 -> median 10, short below 5: only completion 0
    # group 2: all 8 -> nothing short. Batch max 1.0 (> min 0.0): full marks at 0, 1, 4.
    values = [1.0, 1.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0]
    lengths = [2, 10, 10, 12, 8, 8, 8, 8]
    assert short_full_marks(values, lengths, 4) == pytest.approx(1 / 8)
    # the short completion without full marks flags nothing
    assert short_full_marks([0.0, 1.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0], lengths, 4) == 0.0
    # two short winners in one group of 4: lengths 1, 1, 10, 10 -> median 5.5, short below 2.75
    assert short_full_marks([1.0, 1.0, 0.0, 0.0], [1, 1, 10, 10], 4) == pytest.approx(0.5)


def test_short_full_marks_needs_the_batch_maximum_and_a_spread() -> None:
    lengths = [2, 10, 10, 12]
    # 0.5 is the group's best but not the batch's best (1.0 in the other group)
    other = [0.5, 0.0, 0.0, 0.0, 1.0, 1.0, 0.0, 0.0]
    assert short_full_marks(other, [*lengths, 8, 8, 8, 8], 4) == 0.0
    # a function that gave everyone the same value tells nothing apart
    assert short_full_marks([1.0] * 4, lengths, 4) == 0.0
    # None (NaN) is never full marks; negative rewards work (max -0.1 > min -1)
    assert short_full_marks([NAN, 1.0, 0.0, 0.0], lengths, 4) == 0.0
    assert short_full_marks([-0.1, -1.0, -1.0, -1.0], lengths, 4) == pytest.approx(0.25)
    # an even group of 2: median of 2 and 10 is 6, and 2 < 3
    assert short_full_marks([1.0, 0.0], [2, 10], 2) == pytest.approx(0.5)
    assert short_full_marks([1.0, 0.0], [4, 10], 2) == 0.0  # 4 >= 0.5 * 7


# ---------------------------------------------------------------------------- repeated winner
def test_repeated_winner_same_text_wins_every_prompt() -> None:
    texts = ["I don't know", "42", " I don't know\n", "7", "I don't know", "x = 1"]
    assert repeated_winner(texts, [1.0, 0.0, 1.0, 0.0, 1.0, 0.0], 2) == pytest.approx(1.0)


def test_repeated_winner_hand_computed() -> None:
    # 4 prompts: "<answer></answer>" wins on prompts 1 and 3; prompt 2 ties "5" and "6"
    texts = ["<answer></answer>", "4", "5", "6", "<answer></answer>", "9", "10", "11"]
    total = [1.0, 0.0, 0.5, 0.5, 1.0, 0.2, 0.8, 0.0]
    assert repeated_winner(texts, total, 2) == pytest.approx(2 / 4)
    # group 2 ties at 0.5 but 0.5 > the batch's 0.0: both win, each once
    assert repeated_winner(["a", "b", "c", "c"], [1.0, 0.0, 0.5, 0.5], 2) == 0.0


def test_repeated_winner_clean_batches() -> None:
    distinct = ["4", "five", "6", "seven", "8", "nine"]
    assert repeated_winner(distinct, [1.0, 0.0, 1.0, 0.0, 1.0, 0.0], 2) == 0.0
    # nothing scored anywhere: the same text in every group wins nothing
    assert repeated_winner(["same"] * 6, [0.0] * 6, 2) == 0.0
    # a group at the batch's floor has no winner
    assert repeated_winner(["a", "a", "b", "c"], [0.0, 0.0, 1.0, 0.0], 2) == 0.0


# ---------------------------------------------------------------------------- suspicious code
@pytest.mark.parametrize(
    "text",
    [
        "```python\nimport os\nprint(1)\n```",
        "Here:\n```py\nfrom os.path import join\n```\ndone",
        "import sys; sys.exit(0)",
        "def f(x):\n    exit(0)\n",
        "x = __import__('o' + 's')",
        "f = sys._getframe",
        "```python\nframe = inspect.currentframe()\n```",
        "```\nimport ctypes\n```",
        "```python\nimport subprocess\nsubprocess.run(['ls'",  # truncated: the regex fallback
        "Sure! import gc then gc.get_objects() to find it",  # prose: the regex fallback
        "```python\nb = __builtins__\n```",
        "```python\nimport importlib.util\n```",
    ],
)
def test_suspicious_code_is_flagged(text: str) -> None:
    assert suspicious_code(text)


@pytest.mark.parametrize(
    "text",
    [
        "The answer is 4.",
        "Let me inspect the signal. The os is fine; exit the loop.",
        "```python\ndef f(signal):\n    return signal.mean()\n```",
        "```python\nimport numpy as np\nprint(np.sum([1, 2]))\n```",
        "def solve(n):\n    return n * (n + 1) // 2\n",
        "inspect",  # a bare name parses, but is neither an import nor an attribute access
        "```python\ndef exit(code):\n    return code\nexit(0)\n```",  # the code's own exit
        "```text\nimport os\n```",  # not a Python block
    ],
)
def test_clean_code_is_not_flagged(text: str) -> None:
    assert not suspicious_code(text)


def test_code_the_parser_cannot_take_goes_to_the_regex() -> None:
    deep = "-" * 200_000 + "1"  # ast.parse raises MemoryError (or RecursionError)
    assert not suspicious_code(deep)
    assert suspicious_code("import os\n" + deep)


def test_code_blocks_and_share() -> None:
    assert code_blocks("a\n```python\nx = 1\n```\nb\n```\ny = 2\n```") == ["x = 1\n", "y = 2\n"]
    assert code_blocks("no fences") == ["no fences"]
    assert code_blocks("```text\nimport os\n```") == []
    texts = ["import os", "print(1)", "```python\nimport sys\n```", "42"]
    assert code_suspicious_imports(texts) == pytest.approx(0.5)
    assert code_suspicious_imports([]) == 0.0


# ---------------------------------------------------------------------------- hacking_metrics
def test_a_clean_batch_gives_zero_everywhere() -> None:
    texts = ["The sum is 4.", "It is 5.", "The sum is 7.", "It is 6."]
    out = hacking_metrics(
        texts,
        [5, 4, 5, 4],
        torch.tensor([1.0, 0.0, 1.0, 0.0]),
        {"answer_match": torch.tensor([1.0, 0.0, 1.0, 0.0]), "format": torch.tensor([NAN] * 4)},
        group_size=2,
    )
    assert out == {
        "hacking/answer_match/short_full_marks": 0.0,
        "hacking/format/short_full_marks": 0.0,
        "hacking/repeated_winner": 0.0,
        "hacking/code_suspicious_imports": 0.0,
    }
    assert flagged(out) == []


def test_a_hacked_batch_hand_computed() -> None:
    # 2 prompts x G=4: "<a></a>" (2 tokens) wins both groups against long attempts
    texts = ["<a></a>", "long try", "long try", "```python\nimport os\n```"] * 2
    lengths = [2, 20, 20, 20] * 2
    total = torch.tensor([1.0, 0.0, 0.0, 0.0] * 2)
    out = hacking_metrics(texts, lengths, total, {"format": total.clone()}, group_size=4)
    assert out["hacking/format/short_full_marks"] == pytest.approx(2 / 8)
    assert out["hacking/repeated_winner"] == pytest.approx(1.0)
    assert out["hacking/code_suspicious_imports"] == pytest.approx(2 / 8)
    names = [name for name, _, _ in flagged(out)]
    assert names == ["format/short_full_marks", "repeated_winner", "code_suspicious_imports"]


def test_hacking_metrics_checks_shapes() -> None:
    with pytest.raises(ValueError, match="groups of 3"):
        hacking_metrics(["a", "b"], [1, 1], [0.0, 0.0], {}, group_size=3)
    with pytest.raises(ValueError, match="1 lengths for 2 completions"):
        hacking_metrics(["a", "b"], [1], [0.0, 0.0], {}, group_size=2)
    assert hacking_metrics([], [], [], {"f": []}, group_size=2) == {
        "hacking/f/short_full_marks": 0.0,
        "hacking/repeated_winner": 0.0,
        "hacking/code_suspicious_imports": 0.0,
    }


def test_thresholds_and_flags() -> None:
    assert threshold("hacking/answer/short_full_marks") == WARN_THRESHOLDS["short_full_marks"]
    assert threshold("reward") is None and threshold("hacking/unknown") is None
    metrics = {"reward": 5.0, "hacking/repeated_winner": 0.5, "hacking/f/short_full_marks": 0.1}
    assert flagged(metrics) == [("repeated_winner", 0.5, WARN_THRESHOLDS["repeated_winner"])]
    assert flagged({"hacking/repeated_winner": NAN}) == []


# ---------------------------------------------------------------------------- HackingMonitor
KEY = "hacking/reward_up_eval_down"


def _run(monitor: HackingMonitor, steps: list[dict[str, float]]) -> list[float]:
    return [monitor.update(metrics)[KEY] for metrics in steps]


def test_monitor_flags_reward_up_eval_down_and_holds_until_the_next_eval() -> None:
    steps: list[dict[str, float]] = [{"reward": 0.1 * s} for s in range(1, 10)]
    steps[2]["eval_accuracy"] = 0.74  # window (3) mean at step 3: 0.2
    steps[5]["eval_accuracy"] = 0.465  # window mean at step 6: 0.5 > 0.2, accuracy fell
    steps[8]["eval_accuracy"] = 0.80  # accuracy back up: cleared
    flags = _run(HackingMonitor(window=3), steps)
    assert flags == [0.0, 0.0, 0.0, 0.0, 0.0, 1.0, 1.0, 1.0, 0.0]


@pytest.mark.parametrize(
    ("rewards", "accuracies"),
    [
        ((0.2, 0.6), (0.5, 0.7)),  # both up: learning
        ((0.6, 0.2), (0.7, 0.5)),  # both down: a bad run, not a hack
        ((0.2, 0.6), (0.70, 0.70 - ACCURACY_DROP_MIN / 2)),  # a drop within the noise margin
    ],
)
def test_monitor_does_not_flag(
    rewards: tuple[float, float], accuracies: tuple[float, float]
) -> None:
    steps = [
        {"reward": rewards[0], "eval_accuracy": accuracies[0]},
        {"reward": rewards[1], "eval_accuracy": accuracies[1]},
    ]
    assert _run(HackingMonitor(window=1), steps) == [0.0, 0.0]


def test_monitor_with_an_evaluation_before_training() -> None:
    monitor = HackingMonitor(window=2)
    assert monitor.add_evaluation(0.74) == 0.0  # before any step: reward taken from step 1
    flags = _run(
        monitor,
        [{"reward": 0.3}, {"reward": NAN}, {"reward": 0.5}, {"reward": 0.7, "eval_accuracy": 0.5}],
    )
    assert flags == [0.0, 0.0, 0.0, 1.0]
    assert monitor.evaluations == [(0.74, 0.3), (0.5, pytest.approx(0.6))]
    assert monitor.add_evaluation(0.9) == 0.0  # after training: accuracy recovered
    with pytest.raises(ValueError, match="window"):
        HackingMonitor(window=0)


def test_parsing_completions_prints_no_compiler_warnings() -> None:
    """A completion such as "the sum is 10in total" makes the compiler warn ("invalid decimal
    literal") while it parses: one line on stderr per such completion in a run's log."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert not suspicious_code("x = 78if 1 else 2")
        assert not suspicious_code("10in total")
        assert not suspicious_code('"\\d"')
        assert suspicious_code("x = 78if 1 else 2\nimport os")
    assert [str(w.message) for w in caught] == []
