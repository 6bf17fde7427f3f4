"""Held-out evaluation: greedy accuracy of a model on a task's held-out rows."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from groupwise.data import Row
from groupwise.rewards.base import RewardFunc
from groupwise.rollout import generate, tokenize_prompts


@dataclass
class EvalResult:
    """Accuracy and the answers it was computed from."""

    accuracy: float
    """Mean correctness over the held-out rows (0..1)."""
    completions: list[str] = field(default_factory=list)
    """Greedy completion of each row."""
    scores: list[float] = field(default_factory=list)
    """Correctness of each row."""


def row_columns(rows: Sequence[Row], repeat: int = 1) -> dict[str, list[Any]]:
    """Dataset columns other than ``prompt``, one entry per completion (rows repeated)."""
    keys = [k for k in rows[0] if k != "prompt"] if rows else []
    return {k: [row[k] for row in rows for _ in range(repeat)] for k in keys}


@torch.no_grad()
def evaluate_accuracy(
    model: nn.Module,
    tokenizer: Any,
    rows: Sequence[Row],
    correctness: RewardFunc,
    *,
    batch_size: int = 64,
    max_new_tokens: int = 32,
) -> EvalResult:
    """Greedy-decode every held-out prompt and average ``correctness`` over them."""
    device = next(model.parameters()).device
    eos = eos_token_ids(tokenizer)
    completions: list[str] = []
    scores: list[float] = []
    for start in range(0, len(rows), batch_size):
        chunk = rows[start : start + batch_size]
        prompts = [row["prompt"] for row in chunk]
        batch = tokenize_prompts(tokenizer, prompts, device)
        rollout = generate(
            model,
            batch,
            group_size=1,
            max_completion_length=max_new_tokens,
            eos_token_ids=eos,
            pad_token_id=tokenizer.pad_token_id,
            temperature=0.0,
        )
        texts = tokenizer.batch_decode(rollout.completion_ids, skip_special_tokens=True)
        values = correctness(prompts=prompts, completions=texts, **row_columns(chunk))
        completions += texts
        scores += [float(v or 0.0) for v in values]
    accuracy = sum(scores) / max(len(scores), 1)
    return EvalResult(accuracy=accuracy, completions=completions, scores=scores)


def eos_token_ids(tokenizer: Any, model: nn.Module | None = None) -> list[int]:
    """Token ids that end a completion: the tokenizer's EOS and the generation config's."""
    ids: set[int] = set()
    if tokenizer.eos_token_id is not None:
        ids.add(int(tokenizer.eos_token_id))
    gen = getattr(model, "generation_config", None)
    extra = getattr(gen, "eos_token_id", None)
    if isinstance(extra, int):
        ids.add(extra)
    elif isinstance(extra, (list, tuple)):
        ids.update(int(i) for i in extra)
    if not ids:
        raise ValueError("the tokenizer has no eos_token_id; set one so completions can end")
    return sorted(ids)
