"""Held-out evaluation: greedy accuracy (and pass@k, maj@k) on a task's held-out rows.

Evaluation decodes through a rollout engine (:mod:`groupwise.rollout.engine`), the same one
training samples from; ``groupwise eval`` wraps a loaded model in the run's configured engine
(``rollout.engine`` and its ``engine_kwargs``: a multi-turn task is evaluated by playing its
episodes, as training does).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from groupwise.config import Config
from groupwise.data import Row, Task
from groupwise.rewards.base import (
    COMPLETION_MESSAGES,
    RewardFunc,
    RewardRunner,
    accepts_keyword,
)
from groupwise.rollout import (
    Rollout,
    RolloutEngine,
    RolloutRequest,
    SamplingParams,
    tokenize_prompts,
)
from groupwise.rollout.records import eos_token_ids, row_columns


@dataclass
class EvalResult:
    """Accuracy and the answers it was computed from."""

    accuracy: float
    """Mean correctness over the held-out rows (0..1)."""
    completions: list[str] = field(default_factory=list)
    """Greedy completion of each row."""
    scores: list[float] = field(default_factory=list)
    """Correctness of each row."""


def scored_columns(
    rows: Sequence[Row], rollout: Rollout, correctness: RewardFunc, repeat: int = 1
) -> dict[str, Any]:
    """What ``correctness`` gets besides prompts and completions: the rows' columns and, as in
    training, ``truncated`` and the engine's own columns (e.g. ``env_reward``) where it takes
    them (a named parameter or ``**kwargs``; never the reserved ``COMPLETION_MESSAGES``)."""
    extra = {"truncated": rollout.truncated.tolist(), **(rollout.columns or {})}
    taken = {
        k: v
        for k, v in extra.items()
        if k != COMPLETION_MESSAGES and accepts_keyword(correctness, k)
    }
    return {**row_columns(rows, repeat), **taken}


@torch.no_grad()
def evaluate_accuracy(
    engine: RolloutEngine,
    tokenizer: Any,
    rows: Sequence[Row],
    correctness: RewardFunc,
    *,
    batch_size: int = 64,
    max_new_tokens: int = 32,
    device: torch.device | None = None,
) -> EvalResult:
    """Greedy-decode every held-out prompt and average ``correctness`` over them."""
    device = device or torch.device("cpu")
    greedy = SamplingParams(max_tokens=max_new_tokens, temperature=0.0)
    completions: list[str] = []
    scores: list[float] = []
    with engine.serving():
        for start in range(0, len(rows), batch_size):
            chunk = rows[start : start + batch_size]
            prompts = [row["prompt"] for row in chunk]
            batch = tokenize_prompts(tokenizer, prompts, device)
            request = RolloutRequest(1, greedy, evaluation=True, rows=chunk)
            rollout = engine.generate(batch, request)
            texts = tokenizer.batch_decode(rollout.completion_ids, skip_special_tokens=True)
            values = correctness(
                prompts=prompts, completions=texts, **scored_columns(chunk, rollout, correctness)
            )
            completions += texts
            scores += [float(v or 0.0) for v in values]
    accuracy = sum(scores) / max(len(scores), 1)
    return EvalResult(accuracy=accuracy, completions=completions, scores=scores)


@dataclass
class SampledResult:
    """pass@k and maj@k from k sampled completions per held-out prompt."""

    k: int
    """Samples per prompt."""
    pass_at_k: float
    """Share of prompts with at least one correct sample (Chen et al. 2021 estimator, n = k)."""
    pass_at_1: float
    """Unbiased pass@1 from the same samples (mean correctness)."""
    maj_at_k: float | None
    """Share of prompts whose majority answer is the reference (None without an answer column)."""


def voted_answer(text: str, reference: str) -> str | None:
    """The answer a completion votes for in maj@k: when the reference is a number, the last
    number in the text as ``repr(float)`` (so ``68`` and ``68.0`` are one vote), else the last
    non-empty line; None when there is none. (The answer a reasoning-gym verifier scores is
    :func:`groupwise.tasks.reasoning_gym.rewards.extract_answer`.)"""
    from groupwise.rewards.answer import last_number

    try:
        numeric = bool(float(reference.replace(",", "")) or True)
    except ValueError:
        numeric = False
    if numeric:
        value = last_number(text)
        return None if value is None else repr(value)
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else None


@torch.no_grad()
def evaluate_sampled(
    engine: RolloutEngine,
    tokenizer: Any,
    rows: Sequence[Row],
    correctness: RewardFunc,
    *,
    k: int,
    temperature: float,
    max_new_tokens: int,
    batch_size: int = 64,
    seed: int = 0,
    device: torch.device | None = None,
) -> SampledResult:
    """Sample ``k`` completions per prompt (one prefill per prompt) and score pass@k, maj@k."""
    from groupwise.eval.passk import maj_at_k, mean_pass_at_k

    device = device or torch.device("cpu")
    generator = torch.Generator(device=device).manual_seed(seed)
    sampling = SamplingParams(max_tokens=max_new_tokens, temperature=temperature)
    per_batch = max(batch_size // k, 1)
    counts: list[int] = []
    answers: list[list[str | None]] = []
    for start in range(0, len(rows), per_batch):
        chunk = rows[start : start + per_batch]
        prompts = [row["prompt"] for row in chunk]
        request = RolloutRequest(k, sampling, generator=generator, evaluation=True, rows=chunk)
        rollout = engine.generate(tokenize_prompts(tokenizer, prompts, device), request)
        texts = tokenizer.batch_decode(rollout.completion_ids, skip_special_tokens=True)
        flat_prompts = [p for p in prompts for _ in range(k)]
        columns = scored_columns(chunk, rollout, correctness, k)
        scores = correctness(prompts=flat_prompts, completions=texts, **columns)
        for i, row in enumerate(chunk):
            group = scores[i * k : (i + 1) * k]
            counts.append(sum(1 for s in group if (s or 0.0) >= 1.0))
            if "answer" in row:
                ref = str(row["answer"])
                answers.append([voted_answer(t, ref) for t in texts[i * k : (i + 1) * k]])
    maj = None
    if len(answers) == len(rows) and rows:
        refs = [str(r["answer"]) for r in rows]
        maj = maj_at_k(answers, [voted_answer(r, r) or r for r in refs], k)
    return SampledResult(
        k=k,
        pass_at_k=mean_pass_at_k(counts, k, k),
        pass_at_1=mean_pass_at_k(counts, k, 1),
        maj_at_k=maj,
    )


def resolve_eval_target(target: str) -> tuple[str, Path | None]:
    """A run directory (its ``final/`` model and its ``config.yaml``) or a model name/path."""
    path = Path(target)
    if (path / "config.yaml").exists() and (path / "final" / "config.json").exists():
        return str(path / "final"), path / "config.yaml"
    return target, None


@dataclass
class LoadedForEval:
    """A model loaded for evaluation: the model, its engine and tokenizer, the task, the device."""

    model: nn.Module
    engine: RolloutEngine
    tokenizer: Any
    task: Task
    device: torch.device


def load_for_eval(name: str, config: Config) -> LoadedForEval:
    """``name`` loaded as a run would decode it: weights in the run plan's rollout dtype
    (RoPE's frequencies kept in float32, as in training), its attention kernel and engine, and
    the run's ``training.num_threads`` (bf16 matmuls round by how the work is split: a run's
    greedy answers are reproduced with its thread count)."""
    if config.training.num_threads > 0:
        torch.set_num_threads(config.training.num_threads)
    from groupwise.data import build_task
    from groupwise.models import load_base_model, pick_device
    from groupwise.models.plan import resolve_plan

    device = pick_device(config.training.device)
    d = config.data
    task = build_task(d.task, train_size=1, eval_size=d.eval_size, seed=d.seed, params=d.params)
    if task.correctness is None:
        raise ValueError(f"data.task: task {task.name!r} has no correctness check to evaluate")
    plan = resolve_plan(config, device)  # one process; its precision and attention kernel
    model, tokenizer = load_base_model(
        name,
        seed=config.training.seed,
        device=device,
        attn_implementation=plan.attn_implementation,
        dtype=plan.rollout_dtype,
    )
    model = model.eval()
    engine = configured_engine(
        model, tokenizer, config, plan.rollout_engine, native_kernels=plan.native_kernels
    )
    return LoadedForEval(model, engine, tokenizer, task, device)


def evaluate_greedy(loaded: LoadedForEval, config: Config) -> EvalResult:
    """Greedy accuracy on the task's held-out rows, with every completion and its score."""
    assert loaded.task.correctness is not None  # load_for_eval checked
    return evaluate_accuracy(
        loaded.engine,
        loaded.tokenizer,
        loaded.task.eval,
        loaded.task.correctness,
        batch_size=config.eval.batch_size,
        max_new_tokens=config.eval.max_new_tokens,
        device=loaded.device,
    )


def evaluate_model(name: str, config: Config, *, k: int) -> dict[str, float]:
    """Greedy accuracy (and pass@k / maj@k when ``k > 1``) of a model on the config's task."""
    loaded = load_for_eval(name, config)
    out = {"accuracy": evaluate_greedy(loaded, config).accuracy}
    if k > 1:
        assert loaded.task.correctness is not None
        sampled = evaluate_sampled(
            loaded.engine,
            loaded.tokenizer,
            loaded.task.eval,
            loaded.task.correctness,
            k=k,
            temperature=config.rollout.temperature or 1.0,
            max_new_tokens=config.eval.max_new_tokens,
            batch_size=config.eval.batch_size,
            seed=config.training.seed,
            device=loaded.device,
        )
        out[f"pass@{k}"] = sampled.pass_at_k
        out["pass@1"] = sampled.pass_at_1
        if sampled.maj_at_k is not None:
            out[f"maj@{k}"] = sampled.maj_at_k
    return out


def local_engine(model: nn.Module, tokenizer: Any, native_kernels: bool = False) -> RolloutEngine:
    """The local engine decoding with ``model`` as it is (no training, no weight sync);
    ``native_kernels`` as the run plan has it."""
    from groupwise.rollout.local import LocalEngine
    from groupwise.rollout.weights import SharedWeights

    weights = SharedWeights(model)
    pad = tokenizer.pad_token_id
    return LocalEngine(weights, eos_token_ids(tokenizer), pad, native_kernels=native_kernels)


def configured_engine(
    model: nn.Module, tokenizer: Any, config: Config, name: str, native_kernels: bool = False
) -> RolloutEngine:
    """The engine ``name`` (the run plan's ``rollout.engine``) around ``model`` as it is, with
    the config's ``rollout.engine_kwargs`` and the plan's ``native_kernels``; the plain local
    engine for ``local``."""
    from groupwise.rollout.engine import EngineContext, build_engine
    from groupwise.rollout.weights import SharedWeights

    if name == "local":
        return local_engine(model, tokenizer, native_kernels)
    r = config.rollout
    ctx = EngineContext(
        model,
        SharedWeights(model),
        tokenizer,
        eos_token_ids(tokenizer),
        r.compile,
        r.engine_kwargs,
        r.packed_decode,
        native_kernels,
    )
    return build_engine(name, ctx)


def format_table(results: dict[str, dict[str, float]]) -> str:
    """A Markdown table: one row per model, one column per metric."""
    metrics = list(dict.fromkeys(m for r in results.values() for m in r))
    lines = ["| model | " + " | ".join(metrics) + " |", "| --- |" + " --- |" * len(metrics)]
    for name, values in results.items():
        cells = [f"{values[m]:.1%}" if m in values else "-" for m in metrics]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def reward_score(runner: RewardRunner) -> RewardFunc:
    """A correctness function that is the weighted reward sum: held-out rows without a
    correctness check are scored by the training rewards (TRL's ``eval_dataset`` metric)."""

    def held_out_reward(
        prompts: Sequence[Any], completions: Sequence[str], **columns: Any
    ) -> list[float]:
        result: list[float] = runner(prompts, completions, **columns).total.tolist()
        return result

    return held_out_reward


def scored_task(task: Task, runner: RewardRunner) -> Task:
    """``task`` itself when it has a correctness check (or no held-out rows), else a copy whose
    held-out score is the reward sum (:func:`reward_score`); the caller's task is not changed."""
    if task.correctness is not None or not task.eval:
        return task
    return dataclasses.replace(task, correctness=reward_score(runner), eval_metric="reward")
