"""benchmarks/gguf_roundtrip.py: how it compares a type's greedy answers with the reference."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tests.tests_helpers import load_module

ROOT = Path(__file__).resolve().parents[1]


def test_compare_counts_answers_texts_and_accuracy() -> None:
    bench = load_module(ROOT / "benchmarks" / "gguf_roundtrip.py", "gguf_roundtrip")
    rows = [{"prompt": "1+1", "answer": "2"}, {"prompt": "2+2", "answer": "4"}]

    def correct(prompts: list[Any], completions: list[str], answer: list[str]) -> list[float]:
        return [float(c.strip().endswith(a)) for c, a in zip(completions, answer, strict=True)]

    reference = ["It is 2", "It is 5"]
    texts = ["The answer: 2", "It is 4"]  # same answer, other words; another answer
    out = bench.compare(texts, reference, rows, correct)
    assert out == {"accuracy": 1.0, "identical_answers": 1, "token_identical_share": 0.0, "n": 2}
    assert bench.compare(reference, reference, rows, correct)["token_identical_share"] == 1.0
