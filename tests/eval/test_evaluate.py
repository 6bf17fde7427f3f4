"""Evaluating a saved model reproduces what its run measured."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from groupwise import GRPOTrainer
from groupwise.config import load_config
from groupwise.eval.evaluate import evaluate_greedy, load_for_eval
from tests.tests_helpers import tiny_overrides


def test_a_saved_run_evaluates_to_the_answers_of_its_own_final_evaluation(
    tmp_path: Path,
) -> None:
    """Pure bf16 weights (a CPU's default where bf16 is native): the final directory, loaded
    for evaluation, gives every held-out completion the run's own evaluation logged. (A plain
    ``.to(bf16)`` of the loaded model rounded RoPE's frequencies, which the run keeps in
    float32, and changed greedy answers.)"""
    threads = torch.get_num_threads()
    overrides = tiny_overrides(
        tmp_path,
        save_final=True,
        **{
            "eval.after": True,
            "data.eval_size": 16,
            "max_completion_length": 24,
            "eval.max_new_tokens": 24,
            "training.param_dtype": "bfloat16",
            "training.bf16": True,
            "training.num_threads": 1,
        },
    )
    config = load_config(overrides=overrides)
    trainer = GRPOTrainer(config)
    try:
        trainer.train()
        run = tmp_path / "run"
        logged = [
            json.loads(line)
            for line in (run / "eval_samples.jsonl").read_text().splitlines()
            if json.loads(line)["label"] == "after"
        ]
        loaded = load_for_eval(str(run / "final"), config)
        result = evaluate_greedy(loaded, config)
        ids = torch.arange(1, 97).reshape(2, 48)  # [2, 48] positions far enough for RoPE
        with torch.no_grad():
            want = trainer.policy.eval()(ids).logits
            got = loaded.model(ids).logits
    finally:
        torch.set_num_threads(threads)
    assert got.dtype == want.dtype == torch.bfloat16
    assert torch.equal(got, want)
    assert len(logged) == 16
    assert result.completions == [row["completion"] for row in logged]
    assert result.scores == [row["score"] for row in logged]
