"""The turn loop's seam (groupwise.rollout.turns): the sampler's behaviour log-probs, the torch
backend recording them only when asked (the draws unchanged), the backend key of the episodes
engine. The llama.cpp backend: tests/rollout/test_llamacpp_turns.py."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import torch

from groupwise.envs import ENVIRONMENTS, BaseEnvironment, EnvStep
from groupwise.models import tiny_random_model
from groupwise.rollout import RolloutRequest, SamplingParams, build_engine, tokenize_prompts
from groupwise.rollout.engine import EngineContext
from groupwise.rollout.episodes import EpisodeEngine
from groupwise.rollout.records import eos_token_ids
from groupwise.rollout.turns import Sampler
from groupwise.rollout.weights import SharedWeights


class Echo(BaseEnvironment):
    """Answers ``ok <n>`` (plus one ``z`` per character of the reply, mod 3) for 3 turns."""

    def reset(self, row: Any) -> str | None:
        self.n = 0
        return None

    def step(self, policy_message: str) -> EnvStep:
        self.n += 1
        return EnvStep(f"ok {self.n}" + " z" * (len(policy_message) % 3), self.n >= 3)


@pytest.fixture(autouse=True)
def echo() -> Iterator[None]:
    ENVIRONMENTS.add("test_turns_echo", Echo)
    yield
    ENVIRONMENTS.unregister("test_turns_echo")


@pytest.fixture(scope="module")
def tiny() -> tuple[Any, Any]:
    return tiny_random_model(seed=0)


def test_token_logp_is_the_log_softmax_at_the_sampling_temperature() -> None:
    logits = torch.randn(3, 11)
    tokens = torch.tensor([0, 5, 10])
    for t in (0.7, 1.0, 0.0):
        sampler = Sampler(torch.tensor([1]), 0, t, 1.0, 0, None)
        scale = t if t > 0 else 1.0  # greedy: the model's own distribution
        want = torch.log_softmax(logits / scale, dim=-1)[torch.arange(3), tokens]
        torch.testing.assert_close(sampler.token_logp(logits, tokens), want)


def _run(engine: EpisodeEngine, temperature: float, logp: bool, total: int | None = 4) -> Any:
    batch = tokenize_prompts(engine.tokenizer, ["one", "two three"], torch.device("cpu"))
    request = RolloutRequest(
        2,
        SamplingParams(max_tokens=40, temperature=temperature),
        torch.Generator().manual_seed(0),
        total_rows=total,
        behaviour_logp=logp,
    )
    return engine.generate(batch, request)


@pytest.mark.parametrize("kv_reuse", [True, False])
def test_torch_backend_records_behaviour_logp_only_when_asked(
    tiny: tuple[Any, Any], kv_reuse: bool
) -> None:
    """Asked (mismatch correction on), the torch backend reports the trainer's log-probs of the
    policy's tokens (0 on the environment's) and samples the same tokens as when not asked."""
    from groupwise.train.forward import completion_logp

    model, tokenizer = tiny
    engine = EpisodeEngine(
        SharedWeights(model),
        tokenizer,
        [tokenizer.eos_token_id],
        environment="test_turns_echo",
        max_tokens_per_turn=5,
        kv_reuse=kv_reuse,
    )
    plain = _run(engine, 1.0, logp=False)
    asked = _run(engine, 1.0, logp=True)
    assert plain.behaviour_logp is None and asked.behaviour_logp is not None
    assert torch.equal(plain.completion_ids, asked.completion_ids)
    with torch.no_grad():
        logp, _ = completion_logp(model, asked, compute_entropy=False)
    policy = asked.policy_mask.bool()
    assert (~policy & asked.completion_mask.bool()).any()  # the environment spoke
    torch.testing.assert_close(asked.behaviour_logp[policy], logp[policy], atol=1e-5, rtol=0)
    assert (asked.behaviour_logp[~policy] == 0).all()


def test_unknown_backend_lists_the_valid_ones(tiny: tuple[Any, Any]) -> None:
    model, tokenizer = tiny
    options = {"environment": "test_turns_echo", "backend": "vllm"}
    ctx = EngineContext(
        model, SharedWeights(model), tokenizer, eos_token_ids(tokenizer, model), options=options
    )
    with pytest.raises(ValueError, match="valid: torch, llamacpp"):
        build_engine("episodes", ctx)
