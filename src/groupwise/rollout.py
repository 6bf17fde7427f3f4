"""Rollout: sample a group of G completions for each prompt.

Choices:
- Prompts are left-padded; each unique prompt is prefilled once and its KV cache repeated G
  times (``one prefill per group``), then all B = P * G rows decode together.
- Sampling is ours (temperature, top-k, top-p, greedy at temperature 0) with an explicit
  ``torch.Generator`` so a seed reproduces a rollout. Given ``total_rows``, ``generate`` draws
  one uniform per decode step for each row of the *global* batch up front and samples by
  inverse CDF, so a row's tokens depend only on the generator and its global index: ranks
  that each decode a slice (``row_offset``) sample exactly what one process would.
- A completion ends at its first EOS token (included in the completion and its mask); tokens
  after it are padding. A completion that reaches ``max_completion_length`` without EOS is
  *truncated*, flagged for ``mask_truncated_completions`` and ``completions/clipped_ratio``.
- The entropy of the (tempered) sampling distribution is recorded at every sampled token: the
  ``entropy`` metric costs no extra forward pass and covers every completion.
- Rows that have finished are dropped from the decode batch as soon as enough of them are done,
  so a few long completions do not keep the whole batch busy.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from groupwise.core import entropy_from_logits


@dataclass
class PromptBatch:
    """Tokenized prompts, left-padded."""

    input_ids: Tensor  # [P, Lp]
    attention_mask: Tensor  # [P, Lp]

    @property
    def lengths(self) -> Tensor:
        """Number of real tokens of each prompt."""
        return self.attention_mask.sum(dim=1)  # [P]


@dataclass
class Rollout:
    """G completions for each of P prompts (rows of one prompt are contiguous)."""

    prompts: PromptBatch
    completion_ids: Tensor  # [B, Lc], padded with pad_token_id after EOS
    completion_mask: Tensor  # [B, Lc], 1 up to and including the first EOS
    truncated: Tensor  # [B] bool: no EOS within max_completion_length
    group_size: int
    entropy: Tensor | None = None  # [B, Lc] per-token entropy of the sampling policy (nats)

    @property
    def completion_lengths(self) -> Tensor:
        """Number of completion tokens of each row."""
        return self.completion_mask.sum(dim=1)  # [B]


def tokenize_prompts(
    tokenizer: Any, prompts: Sequence[str | list[dict[str, str]]], device: torch.device
) -> PromptBatch:
    """Apply the chat template to conversational prompts and left-pad the batch.

    A prompt is either plain text (used as is) or a list of ``{"role", "content"}`` messages,
    rendered with the tokenizer's chat template and the generation prompt.
    """
    texts = [render_prompt(tokenizer, p) for p in prompts]
    rows = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
    width = max(len(r) for r in rows)
    pad = tokenizer.pad_token_id
    input_ids = torch.full((len(rows), width), pad, dtype=torch.long)
    attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        input_ids[i, width - len(row) :] = torch.tensor(row, dtype=torch.long)
        attention_mask[i, width - len(row) :] = 1
    return PromptBatch(input_ids.to(device), attention_mask.to(device))


def render_prompt(tokenizer: Any, prompt: str | list[dict[str, str]]) -> str:
    """The text the model sees for ``prompt`` (chat template for conversations)."""
    if isinstance(prompt, str):
        return prompt
    if getattr(tokenizer, "chat_template", None) is None:
        raise ValueError("prompt is conversational but the tokenizer has no chat template")
    text: str = tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)
    return text


def sample_next(
    logits: Tensor,
    *,
    temperature: float,
    top_p: float = 1.0,
    top_k: int = 0,
    generator: torch.Generator | None = None,
    uniform: Tensor | None = None,
) -> Tensor:
    """Draw one token per row from ``softmax(logits / temperature)`` (greedy if temperature=0).

    top-k keeps the k largest logits; top-p keeps the smallest set of tokens whose probability
    reaches ``top_p`` (always at least the most likely token). ``uniform`` ([R] in [0, 1)):
    sample by inverse CDF from these draws instead of ``torch.multinomial``.
    """
    return sample_with_entropy(
        logits,
        temperature=temperature,
        top_p=top_p,
        top_k=top_k,
        generator=generator,
        uniform=uniform,
        entropy=False,
    )[0]


def sample_with_entropy(
    logits: Tensor,
    *,
    temperature: float,
    top_p: float = 1.0,
    top_k: int = 0,
    generator: torch.Generator | None = None,
    uniform: Tensor | None = None,
    entropy: bool = True,
) -> tuple[Tensor, Tensor | None]:
    """:func:`sample_next`, and the entropy ``[R]`` of ``softmax(logits / temperature)``.

    Without top-k/top-p the entropy comes from the probabilities the draw uses,
    ``H = sum_v entr(p_v)`` with ``entr(p) = -p log p`` (0 at p = 0): two passes over the
    vocabulary instead of a second softmax and a log-softmax (sample + entropy for 32 x 49152 on
    this CPU, side by side: 4.8-4.9 vs 6.0-7.1 ms per token in ``benchmarks/micro_levers.py``;
    10.4-10.7 vs 20.2-21.5 ms in a fresh process, where the extra tensors also page-fault).
    None when ``entropy`` is false or ``temperature`` is 0.
    """
    if temperature <= 0:
        return logits.argmax(dim=-1), None  # [R]
    scores = logits.float() / temperature  # [R, V]
    h = None
    if entropy and (top_k > 0 or top_p < 1.0):  # the unfiltered distribution's entropy
        h = entropy_from_logits(scores)  # [R]
    if top_k > 0 and top_k < scores.shape[-1]:
        kth = torch.topk(scores, top_k, dim=-1).values[:, -1:]  # [R, 1]
        scores = scores.masked_fill(scores < kth, float("-inf"))
    if top_p < 1.0:
        sorted_scores, order = torch.sort(scores, dim=-1, descending=True)  # [R, V]
        probs = torch.softmax(sorted_scores, dim=-1)
        before = probs.cumsum(dim=-1) - probs  # mass strictly before each token
        drop_sorted = before >= top_p
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        scores = scores.masked_fill(drop, float("-inf"))
    probs = torch.softmax(scores, dim=-1)  # [R, V]
    if entropy and h is None:
        h = torch.special.entr(probs).sum(dim=-1)  # [R]
    if uniform is None:  # torch.multinomial draws an exponential per vocabulary entry: ~1/3
        # of decode time on CPU for 32 x 49152 (profiled); the inverse CDF below is the fast path
        return torch.multinomial(probs, 1, generator=generator).squeeze(-1), h  # [R]
    picked = inverse_cdf_sample(probs, uniform)  # [R]
    ok = probs.gather(-1, picked[:, None]).squeeze(-1) > 0  # rounding at the very top end
    if bool(ok.all()):
        return picked, h
    return torch.where(ok, picked, probs.argmax(dim=-1)), h


CDF_BLOCK = 256
"""Vocabulary entries per block of :func:`inverse_cdf_sample`'s two-level search."""


def inverse_cdf_sample(probs: Tensor, uniform: Tensor) -> Tensor:
    """Per row, the first token whose cumulative probability exceeds ``u * total``::

        pick_r = min { v : sum_{w <= v} p_rw > u_r * sum_w p_rw }

    ``probs`` ``[R, V]`` (unnormalised is fine), ``uniform`` ``[R]`` in [0, 1). Searched in two
    levels: the cumulative sums of blocks of ``CDF_BLOCK`` entries locate the block, then the
    cumulative sum inside that one block locates the token. A full ``cumsum`` over the
    vocabulary is a sequential scan; the block sums are one vectorised reduction (32 x 49152 on
    this CPU: 0.78 ms vs 0.11 ms, benchmarks/README.md). May return a zero-probability token
    when rounding leaves the target past a block's last positive entry; callers check.
    """
    rows, vocab = probs.shape
    block = min(CDF_BLOCK, vocab)
    pad = -vocab % block
    padded = F.pad(probs, (0, pad)) if pad else probs  # [R, nb * block]
    blocks = padded.view(rows, -1, block)  # [R, nb, block]
    block_sums = blocks.sum(dim=-1)  # [R, nb]
    block_cdf = block_sums.cumsum(dim=-1)  # [R, nb]
    target = (uniform[:, None] * block_cdf[:, -1:]).contiguous()  # [R, 1]
    last = block_cdf.shape[1] - 1
    b = torch.searchsorted(block_cdf, target, right=True).clamp(max=last)  # [R, 1]
    before = block_cdf.gather(-1, b) - block_sums.gather(-1, b)  # [R, 1] mass before block b
    inner = blocks.gather(1, b[:, :, None].expand(rows, 1, block)).squeeze(1)  # [R, block]
    inner_cdf = inner.cumsum(dim=-1).add_(before)  # [R, block]
    j = torch.searchsorted(inner_cdf, target, right=True).clamp(max=block - 1)  # [R, 1]
    return (b * block + j).squeeze(-1).clamp(max=vocab - 1)  # [R]


def _positions(attention_mask: Tensor) -> Tensor:
    return (attention_mask.cumsum(dim=1) - 1).clamp(min=0)  # [R, L]


@torch.no_grad()
def generate(
    model: nn.Module,
    prompts: PromptBatch,
    *,
    group_size: int,
    max_completion_length: int,
    eos_token_ids: Sequence[int],
    pad_token_id: int,
    temperature: float = 1.0,
    top_p: float = 1.0,
    top_k: int = 0,
    generator: torch.Generator | None = None,
    min_new_tokens: int = 0,
    row_offset: int = 0,
    total_rows: int | None = None,
    gather_last: bool = False,
    compile_decode: bool = False,
) -> Rollout:
    """Sample ``group_size`` completions per prompt with one prefill per prompt.

    ``min_new_tokens`` forbids EOS before that many tokens (benchmarks use it to fix the length).
    ``total_rows`` (rows of the global batch; these are rows ``row_offset:`` of it) switches to
    inverse-CDF sampling from uniforms drawn for the global batch (see the module docstring).
    ``gather_last``: take the prompts' last hidden state as a contiguous copy before the LM head.
    HF slices ``hidden[:, -1:]`` (a strided view), and torch's CPU bf16 linear on that view
    computes every position's logits (measured: 3.5 GB and 3.8 s for 64 prompts x 47 tokens,
    vs 0.02 s on a copy). Evaluation sets it; training keeps the slice because the copy's
    small-batch matmul rounds differently with the batch size, which would break the
    bitwise equality of N ranks with one process (tests/test_distributed.py).
    ``compile_decode``: decode through ``torch.compile`` over a static KV cache
    (``groupwise.kernels.compiled_decode``; finished rows stay in the batch).
    """
    from transformers import DynamicCache

    device = prompts.input_ids.device
    num_rows = prompts.input_ids.shape[0] * group_size
    cache = DynamicCache(config=getattr(model, "config", None))
    out = model(
        input_ids=prompts.input_ids,
        attention_mask=prompts.attention_mask,
        position_ids=_positions(prompts.attention_mask),
        past_key_values=cache,
        use_cache=True,
        # an index tensor, not the int 1: HF slices hidden[:, -1:] (a strided view) for an int,
        # and torch's CPU bf16 linear on that view computes every position's logits (measured:
        # 3.5 GB and 3.8 s for 64 prompts x 47 tokens, vs 0.02 s on a contiguous copy)
        logits_to_keep=torch.tensor([prompts.input_ids.shape[1] - 1], device=device)
        if gather_last
        else 1,
    )
    cache.batch_repeat_interleave(group_size)
    logits = out.logits[:, -1].repeat_interleave(group_size, dim=0)  # [B, V]
    attn = prompts.attention_mask.repeat_interleave(group_size, dim=0)  # [B, Lp]
    static = None
    if compile_decode:
        from groupwise.kernels.compiled_decode import StaticDecoder

        static = StaticDecoder(model, cache, attn, max_completion_length)
        del cache
    next_pos = prompts.lengths.repeat_interleave(group_size)  # [B]
    eos = torch.tensor(list(eos_token_ids), device=device)
    tokens = torch.full((num_rows, max_completion_length), pad_token_id, device=device)
    entropy = torch.zeros((num_rows, max_completion_length), device=device)
    done = torch.zeros(num_rows, dtype=torch.bool, device=device)
    active = torch.arange(num_rows, device=device)  # rows still in the decode batch
    uniforms = None
    if total_rows is not None and temperature > 0:  # [L, total_rows], drawn whatever the length
        shape = (max_completion_length, total_rows)
        uniforms = torch.rand(shape, generator=generator, device=device)
    for step in range(max_completion_length):
        if step < min_new_tokens:
            logits[:, eos] = float("-inf")
        nxt, h = sample_with_entropy(
            logits,
            temperature=temperature,
            top_p=top_p,
            top_k=top_k,
            generator=generator,
            uniform=None if uniforms is None else uniforms[step, row_offset + active],
        )  # [R], [R] or None
        tokens[active, step] = nxt
        if h is not None:
            entropy[active, step] = h
        done[active] |= torch.isin(nxt, eos)
        if bool(done.all()) or step == max_completion_length - 1:
            break
        if static is not None:  # fixed shape: finished rows keep decoding, ignored
            logits = static.step(nxt, next_pos, step)  # [B, V]
            next_pos = next_pos + 1
            continue
        keep = ~done[active]  # [R]
        if int((~keep).sum()) * 4 >= active.numel():  # compact once a quarter has finished
            keep_idx = keep.nonzero().squeeze(-1)
            cache.batch_select_indices(keep_idx)
            active, attn, next_pos = active[keep_idx], attn[keep_idx], next_pos[keep_idx]
            nxt, keep = nxt[keep_idx], keep[keep_idx]
        attn = torch.cat([attn, keep.long()[:, None]], dim=1)  # finished rows: masked, ignored
        out = model(
            input_ids=nxt[:, None],
            attention_mask=attn,
            position_ids=next_pos[:, None],
            past_key_values=cache,
            use_cache=True,
        )
        logits = out.logits[:, -1]  # [R, V]
        next_pos = next_pos + 1
    rollout = _finish(prompts, tokens, eos, pad_token_id, group_size)
    rollout.entropy = entropy[:, : rollout.completion_ids.shape[1]] * rollout.completion_mask
    return rollout


def _finish(
    prompts: PromptBatch, tokens: Tensor, eos: Tensor, pad_token_id: int, group_size: int
) -> Rollout:
    is_eos = torch.isin(tokens, eos)  # [B, L]
    has_eos = is_eos.any(dim=1)  # [B]
    first_eos = torch.where(has_eos, is_eos.int().argmax(dim=1), tokens.shape[1])  # [B]
    idx = torch.arange(tokens.shape[1], device=tokens.device)[None, :]  # [1, L]
    mask = (idx <= first_eos[:, None]).long()  # [B, L]
    tokens = tokens.masked_fill(mask == 0, pad_token_id)
    width = used_width(mask)
    return Rollout(
        prompts=prompts,
        completion_ids=tokens[:, :width],
        completion_mask=mask[:, :width],
        truncated=~has_eos,
        group_size=group_size,
    )


def select_groups(rollout: Rollout, start: int, stop: int) -> Rollout:
    """The sub-rollout made of prompts ``start:stop`` and their G completions each."""
    return take_groups(rollout, torch.arange(start, stop, device=rollout.completion_ids.device))


def take_groups(rollout: Rollout, groups: Tensor) -> Rollout:
    """The sub-rollout of the prompts listed in ``groups`` (and their G completions each).

    Columns that are padding in every selected row are dropped.
    """
    g = rollout.group_size
    rows = group_rows(groups, g)
    prompts = PromptBatch(rollout.prompts.input_ids[groups], rollout.prompts.attention_mask[groups])
    mask = rollout.completion_mask[rows]  # [b, Lc]
    width = used_width(mask)
    return Rollout(
        prompts=prompts,
        completion_ids=rollout.completion_ids[rows, :width],
        completion_mask=mask[:, :width],
        truncated=rollout.truncated[rows],
        group_size=g,
    )


def used_width(mask: Tensor) -> int:
    """Columns up to the last one any row of ``mask`` [b, Lc] uses (at least 1)."""
    return max(int(mask.sum(dim=1).max()), 1) if mask.numel() else 1


def group_rows(groups: Tensor, group_size: int) -> Tensor:
    """Row indices of the completions of ``groups``."""
    offsets = torch.arange(group_size, device=groups.device)[None, :]  # [1, G]
    return (groups[:, None] * group_size + offsets).reshape(-1)  # [len(groups) * G]
