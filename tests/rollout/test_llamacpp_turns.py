"""The episodes engine's llama.cpp backend: greedy episodes token for token those of the torch
backend (f32 GGUF), behaviour log-probs those of the trainer, the environment's tokens masked,
budgets, seeded and rank-invariant draws, batches played in chunks, weights that follow the
policy, a training step. Skipped without llama-cpp-python (scripts/setup.sh --llamacpp)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

pytest.importorskip(
    "llama_cpp", reason="llama-cpp-python is not installed (scripts/setup.sh --llamacpp)"
)

from groupwise import GRPOTrainer, load_config
from groupwise.envs import ENVIRONMENTS, BaseEnvironment, EnvStep
from groupwise.rollout import RolloutRequest, SamplingParams, build_engine, tokenize_prompts
from groupwise.rollout.engine import EngineContext
from groupwise.rollout.episodes import EpisodeEngine
from groupwise.rollout.llamacpp_turns import LlamaCppDecoder
from groupwise.rollout.records import eos_token_ids
from groupwise.rollout.weights import SharedWeights
from tests.rollout.test_llamacpp import untied_tiny
from tests.tests_helpers import tiny_overrides

PROMPTS = [
    [{"role": "user", "content": "What is 12 + 30?"}],
    [{"role": "user", "content": "Name a colour."}],
    "Once upon a time",
]
NAMES = ("completion_ids", "completion_mask", "loss_mask", "turn_index", "truncated")


class Chatty(BaseEnvironment):
    """Ends after ``row["turns"]`` policy turns (default 3), answering ``ok <n>`` and one
    ``z`` per character of the reply (mod 4): messages of different lengths per row."""

    def reset(self, row: Any) -> str | None:
        self.turns, self.n = int(row.get("turns", 3)), 0
        return None

    def step(self, policy_message: str) -> EnvStep:
        self.n += 1
        message = f"ok {self.n}" + " z" * (len(policy_message) % 4)
        return EnvStep(None if self.n >= self.turns else message, self.n >= self.turns)


@pytest.fixture(autouse=True)
def chatty() -> Iterator[None]:
    ENVIRONMENTS.add("test_llamacpp_chatty", Chatty)
    yield
    ENVIRONMENTS.unregister("test_llamacpp_chatty")


@pytest.fixture(scope="module")
def tiny() -> tuple[Any, Any]:
    return untied_tiny()


def _engine(tiny: tuple[Any, Any], backend: str, **options: Any) -> EpisodeEngine:
    model, tokenizer = tiny
    options = {
        "environment": "test_llamacpp_chatty",
        "max_tokens_per_turn": 5,
        "backend": backend,
        **options,
    }
    ctx = EngineContext(
        model, SharedWeights(model), tokenizer, eos_token_ids(tokenizer, model), options=options
    )
    engine = build_engine("episodes", ctx)
    assert isinstance(engine, EpisodeEngine)
    return engine


@pytest.fixture(scope="module")
def llama(tiny: tuple[Any, Any]) -> EpisodeEngine:
    ENVIRONMENTS.add("test_llamacpp_chatty", Chatty)  # the module fixture outlives the autouse one
    try:
        engine = _engine(tiny, "llamacpp")
    finally:
        ENVIRONMENTS.unregister("test_llamacpp_chatty")
    assert isinstance(engine.llamacpp, LlamaCppDecoder)
    assert engine.llamacpp.policy.dtype == "f32"  # a float32 policy: exact runtime
    return engine


def _run(
    engine: EpisodeEngine,
    temperature: float = 0.0,
    seed: int = 0,
    rows: list[dict[str, Any]] | None = None,
    **kw: Any,
) -> Any:
    rows = rows or [{"prompt": p} for p in PROMPTS]
    batch = tokenize_prompts(engine.tokenizer, [r["prompt"] for r in rows], torch.device("cpu"))
    sampling = SamplingParams(max_tokens=kw.pop("max_tokens", 72), temperature=temperature)
    generator = torch.Generator().manual_seed(seed)
    return engine.generate(batch, RolloutRequest(2, sampling, generator, rows=rows, **kw))


def test_greedy_episodes_equal_the_torch_backends(tiny: tuple[Any, Any], llama: Any) -> None:
    ours, theirs = _run(llama), _run(_engine(tiny, "torch"))
    assert ours.num_turns.tolist() == [5] * 6  # policy, ok 1, policy, ok 2, policy
    for name in NAMES:
        assert torch.equal(getattr(ours, name), getattr(theirs, name)), name
    chunks = {
        int(((ours.turn_index[i] == 1) & (ours.completion_mask[i] == 1)).sum()) for i in range(6)
    }
    assert len(chunks) > 1  # environment messages of different lengths
    assert len(set(ours.completion_ids[ours.loss_mask.bool()].tolist())) > 10


def test_sampled_episodes_with_the_draw_table_equal_the_torch_backends(
    tiny: tuple[Any, Any], llama: Any
) -> None:
    """Rank-invariant draws: each token is the inverse CDF of its own uniform, so the two
    backends' near-equal logits (f32, ~1e-6) sample the same episodes."""
    ours = _run(llama, 1.0, seed=2, total_rows=6)
    theirs = _run(_engine(tiny, "torch"), 1.0, seed=2, total_rows=6)
    for name in NAMES:
        assert torch.equal(getattr(ours, name), getattr(theirs, name)), name


def test_behaviour_logp_is_the_trainers_log_prob_of_the_sampled_tokens(
    tiny: tuple[Any, Any], llama: Any
) -> None:
    from groupwise.train.forward import completion_logp

    model, _ = tiny
    rollout = _run(llama, 0.7, seed=1)
    assert rollout.behaviour_logp is not None and rollout.entropy is not None
    with torch.no_grad():
        logp, _ = completion_logp(model, rollout, temperature=0.7, compute_entropy=False)
    policy = rollout.policy_mask.bool()
    inserted = ~policy & rollout.completion_mask.bool()
    assert policy.any() and inserted.any()
    torch.testing.assert_close(rollout.behaviour_logp[policy], logp[policy], atol=1e-4, rtol=0)
    assert (rollout.behaviour_logp[~policy] == 0).all()  # the environment's tokens, padding
    assert (rollout.entropy[~policy] == 0).all() and (rollout.entropy[policy] > 0).all()
    assert (rollout.loss_mask[inserted] == 0).all()


def test_budgets_truncate(llama: Any) -> None:
    rollout = _run(llama, max_tokens=12)
    assert rollout.truncated.all() and (rollout.completion_lengths <= 12).all()
    rows = [{"prompt": p, "turns": 9} for p in PROMPTS]
    llama.max_turns = 2
    try:
        rollout = _run(llama, rows=rows)
    finally:
        llama.max_turns = 4
    assert rollout.truncated.all() and rollout.num_turns.tolist() == [3] * 6


def test_seeded_sampling_and_chunks_of_groups(llama: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """Same seed, same episodes; another seed, others. Episodes of 1 and 3 turns in one batch;
    with room for one group per llama.cpp context, the batch plays group by group and, under
    the draw table, samples what one batch does."""
    rows = [{"prompt": p, "turns": t} for p, t in zip(PROMPTS, (1, 3, 2), strict=True)]
    one, two = _run(llama, 1.0, seed=3, rows=rows), _run(llama, 1.0, seed=3, rows=rows)
    for name in NAMES:
        assert torch.equal(getattr(one, name), getattr(two, name)), name
    assert not torch.equal(_run(llama, 1.0, seed=4, rows=rows).completion_ids, one.completion_ids)
    assert one.num_turns.tolist() == [1, 1, 5, 5, 3, 3]
    whole = _run(llama, 1.0, seed=5, rows=rows, total_rows=6)
    monkeypatch.setattr(llama.llamacpp, "max_rows", 2)
    grouped = _run(llama, 1.0, seed=5, rows=rows, total_rows=6)
    for name in NAMES:
        assert torch.equal(getattr(grouped, name), getattr(whole, name)), name


def test_sync_weights_follows_the_policy(tmp_path: Path) -> None:
    model, tokenizer = untied_tiny()
    engine = _engine((model, tokenizer), "llamacpp")
    before = _run(engine, 1.0, seed=1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * p.std())
    assert torch.equal(_run(engine, 1.0, seed=1).completion_ids, before.completion_ids)
    engine.sync_weights()
    assert not torch.equal(_run(engine, 1.0, seed=1).completion_ids, before.completion_ids)


def test_trainer_step_through_the_llamacpp_backend(tmp_path: Path) -> None:
    overrides = tiny_overrides(tmp_path, max_steps=1, bf16=False, max_completion_length=24)
    options = {
        "environment": "counter",
        "max_tokens_per_turn": 4,
        "env_kwargs": {"turns": 2},
        "backend": "llamacpp",
    }
    overrides += ["rollout.engine=episodes", f"rollout.engine_kwargs={json.dumps(options)}"]
    trainer = GRPOTrainer(load_config(overrides=overrides), reward_funcs=["length_penalty"])
    metrics = trainer.step()
    assert metrics["turns/mean"] > 1 and metrics["tokens/environment_mean"] > 0
    assert "sampling/sampling_logp_difference/mean" in metrics  # correction on (auto)
    assert metrics["sampling/sampling_logp_difference/max"] < 1e-3  # f32: kernel rounding
