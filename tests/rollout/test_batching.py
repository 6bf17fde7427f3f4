"""Concurrent requests decoded as one batch: the same tokens as one request at a time (greedy),
and an episode's draws independent of how its requests are batched (sampled)."""

from __future__ import annotations

import threading
from typing import Any

import pytest
import torch

from groupwise.models import tiny_random_model
from groupwise.rollout import RolloutRequest, SamplingParams, tokenize_prompts
from groupwise.rollout.agent import AgentEngine
from groupwise.rollout.batching import DecodeJob, RequestBatcher, RowSampling
from groupwise.rollout.weights import SharedWeights

pytest.importorskip("openai")

PROMPTS = ["Say something.", "Tell me more about the sea and its fish."]


def varied_agent(client: Any, row: dict[str, Any], episode: dict[str, Any]) -> None:
    """Three turns, each episode and turn with its own reply cap: the rows of a batch end
    their turns at different steps (and its merged caches differ in width)."""
    messages: list[Any] = [{"role": "user", "content": str(row["prompt"])}]
    for turn in range(3):
        cap = 2 + (episode["index"] + 2 * turn) % 5
        reply = client.chat.completions.create(
            model=episode["model"], messages=messages, max_tokens=cap
        )
        messages += [reply.choices[0].message, {"role": "user", "content": f"and ({turn})?"}]


@pytest.fixture(scope="module")
def tiny() -> tuple[Any, Any]:
    model, tokenizer = tiny_random_model(seed=0)
    assert next(model.parameters()).dtype == torch.float32
    return model, tokenizer


def _rollout(tiny: tuple[Any, Any], temperature: float, **kw: Any) -> Any:
    """Two rows x 4 episodes of :func:`varied_agent`, sampled with a fixed generator."""
    model, tokenizer = tiny
    engine = AgentEngine(
        SharedWeights(model),
        tokenizer,
        [tokenizer.eos_token_id],
        agent="tests.rollout.test_batching:varied_agent",
        **kw,
    )
    request = RolloutRequest(
        4,
        SamplingParams(max_tokens=96, temperature=temperature),
        torch.Generator().manual_seed(3),
        rows=[{"prompt": p} for p in PROMPTS],
    )
    try:
        return engine.generate(tokenize_prompts(tokenizer, PROMPTS, torch.device("cpu")), request)
    finally:
        engine.close()


def _same(a: Any, b: Any) -> None:
    assert torch.equal(a.completion_mask, b.completion_mask)
    assert torch.equal(a.completion_ids, b.completion_ids)
    assert torch.equal(a.loss_mask, b.loss_mask)
    torch.testing.assert_close(a.behaviour_logp, b.behaviour_logp, rtol=1e-4, atol=1e-4)


def test_greedy_batched_equals_one_request_at_a_time(tiny: tuple[Any, Any]) -> None:
    one = _rollout(tiny, 0.0, max_batch=1)
    batched = _rollout(tiny, 0.0)
    assert one.metrics["agent/batch_rows_mean"] == 1.0
    assert batched.metrics["agent/batch_rows_mean"] > 2.0  # requests really were batched
    _same(one, batched)


def test_draws_do_not_depend_on_concurrency(tiny: tuple[Any, Any]) -> None:
    """Sampled: every episode draws from its own seeded generator, so one agent at a time
    (each request decoded alone) and 8 at once (batched) give identical episodes."""
    alone = _rollout(tiny, 1.0, concurrency=1)
    together = _rollout(tiny, 1.0, concurrency=8)
    assert alone.metrics["agent/batch_rows_mean"] == 1.0
    assert together.metrics["agent/batch_rows_mean"] > 2.0
    _same(alone, together)
    assert len({tuple(r.tolist()) for r in together.completion_ids[:4]}) > 1  # really sampled


def test_batcher_runs_waiting_jobs_together_and_reports_errors() -> None:
    """Jobs submitted from several threads while a batch runs form the next batch; a batch
    that raises raises in every thread of it."""
    gate, seen = threading.Event(), []

    def run(jobs: list[DecodeJob]) -> None:
        seen.append(len(jobs))
        if len(seen) == 1:
            gate.wait(5)
        if any(j.budget < 0 for j in jobs):
            raise ValueError("bad job")

    batcher = RequestBatcher(run, lambda queued: 0, wait=0.0)
    job = lambda budget: DecodeJob([1], None, [], budget, RowSampling(0.0, 1.0, 0, None))  # noqa: E731
    errors: list[BaseException] = []

    def submit(budget: int) -> None:
        try:
            batcher.submit(job(budget))
        except ValueError as exc:
            errors.append(exc)

    first = threading.Thread(target=submit, args=(1,))
    first.start()
    while not seen:
        threading.Event().wait(0.01)
    rest = [threading.Thread(target=submit, args=(b,)) for b in (1, 2, -1)]
    for t in rest:
        t.start()
    while len(batcher.queue) < 3:
        threading.Event().wait(0.01)
    gate.set()
    for t in [first, *rest]:
        t.join(10)
    assert seen == [1, 3]
    assert len(errors) == 3 and all("bad job" in str(e) for e in errors)
