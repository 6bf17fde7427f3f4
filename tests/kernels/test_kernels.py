"""Speed kernels against their straightforward twins."""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
from transformers import DynamicCache
from transformers.models.llama.modeling_llama import eager_attention_forward

from groupwise.kernels import PreallocatedCache, register_grouped_attention
from groupwise.kernels.attention import grouped_attention
from groupwise.kernels.kv_cache import cache_kwargs, num_cache_layers
from groupwise.models import load_base_model
from groupwise.rollout.decode import generate
from groupwise.rollout.records import tokenize_prompts


class _Module(torch.nn.Module):
    num_key_value_groups = 3


def test_grouped_attention_equals_eager() -> None:
    gen = torch.Generator().manual_seed(0)
    q = torch.randn(2, 6, 5, 8, generator=gen)  # 6 query heads, 2 KV heads
    k = torch.randn(2, 2, 9, 8, generator=gen)
    v = torch.randn(2, 2, 9, 8, generator=gen)
    mask = torch.zeros(2, 1, 5, 9)
    mask[0, :, :, :3] = torch.finfo(torch.float32).min  # left padding of row 0
    module = _Module().eval()
    ours, _ = grouped_attention(module, q, k, v, mask, scaling=0.3)
    ref, _ = eager_attention_forward(module, q, k, v, mask, scaling=0.3)
    torch.testing.assert_close(ours, ref, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_long_sequences_take_fused_sdpa_and_equal_eager(dtype: torch.dtype) -> None:
    from groupwise.kernels.attention import SDPA_MIN_LENGTH

    gen = torch.Generator().manual_seed(1)
    length, queries = SDPA_MIN_LENGTH + 7, 9
    q = torch.randn(2, 6, queries, 8, generator=gen).to(dtype).requires_grad_(True)
    k = torch.randn(2, 2, length, 8, generator=gen).to(dtype).requires_grad_(True)
    v = torch.randn(2, 2, length, 8, generator=gen).to(dtype).requires_grad_(True)
    mask = torch.zeros(2, 1, queries, length, dtype=dtype)
    mask[0, :, :, :3] = torch.finfo(dtype).min  # left padding of row 0
    mask[:, :, 4, -2:] = torch.finfo(dtype).min  # and some causal-style holes
    module = _Module().eval()
    ours, _ = grouped_attention(module, q, k, v, mask, scaling=0.3)
    fn, names = ours.grad_fn, []  # clone <- transpose <- the fused kernel's backward
    for _ in range(3):
        names.append(type(fn).__name__)
        fn = fn.next_functions[0][0]
    assert any("ScaledDotProduct" in n for n in names), names
    grads = torch.autograd.grad(ours.float().sum(), (q, k, v))
    ref, _ = eager_attention_forward(module, q, k, v, mask, scaling=0.3)
    ref_grads = torch.autograd.grad(ref.float().sum(), (q, k, v))
    tol = {"atol": 1e-5, "rtol": 1e-4} if dtype == torch.float32 else {"atol": 2e-2, "rtol": 2e-2}
    torch.testing.assert_close(ours, ref, **tol)
    for got, want in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(got, want, **tol)


def test_grouped_attention_model_logits_and_grads() -> None:
    model, _ = load_base_model("tiny-random", seed=0, device=torch.device("cpu"))
    other = copy.deepcopy(model)
    model.set_attn_implementation(register_grouped_attention())
    other.set_attn_implementation("eager")
    ids = torch.randint(3, 1000, (3, 7), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(ids)
    mask[1, :2] = 0
    a = model(input_ids=ids, attention_mask=mask).logits
    b = other(input_ids=ids, attention_mask=mask).logits
    real = mask.bool()  # padded positions attend to nothing real: their outputs are unused
    torch.testing.assert_close(a[real], b[real], atol=1e-5, rtol=1e-5)
    a[real].sum().backward()
    b[real].sum().backward()
    for (name, p), q in zip(model.named_parameters(), other.parameters(), strict=True):
        scale = float(q.grad.abs().max())  # sums of ~50k logits: compare relative to the largest
        torch.testing.assert_close(p.grad, q.grad, atol=1e-6 * scale, rtol=1e-4, msg=name)


def test_preallocated_cache_matches_dynamic() -> None:
    """Prefill, repeat rows, decode, drop rows, grow past capacity: same logits as HF's cache."""
    model, _ = load_base_model("tiny-random", seed=1, device=torch.device("cpu"))
    model.eval()
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(3, 1000, (2, 5), generator=gen)
    tokens = torch.randint(3, 1000, (4, 6, 1), generator=gen)
    keep = torch.tensor([0, 2, 3, 5])
    caches = (
        DynamicCache(config=model.config),
        PreallocatedCache(num_cache_layers(model.config), 8),
    )
    outputs = []
    for cache in caches:
        with torch.no_grad():
            logits = [model(input_ids=ids, past_key_values=cache, use_cache=True).logits[:, -1]]
            cache.batch_repeat_interleave(3)  # 6 rows
            rows = torch.arange(6)
            for i in range(4):  # 5 + 4 = 9 positions: grows past the capacity of 8
                step = tokens[i][rows]
                out = model(input_ids=step, past_key_values=cache, use_cache=True)
                logits.append(out.logits[:, -1])
                if i == 1:
                    cache.batch_select_indices(keep)
                    rows = keep
        outputs.append(logits)
    for x, y in zip(outputs[0], outputs[1], strict=True):
        torch.testing.assert_close(x, y, atol=1e-5, rtol=1e-5)


def test_static_decoder_logits_equal_dynamic_cache_decoding() -> None:
    """Compiled steps over the static cache give the logits of eager steps over transformers'
    DynamicCache, position by position, with a left-padded prompt."""
    from groupwise.kernels.compiled_decode import StaticDecoder, cache_capacity

    model, _ = load_base_model("tiny-random", seed=0, device=torch.device("cpu"))
    model.eval()
    ids = torch.tensor([[0, 0, 11, 12, 13], [21, 22, 23, 24, 25]])  # [2, 5], row 0 left-padded
    mask = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]])
    pos = (mask.cumsum(dim=1) - 1).clamp(min=0)
    steps = [torch.tensor([31, 32]), torch.tensor([33, 34]), torch.tensor([35, 36])]
    with torch.no_grad():
        prefix = DynamicCache(config=model.config)
        model(input_ids=ids, attention_mask=mask, position_ids=pos, past_key_values=prefix)
        dynamic = copy.deepcopy(prefix)
        decoder = StaticDecoder(model, prefix, mask, max_new_tokens=len(steps))
        assert decoder.mask.shape == (2, cache_capacity(5, 3)) == (2, 64)
        attn, next_pos = mask, mask.sum(dim=1)
        for t, tokens in enumerate(steps):
            attn = torch.cat([attn, torch.ones(2, 1, dtype=attn.dtype)], dim=1)
            want = model(
                input_ids=tokens[:, None],
                attention_mask=attn,
                position_ids=next_pos[:, None],
                past_key_values=dynamic,
            ).logits[:, -1]
            got = decoder.step(tokens, next_pos, t)
            torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)
            next_pos = next_pos + 1


class _OldStyle(torch.nn.Module):
    def forward(self, input_ids: torch.Tensor, past_key_values: object = None) -> None:
        return None


class _NoSignature(torch.nn.Module):
    forward = staticmethod(len)  # a builtin: inspect.signature cannot read it


def test_cache_keyword_follows_the_models_forward() -> None:
    model, _ = load_base_model("tiny-random", seed=0, device=torch.device("cpu"))
    cache = object()
    assert cache_kwargs(model, cache) == {"cache": cache}  # transformers 5.24 renamed it
    assert cache_kwargs(model.model, cache) == {"cache": cache}
    assert cache_kwargs(_OldStyle(), cache) == {"past_key_values": cache}
    assert cache_kwargs(_NoSignature(), cache) == {"past_key_values": cache}

    class _Wrapper(torch.nn.Module):  # PEFT's shape: keywords pass through to the base model
        def forward(self, *args: object, **kwargs: object) -> None:
            return None

        def get_base_model(self) -> torch.nn.Module:
            return _OldStyle()

    assert cache_kwargs(_Wrapper(), cache) == {"past_key_values": cache}


def test_decoding_passes_the_cache_by_its_current_name() -> None:
    model, tokenizer = load_base_model("tiny-random", seed=0, device=torch.device("cpu"))
    prompts = tokenize_prompts(tokenizer, ["a b", "c"], torch.device("cpu"))
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*past_key_values.*")
        rollout = generate(
            model,
            prompts,
            group_size=2,
            max_completion_length=4,
            eos_token_ids=[],
            pad_token_id=0,
            generator=torch.Generator().manual_seed(0),
        )
    assert rollout.completion_ids.shape == (4, 4)
