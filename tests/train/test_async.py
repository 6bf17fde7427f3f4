"""The rollout engine in its own process and one-step-off generation (rollout.max_staleness=1):
exactness against the in-process engine, the timeline, checkpoints and a dying engine process."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path
from typing import Any

import pytest
import torch

from groupwise import GRPOTrainer, load_config
from groupwise.config import ConfigError
from groupwise.models.plan import decide_rollout_weights
from groupwise.rollout.process import EngineProcess, RolloutEngineDied
from groupwise.run.checkpoint import CHECKPOINTS, list_checkpoints
from tests.tests_helpers import TIMING_KEYS, Crash, crash_after, tiny_overrides, varied_reward

# float32 (bf16 CPU kernels are not bitwise reproducible across processes here); a varied
# reward so that every step updates the weights
COMMON: dict[str, object] = {"bf16": False, "save_total_limit": 0}
REWARD = "rewards.funcs=[tests.tests_helpers:varied_reward]"
ASYNC = {"rollout.max_staleness": 1}


def _overrides(tmp_path: Path, **extra: object) -> list[str]:
    return [*tiny_overrides(tmp_path, **{**COMMON, **extra}), REWARD]


def _trainer(tmp_path: Path, callbacks: Any = (), **extra: object) -> GRPOTrainer:
    return GRPOTrainer(load_config(overrides=_overrides(tmp_path, **extra)), callbacks=callbacks)


def _metrics(run: Path) -> list[dict[str, Any]]:
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if not k.startswith(TIMING_KEYS)} for r in rows]


def _weights(trainer: GRPOTrainer) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in trainer.policy.named_parameters()}


def _assert_same_weights(a: GRPOTrainer, b: GRPOTrainer) -> None:
    wa, wb = _weights(a), _weights(b)
    assert wa.keys() == wb.keys()
    for name in wa:
        assert torch.equal(wa[name], wb[name]), name


def _completions(seen: list[list[str]]) -> Any:
    def callback(trainer: GRPOTrainer, metrics: dict[str, float]) -> None:
        seen.append([r.completion for r in trainer.last_completions])

    return callback


# ---------------------------------------------------------------------------- the config
def test_max_staleness_other_than_0_or_1_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"rollout.max_staleness=2 is not supported yet"):
        load_config(overrides=["rollout.max_staleness=2"])


def test_an_engine_that_cannot_run_in_a_process_is_named() -> None:
    with pytest.raises(ConfigError, match="the episodes engine does not support"):
        load_config(overrides=["rollout.max_staleness=1", "rollout.engine=episodes"])


def test_an_engine_in_its_own_process_decodes_a_copy() -> None:
    for lora, param_dtype, bf16 in [(False, "bfloat16", True), (True, "bfloat16", True)]:
        settings = dict(lora=lora, param_dtype=param_dtype, bf16=bf16, lora_rollout_copy=False)
        assert decide_rollout_weights(**settings, merge_in_place=False) != "copy"
        assert decide_rollout_weights(**settings, merge_in_place=False, engine_process=True) == (
            "copy"
        )


# ---------------------------------------------------------------------------- exactness
def test_engine_in_a_process_equals_the_engine_in_process(tmp_path: Path) -> None:
    """max_staleness=0 with the engine in its own process computes the in-process run bitwise:
    the same draws (the generator's state crosses the pipe), the same weights decoded."""
    seen_here: list[list[str]] = []
    seen_there: list[list[str]] = []
    here = _trainer(tmp_path / "here", [_completions(seen_here)], max_steps=3)
    here.train()
    there = _trainer(
        tmp_path / "there",
        [_completions(seen_there)],
        max_steps=3,
        **{"rollout.engine_process": True},
    )
    assert isinstance(there.parts.engine, EngineProcess)
    there.train()
    assert seen_here == seen_there
    assert _metrics(tmp_path / "here" / "run") == _metrics(tmp_path / "there" / "run")
    _assert_same_weights(here, there)
    assert here.grpo_step.generator.get_state().equal(there.grpo_step.generator.get_state())
    assert here.evaluate() == there.evaluate()  # held-out evaluation through the child


# ---------------------------------------------------------------------------- one step off
def test_one_step_off_decodes_each_batch_with_the_weights_before_the_last_update(
    tmp_path: Path,
) -> None:
    """Step 1 generates its own rollout; step 2's was decoded during step 1, with the weights
    before step 1's update and the generator where step 1's generation left it: what two
    generations in a row of the synchronous run's rows give, with no update between them."""
    seen: list[list[str]] = []
    run = _trainer(tmp_path / "async", [_completions(seen)], max_steps=3, **ASYNC)
    run.train()
    rows = [json.loads(x) for x in (tmp_path / "async/run/metrics.jsonl").read_text().splitlines()]
    assert [m["sampling/staleness"] for m in rows] == [0.0, 1.0, 1.0]
    assert all(m["time/wait_rollout"] >= 0 for m in rows)
    # the stale batches are corrected (auto: the rollouts carry the engine's log-probs)
    assert all("sampling/importance_sampling_ratio/mean" in m for m in rows)
    assert rows[1]["sampling/sampling_logp_difference/max"] > 0  # one update of staleness

    reference = _trainer(tmp_path / "reference", max_steps=3)  # in-process, synchronous
    step, decode = reference.grpo_step, reference.tokenizer.batch_decode
    expected = []
    for _ in range(2):  # no update between the two: both decoded with the initial weights
        rollout = step.generate(reference.next_rows())
        expected.append(decode(rollout.completion_ids, skip_special_tokens=True))
    assert seen[:2] == expected

    synchronous: list[list[str]] = []
    _trainer(tmp_path / "sync", [_completions(synchronous)], max_steps=2).train()
    assert synchronous[0] == seen[0]
    assert synchronous[1] != seen[1]  # decoded after step 1's update: other completions


def test_async_run_resumed_after_a_crash_equals_the_uninterrupted_run(tmp_path: Path) -> None:
    """The checkpoint after step 2 holds step 3's rows and rollout (decoded during step 2);
    the resumed run takes it, and steps 3..5 are those of the run that never stopped."""
    full = _trainer(tmp_path / "full", max_steps=5, save_steps=2, **ASYNC)
    full.train()
    split = tmp_path / "split"
    with pytest.raises(Crash):  # checkpoint at step 2; step 3 logged, then lost
        _trainer(split, [crash_after(3)], max_steps=5, save_steps=2, **ASYNC).train()
    checkpoint = list_checkpoints(split / "run")[0]
    state = torch.load(checkpoint / "trainer_state.pt", weights_only=False)
    assert checkpoint.name == "step-00000002" and state["rollout_ahead"]["rows"]
    second = _trainer(split, max_steps=5, save_steps=2, resume="auto", **ASYNC)
    second.train()
    assert second.step_count == 5
    assert _metrics(split / "run") == _metrics(tmp_path / "full" / "run")
    _assert_same_weights(full, second)


def test_a_dying_engine_process_stops_the_run_naming_it_and_the_run_resumes(
    tmp_path: Path,
) -> None:
    """The engine's process is killed (SIGKILL) while step 4's generation is pending: the run
    raises RolloutEngineDied naming the process and how to resume, instead of waiting; a run
    with resume=auto continues from step 2's checkpoint and completes."""
    holder: dict[str, GRPOTrainer] = {}
    killed: list[int] = []

    def kill_during_step_3(prompts: list[Any], completions: list[str], **_: Any) -> list[float]:
        trainer = holder["trainer"]
        if trainer.step_count == 2 and not killed:  # step 3 scores; step 4 is being decoded
            engine = trainer.parts.engine
            assert isinstance(engine, EngineProcess) and engine.pid is not None
            os.kill(engine.pid, signal.SIGKILL)
            killed.append(engine.pid)
        return varied_reward(prompts, completions)

    overrides = _overrides(tmp_path, max_steps=4, save_steps=2, **ASYNC)
    trainer = GRPOTrainer(load_config(overrides=overrides), reward_funcs=[kill_during_step_3])
    holder["trainer"] = trainer
    with pytest.raises(RolloutEngineDied) as info:
        trainer.train()
    message = str(info.value)
    assert f"the rollout engine process (pid {killed[0]}) exited with code -9" in message
    assert "during generate" in message and "training.resume=auto" in message
    assert str(tmp_path / "run" / CHECKPOINTS / "step-00000002") in message
    resumed = GRPOTrainer(
        load_config(overrides=[*overrides, "resume=auto"]), reward_funcs=[varied_reward]
    )
    resumed.train()
    assert resumed.step_count == 4
    assert [m["step"] for m in _metrics(tmp_path / "run")] == [1, 2, 3, 4]


# ---------------------------------------------------------------------------- llama.cpp
def test_llamacpp_in_its_own_process(tmp_path: Path) -> None:
    """The llamacpp engine in a process decodes as in-process (max_staleness=0) and runs one
    step off (its GGUF file rewritten by the child from the shared copy after each update)."""
    pytest.importorskip("llama_cpp", reason="the llamacpp engine needs llama-cpp-python")
    llama = {"rollout.engine": "llamacpp"}
    seen_here: list[list[str]] = []
    seen_there: list[list[str]] = []
    _trainer(tmp_path / "here", [_completions(seen_here)], max_steps=2, **llama).train()
    there = _trainer(
        tmp_path / "there",
        [_completions(seen_there)],
        max_steps=2,
        **llama,
        **{"rollout.engine_process": True},
    )
    there.train()
    assert seen_here == seen_there
    _trainer(tmp_path / "async", max_steps=3, **llama, **ASYNC).train()
    rows = _metrics(tmp_path / "async" / "run")
    assert [m["sampling/staleness"] for m in rows] == [0.0, 1.0, 1.0]
