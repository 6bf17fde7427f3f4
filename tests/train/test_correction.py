"""Engine-mismatch correction wired through the step: an engine whose log-probs are the local
engine's shifted by a known offset gives the expected weights, metrics and updates."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from groupwise import GRPOTrainer, load_config
from groupwise.config import ConfigError
from groupwise.rollout import ENGINES, EngineContext, PromptBatch, Rollout, RolloutRequest
from tests.tests_helpers import tiny_overrides, varied_reward

ENGINE = "test_shifted_logp"


class ShiftedEngine:
    """The local engine, reporting ``behaviour_logp = its log-probs - offset`` (as if it
    sampled from a slightly different model): ``old_logp - behaviour_logp = offset``."""

    offset = 0.0

    def __init__(self, ctx: EngineContext) -> None:
        self.inner = ENGINES.get("local")(ctx)

    def generate(self, prompts: PromptBatch, request: RolloutRequest) -> Rollout:
        rollout = self.inner.generate(prompts, dataclasses.replace(request, behaviour_logp=True))
        assert rollout.behaviour_logp is not None
        rollout.behaviour_logp = rollout.behaviour_logp - self.offset * rollout.completion_mask
        return rollout

    def sync_weights(self) -> None:
        self.inner.sync_weights()

    def serving(self) -> Any:
        return self.inner.serving()


@pytest.fixture
def shifted() -> Iterator[type[ShiftedEngine]]:
    ENGINES.add(ENGINE, ShiftedEngine)
    try:
        yield ShiftedEngine
    finally:
        ENGINES.unregister(ENGINE)
        ShiftedEngine.offset = 0.0


def _trainer(tmp_path: Path, **extra: object) -> GRPOTrainer:
    overrides = tiny_overrides(tmp_path, max_steps=1, bf16=False, **extra)
    return GRPOTrainer(load_config(overrides=overrides), reward_funcs=[varied_reward])


def _mode(mode: str, **extra: object) -> dict[str, object]:
    return {"rollout.engine": ENGINE, "algorithm.vllm_importance_sampling_mode": mode, **extra}


def test_token_ratios_of_a_known_offset(tmp_path: Path, shifted: type[ShiftedEngine]) -> None:
    shifted.offset = 0.5  # auto: on, since the engine reports its log-probs
    metrics = _trainer(tmp_path, **_mode("token_truncate")).step()
    assert metrics["sampling/sampling_logp_difference/mean"] == pytest.approx(0.5, abs=1e-5)
    assert metrics["sampling/sampling_logp_difference/max"] == pytest.approx(0.5, abs=1e-5)
    for stat in ("min", "mean", "max"):
        value = metrics[f"sampling/importance_sampling_ratio/{stat}"]
        assert value == pytest.approx(math.exp(0.5), rel=1e-5)
    assert metrics["sampling/masked_share"] == 0.0


def test_sequence_ratio_is_the_product_over_the_tokens(
    tmp_path: Path, shifted: type[ShiftedEngine]
) -> None:
    shifted.offset = 0.05
    trainer = _trainer(tmp_path, **_mode("sequence_truncate", num_iterations=2))
    step = trainer.grpo_step
    rows = trainer.next_rows()
    rollout = step.generate(rows)
    batch = step.prepare(rollout, step.score(rows, rollout).advantages)
    batch.old_logp = step.logp_no_grad(batch)
    metrics = step.update(batch)
    n = batch.loss_mask.sum(dim=1).double()  # loss tokens of each row in the loss
    want = torch.exp(0.05 * n[n > 0]).clamp(max=3.0)  # e^(sum_t 0.05), truncated at 3
    assert metrics["sampling/importance_sampling_ratio/mean"] == pytest.approx(
        float(want.mean()), rel=1e-4
    )
    assert metrics["sampling/importance_sampling_ratio/min"] == pytest.approx(
        float(want.min()), rel=1e-4
    )
    assert metrics["sampling/importance_sampling_ratio/max"] == pytest.approx(
        float(want.max()), rel=1e-4
    )


def test_masking_every_token_leaves_the_policy_unchanged(
    tmp_path: Path, shifted: type[ShiftedEngine]
) -> None:
    shifted.offset = 0.5  # e^0.5 = 1.65 > 1.5: every token is outside the band
    extra = {"algorithm.vllm_importance_sampling_clip_max": 1.5}
    trainer = _trainer(tmp_path, **_mode("token_mask", **extra))
    before = {n: p.detach().clone() for n, p in trainer.policy.named_parameters()}
    metrics = trainer.step()
    assert metrics["sampling/masked_share"] == 1.0
    assert metrics["sampling/importance_sampling_ratio/max"] == 0.0
    assert metrics["loss"] == 0.0
    for name, p in trainer.policy.named_parameters():
        assert torch.equal(p, before[name]), name


def test_switched_off_the_mismatch_is_measured_and_not_applied(
    tmp_path: Path, shifted: type[ShiftedEngine]
) -> None:
    shifted.offset = 0.5  # with the correction on every weight would be e^0.5
    off = {"algorithm.vllm_importance_sampling_correction": False}
    trainer = _trainer(tmp_path / "off", **_mode("token_truncate", **off))
    metrics = trainer.step()
    assert metrics["sampling/sampling_logp_difference/mean"] == pytest.approx(0.5, abs=1e-5)
    # not applied: the same update as the local engine without any correction
    shifted.offset = 0.0
    plain = _trainer(tmp_path / "plain", **{"algorithm.vllm_importance_sampling_correction": False})
    plain_metrics = plain.step()
    assert metrics["loss"] == plain_metrics["loss"]
    for (name, p), q in zip(
        trainer.policy.named_parameters(), plain.policy.parameters(), strict=True
    ):
        assert torch.equal(p, q), name


def test_without_engine_log_probs_nothing_is_logged(tmp_path: Path) -> None:
    default = _trainer(tmp_path / "default")  # local engine, auto: it reports no log-probs
    rollout = default.grpo_step.generate(default.next_rows())
    assert rollout.behaviour_logp is None
    assert not [k for k in default.step() if k.startswith("sampling/")]


def test_true_asks_the_local_engine_and_needs_an_engine_that_reports(tmp_path: Path) -> None:
    on = {"algorithm.vllm_importance_sampling_correction": True}
    metrics = _trainer(tmp_path / "local", **on).step()
    # the float32 policy samples from itself: the two computations agree to rounding
    assert metrics["sampling/sampling_logp_difference/max"] < 1e-4
    assert metrics["sampling/importance_sampling_ratio/mean"] == pytest.approx(1.0, abs=1e-4)
    replay = {"rollout.engine": "replay", "rollout.engine_kwargs": '{"completions": ["a b"]}'}
    trainer = _trainer(tmp_path / "replay", **on, **replay)
    with pytest.raises(ConfigError, match="engine 'replay' reports none"):
        trainer.step()
