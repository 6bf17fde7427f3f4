"""The entropy bonus: its adaptive controller by hand, and tiny-random runs with it (the loss
term, the ``entropy_coef`` metric, an exact resume of the controller's state)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch

from groupwise import GRPOTrainer, load_config
from groupwise.config import AlgorithmConfig, ConfigError
from groupwise.run.checkpoint import list_checkpoints, load_trainer_state
from groupwise.train.entropy import EntropyBonus, EntropyController
from tests.tests_helpers import TIMING_KEYS, Crash, crash_after, tiny_overrides

REWARD = "rewards.funcs=[tests.tests_helpers:varied_reward]"

# ---------------------------------------------------------------------------- the controller


def test_adaptive_controller_by_hand() -> None:
    # binary-exact numbers: c0 = 0.5, delta = 0.25, [c_min, c_max] = [0.25, 1], target = 1
    control = EntropyController(
        coef=0.5, adaptive=True, coef_min=0.25, coef_max=1.0, delta=0.25, target=1.0
    )
    entropies = [0.5, 0.8, 1.0, 2.0, 3.0, 4.0, 5.0, 0.5]
    applied, coefs = [], []
    for entropy in entropies:
        applied.append(control.applied_coef())
        control.observe(entropy)
        coefs.append(control.coef)
    applied.append(control.applied_coef())
    # 0.5 <= 1: up; 0.8: up to the cap 1; 1.0 (= target): stays capped; 2, 3: down;
    # 4: down to the floor 0.25; 5: stays at the floor; 0.5: up again
    assert coefs == [0.75, 1.0, 1.0, 0.75, 0.5, 0.25, 0.25, 0.5]
    # applied: none before any entropy is known, then c only after an entropy <= target
    assert applied == [0.0, 0.75, 1.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.5]
    assert control.state_dict() == {"coef": 0.5, "last_entropy": 0.5}
    other = EntropyController(coef=0.0, adaptive=True)
    other.load_state_dict(control.state_dict())
    assert (other.coef, other.last_entropy) == (0.5, 0.5)


def test_fixed_coefficient_is_always_applied() -> None:
    control = EntropyController(coef=0.01)
    for entropy in (0.1, 5.0):
        assert control.applied_coef() == 0.01
        control.observe(entropy)
    assert control.coef == 0.01 and control.last_entropy == 5.0


def test_the_bonus_is_off_by_default_and_then_leaves_the_loss_alone() -> None:
    off = EntropyBonus.from_config(AlgorithmConfig())
    assert not off.enabled and off.state_dict() is None
    loss = torch.tensor(1.5, requires_grad=True)
    off.start_step(torch.ones(2, 3), None)
    assert off.add_to(loss, None, torch.ones(2, 3), None) is loss  # no term, no graph node
    assert off.end_update() == {}
    assert EntropyBonus.from_config(AlgorithmConfig(use_adaptive_entropy=True)).enabled
    on = EntropyBonus.from_config(AlgorithmConfig(entropy_coef=0.1))
    assert on.control is not None and on.control.last_entropy == math.inf


def test_micro_batch_terms_add_up_and_feed_the_controller() -> None:
    bonus = EntropyBonus(EntropyController(coef=0.25, adaptive=True, delta=0.25, target=1.0))
    loss_mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 1.0]])
    entropy_mask = torch.tensor([[1.0, 0.0, 0.0], [1.0, 1.0, 1.0]])  # top-entropy tokens: 4
    entropy = torch.tensor([[0.5, 9.0, 9.0], [1.0, 0.5, 1.0]], requires_grad=True)
    bonus.start_step(loss_mask, entropy_mask)
    assert bonus.num_tokens == 4.0 and bonus.coef == 0.0  # no entropy measured yet: no bonus
    zero = torch.zeros(())
    terms = [bonus.add_to(zero, entropy[i : i + 1], loss_mask[i : i + 1], entropy_mask[i : i + 1])
             for i in (0, 1)]  # fmt: skip
    assert [float(t.detach()) for t in terms] == [0.0, 0.0]
    # H_1 = (0.5 + 1 + 0.5 + 1) / 4 = 0.75 <= 1: c = 0.5, applied from the next update on
    assert bonus.end_update() == {"entropy_coef": 0.5}
    assert bonus.control is not None and bonus.control.last_entropy == 0.75
    total = sum(
        bonus.add_to(zero, entropy[i : i + 1], loss_mask[i : i + 1], entropy_mask[i : i + 1])
        for i in (0, 1)
    )
    assert float(total.detach()) == pytest.approx(-0.5 * 0.75)
    total.backward()
    assert entropy.grad is not None
    torch.testing.assert_close(entropy.grad, -0.5 / 4 * entropy_mask * loss_mask)


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        ({"entropy_coef_min": 0.5, "entropy_coef_max": 0.1}, "entropy_coef_min"),
        ({"entropy_coef_delta": -0.1}, "entropy_coef_delta"),
        ({"entropy_target": -1.0}, "entropy_target"),
        ({"entropy_coef": "nan"}, "finite"),
        ({"use_adaptive_entropy": True, "entropy_coef": 2.0}, r"entropy_coef_min, .*max"),
    ],
)
def test_invalid_entropy_settings_name_the_key(
    tmp_path: Path, overrides: dict[str, object], match: str
) -> None:
    extra = {f"algorithm.{k}": v for k, v in overrides.items()}
    with pytest.raises(ConfigError, match=match):
        load_config(overrides=tiny_overrides(tmp_path, **extra))


# ---------------------------------------------------------------------------- tiny-random runs

COMMON: dict[str, object] = {"bf16": False, "save_total_limit": 0}


def _run(tmp_path: Path, callbacks: Any = (), **extra: object) -> GRPOTrainer:
    overrides = [*tiny_overrides(tmp_path, **{**COMMON, **extra}), REWARD]
    trainer = GRPOTrainer(load_config(overrides=overrides), callbacks=list(callbacks))
    trainer.train()
    return trainer


def _metrics(run: Path) -> list[dict[str, Any]]:
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if not k.startswith(TIMING_KEYS)} for r in rows]


def test_the_bonus_subtracts_coef_times_the_policy_entropy(tmp_path: Path) -> None:
    """Same seed, same first rollout: step 1's loss moves by -c * H, H the token-mean entropy
    of the policy (= the sampling policy's, the ``entropy`` metric, at mu = 1)."""
    plain = _metrics(_run(tmp_path / "plain", max_steps=2).out_dir)
    bonus = _metrics(
        _run(tmp_path / "bonus", max_steps=2, **{"algorithm.entropy_coef": 0.5}).out_dir
    )
    assert "entropy_coef" not in plain[0]
    assert [m["entropy_coef"] for m in bonus] == [0.5, 0.5]
    assert plain[0]["entropy"] == pytest.approx(bonus[0]["entropy"], rel=1e-6)
    h = bonus[0]["entropy"]
    assert h > 0.1  # a random model: far from collapsed, so the term is visible
    assert bonus[0]["loss"] - plain[0]["loss"] == pytest.approx(-0.5 * h, rel=1e-3)


def test_adaptive_resume_equals_the_uninterrupted_run(tmp_path: Path) -> None:
    # target far above a random model's entropy: the coefficient grows every update, and is
    # applied from the second update on, so a resume that lost the controller would differ
    adaptive = {
        "algorithm.use_adaptive_entropy": True,
        "algorithm.entropy_coef": 0.25,
        "algorithm.entropy_coef_delta": 0.25,
        "algorithm.entropy_coef_max": 2.0,
        "algorithm.entropy_target": 100.0,
        "max_steps": 3,
        "save_steps": 2,
    }
    full = _run(tmp_path / "full", **adaptive)
    split = tmp_path / "split"
    with pytest.raises(Crash):
        _run(split, callbacks=[crash_after(2)], **adaptive)  # dies after checkpoint 2
    [checkpoint] = list_checkpoints(split / "run")
    assert load_trainer_state(checkpoint)["entropy_control"]["coef"] == 0.75
    second = _run(split, resume="auto", **adaptive)
    assert second.step_count == 3
    metrics = _metrics(split / "run")
    assert metrics == _metrics(tmp_path / "full" / "run")
    assert [m["entropy_coef"] for m in metrics] == [0.5, 0.75, 1.0]
    for (name, a), b in zip(
        full.policy.named_parameters(), second.policy.parameters(), strict=True
    ):
        assert torch.equal(a, b), name
