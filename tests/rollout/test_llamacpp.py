"""The ``llamacpp`` engine: the local engine's greedy tokens, groupwise's sampler (seeded,
rank-invariant), behaviour log-probs of llama.cpp's logits, weights that follow the policy,
and a training run through it. Skipped without llama-cpp-python (scripts/setup.sh --llamacpp)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

pytest.importorskip(
    "llama_cpp", reason="llama-cpp-python is not installed (scripts/setup.sh --llamacpp)"
)

from groupwise import GRPOTrainer, load_config
from groupwise.models import tiny_llama_config, tiny_random_model
from groupwise.rollout import (
    PromptBatch,
    RolloutRequest,
    SamplingParams,
    build_engine,
    tokenize_prompts,
)
from groupwise.rollout.engine import EngineContext
from groupwise.rollout.llamacpp import LlamaCppEngine
from groupwise.rollout.local import LocalEngine
from groupwise.rollout.records import eos_token_ids
from groupwise.rollout.weights import SharedWeights
from tests.tests_helpers import tiny_overrides

PROMPTS = [
    [{"role": "user", "content": "What is 12 + 30?"}],
    [{"role": "user", "content": "Name a colour."}],
    "Once upon a time",
]


def untied_tiny() -> tuple[Any, Any]:
    """tiny-random's shape with an untied, scaled-up output layer: each token leads to a varied
    next one with logits far apart (tiny-random's tied embedding repeats the last token, and
    its top logits differ by ~1e-3, so rounding would decide greedy choices)."""
    from transformers import AutoModelForCausalLM

    _, tokenizer = tiny_random_model(seed=0)
    state = torch.random.get_rng_state()
    torch.manual_seed(0)
    config = tiny_llama_config(tokenizer, tie_word_embeddings=False)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    torch.random.set_rng_state(state)
    with torch.no_grad():
        model.lm_head.weight.mul_(20.0)
    return model.eval(), tokenizer


def _engine(model: Any, tokenizer: Any, **options: Any) -> LlamaCppEngine:
    ctx = EngineContext(
        model, SharedWeights(model), tokenizer, eos_token_ids(tokenizer, model), options=options
    )
    built = build_engine("llamacpp", ctx)
    assert isinstance(built, LlamaCppEngine)
    return built


@pytest.fixture(scope="module")
def tiny() -> tuple[Any, Any]:
    return untied_tiny()


@pytest.fixture(scope="module")
def engine(tiny: tuple[Any, Any]) -> LlamaCppEngine:
    built = _engine(*tiny)
    assert built.dtype == "f32"  # a float32 policy is written in f32
    return built


@pytest.fixture(scope="module")
def flat() -> tuple[Any, LlamaCppEngine]:
    model, tokenizer = tiny_random_model(seed=0)
    return tokenizer, _engine(model.eval(), tokenizer)


def _prompts(tokenizer: Any) -> PromptBatch:
    return tokenize_prompts(tokenizer, PROMPTS, torch.device("cpu"))


def _request(g: int, temperature: float, seed: int = 0, **kw: Any) -> RolloutRequest:
    sampling = SamplingParams(max_tokens=12, temperature=temperature, top_p=kw.pop("top_p", 1.0))
    generator = torch.Generator().manual_seed(seed)
    return RolloutRequest(g, sampling, generator=generator, **kw)


def test_greedy_tokens_equal_the_local_engines(tiny: tuple[Any, Any], engine: Any) -> None:
    model, tokenizer = tiny
    local = LocalEngine(SharedWeights(model), engine.eos_token_ids, tokenizer.pad_token_id)
    prompts = _prompts(tokenizer)
    ours = engine.generate(prompts, _request(2, 0.0))
    theirs = local.generate(prompts, _request(2, 0.0))
    assert torch.equal(ours.completion_ids, theirs.completion_ids)
    assert torch.equal(ours.completion_mask, theirs.completion_mask)
    assert torch.equal(ours.truncated, theirs.truncated)
    assert len(set(ours.completion_ids.flatten().tolist())) > 20  # not one repeated token


def test_bf16_file_decodes_like_the_float32_policy(tiny: tuple[Any, Any], tmp_path: Path) -> None:
    """llama.cpp on a bf16 file keeps float32 activations (only each matmul's inputs are
    rounded to bf16, products summed in float32): on these prompts its greedy tokens are the
    float32 policy's, while a pure-bf16 torch model (bf16 after every operation) drifts off
    within a few tokens."""
    model, tokenizer = tiny
    bf16 = _engine(model, tokenizer, dtype="bf16", path=str(tmp_path / "b.gguf"))
    prompts = _prompts(tokenizer)
    local = LocalEngine(SharedWeights(model), bf16.eos_token_ids, tokenizer.pad_token_id)
    want = local.generate(prompts, _request(2, 0.0)).completion_ids
    assert torch.equal(bf16.generate(prompts, _request(2, 0.0)).completion_ids, want)


def test_behaviour_logp_is_the_log_softmax_of_the_sampled_tokens(
    tiny: tuple[Any, Any], engine: Any
) -> None:
    """The engine's log-probs equal a torch log-softmax of llama.cpp's logits for the same
    tokens (teacher-forced in one pass here, decoded step by step there), and those of the
    float32 policy within 1e-3 (f32 weights and cache; only kernel rounding differs)."""
    model, tokenizer = tiny
    prompts = _prompts(tokenizer)
    temperature = 0.7
    rollout = engine.generate(prompts, _request(2, temperature, top_p=0.9))
    assert rollout.behaviour_logp is not None and rollout.entropy is not None
    rt = engine.runtime
    for row in range(rollout.completion_ids.shape[0]):
        p = prompts.input_ids[row // 2][prompts.attention_mask[row // 2].bool()].tolist()
        n = int(rollout.completion_mask[row].sum())
        c = rollout.completion_ids[row, :n].tolist()
        seq = p + c
        rt.context(len(seq), 1, len(seq))
        rt.decode(seq, range(len(seq)), [0] * len(seq), [True] * len(seq))
        logits = rt.logits(range(len(p) - 1, len(seq) - 1))  # [n, V] predicting c
        want = torch.log_softmax(logits / temperature, -1).gather(-1, torch.tensor(c)[:, None])
        got = rollout.behaviour_logp[row, :n]
        assert torch.allclose(got, want.squeeze(-1), atol=1e-4), row
        with torch.no_grad():
            torch_logits = model(torch.tensor([seq])).logits[0, len(p) - 1 : len(seq) - 1]
        ref = torch.log_softmax(torch_logits / temperature, -1).gather(-1, torch.tensor(c)[:, None])
        assert torch.allclose(got, ref.squeeze(-1), atol=1e-3), row
    assert (rollout.behaviour_logp * (1 - rollout.completion_mask)).abs().sum() == 0
    assert (rollout.entropy > 0).sum() == rollout.completion_mask.sum()


def test_seeded_and_rank_invariant_sampling(flat: tuple[Any, LlamaCppEngine]) -> None:
    tokenizer, engine = flat
    prompts = _prompts(tokenizer)
    one = engine.generate(prompts, _request(4, 1.0, seed=3))
    two = engine.generate(prompts, _request(4, 1.0, seed=3))
    assert torch.equal(one.completion_ids, two.completion_ids)
    other = engine.generate(prompts, _request(4, 1.0, seed=4))
    assert not torch.equal(one.completion_ids, other.completion_ids)
    whole = engine.generate(prompts, _request(4, 1.0, seed=5, total_rows=12))
    halves = []
    for rank, groups in enumerate([slice(0, 2), slice(2, 3)]):
        part = PromptBatch(prompts.input_ids[groups], prompts.attention_mask[groups])
        halves.append(
            engine.generate(part, _request(4, 1.0, 5, total_rows=12, row_offset=8 * rank))
        )
    width = whole.completion_ids.shape[1]
    stacked = torch.cat(
        [
            torch.nn.functional.pad(
                h.completion_ids,
                (0, width - h.completion_ids.shape[1]),
                value=tokenizer.pad_token_id,
            )
            for h in halves
        ]
    )
    assert torch.equal(stacked, whole.completion_ids)


def test_sync_weights_follows_the_policy(tmp_path: Path) -> None:
    model, tokenizer = untied_tiny()
    engine = _engine(model, tokenizer, path=str(tmp_path / "p.gguf"), dtype="bf16")
    prompts = _prompts(tokenizer)
    before = engine.generate(prompts, _request(2, 1.0, seed=1))
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * p.std())
    same = engine.generate(prompts, _request(2, 1.0, seed=1))
    assert torch.equal(same.behaviour_logp, before.behaviour_logp)  # type: ignore[arg-type]
    engine.sync_weights()
    after = engine.generate(prompts, _request(2, 1.0, seed=1))
    assert not torch.equal(after.completion_ids, before.completion_ids)
    first = after.behaviour_logp[:, 0]  # type: ignore[index]
    assert not torch.allclose(first, before.behaviour_logp[:, 0], atol=1e-2)  # type: ignore[index]


def test_lora_without_a_merged_copy_is_refused(tiny: tuple[Any, Any]) -> None:
    pytest.importorskip("peft")
    from groupwise.models import LoraSettings, apply_lora

    model, tokenizer = tiny_random_model(seed=0)
    policy = apply_lora(model, LoraSettings(4, 8, 0.0, "all-linear"), False)
    ctx = EngineContext(policy, SharedWeights(policy), tokenizer, eos_token_ids(tokenizer, model))
    with pytest.raises(ValueError, match="lora_rollout_copy"):
        build_engine("llamacpp", ctx)


def test_training_runs_through_llamacpp(tmp_path: Path) -> None:
    overrides = [*tiny_overrides(tmp_path, max_steps=2, bf16=False), "rollout.engine=llamacpp"]
    trainer = GRPOTrainer(load_config(overrides=overrides), reward_funcs=["length_penalty"])
    assert isinstance(trainer.parts.engine, LlamaCppEngine)
    trainer.train()
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    steps = [json.loads(x) for x in lines if '"step"' in x]
    assert [m["step"] for m in steps if "time/generate" in m][-1] == 2
