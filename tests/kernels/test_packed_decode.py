"""The packed decode step against transformers' forward (its straightforward twin)."""

from __future__ import annotations

import copy

import pytest
import torch
from transformers import AutoModelForCausalLM, DynamicCache, GPT2Config, Qwen2Config

from groupwise.kernels import native
from groupwise.kernels.packed_decode import PackedDecoder, supports
from groupwise.models import load_base_model
from groupwise.models.loading import tiny_llama_config
from groupwise.rollout.decode import generate
from groupwise.rollout.records import tokenize_prompts

PROMPTS = ["What is 12 + 30?", "Hi", "Name three prime numbers, please."]


def _tiny(dtype: torch.dtype, seed: int = 0) -> tuple[torch.nn.Module, object]:
    model, tokenizer = load_base_model("tiny-random", seed=seed, device=torch.device("cpu"))
    return model.to(dtype).eval(), tokenizer


def _tiny_qwen2(tokenizer: object) -> torch.nn.Module:
    """A Qwen2-layout model: biases on the q, k and v projections (random, not zero)."""
    base = tiny_llama_config(tokenizer)
    config = Qwen2Config(
        vocab_size=base.vocab_size,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        tie_word_embeddings=False,
    )
    torch.manual_seed(3)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32).eval()
    with torch.no_grad():
        for layer in model.model.layers:
            for proj in (layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj):
                proj.bias.normal_()
    return model


def _step_logits(
    model: torch.nn.Module, packed: bool, native_kernels: bool = False
) -> list[torch.Tensor]:
    """Logits of 4 decode steps for 2 left-padded prompts x 3 rows each."""
    ids = torch.tensor([[0, 0, 11, 12, 13], [21, 22, 23, 24, 25]])  # row 0 left-padded
    mask = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]])
    pos = (mask.cumsum(dim=1) - 1).clamp(min=0)
    tokens = torch.randint(3, 1000, (4, 6), generator=torch.Generator().manual_seed(0))
    out = []
    with torch.no_grad():
        cache = DynamicCache(config=model.config)
        model(input_ids=ids, attention_mask=mask, position_ids=pos, past_key_values=cache)
        next_pos = mask.sum(dim=1).repeat_interleave(3)
        if packed:
            decoder = PackedDecoder(
                model, cache, mask, group_size=3, max_new_tokens=4, native_kernels=native_kernels
            )
            assert (decoder.native is not None) == (
                native_kernels and NATIVE and decoder.head.packed
            )
            for t in range(4):
                out.append(decoder.step(tokens[t], next_pos + t, t))
            return out
        cache.batch_repeat_interleave(3)
        attn = mask.repeat_interleave(3, dim=0)
        for t in range(4):
            attn = torch.cat([attn, torch.ones(6, 1, dtype=attn.dtype)], dim=1)
            logits = model(
                input_ids=tokens[t][:, None],
                attention_mask=attn,
                position_ids=(next_pos + t)[:, None],
                past_key_values=cache,
            ).logits[:, -1]
            out.append(logits)
    return out


NATIVE = native.buildable() is None
"""groupwise's C++ decode kernels can be built here (else the native cases are skipped)."""
native_cases = pytest.mark.parametrize(
    "native_kernels",
    [False, pytest.param(True, marks=pytest.mark.skipif(not NATIVE, reason="no native kernels"))],
)


@native_cases
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_packed_step_logits_equal_transformers(dtype: torch.dtype, native_kernels: bool) -> None:
    """bf16: bitwise, with the C++ kernels too (float32 decoding never uses them)."""
    model, _ = _tiny(dtype)
    assert supports(model)
    got_all = _step_logits(model, True, native_kernels)
    for got, want in zip(got_all, _step_logits(model, False), strict=True):
        tol = {"atol": 1e-5, "rtol": 1e-5} if dtype == torch.float32 else {"atol": 0, "rtol": 0}
        torch.testing.assert_close(got, want, **tol)


def test_packed_step_with_projection_biases_equals_transformers() -> None:
    _, tokenizer = _tiny(torch.float32)
    model = _tiny_qwen2(tokenizer)
    assert supports(model)
    for got, want in zip(_step_logits(model, True), _step_logits(model, False), strict=True):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


@native_cases
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_generate_packed_samples_the_same_tokens(dtype: torch.dtype, native_kernels: bool) -> None:
    """Same draws, same tokens, entropies and log-probs; rows that finish early are dropped
    from the batch on both paths (one token in ten ends a completion here)."""
    model, tokenizer = _tiny(dtype, seed=2)
    eos = list(range(3, len(tokenizer), 10))
    prompts = tokenize_prompts(tokenizer, PROMPTS, torch.device("cpu"))
    runs = []
    for packed in (False, True):
        rollout = generate(
            model,
            prompts,
            group_size=4,
            max_completion_length=12,
            eos_token_ids=eos,
            pad_token_id=tokenizer.pad_token_id,
            generator=torch.Generator().manual_seed(5),
            total_rows=12,
            behaviour_logp=True,
            packed_decode=packed,
            native_kernels=native_kernels,
        )
        runs.append(rollout)
    plain, packed_run = runs
    lengths = plain.completion_mask.sum(dim=1)
    assert int(lengths.min()) < int(lengths.max())  # some rows finished early
    assert torch.equal(plain.completion_ids, packed_run.completion_ids)
    assert torch.equal(plain.completion_mask, packed_run.completion_mask)
    tol = {"atol": 1e-5, "rtol": 1e-5} if dtype == torch.float32 else {"atol": 0, "rtol": 0}
    torch.testing.assert_close(plain.entropy, packed_run.entropy, **tol)
    torch.testing.assert_close(plain.behaviour_logp, packed_run.behaviour_logp, **tol)


def test_unsupported_models_decode_through_transformers() -> None:
    model, tokenizer = _tiny(torch.float32)
    peft = pytest.importorskip("peft")
    wrapped = peft.get_peft_model(
        copy.deepcopy(model), peft.LoraConfig(r=2, target_modules=["q_proj", "v_proj"])
    )
    assert not supports(wrapped.base_model.model)  # LoRA layers are not plain linears
    gpt2 = AutoModelForCausalLM.from_config(
        GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=len(tokenizer))
    ).eval()
    assert not supports(gpt2)
    prompts = tokenize_prompts(tokenizer, PROMPTS[:1], torch.device("cpu"))
    rollout = generate(
        gpt2,
        prompts,
        group_size=2,
        max_completion_length=3,
        eos_token_ids=[tokenizer.eos_token_id],
        pad_token_id=tokenizer.pad_token_id,
        temperature=0.0,
        packed_decode=True,  # asked for, not supported: transformers decodes
    )
    assert rollout.completion_ids.shape[0] == 2
