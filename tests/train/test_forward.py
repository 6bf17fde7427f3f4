from __future__ import annotations

import pytest
import torch

from groupwise.models import LoraSettings, apply_lora, load_base_model
from groupwise.rollout import PromptBatch, Rollout, _finish
from groupwise.train.forward import autocast_context, completion_logp


def _rollout(vocab: int, seed: int = 0) -> Rollout:
    """3 prompts of different lengths (left-padded) x 4 random completions, some ending early."""
    gen = torch.Generator().manual_seed(seed)
    lengths = [5, 9, 7]
    ids = torch.zeros(3, 9, dtype=torch.long)
    mask = torch.zeros(3, 9, dtype=torch.long)
    for i, n in enumerate(lengths):
        ids[i, 9 - n :] = torch.randint(3, vocab, (n,), generator=gen)
        mask[i, 9 - n :] = 1
    tokens = torch.randint(3, vocab, (12, 6), generator=gen)
    tokens[0, 2] = 2  # EOS at position 2
    tokens[5, 0] = 2  # EOS first
    return _finish(PromptBatch(ids, mask), tokens, torch.tensor([2]), 0, group_size=4)


@pytest.fixture(scope="module")
def tiny() -> torch.nn.Module:
    model, _ = load_base_model("tiny-random", seed=0, device=torch.device("cpu"))
    return model


def _grads(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_shared_prefix_matches_naive(tiny: torch.nn.Module, temperature: float) -> None:
    """The fast path (one prefill per group, chunked log-probs) == one full forward per row."""
    rollout = _rollout(tiny.config.vocab_size)
    weights = torch.randn(rollout.completion_ids.shape, generator=torch.Generator().manual_seed(1))
    results = {}
    for shared in (True, False):
        tiny.zero_grad()
        logp, entropy = completion_logp(
            tiny, rollout, temperature=temperature, chunk_size=7, shared_prefix=shared
        )
        (logp * weights).sum().backward()
        results[shared] = (logp.detach(), entropy, _grads(tiny))
    fast, naive = results[True], results[False]
    mask = rollout.completion_mask.bool()
    assert (fast[0][~mask] == 0).all()
    torch.testing.assert_close(fast[0], naive[0], atol=2e-5, rtol=1e-5)
    assert fast[1] is not None and naive[1] is not None
    torch.testing.assert_close(fast[1], naive[1], atol=2e-4, rtol=1e-4)
    assert fast[2].keys() == naive[2].keys()
    for name in fast[2]:
        torch.testing.assert_close(fast[2][name], naive[2][name], atol=2e-5, rtol=1e-4)


def test_one_pass_matches_two_passes(tiny: torch.nn.Module) -> None:
    """Prompts and completions as one flattened sequence (attention split by the layout) give the
    log-probs, entropies and gradients of the prompt pass + repeated cache + completion pass."""
    from groupwise.train.forward import _uses_grouped_attention, decoder_and_head

    assert _uses_grouped_attention(decoder_and_head(tiny)[0])  # the default takes one pass
    rollout = _rollout(tiny.config.vocab_size, seed=5)
    weights = torch.randn(rollout.completion_ids.shape, generator=torch.Generator().manual_seed(2))
    results = {}
    for one_pass in (True, False):
        tiny.zero_grad()
        logp, entropy = completion_logp(tiny, rollout, chunk_size=5, one_pass=one_pass)
        (logp * weights).sum().backward()
        results[one_pass] = (logp.detach(), entropy, _grads(tiny))
    flat, two = results[True], results[False]
    torch.testing.assert_close(flat[0], two[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(flat[1], two[1], atol=1e-4, rtol=1e-4)
    assert flat[2].keys() == two[2].keys() and len(flat[2]) > 0
    for name in flat[2]:
        torch.testing.assert_close(flat[2][name], two[2][name], atol=1e-5, rtol=1e-4)


def test_one_pass_single_token_completions(tiny: torch.nn.Module) -> None:
    """Completions of one token feed no completion token to the model: prompts only."""
    rollout = _rollout(tiny.config.vocab_size, seed=6)
    rollout.completion_ids = rollout.completion_ids[:, :1]
    rollout.completion_mask = rollout.completion_mask[:, :1]
    with torch.no_grad():
        flat, _ = completion_logp(tiny, rollout)
        naive, _ = completion_logp(tiny, rollout, shared_prefix=False)
    torch.testing.assert_close(flat, naive, atol=2e-5, rtol=1e-5)


def test_bf16_autocast_close_to_fp32(tiny: torch.nn.Module) -> None:
    rollout = _rollout(tiny.config.vocab_size, seed=3)
    with torch.no_grad():
        ref, _ = completion_logp(tiny, rollout)
        with autocast_context(torch.device("cpu"), torch.bfloat16):
            low, _ = completion_logp(tiny, rollout)
    mask = rollout.completion_mask.bool()
    assert low.dtype == torch.float32
    assert (low[mask] - ref[mask]).abs().max() < 0.15  # bf16 logits: ~1e-2 relative


def test_lora_policy_and_disabled_adapters(tiny: torch.nn.Module) -> None:
    import copy

    base = copy.deepcopy(tiny)
    policy = apply_lora(base, LoraSettings(r=4, alpha=8, dropout=0.0, target_modules="all-linear"))
    rollout = _rollout(tiny.config.vocab_size, seed=4)
    for p in policy.parameters():  # make the adapters non-trivial
        if p.requires_grad:
            torch.nn.init.normal_(p, std=0.05)
    with torch.no_grad():
        adapted, _ = completion_logp(policy, rollout)
        with policy.disable_adapter():  # type: ignore[operator]
            plain, _ = completion_logp(policy, rollout)
        original, _ = completion_logp(tiny, rollout)
    torch.testing.assert_close(plain, original)
    assert (adapted - original).abs().max() > 1e-3
