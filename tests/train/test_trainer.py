"""End-to-end runs of tiny-random: parameters move, frozen ones don't, runs are deterministic."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch

import groupwise.models.plan as plan_module
from groupwise import GRPOTrainer, load_config
from groupwise.rollout import PromptBatch, Rollout, split_groups
from groupwise.train.batch import TokenBudget, group_parts, groups_per_microbatch, token_budget
from tests.tests_helpers import TIMING_KEYS, tiny_overrides


def varied(prompts: list[Any], completions: list[str], **_: Any) -> list[float]:
    """A reward with spread inside every group, so advantages are non-zero."""
    return [float(len(c) % 5) / 4.0 for c in completions]


def _snapshot(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def _train(tmp_path: Path, steps: int = 2, **extra: object) -> GRPOTrainer:
    config = load_config(overrides=tiny_overrides(tmp_path, max_steps=steps, **extra))
    trainer = GRPOTrainer(config, reward_funcs=[varied])
    return trainer


@pytest.mark.parametrize("loss_type", ["grpo", "dapo", "dr_grpo"])
def test_full_finetune_moves_every_parameter(tmp_path: Path, loss_type: str) -> None:
    trainer = _train(tmp_path, loss_type=loss_type, beta=0.04)
    assert trainer.reference is not None and trainer.reference.model is not None
    before = _snapshot(trainer.policy)
    ref_before = _snapshot(trainer.reference.model)
    trainer.train()
    after = _snapshot(trainer.policy)
    unchanged = [n for n in before if torch.equal(before[n], after[n])]
    assert not unchanged, f"parameters that did not change: {unchanged}"
    for name, value in _snapshot(trainer.reference.model).items():
        assert torch.equal(value, ref_before[name]), f"reference parameter {name} changed"
    lines = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in lines] == [1, 2]
    assert 0 < lines[0]["wall_time"] < lines[1]["wall_time"]  # seconds since the run began
    assert lines[1]["wall_time"] - lines[0]["wall_time"] >= lines[1]["step_time"]
    assert all(m["kl"] >= 0 for m in lines)
    assert lines[0]["kl"] == pytest.approx(0.0, abs=1e-2)  # policy == reference at step 1


def test_pure_bf16_trains_in_place_without_a_rollout_copy(tmp_path: Path) -> None:
    from groupwise.train.optim import CompensatedAdamW

    trainer = _train(tmp_path, beta=0.04, **{"training.param_dtype": "bfloat16"})
    assert trainer.rollout_model is trainer.policy  # decodes itself: no copy to sync
    assert {p.dtype for p in trainer.policy.parameters()} == {torch.bfloat16}
    assert isinstance(trainer.parts.optimizer, CompensatedAdamW)
    assert trainer.reference is not None and trainer.reference.model is not None
    before, ref_before = _snapshot(trainer.policy), _snapshot(trainer.reference.model)
    trainer.train()
    after = _snapshot(trainer.policy)
    compensation = [s["compensation"] for s in trainer.parts.optimizer.state.values()]
    moved = [
        n for n, c in zip(before, compensation, strict=True)
        if not torch.equal(before[n], after[n]) or bool(c.any())
    ]  # fmt: skip
    assert len(moved) == len(before)  # every weight moved (some only below a bf16 ulp so far)
    for name, value in _snapshot(trainer.reference.model).items():
        assert torch.equal(value, ref_before[name]), f"reference parameter {name} changed"
    lines = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert all(np.isfinite(m["entropy"]) and np.isfinite(m["loss"]) for m in lines)


def test_fused_kernels_train_pure_bf16(tmp_path: Path) -> None:
    trainer = _train(
        tmp_path, beta=0.04, **{"training.param_dtype": "bfloat16", "training.fused_kernels": True}
    )
    norm = trainer.policy.model.norm  # type: ignore[union-attr]
    x = torch.randn(1, 2, norm.weight.shape[0], dtype=torch.bfloat16, requires_grad=True)
    routed = "Native" if trainer.plan.training_native_kernels else ""  # C++ kernels under auto
    assert type(norm(x).grad_fn).__name__ == f"{routed}RMSNormFunctionBackward"
    before = _snapshot(trainer.policy)
    trainer.train()
    after = _snapshot(trainer.policy)
    assert any(not torch.equal(before[n], after[n]) for n in before)
    lines = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert all(np.isfinite(m["loss"]) and np.isfinite(m["kl"]) for m in lines)


def test_lora_can_decode_through_its_adapters(tmp_path: Path) -> None:
    extra = {"model.lora": True, "model.lora_r": 4, "model.lora_rollout_copy": False}
    trainer = _train(tmp_path, beta=0.04, param_dtype="bfloat16", **extra)
    assert trainer.rollout_model is trainer.policy  # no merged copy
    base = {n: p.dtype for n, p in trainer.policy.named_parameters() if not p.requires_grad}
    assert set(base.values()) == {torch.bfloat16}  # frozen base in bf16, adapters float32
    before = _snapshot(trainer.policy)
    trainer.train()
    after = _snapshot(trainer.policy)
    moved = {n for n in before if not torch.equal(before[n], after[n])}
    assert moved and all("lora_" in n for n in moved)
    lines = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in lines] == [1, 2]
    assert all(np.isfinite(m["loss"]) and m["completions/mean_length"] > 0 for m in lines)


def test_lora_merged_in_place_equals_the_merged_copy(tmp_path: Path) -> None:
    """model.lora_merge_in_place: the rollout model shares the base weights, the adapters are
    merged into them for each rollout and the base comes back bitwise after it; the run is
    the merged-copy run, completion for completion and loss for loss."""
    lora = {"model.lora": True, "model.lora_r": 4, "beta": 0.04, "param_dtype": "bfloat16"}
    runs = {}
    for in_place in (False, True):
        out = tmp_path / str(in_place)
        trainer = _train(out, steps=3, **lora, **{"model.lora_merge_in_place": in_place})
        base = {n: p for n, p in trainer.policy.named_parameters() if not p.requires_grad}
        before = {n: p.detach().clone() for n, p in base.items()}
        shares = {p.data_ptr() for p in trainer.rollout_model.parameters()} <= {
            p.data_ptr() for p in base.values()
        }
        assert shares == in_place  # no copy of the weights when merging in place
        trainer.train()
        for name, value in base.items():
            assert torch.equal(value, before[name]), f"base weight {name} changed"
        lines = (out / "run" / "metrics.jsonl").read_text().splitlines()
        runs[in_place] = [
            {k: v for k, v in json.loads(x).items() if not k.startswith(TIMING_KEYS)} for x in lines
        ]
        texts = (out / "run" / "completions.jsonl").read_text().splitlines()
        runs[in_place].append([json.loads(t)["completion"] for t in texts])
    assert runs[True] == runs[False]
    assert any(r["loss"] != 0 for r in runs[True][:-1])


def test_lora_moves_adapters_only(tmp_path: Path) -> None:
    trainer = _train(tmp_path, **{"model.lora": True, "model.lora_r": 4, "beta": 0.04})
    assert trainer.reference is not None and trainer.reference.model is None  # no copy
    before = _snapshot(trainer.policy)
    trainable = {n for n, p in trainer.policy.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)
    trainer.train()
    after = _snapshot(trainer.policy)
    for name in before:
        changed = not torch.equal(before[name], after[name])
        assert changed == (name in trainable), name
    # the rollout copy holds base + merged LoRA delta
    from groupwise.rollout import generate, tokenize_prompts
    from groupwise.train.forward import completion_logp

    batch = tokenize_prompts(trainer.tokenizer, ["hello"], trainer.device)
    rollout = generate(
        trainer.rollout_model,
        batch,
        group_size=2,
        max_completion_length=4,
        eos_token_ids=trainer.parts.engine.eos_token_ids,  # type: ignore[attr-defined]
        pad_token_id=0,
        temperature=1.0,
        generator=torch.Generator().manual_seed(0),
    )
    with torch.no_grad():
        merged, _ = completion_logp(trainer.rollout_model.float(), rollout)
        policy, _ = completion_logp(trainer.policy, rollout)
    torch.testing.assert_close(merged, policy, atol=5e-2, rtol=0)


@pytest.mark.parametrize(
    "extra",
    [
        {"num_iterations": 2, "epsilon_high": 0.28},
        {"importance_sampling_level": "sequence", "loss_type": "grpo"},
        {"mask_truncated_completions": True, "scale_rewards": "none"},
    ],
)
def test_variants_run_and_move(tmp_path: Path, extra: dict[str, object]) -> None:
    trainer = _train(tmp_path, **extra)
    before = _snapshot(trainer.policy)
    trainer.train()
    after = _snapshot(trainer.policy)
    moved = sum(not torch.equal(before[n], after[n]) for n in before)
    if extra.get("mask_truncated_completions"):
        assert moved >= 0  # every completion may be truncated: loss may legitimately be empty
    else:
        assert moved == len(before)
    metrics = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    last = json.loads(metrics[-1])
    for key in ("loss", "grad_norm", "clip_ratio/region_mean", "entropy", "reward_std"):
        assert key in last


def test_microbatching_matches_one_batch(tmp_path: Path) -> None:
    """2 micro-batches of 2 prompts == 1 batch of 4 prompts == 4 micro-batches of one prompt
    cut by the token budget == 16 micro-batches of one completion each, its group split by a
    budget below one group's tokens (global normalisers), fp32."""
    results = []
    for size, accum, budget in ((8, 2, 0), (16, 1, 0), (16, 1, 1)):
        trainer = _train(
            tmp_path / f"{size}-{budget}",
            steps=1,
            bf16=False,
            per_device_train_batch_size=size,
            gradient_accumulation_steps=accum,
            max_tokens_per_microbatch=budget,
            loss_type="grpo",
        )
        trainer.train()
        results.append(_snapshot(trainer.policy))
    for other in results[1:]:
        for name in results[0]:
            torch.testing.assert_close(results[0][name], other[name], atol=1e-6, rtol=1e-5)


def _rollout(prompts: int, prompt_len: int, group: int, width: int) -> Rollout:
    """Prompt ``p`` is all ``p + 1``; completion row ``i`` is all ``100 + i``."""
    ids = torch.arange(1, prompts + 1)[:, None].expand(prompts, prompt_len).clone()
    rows = prompts * group
    return Rollout(
        prompts=PromptBatch(ids, torch.ones_like(ids)),
        completion_ids=(100 + torch.arange(rows))[:, None].expand(rows, width).clone(),
        completion_mask=torch.ones(rows, width, dtype=torch.long),
        truncated=torch.zeros(rows, dtype=torch.bool),
        group_size=group,
    )


def test_a_group_split_keeps_its_rows_and_repeats_its_prompt() -> None:
    rollout = _rollout(prompts=2, prompt_len=3, group=4, width=5)
    split = split_groups(rollout, 2)
    assert split.group_size == 2
    assert split.prompts.input_ids[:, 0].tolist() == [1, 1, 2, 2]  # each prompt twice
    assert torch.equal(split.completion_ids, rollout.completion_ids)  # rows in the same order
    assert split_groups(rollout, 1) is rollout
    with pytest.raises(ValueError, match="divide the group size 4"):
        split_groups(rollout, 3)


def test_group_parts_are_the_fewest_that_fit_the_budget() -> None:
    """A group of 4 costs 10 + 4 * 6 = 34 tokens, a half 22, a single completion 16."""
    rollout = _rollout(prompts=3, prompt_len=10, group=4, width=6)
    assert group_parts(rollout, 0) == 1  # no limit
    assert group_parts(rollout, 34) == 1
    assert group_parts(rollout, 33) == 2
    assert group_parts(rollout, 22) == 2
    assert group_parts(rollout, 21) == 4
    assert group_parts(rollout, 1) == 4  # at most one completion per part


def test_split_groups_give_the_same_update_with_a_reference_and_two_iterations(
    tmp_path: Path,
) -> None:
    """beta > 0 (the reference's log-probs per part) and mu = 2 (the first update's log-probs
    kept per part): whole groups and groups in halves land on the same weights, fp32."""
    results, micro = [], []
    for budget in (0, 1):  # 1: every group in parts of one completion each
        trainer = _train(
            tmp_path / str(budget),
            steps=2,
            bf16=False,
            beta=0.04,
            num_iterations=2,
            epsilon_high=0.28,
            max_tokens_per_microbatch=budget,
        )
        micro.append(_micro_batches_per_step(trainer))
        results.append(_snapshot(trainer.policy))
    assert micro == [[2, 2], [16, 16]]  # 4 groups of 4 a step, 2 per micro-batch; split: 16
    for name in results[0]:
        torch.testing.assert_close(results[0][name], results[1][name], atol=1e-6, rtol=1e-5)


def _micro_batches_per_step(trainer: GRPOTrainer) -> list[int]:
    """Train ``trainer`` to the end; the number of micro-batches of each step's update."""
    counts: list[int] = []
    prepare = trainer.grpo_step.prepare

    def counting(*args: Any) -> Any:
        batch = prepare(*args)
        counts.append(len(batch.micro))
        return batch

    trainer.grpo_step.prepare = counting  # type: ignore[method-assign]
    trainer.train()
    return counts


def test_the_token_budget_by_hand() -> None:
    """SmolLM2-135M's shape: 3 * 30 * (8 * 576 + 2 * 1536) = 691,200 elements a token."""
    shape = SimpleNamespace(hidden_size=576, intermediate_size=1536, num_hidden_layers=30)
    assert token_budget("auto", shape, 2, 5_000_000_000) == TokenBudget(512, 3616)  # bf16
    assert token_budget("auto", shape, 4, 5_000_000_000) == TokenBudget(512, 1808)  # float32
    assert token_budget("auto", shape, 2, 100_000_000) == TokenBudget(72, 72)  # packs less too
    assert token_budget("auto", shape, 2, 0) == TokenBudget(1, 1)  # one completion a part
    assert token_budget("auto", shape, 2, None) == TokenBudget(512, 512)  # an older plan
    assert token_budget(1024, shape, 2, None) == TokenBudget(1024, 1024)  # a hard bound
    assert token_budget(0, shape, 2, None) == TokenBudget(0, 0)  # no limit


def test_auto_splits_a_group_only_when_its_activations_would_not_fit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """4 groups of 4 a step, 2 per micro-batch: whole with memory to spare (packed up to 512
    tokens), in parts of one completion with none; the plan records the memory it allowed."""
    micro = []
    for free in (10**15, 0):
        monkeypatch.setattr(plan_module, "available_memory", lambda device, free=free: free)
        trainer = _train(tmp_path / str(free), steps=1, bf16=False)
        assert trainer.plan.activation_memory == free // 4
        micro.append(_micro_batches_per_step(trainer))
        plan = json.loads((tmp_path / str(free) / "run" / "plan.json").read_text())
        assert plan["activation_memory"] == free // 4
    assert micro == [[2], [16]]


def test_groups_per_microbatch_follows_the_token_budget() -> None:
    """A group costs its prompt once plus G completions: 10 + 4 * 6 = 34 tokens here."""
    prompts = PromptBatch(torch.ones(3, 10, dtype=torch.long), torch.ones(3, 10, dtype=torch.long))
    rollout = Rollout(
        prompts=prompts,
        completion_ids=torch.ones(12, 6, dtype=torch.long),
        completion_mask=torch.ones(12, 6, dtype=torch.long),
        truncated=torch.zeros(12, dtype=torch.bool),
        group_size=4,
    )
    assert groups_per_microbatch(rollout, cap=3, max_tokens=0) == 3  # no limit
    assert groups_per_microbatch(rollout, cap=3, max_tokens=68) == 2
    assert groups_per_microbatch(rollout, cap=3, max_tokens=67) == 1
    assert groups_per_microbatch(rollout, cap=3, max_tokens=5) == 1  # at least one group
    assert groups_per_microbatch(rollout, cap=1, max_tokens=1000) == 1  # the batch size caps it


def half_constant(
    prompts: list[Any], completions: list[str], answer: list[str], **_: Any
) -> list[float]:
    """Constant reward (a zero-std group) for even answers, varied for odd ones."""
    return [
        1.0 if int(a) % 2 == 0 else float(len(c) % 5) / 4.0
        for c, a in zip(completions, answer, strict=True)
    ]


def test_skipping_zero_advantage_groups_is_exact(tmp_path: Path) -> None:
    """Leaving zero-advantage groups out of the backward changes nothing when beta = 0."""
    results, zero_std = [], []
    for skip in (True, False):
        config = load_config(
            overrides=tiny_overrides(
                tmp_path / str(skip),
                max_steps=3,
                bf16=False,
                weight_decay=0.1,
                skip_zero_advantage_groups=skip,
            )
        )
        trainer = GRPOTrainer(config, reward_funcs=[half_constant])
        trainer.train()
        results.append(_snapshot(trainer.policy))
        lines = (tmp_path / str(skip) / "run" / "metrics.jsonl").read_text().splitlines()
        zero_std.append([json.loads(x)["frac_reward_zero_std"] for x in lines])
    assert zero_std[0] == zero_std[1] and max(zero_std[0]) > 0  # some groups were skipped
    for name in results[0]:
        torch.testing.assert_close(results[0][name], results[1][name], atol=1e-6, rtol=1e-5)


def test_same_seed_same_run(tmp_path: Path) -> None:
    logs = []
    for name in ("a", "b"):
        trainer = _train(tmp_path / name, steps=2)
        trainer.train()
        lines = (tmp_path / name / "run" / "metrics.jsonl").read_text().splitlines()
        logs.append(
            [
                {k: v for k, v in json.loads(x).items() if not k.startswith(TIMING_KEYS)}
                for x in lines
            ]
        )
    assert logs[0] == logs[1]


def test_reference_spans_equal_micro_batches(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """ref_logp from spans of several groups (REFERENCE_TOKENS) == one micro-batch at a time,
    sliced to each micro-batch's width."""
    import groupwise.train.build as trainer_module
    from groupwise.rollout import select_groups
    from groupwise.train.forward import completion_logp

    config = load_config(
        overrides=tiny_overrides(
            tmp_path,
            bf16=False,
            per_device_train_batch_size=4,
            gradient_accumulation_steps=4,
            **{"algorithm.beta": 0.1},
        )
    )
    trainer = GRPOTrainer(config)
    rows = trainer.next_rows()
    step = trainer.grpo_step
    rollout = step.generate(rows)
    batch = step.prepare(rollout, step.score(rows, rollout).advantages)
    assert len(batch.micro) == 4  # one group (G = 4) per micro-batch
    spans = step.ref_logp(batch)
    assert trainer.reference is not None
    model, _ = trainer.reference.context()
    for (start, stop), got in zip(batch.micro, spans, strict=True):
        sub = select_groups(batch.rollout, start, stop)
        want, _ = completion_logp(model, sub, compute_entropy=False)
        assert got is not None and got.shape == want.shape
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    monkeypatch.setattr(trainer_module, "REFERENCE_TOKENS", 1)  # one group per span
    for a, b in zip(step.ref_logp(batch), spans, strict=True):
        assert a is not None and b is not None
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_rewards_see_which_completions_were_cut_off(tmp_path: Path) -> None:
    """Reward functions get ``truncated`` (one bool per completion) beside ``completion_ids``."""
    seen: list[tuple[list[bool], list[list[int]]]] = []

    def spy(prompts: list[Any], completions: list[str], **kw: Any) -> list[float]:
        seen.append((kw["truncated"], kw["completion_ids"]))
        return [float(len(c) % 3) for c in completions]

    config = load_config(overrides=tiny_overrides(tmp_path, max_steps=1, max_completion_length=4))
    trainer = GRPOTrainer(config, reward_funcs=[spy])
    trainer.train()
    truncated, ids = seen[0]
    assert len(truncated) == len(ids) == 16 and all(isinstance(t, bool) for t in truncated)
    # cut off = no EOS within the limit
    eos = set(trainer.parts.engine.eos_token_ids)  # type: ignore[attr-defined]
    assert truncated == [not any(t in eos for t in row) for row in ids]


def test_a_task_without_correctness_is_scored_by_the_rewards_on_a_copy(tmp_path: Path) -> None:
    """Held-out rows with no correctness check are scored by the training rewards (as TRL scores
    eval_dataset), on the trainer's copy of the task: the caller's Task is not changed."""
    from groupwise import Task
    from tests.tests_helpers import varied_reward

    rows = [{"prompt": f"Say {i}."} for i in range(8)]
    task = Task("mine", train=rows, eval=rows[:2])
    config = load_config(overrides=tiny_overrides(tmp_path, max_steps=1))
    trainer = GRPOTrainer(config, reward_funcs=[varied_reward], task=task)
    assert task.correctness is None and task.eval_metric == "accuracy"
    assert trainer.task is not task and trainer.task.eval_metric == "reward"
    assert trainer.task.correctness is not None
    scores = trainer.task.correctness(["p"], ["abcd"])
    assert scores == varied_reward(["p"], ["abcd"])
