from __future__ import annotations

import math
from typing import Any

import pytest
import torch

from groupwise.core.logprobs import entropy_from_logits
from groupwise.models import load_base_model
from groupwise.rollout import (
    PromptBatch,
    _finish,
    generate,
    sample_next,
    sample_with_entropy,
    tokenize_prompts,
)
from groupwise.rollout.sampling import entropy_from_probs


@pytest.fixture(scope="module")
def tiny() -> tuple[torch.nn.Module, object]:
    model, tokenizer = load_base_model("tiny-random", seed=0, device=torch.device("cpu"))
    model.eval()
    model.config.use_cache = True
    return model, tokenizer


def test_sample_next_greedy_topk_topp() -> None:
    logits = torch.tensor([[0.0, 3.0, 1.0, 2.0]]).repeat(2000, 1)
    assert sample_next(logits[:1], temperature=0).tolist() == [1]
    gen = torch.Generator().manual_seed(0)
    topk = sample_next(logits, temperature=1.0, top_k=2, generator=gen)
    assert set(topk.tolist()) == {1, 3}
    # probs of 1, 3, 2, 0 are .644, .237, .087, .032: top_p=0.7 keeps tokens 1 and 3 only
    topp = sample_next(logits, temperature=1.0, top_p=0.7, generator=gen)
    assert set(topp.tolist()) == {1, 3}
    share = (topp == 1).float().mean().item()
    assert abs(share - 0.644 / (0.644 + 0.237)) < 0.04


def test_sampling_is_seeded() -> None:
    logits = torch.randn(16, 50)
    a = sample_next(logits, temperature=1.0, generator=torch.Generator().manual_seed(5))
    b = sample_next(logits, temperature=1.0, generator=torch.Generator().manual_seed(5))
    assert torch.equal(a, b)


def test_finish_masks_end_at_first_eos() -> None:
    eos, pad = 2, 0
    tokens = torch.tensor([[5, 6, 2, 7, 2], [5, 6, 7, 8, 9], [2, 4, 4, 4, 4]])
    prompts = PromptBatch(torch.ones(3, 1, dtype=torch.long), torch.ones(3, 1, dtype=torch.long))
    rollout = _finish(prompts, tokens, torch.tensor([eos]), pad, group_size=1)
    assert rollout.completion_mask.tolist() == [[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]]
    assert rollout.completion_ids.tolist() == [[5, 6, 2, 0, 0], [5, 6, 7, 8, 9], [2, 0, 0, 0, 0]]
    assert rollout.truncated.tolist() == [False, True, False]


def test_chat_template_and_left_padding(tiny: tuple[torch.nn.Module, object]) -> None:
    _, tokenizer = tiny
    prompts = [[{"role": "user", "content": "Hi"}], "plain text prompt that is longer than hi"]
    batch = tokenize_prompts(tokenizer, prompts, torch.device("cpu"))
    text = tokenizer.decode(batch.input_ids[0][batch.attention_mask[0].bool()])  # type: ignore[attr-defined]
    assert text.endswith("<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n")
    plain = tokenizer(prompts[1], add_special_tokens=False)["input_ids"]  # type: ignore[operator]
    assert batch.attention_mask[0].all()  # the templated prompt is the longer one
    assert int(batch.attention_mask[1].sum()) == len(plain)
    assert batch.input_ids[1, -len(plain) :].tolist() == plain
    assert batch.attention_mask[1, 0] == 0  # left padding


def test_greedy_matches_hf_generate(tiny: tuple[torch.nn.Module, object]) -> None:
    """Shared-prefix decoding with compaction == transformers' generate, row by row."""
    model, tokenizer = tiny
    prompts = ["What is 1 + 1?", "Name a colour:", "x"]
    batch = tokenize_prompts(tokenizer, prompts, torch.device("cpu"))
    eos = tokenizer.eos_token_id  # type: ignore[attr-defined]
    ours = generate(
        model,
        batch,
        group_size=2,
        max_completion_length=12,
        eos_token_ids=[eos],
        pad_token_id=tokenizer.pad_token_id,  # type: ignore[attr-defined]
        temperature=0.0,
    )
    for i, prompt in enumerate(prompts):
        ids = tokenizer(prompt, return_tensors="pt")["input_ids"]  # type: ignore[operator]
        ref = model.generate(ids, max_new_tokens=12, do_sample=False, eos_token_id=eos)  # type: ignore[operator]
        expected = ref[0, ids.shape[1] :].tolist()
        for row in (2 * i, 2 * i + 1):
            got = ours.completion_ids[row][ours.completion_mask[row].bool()].tolist()
            assert got == expected


def test_eos_stops_and_truncation_flags(tiny: tuple[torch.nn.Module, object]) -> None:
    model, tokenizer = tiny
    batch = tokenize_prompts(tokenizer, ["a", "b"], torch.device("cpu"))
    gen = torch.Generator().manual_seed(0)
    rollout = generate(
        model,
        batch,
        group_size=8,
        max_completion_length=6,
        eos_token_ids=list(range(0, 49152, 7)),  # many "EOS" ids: some rows end early
        pad_token_id=0,
        temperature=1.0,
        generator=gen,
    )
    lengths = rollout.completion_lengths
    assert rollout.completion_ids.shape[0] == 16
    ends = rollout.completion_ids[torch.arange(16), lengths - 1]
    assert lengths.min() < 6  # some stopped early
    assert (rollout.truncated == (ends % 7 != 0)).all()  # truncated <=> did not end on EOS
    assert (lengths[rollout.truncated] == 6).all()
    inner = rollout.completion_ids[:, :-1] % 7 == 0  # no EOS before the last real token
    idx = torch.arange(rollout.completion_ids.shape[1] - 1)[None, :]
    assert not (inner & (idx < (lengths[:, None] - 1))).any()


def test_min_new_tokens_forces_length(tiny: tuple[torch.nn.Module, object]) -> None:
    model, tokenizer = tiny
    batch = tokenize_prompts(tokenizer, ["a"], torch.device("cpu"))
    rollout = generate(
        model,
        batch,
        group_size=4,
        max_completion_length=5,
        eos_token_ids=list(range(0, 49152, 2)),
        pad_token_id=1,
        temperature=1.0,
        generator=torch.Generator().manual_seed(0),
        min_new_tokens=5,
    )
    assert rollout.completion_lengths.tolist() == [5, 5, 5, 5]


def test_gather_last_gives_the_same_rollout(tiny: tuple[torch.nn.Module, object]) -> None:
    """The contiguous last-position LM head (evaluation's memory fix) samples the same tokens."""
    model, tokenizer = tiny
    texts = ["What is 1 + 2?", "Hi", "A longer prompt here"]
    prompts = tokenize_prompts(tokenizer, texts, torch.device("cpu"))
    outs = [
        _six_tokens(model, tokenizer, prompts, group_size=2, temperature=0.0, gather_last=gather)
        for gather in (False, True)
    ]
    assert torch.equal(outs[0].completion_ids, outs[1].completion_ids)


def _six_tokens(model: torch.nn.Module, tokenizer: Any, prompts: Any, **kwargs: Any) -> Any:
    """A rollout of at most 6 new tokens per completion, ending at the tokenizer's EOS."""
    return generate(
        model,
        prompts,
        max_completion_length=6,
        eos_token_ids=[tokenizer.eos_token_id],
        pad_token_id=tokenizer.pad_token_id,
        **kwargs,
    )


def test_a_frozen_head_samples_what_a_trained_one_does() -> None:
    """LoRA's base and rollout copies have a frozen LM head, whose last-position logits after
    the prefill take the gathered path (torch's strided batched matmul is slow on a frozen
    bf16 weight): the same draws and entropies as with a head that requires grad."""
    model, tokenizer = load_base_model(
        "tiny-random", seed=0, device=torch.device("cpu"), dtype=torch.bfloat16
    )
    model.eval()
    model.config.use_cache = True
    prompts = tokenize_prompts(
        tokenizer, ["What is 1 + 2?", "Hi", "A longer prompt"], torch.device("cpu")
    )
    head = model.get_output_embeddings().weight
    outs = []
    for trained in (True, False):
        head.requires_grad_(trained)
        generator = torch.Generator().manual_seed(3)
        outs.append(
            _six_tokens(
                model, tokenizer, prompts, group_size=4, generator=generator, packed_decode=True
            )
        )
    assert torch.equal(outs[0].completion_ids, outs[1].completion_ids)
    assert outs[0].entropy is not None and outs[1].entropy is not None
    assert torch.equal(outs[0].entropy, outs[1].entropy)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_compiled_static_decode_matches_eager(
    tiny: tuple[torch.nn.Module, object], dtype: torch.dtype
) -> None:
    """rollout.compile: the same completions as the eager path, including rows that end early
    and stay in the fixed-shape batch. Greedy in both dtypes; inverse-CDF sampling in float32
    (the tiny random model's distribution is near-uniform, so in bf16 the compiled kernels'
    different rounding moves some draws to a neighbouring token)."""
    model, tokenizer = tiny
    model = model.to(dtype)
    try:
        batch = tokenize_prompts(tokenizer, ["What is 1 + 1?", "x"], torch.device("cpu"))
        kwargs = {
            "group_size": 3,
            "max_completion_length": 10,
            "eos_token_ids": [tokenizer.eos_token_id],  # type: ignore[attr-defined]
            "pad_token_id": tokenizer.pad_token_id,  # type: ignore[attr-defined]
        }
        probe = generate(model, batch, temperature=0.0, **kwargs)  # type: ignore[arg-type]
        stop = int(probe.completion_ids[0, 3])  # a token row 0 emits: an extra EOS ends it early
        kwargs["eos_token_ids"] = [tokenizer.eos_token_id, stop]  # type: ignore[attr-defined]
        for temperature in (0.0, 1.0) if dtype == torch.float32 else (0.0,):
            runs = [
                generate(
                    model,
                    batch,
                    temperature=temperature,
                    generator=torch.Generator().manual_seed(3),
                    total_rows=6,
                    compile_decode=compiled,
                    **kwargs,  # type: ignore[arg-type]
                )
                for compiled in (False, True)
            ]
            eager, compiled_run = runs
            assert torch.equal(eager.completion_ids, compiled_run.completion_ids), temperature
            assert torch.equal(eager.completion_mask, compiled_run.completion_mask)
            torch.testing.assert_close(eager.entropy, compiled_run.entropy, atol=2e-2, rtol=2e-2)
            if temperature == 0.0:
                lengths = eager.completion_mask.sum(dim=1)  # [6]
                assert int(lengths[0]) < 10  # ended by the extra EOS, and kept decoding
                assert int(lengths.max()) == 10
    finally:
        model.to(torch.float32)


def test_sample_with_entropy_matches_entropy_from_logits() -> None:
    gen = torch.Generator().manual_seed(4)
    logits = 3 * torch.randn(6, 50, generator=gen)
    logits[:, :3] = float("-inf")  # banned tokens (probability 0)
    for kwargs in ({}, {"top_k": 5}, {"top_p": 0.5}):
        for uniform in (None, torch.rand(6, generator=gen)):
            nxt, h = sample_with_entropy(
                logits, temperature=0.7, generator=gen, uniform=uniform, **kwargs
            )
            assert h is not None and bool((nxt >= 3).all())
            # the entropy of the unfiltered distribution, whatever top-k/top-p keep
            torch.testing.assert_close(h, entropy_from_logits(logits / 0.7), atol=1e-5, rtol=1e-5)
    assert sample_with_entropy(logits, temperature=0.0)[1] is None
    assert sample_with_entropy(logits, temperature=1.0, entropy=False)[1] is None


@pytest.mark.parametrize("block", [8, 256])
def test_two_level_inverse_cdf_equals_one_cumsum(
    monkeypatch: pytest.MonkeyPatch, block: int
) -> None:
    """Dyadic probabilities (sums exact in float32): the block search picks exactly the token
    of a flat cumsum + searchsorted, including a vocabulary that is not a multiple of the block
    and targets on block boundaries."""
    import groupwise.rollout.sampling as rollout_module
    from groupwise.rollout import inverse_cdf_sample

    monkeypatch.setattr(rollout_module, "CDF_BLOCK", block)
    gen = torch.Generator().manual_seed(0)
    probs = torch.randint(0, 4, (300, 37), generator=gen).float() / 16  # [R, V], zeros included
    probs[:, 0] += 1 / 16  # no empty row
    uniform = torch.randint(0, 64, (300,), generator=gen).float() / 64  # boundaries hit often
    cdf = probs.cumsum(-1)
    target = (uniform[:, None] * cdf[:, -1:]).contiguous()
    want = torch.searchsorted(cdf, target, right=True).clamp(max=36).squeeze(-1)
    got = inverse_cdf_sample(probs, uniform)
    assert torch.equal(got, want)
    assert bool((probs.gather(-1, got[:, None]) > 0).all())  # never a zero-probability token


@pytest.mark.parametrize("scale", [0.1, 3.0, 30.0, 300.0])
def test_entropy_from_probs_against_float64(scale: float) -> None:
    """Flat to nearly one-hot distributions, one token at -inf (EOS forbidden): the identity
    H = -log p_max - sum p (s - s_max) against -sum p log p in float64."""
    scores = torch.randn(4, 5000, generator=torch.Generator().manual_seed(1)) * scale
    scores[:, 7] = float("-inf")
    probs = torch.softmax(scores, dim=-1)
    p64 = torch.softmax(scores.double(), dim=-1)
    want = -torch.special.xlogy(p64, p64).sum(dim=-1)
    got = entropy_from_probs(probs, scores)
    assert got.dtype == torch.float32 and bool(torch.isfinite(got).all())
    torch.testing.assert_close(got.double(), want, atol=2e-5, rtol=1e-5)


def test_entropy_from_probs_of_a_hand_computed_case() -> None:
    # p = (1/2, 1/4, 1/4, 0): H = 1/2 ln 2 + 2 * 1/4 ln 4 = 1.5 ln 2
    scores = torch.tensor([[2.0, 2.0 - math.log(2.0), 2.0 - math.log(2.0), float("-inf")]])
    probs = torch.softmax(scores, dim=-1)
    got = entropy_from_probs(probs, scores)
    torch.testing.assert_close(got, torch.tensor([1.5 * math.log(2.0)]), atol=1e-6, rtol=0)
