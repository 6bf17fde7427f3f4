"""The rollout seam: engines by name (built-in and registered from outside), the replay
engine, evaluation through an engine, and conversation masks carried to the loss."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from groupwise import GRPOTrainer, load_config
from groupwise.eval.evaluate import evaluate_accuracy
from groupwise.models import tiny_random_model
from groupwise.models.plan import decide_rollout_weights
from groupwise.rollout import (
    ENGINES,
    EngineContext,
    PromptBatch,
    Rollout,
    RolloutEngine,
    RolloutRequest,
    SamplingParams,
    tokenize_prompts,
)
from groupwise.rollout.replay import ReplayEngine
from groupwise.rollout.weights import WEIGHT_STRATEGIES
from tests.tests_helpers import tiny_overrides


@pytest.fixture(scope="module")
def tokenizer() -> Any:
    return tiny_random_model(seed=0)[1]


def _prompts(tokenizer: Any, n: int) -> PromptBatch:
    return tokenize_prompts(tokenizer, [f"prompt {i}" for i in range(n)], torch.device("cpu"))


def test_replay_cuts_ends_and_cycles(tokenizer: Any) -> None:
    eos = tokenizer.eos_token_id
    engine = ReplayEngine(tokenizer, ["1 2", "1 2 3 4 5 6 7 8 9 10 11 12"], eos)
    short = tokenizer("1 2", add_special_tokens=False)["input_ids"]
    sampling = SamplingParams(max_tokens=len(short) + 2)
    rollout = engine.generate(_prompts(tokenizer, 2), RolloutRequest(2, sampling))
    assert rollout.completion_ids.shape == (4, len(short) + 2)
    assert rollout.truncated.tolist() == [False, True, False, True]  # cycled: rows 3, 4 = 1, 2
    assert rollout.completion_ids[0, : len(short) + 1].tolist() == [*short, eos]
    assert rollout.completion_lengths.tolist() == [len(short) + 1, len(short) + 2] * 2
    assert engine.position == 4


def test_evaluation_goes_through_the_engine(tokenizer: Any) -> None:
    """Greedy accuracy = the correctness of what the engine returns, row by row."""
    rows = [
        {"prompt": "a", "answer": "3"},
        {"prompt": "b", "answer": "4"},
        {"prompt": "c", "answer": "5"},
    ]
    engine = ReplayEngine(tokenizer, ["it is 3", "it is 7", "5"], tokenizer.eos_token_id)

    def correct(
        prompts: list[Any], completions: list[str], answer: list[str], **_: Any
    ) -> list[float]:
        return [float(c.split()[-1] == a) for c, a in zip(completions, answer, strict=True)]

    result = evaluate_accuracy(engine, tokenizer, rows, correct, batch_size=2, max_new_tokens=8)
    assert result.completions == ["it is 3", "it is 7", "5"]
    assert result.scores == [1.0, 0.0, 1.0] and result.accuracy == pytest.approx(2 / 3)


def test_weight_strategies_cover_the_settings() -> None:
    bf16, fp32 = "bfloat16", "float32"
    cases = {  # (strategy, lora, param_dtype, bf16 compute, rollout copy, merge in place)
        ("shared", False, bf16, True, True, False),
        ("copy", False, fp32, True, True, False),
        ("shared", False, fp32, False, True, False),
        ("copy", True, fp32, True, True, False),
        ("adapters", True, bf16, True, False, False),
        ("merge_in_place", True, bf16, True, True, True),
    }
    for want, lora, param, compute, copy, in_place in cases:
        got = decide_rollout_weights(
            lora=lora,
            param_dtype=param,
            bf16=compute,
            lora_rollout_copy=copy,
            merge_in_place=in_place,
        )
        assert got == want
    assert {c[0] for c in cases} == set(WEIGHT_STRATEGIES)


def is_two(prompts: list[Any], completions: list[str], **_: Any) -> list[float]:
    return [float(c == "2") for c in completions]


def test_trainer_learns_from_replayed_completions_without_decoding(tmp_path: Path) -> None:
    """Rewards, advantages and the update run on recorded completions (no decoding); the
    engine is synced after every update."""
    texts = ["the answer is 1", "2", "no idea"]
    overrides = tiny_overrides(tmp_path, max_steps=2, bf16=False)
    overrides += [
        "rollout.engine=replay",
        f"rollout.engine_kwargs={json.dumps({'completions': texts})}",
    ]
    trainer = GRPOTrainer(load_config(overrides=overrides), reward_funcs=[is_two])
    engine = trainer.parts.engine
    assert isinstance(engine, ReplayEngine)
    before = {n: p.detach().clone() for n, p in trainer.policy.named_parameters()}
    trainer.train()
    lines = (tmp_path / "run" / "completions.jsonl").read_text().splitlines()
    records = [json.loads(x) for x in lines]
    assert [r["completion"] for r in records] == [texts[i % 3] for i in range(len(records))]
    for start in range(0, len(records), 4):  # G = 4: advantages by hand, (r - mean) / std
        group = records[start : start + 4]
        rewards = [float(r["completion"] == "2") for r in group]
        assert [r["reward"] for r in group] == rewards
        mean = sum(rewards) / 4
        std = (sum((x - mean) ** 2 for x in rewards) / 3) ** 0.5
        for r, x in zip(group, rewards, strict=True):
            want = 0.0 if std == 0 else (x - mean) / (std + 1e-4)
            assert r["advantage"] == pytest.approx(want, abs=1e-3)
    assert engine.syncs == 2  # once per step
    moved = [n for n, p in trainer.policy.named_parameters() if not torch.equal(p, before[n])]
    assert moved  # the recorded completions trained the policy


class MaskedEcho:
    """A test engine: replayed completions whose middle third is marked as inserted by an
    environment (loss_mask 0), in turn 1; the rest is the policy's (turns 0 and 2)."""

    def __init__(self, inner: RolloutEngine) -> None:
        self.inner = inner

    def generate(self, prompts: PromptBatch, request: RolloutRequest) -> Rollout:
        rollout = self.inner.generate(prompts, request)
        b, lc = rollout.completion_ids.shape
        third = max(lc // 3, 1)
        loss_mask = torch.ones(b, lc, dtype=torch.long)
        loss_mask[:, third : 2 * third] = 0
        turn = torch.zeros(b, lc, dtype=torch.long)
        turn[:, third : 2 * third] = 1
        turn[:, 2 * third :] = 2
        rollout.loss_mask, rollout.turn_index = loss_mask, turn
        return rollout

    def sync_weights(self) -> None:
        self.inner.sync_weights()

    def serving(self) -> Any:
        return self.inner.serving()


def test_an_engine_registered_outside_the_package_marks_inserted_tokens(tmp_path: Path) -> None:
    replay = ENGINES.get("replay")

    def build(ctx: EngineContext) -> RolloutEngine:
        return MaskedEcho(replay(ctx))

    ENGINES.add("test_masked_echo", build)
    try:
        overrides = tiny_overrides(tmp_path, max_steps=1, bf16=False)
        text = "one two"
        overrides += [
            "rollout.engine=test_masked_echo",
            f"rollout.engine_kwargs={json.dumps({'completions': [text, text + ' three four five']})}",
        ]
        trainer = GRPOTrainer(load_config(overrides=overrides), reward_funcs=["length_penalty"])
        step = trainer.grpo_step
        rows = trainer.next_rows()
        rollout = step.generate(rows)
        batch = step.prepare(rollout, step.score(rows, rollout).advantages)
        want = rollout.completion_mask * rollout.loss_mask  # type: ignore[operator]
        assert torch.equal(batch.loss_mask, want[:, : batch.loss_mask.shape[1]])
        assert batch.num_tokens == float(want.sum())  # the normaliser counts policy tokens only
        metrics = trainer.step()
        assert metrics["tokens/environment_mean"] > 0 and metrics["turns/mean"] > 1.0
    finally:
        ENGINES.unregister("test_masked_echo")


def test_unknown_engine_lists_the_valid_ones(tmp_path: Path) -> None:
    overrides = [*tiny_overrides(tmp_path, max_steps=1), "rollout.engine=vllm_typo"]
    with pytest.raises(
        ValueError, match=r"rollout.engine: unknown name 'vllm_typo'; valid: "
    ) as err:
        GRPOTrainer(load_config(overrides=overrides))
    assert set(str(err.value).split("valid: ")[1].split(", ")) >= {"local", "replay", "episodes"}


def test_taking_groups_keeps_every_per_token_field() -> None:
    """A sub-rollout of some groups carries the rows' per-token fields, behaviour_logp included
    (mismatch correction reads it after groups are selected)."""
    import torch

    from groupwise.rollout import PromptBatch, Rollout, take_groups

    g, lc = 2, 3
    ids = torch.arange(4 * lc).reshape(4, lc)
    mask = torch.ones(4, lc, dtype=torch.long)
    rollout = Rollout(
        prompts=PromptBatch(
            torch.zeros(2, 1, dtype=torch.long), torch.ones(2, 1, dtype=torch.long)
        ),
        completion_ids=ids,
        completion_mask=mask,
        truncated=torch.zeros(4, dtype=torch.bool),
        group_size=g,
        entropy=ids.float() / 10,
        behaviour_logp=-ids.float(),
    )
    kept = take_groups(rollout, torch.tensor([1]))
    assert torch.equal(kept.completion_ids, ids[2:])
    assert kept.behaviour_logp is not None and torch.equal(kept.behaviour_logp, -ids[2:].float())
    assert kept.entropy is not None and torch.equal(kept.entropy, ids[2:].float() / 10)
