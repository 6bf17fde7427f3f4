"""The local engine's log-probs of its sampled tokens (``Rollout.behaviour_logp``): the same
quantity as the trainer's ``logp``, and asking for them leaves the draws unchanged."""

from __future__ import annotations

import pytest
import torch

from groupwise.models import load_base_model
from groupwise.rollout import generate, tokenize_prompts
from groupwise.rollout.sampling import sample_token


@pytest.fixture(scope="module")
def tiny() -> tuple[torch.nn.Module, object]:
    model, tokenizer = load_base_model("tiny-random", seed=0, device=torch.device("cpu"))
    model.eval()
    model.config.use_cache = True
    return model, tokenizer


@pytest.mark.parametrize(("top_k", "top_p", "inverse_cdf"), [(0, 1.0, True), (3, 0.8, False)])
def test_sample_token_logp_is_the_full_vocabulary_log_softmax(
    top_k: int, top_p: float, inverse_cdf: bool
) -> None:
    logits = torch.randn(64, 40, generator=torch.Generator().manual_seed(1))
    uniform = torch.rand(64, generator=torch.Generator().manual_seed(2)) if inverse_cdf else None

    def draw(logp: bool) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        gen = torch.Generator().manual_seed(3)
        return sample_token(
            logits, temperature=0.7, top_k=top_k, top_p=top_p, generator=gen, uniform=uniform,
            logp=logp,
        )  # fmt: skip

    plain, with_logp = draw(False), draw(True)
    assert torch.equal(plain[0], with_logp[0]) and plain[2] is None  # the same draws
    assert plain[1] is not None and with_logp[1] is not None
    assert torch.equal(plain[1], with_logp[1])
    want = torch.log_softmax(logits / 0.7, dim=-1).gather(-1, plain[0][:, None]).squeeze(-1)
    assert with_logp[2] is not None
    torch.testing.assert_close(with_logp[2], want, rtol=1e-6, atol=1e-6)
    assert sample_token(logits, temperature=0.0, logp=True).logp is None  # greedy: no logp


def test_generate_records_the_sampled_tokens_log_probs(
    tiny: tuple[torch.nn.Module, object],
) -> None:
    model, tokenizer = tiny
    prompts = tokenize_prompts(tokenizer, ["1 + 2 =", "a longer prompt here"], torch.device("cpu"))
    eos = [int(tokenizer.eos_token_id)]  # type: ignore[attr-defined]

    def run(behaviour_logp: bool) -> object:
        return generate(
            model, prompts, group_size=3, max_completion_length=6, eos_token_ids=eos,
            pad_token_id=int(tokenizer.pad_token_id), temperature=0.9,  # type: ignore[attr-defined]
            generator=torch.Generator().manual_seed(4), total_rows=6,
            behaviour_logp=behaviour_logp,
        )  # fmt: skip

    plain, asked = run(False), run(True)
    assert plain.behaviour_logp is None  # type: ignore[attr-defined]
    assert torch.equal(plain.completion_ids, asked.completion_ids)  # type: ignore[attr-defined]
    assert torch.equal(plain.entropy, asked.entropy)  # type: ignore[attr-defined]
    ids, mask = asked.completion_ids, asked.completion_mask  # type: ignore[attr-defined]
    lp = asked.behaviour_logp  # type: ignore[attr-defined]
    assert lp is not None and lp.dtype == torch.float32 and lp.shape == ids.shape
    assert bool((lp[mask == 0] == 0).all()) and bool((lp[mask == 1] < 0).all())
    # one full forward over prompt + completion gives the same log-probs (KV cache aside)
    full = torch.cat([prompts.input_ids.repeat_interleave(3, 0), ids], dim=1)
    attn = torch.cat([prompts.attention_mask.repeat_interleave(3, 0), mask], dim=1)
    positions = (attn.cumsum(dim=1) - 1).clamp(min=0)
    with torch.no_grad():
        logits = model(input_ids=full, attention_mask=attn, position_ids=positions).logits
    lp_full = torch.log_softmax(logits[:, prompts.input_ids.shape[1] - 1 : -1].float() / 0.9, -1)
    want = lp_full.gather(-1, ids[:, :, None]).squeeze(-1) * mask
    torch.testing.assert_close(lp, want, rtol=1e-4, atol=1e-4)
