"""GRPOStep's phases through the public step: objectives and entropy-selective training wired
from the config to the loss."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from groupwise import GRPOTrainer, load_config
from groupwise.rollout import Rollout, tokenize_prompts
from groupwise.train.forward import has_active_dropout
from tests.tests_helpers import tiny_overrides, varied_reward


def _one_step_weights(tmp_path: Path, **extra: object) -> dict[str, torch.Tensor]:
    config = load_config(overrides=tiny_overrides(tmp_path, max_steps=1, bf16=False, **extra))
    trainer = GRPOTrainer(config, reward_funcs=[varied_reward])
    trainer.train()
    return {n: p.detach().clone() for n, p in trainer.policy.named_parameters()}


@pytest.mark.parametrize("objective", ["cispo", "sapo"])
def test_on_policy_objectives_take_the_clip_objectives_step(tmp_path: Path, objective: str) -> None:
    """With one update per rollout the ratio is 1, where CISPO's weight sg(min(r, 1 + eps))
    and SAPO's gate 4/tau sigma(tau (r - 1)) both have the clipped surrogate's gradient -A:
    one step from the same seed lands on the same weights."""
    clip = _one_step_weights(tmp_path / "clip")
    other = _one_step_weights(tmp_path / objective, **{"algorithm.objective": objective})
    for name in clip:
        torch.testing.assert_close(other[name], clip[name], atol=1e-6, rtol=1e-5)


def test_top_entropy_quantile_trains_on_the_high_entropy_tokens(tmp_path: Path) -> None:
    config = load_config(
        overrides=tiny_overrides(
            tmp_path, max_steps=1, bf16=False, **{"algorithm.top_entropy_quantile": 0.25}
        )
    )
    trainer = GRPOTrainer(config, reward_funcs=[varied_reward])
    step = trainer.grpo_step
    rows = trainer.next_rows()
    rollout = step.generate(rows)
    batch = step.prepare(rollout, step.score(rows, rollout).advantages)
    assert batch.entropy_mask is not None and rollout.entropy is not None
    loss_tokens = batch.loss_mask.bool()
    selected = batch.entropy_mask & loss_tokens
    assert not bool((batch.entropy_mask & ~loss_tokens).any())  # never padding
    share = float(selected.sum()) / float(loss_tokens.sum())
    assert 0.25 <= share < 0.5  # the top quarter (ties kept)
    kept = batch.rollout.entropy
    assert kept is not None
    low = kept[loss_tokens & ~selected].max()
    assert bool((kept[selected] >= low).all())  # every selected token is above the rest
    full = _one_step_weights(tmp_path / "full")
    part = _one_step_weights(tmp_path / "part", **{"algorithm.top_entropy_quantile": 0.25})
    assert any(not torch.equal(full[n], part[n]) for n in full)


def test_the_objective_reaches_the_loss_off_policy(tmp_path: Path) -> None:
    """At mu = 2 the second update sees ratio != 1, where SAPO's smooth gate differs from the
    clipped surrogate: the objective is wired through (the on-policy test above cannot tell)."""
    clip = _one_step_weights(tmp_path / "clip", num_iterations=2)
    sapo = _one_step_weights(tmp_path / "sapo", num_iterations=2, **{"algorithm.objective": "sapo"})
    assert any(not torch.equal(clip[n], sapo[n]) for n in clip)


def _param_grads(
    trainer: GRPOTrainer, rollout: Rollout, advantages: torch.Tensor
) -> list[torch.Tensor]:
    step = trainer.grpo_step
    trainer.policy.zero_grad(set_to_none=True)
    batch = step.prepare(rollout, advantages)
    loss, _ = step.loss(batch, 0)
    loss.backward()
    return [p.grad.clone() for p in trainer.policy.parameters() if p.grad is not None]


def test_environment_tokens_get_no_gradient(tmp_path: Path) -> None:
    """Changing the tokens an environment inserted at the end of an episode changes nothing in
    the parameters' gradient (they are context for nothing and carry no loss); the same change
    on policy tokens does (the check can fail)."""
    config = load_config(
        overrides=tiny_overrides(tmp_path, bf16=False, per_device_train_batch_size=4)
    )
    trainer = GRPOTrainer(config, reward_funcs=[varied_reward])
    g = trainer.config.rollout.num_generations
    prompts = tokenize_prompts(trainer.tokenizer, ["count with me"], trainer.device)
    ids = torch.randint(5, 200, (g, 8), generator=torch.Generator().manual_seed(0))
    loss_mask = torch.ones(g, 8, dtype=torch.long)
    loss_mask[:, 6:] = 0  # the last two tokens: the environment's closing message

    def rollout(tokens: torch.Tensor, mask: torch.Tensor) -> Rollout:
        return Rollout(
            prompts=prompts,
            completion_ids=tokens,
            completion_mask=torch.ones(g, 8, dtype=torch.long),
            truncated=torch.zeros(g, dtype=torch.bool),
            group_size=g,
            loss_mask=mask,
        )

    advantages = torch.linspace(-1.0, 1.0, g)
    changed = ids.clone()
    changed[:, 6:] = (ids[:, 6:] + 17) % 200 + 5
    base = _param_grads(trainer, rollout(ids, loss_mask), advantages)
    other = _param_grads(trainer, rollout(changed, loss_mask), advantages)
    for a, b in zip(base, other, strict=True):
        torch.testing.assert_close(a, b, atol=0, rtol=0)
    policy_all = torch.ones(g, 8, dtype=torch.long)
    trained = _param_grads(trainer, rollout(ids, policy_all), advantages)
    trained_changed = _param_grads(trainer, rollout(changed, policy_all), advantages)
    assert any(not torch.equal(a, b) for a, b in zip(trained, trained_changed, strict=True))


def _two_steps_weights(
    tmp_path: Path, reuse: bool, mu: int = 2, **extra: object
) -> dict[str, torch.Tensor]:
    overrides = tiny_overrides(tmp_path, max_steps=2, bf16=False, num_iterations=mu, **extra)
    trainer = GRPOTrainer(load_config(overrides=overrides), reward_funcs=[varied_reward])
    assert trainer.grpo_step.reuse_old_logp  # the tiny model has no dropout
    trainer.grpo_step.reuse_old_logp = reuse
    if reuse:  # the pass of its own must not run

        def no_pass(*_: object) -> None:
            raise AssertionError("old_logp took a forward of its own")

        trainer.grpo_step.logp_no_grad = no_pass  # type: ignore[method-assign]
    trainer.train()
    return {n: p.detach().clone() for n, p in trainer.policy.named_parameters()}


def test_mu_2_takes_old_logp_from_the_first_update(tmp_path: Path) -> None:
    """With two updates per rollout, ``old_logp`` from the first update's forward (before any
    optimizer step of the rollout, over two micro-batches) lands on the same weights after two
    steps as ``old_logp`` from a no-grad pass of its own; clip-higher makes the second update's
    clipping depend on the ratio, so a wrong ``old_logp`` moves the weights."""
    extra = {"algorithm.epsilon": 0.02, "algorithm.epsilon_high": 0.05}
    own_pass = _two_steps_weights(tmp_path / "pass", reuse=False, **extra)
    reused = _two_steps_weights(tmp_path / "reuse", reuse=True, **extra)
    for name in own_pass:
        torch.testing.assert_close(reused[name], own_pass[name], atol=1e-6, rtol=1e-5)
    mu1 = _two_steps_weights(tmp_path / "mu1", reuse=True, mu=1, **extra)
    assert any(not torch.allclose(mu1[n], reused[n], atol=1e-5) for n in mu1)  # mu = 2 moved


def test_dropout_in_the_policy_keeps_old_logp_its_own_pass(tmp_path: Path) -> None:
    """A training-mode forward under dropout is not the policy's log-prob: LoRA's dropout or
    a dropout probability in the model's config turns the reuse off."""
    lora = tiny_overrides(tmp_path / "lora", max_steps=1, bf16=False, num_iterations=2)
    lora += ["model.lora=true", "model.lora_dropout=0.1"]
    trainer = GRPOTrainer(load_config(overrides=lora), reward_funcs=[varied_reward])
    assert not trainer.grpo_step.reuse_old_logp
    plain = tiny_overrides(tmp_path / "plain", max_steps=1, bf16=False)
    trainer = GRPOTrainer(load_config(overrides=plain), reward_funcs=[varied_reward])
    assert has_active_dropout(trainer.policy) is False
    trainer.policy.config.attention_dropout = 0.1
    assert has_active_dropout(trainer.policy) is True
