"""DAPO's dynamic sampling (algorithm.dynamic_sampling): the refill on a scripted stand-in, the
config and its refusals, and tiny-random runs (batch shape, equality when nothing is filtered,
resume)."""

from __future__ import annotations

import json
import zlib
from pathlib import Path
from typing import Any

import pytest
import torch

from groupwise import GRPOTrainer, load_config
from groupwise.compat.trl import GRPOConfig
from groupwise.config import Config, ConfigError
from groupwise.core import group_advantages
from groupwise.data import Row
from groupwise.rewards.base import RewardResult
from groupwise.rollout import PromptBatch, Rollout
from groupwise.train.batch import Scored
from groupwise.train.dynamic import DynamicSampling, Generated
from tests.tests_helpers import TIMING_KEYS, Crash, crash_after, tiny_overrides

G, P, PAD = 2, 4, 0


# ---------------------------------------------------------------------------- a stand-in
class Scripted:
    """The step's phases on a script: generation batch k holds P prompts named ``"k.p"``;
    ``script[k][p]`` says whether prompt p's group gets rewards that differ ([0, 1]) or not
    ([1, 1]). Completions and prompts have widths that vary by batch."""

    def __init__(self, script: list[list[bool]]) -> None:
        self.script, self.drawn = script, 0

    def next_rows(self) -> list[Row]:
        k, self.drawn = self.drawn, self.drawn + 1
        return [{"prompt": f"{k}.{p}", "varied": v} for p, v in enumerate(self.script[k])]

    def generate(self, rows: list[Row]) -> Rollout:
        k = int(str(rows[0]["prompt"]).split(".")[0])
        lp, lc = [4, 2, 3][k], 3 + 2 * k  # widths differ between batches
        ids = torch.arange(len(rows) * G * lc).view(-1, lc) + 1
        mask = torch.ones_like(ids)
        mask[::2, lc - 1] = 0  # every other completion one token shorter
        return Rollout(
            prompts=PromptBatch(
                torch.full((len(rows), lp), 100 + k), torch.ones((len(rows), lp), dtype=torch.long)
            ),
            completion_ids=ids * mask,
            completion_mask=mask,
            truncated=torch.zeros(len(rows) * G, dtype=torch.bool),
            group_size=G,
            entropy=torch.rand(ids.shape) * mask,
        )

    def score(self, rows: list[Row], rollout: Rollout) -> Scored:
        total = torch.tensor([[0.0, 1.0] if row["varied"] else [1.0, 1.0] for row in rows])
        total = total.flatten()
        advantages, _ = group_advantages(total, G)
        texts = [f"{row['prompt']}/{i}" for row in rows for i in range(G)]
        return Scored(texts, RewardResult(total, {"acc": total}), advantages, {"reward": -1.0})


def _refill(
    script: list[list[bool]], max_batches: int, scale_rewards: str = "group"
) -> tuple[Generated, Generated, Scripted]:
    config = Config()
    config.algorithm.dynamic_sampling = True
    config.algorithm.max_num_gen_batches = max_batches
    config.algorithm.scale_rewards = scale_rewards
    phases = Scripted(script)
    rows = phases.next_rows()
    rollout = phases.generate(rows)
    first = Generated(rows, rollout, phases.score(rows, rollout))
    generated, batch = DynamicSampling(config, PAD)(first, phases, step=1)
    return generated, batch, phases


def _prompts(batch: Generated) -> list[str]:
    return [str(row["prompt"]) for row in batch.rows]


def _assert_batch_shape(batch: Generated) -> None:
    assert len(batch.rows) == P and batch.rollout.prompts.input_ids.shape[0] == P
    rows = batch.rollout.completion_ids.shape[0]
    assert rows == P * G and batch.scored.advantages.shape == (P * G,)
    assert len(batch.scored.texts) == P * G and batch.scored.rewards.total.shape == (P * G,)


def test_the_refill_keeps_the_first_p_groups_with_variance() -> None:
    # varied groups found: 2 after batch 0, 3 after batch 1, 5 after batch 2 -> 3 batches
    script = [[True, False, False, True], [False, False, False, True], [True, True, False, False]]
    generated, batch, phases = _refill(script, max_batches=4)
    assert phases.drawn == 3
    _assert_batch_shape(batch)
    assert _prompts(batch) == ["0.0", "0.3", "1.3", "2.0"]  # generation order; 2.1 not needed
    groups = batch.scored.rewards.total.view(P, G)
    assert bool((groups != groups[:, :1]).any(dim=1).all())  # every kept group has variance
    assert torch.equal(batch.scored.advantages, group_advantages(batch.scored.rewards.total, G)[0])
    # every prompt of a kept group is real: no padding column left over on the left
    assert bool(batch.rollout.prompts.attention_mask[:, 0].any())
    assert batch.rollout.prompts.input_ids[:, -1].tolist() == [100, 100, 101, 102]
    # the records and the reward metrics cover all 12 groups generated
    assert len(generated.rows) == 12 and len(generated.scored.texts) == 24
    m = generated.scored.metrics
    assert m["sampling/dynamic/gen_batches"] == 3.0
    assert m["sampling/dynamic/kept_groups_frac"] == 5 / 12
    assert m["sampling/dynamic/filled_zero_std"] == 0.0
    assert m["frac_reward_zero_std"] == pytest.approx(7 / 12)
    assert m["reward"] == pytest.approx(19 / 24)
    # the advantages the records show: the loss's for the kept groups, 0 for the others
    shown = generated.scored.advantages.view(12, G)
    kept = [0, 3, 7, 8]
    assert torch.equal(shown[kept].flatten(), batch.scored.advantages)
    assert not shown[[i for i in range(12) if i not in kept]].any()


def test_at_the_limit_zero_variance_groups_fill_the_batch(
    capsys: pytest.CaptureFixture[str],
) -> None:
    script = [[True, False, False, False], [False, False, True, False], [True] * P]
    generated, batch, phases = _refill(script, max_batches=2)
    assert phases.drawn == 2  # the third batch, which would have sufficed, is never drawn
    _assert_batch_shape(batch)
    # the two groups with variance and the first two without, in generation order
    assert _prompts(batch) == ["0.0", "0.1", "0.2", "1.2"]
    m = generated.scored.metrics
    assert m["sampling/dynamic/gen_batches"] == 2.0
    assert m["sampling/dynamic/filled_zero_std"] == 2.0
    assert m["sampling/dynamic/kept_groups_frac"] == 2 / 8
    assert "step 1" in capsys.readouterr().err


def test_a_batch_whose_groups_all_vary_is_kept_as_is() -> None:
    generated, batch, phases = _refill([[True] * P], max_batches=3, scale_rewards="batch")
    assert phases.drawn == 1 and generated.scored.metrics["sampling/dynamic/gen_batches"] == 1.0
    first = Scripted([[True] * P])
    rows = first.next_rows()
    assert _prompts(batch) == [str(r["prompt"]) for r in rows]
    assert batch.rollout.prompts.input_ids.shape == (P, 4)
    expected, _ = group_advantages(batch.scored.rewards.total, G, scale_rewards="batch")
    assert torch.equal(batch.scored.advantages, expected)


def test_a_batch_from_a_refill_alone_has_its_own_widths() -> None:
    """The first batch (prompt width 4) has no group with variance, the second (width 2) only
    such groups: the batch is the second's, its prompts' left padding of the merge trimmed."""
    _, batch, phases = _refill([[False] * P, [True] * P], max_batches=3)
    assert phases.drawn == 2 and _prompts(batch) == ["1.0", "1.1", "1.2", "1.3"]
    again = Scripted([[False] * P, [True] * P])
    again.next_rows()
    second = again.generate(again.next_rows())
    assert torch.equal(batch.rollout.prompts.input_ids, second.prompts.input_ids)
    assert torch.equal(batch.rollout.prompts.attention_mask, second.prompts.attention_mask)
    assert torch.equal(batch.rollout.completion_ids, second.completion_ids)
    assert torch.equal(batch.rollout.completion_mask, second.completion_mask)


# ---------------------------------------------------------------------------- the config
def test_grpo_config_accepts_the_groupwise_fields() -> None:
    config = GRPOConfig(dynamic_sampling=True, max_num_gen_batches=3).to_config()
    assert config.algorithm.dynamic_sampling is True
    assert config.algorithm.max_num_gen_batches == 3
    assert GRPOConfig().to_config().algorithm.dynamic_sampling is False


def test_unsupported_combinations_are_refused() -> None:
    with pytest.raises(ConfigError, match=r"rollout.max_staleness=0 or algorithm.dynamic_sampl"):
        load_config(overrides=["algorithm.dynamic_sampling=true", "rollout.max_staleness=1"])
    with pytest.raises(ConfigError, match=r"algorithm.max_num_gen_batches must be >= 1"):
        load_config(overrides=["algorithm.max_num_gen_batches=0"])


def test_torchrun_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("groupwise.train.dynamic.world_size", lambda: 2)
    config = load_config(overrides=["algorithm.dynamic_sampling=true"])
    with pytest.raises(ConfigError, match="dynamic_sampling=false under torchrun"):
        DynamicSampling(config, PAD)


# ---------------------------------------------------------------------------- tiny-random runs
def always_varied(prompts: list[Any], completions: list[str], **_: Any) -> list[float]:
    """Rewards that differ inside every group (G = 4 contiguous completions)."""
    return [float(i % 4) for i in range(len(completions))]


def half_solved(prompts: list[Any], completions: list[str], **_: Any) -> list[float]:
    """About half the prompts (by a hash of their text) give every completion 1: no variance."""
    solved = [zlib.crc32(str(p).encode()) % 2 == 0 for p in prompts]
    return [1.0 if s else float(i % 2) for i, s in enumerate(solved)]


def _trainer(tmp_path: Path, reward: Any, callbacks: Any = (), **extra: object) -> GRPOTrainer:
    overrides = tiny_overrides(tmp_path, bf16=False, save_total_limit=0, **extra)
    return GRPOTrainer(load_config(overrides=overrides), [reward], callbacks=callbacks)


def _metrics(run: Path, drop: tuple[str, ...] = ()) -> list[dict[str, Any]]:
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    skip = (*TIMING_KEYS, *drop)
    return [{k: v for k, v in r.items() if not k.startswith(skip)} for r in rows]


def _weights(trainer: GRPOTrainer) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in trainer.policy.named_parameters()}


def _same_weights(a: GRPOTrainer, b: GRPOTrainer) -> bool:
    wa, wb = _weights(a), _weights(b)
    return wa.keys() == wb.keys() and all(torch.equal(wa[n], wb[n]) for n in wa)


DYNAMIC = {"algorithm.dynamic_sampling": True}


def test_nothing_filtered_is_the_run_without_dynamic_sampling(tmp_path: Path) -> None:
    """Every group varies: one generation batch per step, the same batch, the same run."""
    plain = _trainer(tmp_path / "plain", always_varied)
    plain.train()
    dynamic = _trainer(tmp_path / "dynamic", always_varied, **DYNAMIC)
    dynamic.train()
    rows = _metrics(tmp_path / "dynamic/run")
    assert [m["sampling/dynamic/gen_batches"] for m in rows] == [1.0, 1.0]
    assert _metrics(tmp_path / "dynamic/run", ("sampling/dynamic/",)) == _metrics(
        tmp_path / "plain/run"
    )
    assert _same_weights(plain, dynamic)


def test_refilled_batches_keep_their_shape_and_vary(tmp_path: Path) -> None:
    trainer = _trainer(tmp_path, half_solved, **DYNAMIC)
    step = trainer.grpo_step
    prepared: list[tuple[int, int, bool]] = []
    prepare = step.prepare

    def watch(rollout: Rollout, advantages: torch.Tensor) -> Any:
        groups = advantages.view(-1, 4)
        varied = bool((groups != 0).any(dim=1).all())
        prepared.append(
            (rollout.prompts.input_ids.shape[0], rollout.completion_ids.shape[0], varied)
        )
        return prepare(rollout, advantages)

    step.prepare = watch
    trainer.train()
    p = trainer.prompts_per_step
    assert prepared == [(p, p * 4, True)] * 2
    rows = _metrics(tmp_path / "run")
    assert any(m["sampling/dynamic/gen_batches"] > 1 for m in rows)  # refills happened
    assert all(m["sampling/dynamic/filled_zero_std"] == 0 for m in rows)
    raw = json.loads((tmp_path / "run/metrics.jsonl").read_text().splitlines()[0])
    assert raw["time/refill"] > 0  # the refill phase is timed
    records = [json.loads(x) for x in (tmp_path / "run/completions.jsonl").read_text().splitlines()]
    generated = sum(m["sampling/dynamic/gen_batches"] for m in rows) * p * 4
    assert len(records) == generated  # every completion generated is logged


def test_resumed_run_equals_the_uninterrupted_run(tmp_path: Path) -> None:
    """The extra draws come from the sampler and the generator, checkpointed after the step."""
    full = _trainer(tmp_path / "full", half_solved, max_steps=3, save_steps=2, **DYNAMIC)
    full.train()
    split = tmp_path / "split"
    with pytest.raises(Crash):  # checkpoint at step 2; step 3 logged, then lost
        _trainer(split, half_solved, [crash_after(3)], max_steps=3, save_steps=2, **DYNAMIC).train()
    second = _trainer(split, half_solved, max_steps=3, save_steps=2, resume="auto", **DYNAMIC)
    second.train()
    assert second.step_count == 3
    rows = _metrics(split / "run")
    assert rows == _metrics(tmp_path / "full" / "run")
    assert any(m["sampling/dynamic/gen_batches"] > 1 for m in rows)
    assert _same_weights(full, second)
