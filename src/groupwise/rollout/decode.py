"""Local decoding: sample a group of G completions for each prompt with the model in-process.

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
  ``entropy`` metric costs no extra forward pass and covers every completion. Asked to
  (``behaviour_logp``), the log-probability of each sampled token is recorded too
  (``Rollout.behaviour_logp``, for mismatch correction); the draws are the same either way.
- Rows that have finished are dropped from the decode batch as soon as enough of them are done,
  so a few long completions do not keep the whole batch busy.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

import torch
from torch import Tensor, nn

from groupwise.kernels import native
from groupwise.kernels.kv_cache import cache_kwargs
from groupwise.kernels.packed_decode import PackedDecoder
from groupwise.kernels.packed_decode import supports as supports_packed
from groupwise.rollout.records import PromptBatch, Rollout, used_width
from groupwise.rollout.sampling import Sample, sample_token


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
    uniforms: Tensor | None = None,
    behaviour_logp: bool = False,
    packed_decode: bool = False,
    native_kernels: bool = False,
) -> Rollout:
    """Sample ``group_size`` completions per prompt with one prefill per prompt.

    ``min_new_tokens`` forbids EOS before that many tokens (benchmarks use it to fix the length).
    ``total_rows`` (rows of the global batch; these are rows ``row_offset:`` of it) switches to
    inverse-CDF sampling from uniforms drawn for the global batch (see the module docstring).
    ``gather_last``: take the prompts' last hidden state as a contiguous copy before the LM head.
    HF slices ``hidden[:, -1:]`` (a strided view), and torch's CPU bf16 linear on that view
    computes every position's logits (gigabytes and seconds for an evaluation batch; figures in
    docs/log.md). Evaluation sets it; training keeps the slice because the copy's
    small-batch matmul rounds differently with the batch size, which would break the
    bitwise equality of N ranks with one process (tests/train/test_distributed.py).
    ``compile_decode``: decode through ``torch.compile`` over a static KV cache
    (``groupwise.kernels.compiled_decode``; finished rows stay in the batch).
    ``uniforms`` ([L, rows] in [0, 1)): this batch's draws, given (inverse-CDF sampling; the
    ``episodes`` engine passes each turn's slice of its own table).
    ``behaviour_logp``: record ``log_softmax(logits / T)`` of each sampled token (float32,
    ``Rollout.behaviour_logp``; under ``min_new_tokens`` that of the distribution without EOS,
    the one actually sampled; ``None`` when greedy).
    ``packed_decode``: decode with :class:`groupwise.kernels.packed_decode.PackedDecoder`
    (packed, fused weights and an in-place KV cache) when the model is one it supports;
    ``native_kernels``: where groupwise's C++ kernels are built (:mod:`groupwise.kernels.native`),
    draw each token with their sampler (any decode path; temperature > 0 without top-k/top-p),
    and run the packed step's element-wise chains and attention through them (bf16 weights).
    """
    device = prompts.input_ids.device
    num_rows = prompts.input_ids.shape[0] * group_size
    kernels = native.load() if native_kernels and device.type == "cpu" else None
    stepper, logits = _start(
        model, prompts, group_size, max_completion_length, gather_last, compile_decode,
        packed_decode, native_kernels,
    )  # fmt: skip
    next_pos = prompts.lengths.repeat_interleave(group_size)  # [B]
    eos = torch.tensor(list(eos_token_ids), device=device)
    tokens = torch.full((num_rows, max_completion_length), pad_token_id, device=device)
    entropy = torch.zeros((num_rows, max_completion_length), device=device)
    token_logp = torch.zeros_like(entropy) if behaviour_logp and temperature > 0 else None
    done = torch.zeros(num_rows, dtype=torch.bool, device=device)
    active = torch.arange(num_rows, device=device)  # rows still in the decode batch
    if uniforms is None and total_rows is not None and temperature > 0:
        shape = (max_completion_length, total_rows)  # drawn whatever the length
        uniforms = torch.rand(shape, generator=generator, device=device)
        uniforms = uniforms[:, row_offset : row_offset + num_rows]  # [L, rows]
    for step in range(max_completion_length):
        if step < min_new_tokens:
            logits[:, eos] = float("-inf")
        drawn = sample_token(
            logits,
            temperature=temperature,
            top_p=top_p,
            top_k=top_k,
            generator=generator,
            uniform=None if uniforms is None else uniforms[step, active],
            logp=token_logp is not None,
            kernels=kernels,
        )
        nxt = tokens[active, step] = drawn.token  # [R]
        _record(drawn, entropy, token_logp, active, step)
        done[active] |= torch.isin(nxt, eos)
        if bool(done.all()) or step == max_completion_length - 1:
            break
        keep = ~done[active]  # [R]
        if stepper.compacts and int((~keep).sum()) * 4 >= active.numel():  # a quarter done
            keep_idx = keep.nonzero().squeeze(-1)
            stepper.select(keep_idx)
            active, next_pos = active[keep_idx], next_pos[keep_idx]
            nxt, keep = nxt[keep_idx], keep[keep_idx]
        logits = stepper.step(nxt, next_pos, step, keep)  # [R, V]
        next_pos = next_pos + 1
    rollout = _finish(prompts, tokens, eos, pad_token_id, group_size)
    return _with_sampling_records(rollout, entropy, token_logp)


class _Stepper(Protocol):
    """One decode backend: logits ``[R, V]`` for the next token of each row in the batch."""

    compacts: bool
    """Rows that finished may leave the batch (:meth:`select`); else they decode on, ignored."""

    def step(self, tokens: Tensor, positions: Tensor, step: int, live: Tensor) -> Tensor:
        """Feed ``tokens`` ``[R]`` (decoded token ``step``) at rotary ``positions`` ``[R]``;
        ``live`` ``[R]`` is false for rows already finished (their logits are ignored)."""
        ...

    def select(self, index: Tensor) -> None:
        """Keep only rows ``index``."""
        ...


class _TransformersStepper:
    """transformers' forward over its ``DynamicCache`` (finished rows masked, then dropped)."""

    compacts = True

    def __init__(self, model: nn.Module, cache: Any, attn: Tensor) -> None:
        self.model, self.cache, self.attn = model, cache, attn

    def step(self, tokens: Tensor, positions: Tensor, step: int, live: Tensor) -> Tensor:
        self.attn = torch.cat([self.attn, live.long()[:, None]], dim=1)  # [R, L + 1]
        out = self.model(
            input_ids=tokens[:, None],
            attention_mask=self.attn,
            position_ids=positions[:, None],
            **cache_kwargs(self.model, self.cache),
            use_cache=True,
        )
        logits: Tensor = out.logits[:, -1]
        return logits

    def select(self, index: Tensor) -> None:
        self.cache.batch_select_indices(index)
        self.attn = self.attn[index]


class _Compiled:
    """:class:`~groupwise.kernels.compiled_decode.StaticDecoder` (fixed shape: no compaction)."""

    compacts = False

    def __init__(self, decoder: Any) -> None:
        self.decoder = decoder

    def step(self, tokens: Tensor, positions: Tensor, step: int, live: Tensor) -> Tensor:
        logits: Tensor = self.decoder.step(tokens, positions, step)
        return logits

    def select(self, index: Tensor) -> None:
        raise NotImplementedError("the static cache keeps every row")


class _Packed(_Compiled):
    """:class:`~groupwise.kernels.packed_decode.PackedDecoder` (rows dropped as they finish)."""

    compacts = True

    def select(self, index: Tensor) -> None:
        self.decoder.select(index)


def _start(
    model: nn.Module,
    prompts: PromptBatch,
    group_size: int,
    max_new_tokens: int,
    gather_last: bool,
    compile_decode: bool,
    packed_decode: bool,
    native_kernels: bool = False,
) -> tuple[_Stepper, Tensor]:
    """Prefill the prompts; the decode backend and the first logits ``[B, V]``."""
    if packed_decode and not compile_decode and supports_packed(model):
        prefix, logits = _prefill_prompts(model, prompts, group_size, gather_last)
        mask = prompts.attention_mask
        decoder = PackedDecoder(
            model, prefix, mask, group_size, max_new_tokens, native_kernels=native_kernels
        )
        return _Packed(decoder), logits
    cache, logits, attn = _prefill(model, prompts, group_size, gather_last)
    if compile_decode:
        from groupwise.kernels.compiled_decode import StaticDecoder

        return _Compiled(StaticDecoder(model, cache, attn, max_new_tokens)), logits
    return _TransformersStepper(model, cache, attn), logits


def _record(
    drawn: Sample, entropy: Tensor, token_logp: Tensor | None, active: Tensor, step: int
) -> None:
    """Store a decode step's entropies and log-probs ``[R]`` at column ``step`` of ``active``."""
    if drawn.entropy is not None:
        entropy[active, step] = drawn.entropy
    if token_logp is not None and drawn.logp is not None:
        token_logp[active, step] = drawn.logp


def _with_sampling_records(rollout: Rollout, entropy: Tensor, token_logp: Tensor | None) -> Rollout:
    """``rollout`` with its ``entropy`` and ``behaviour_logp`` (0 past each completion's end)."""
    width = rollout.completion_ids.shape[1]
    rollout.entropy = entropy[:, :width] * rollout.completion_mask
    if token_logp is not None:
        rollout.behaviour_logp = token_logp[:, :width] * rollout.completion_mask
    return rollout


def _prefill(
    model: nn.Module, prompts: PromptBatch, group_size: int, gather_last: bool
) -> tuple[Any, Tensor, Tensor]:
    """Run each prompt once; its KV cache, last logits ``[B, V]`` and attention mask
    ``[B, Lp]`` repeated for the G rows of its group."""
    cache, logits = _prefill_prompts(model, prompts, group_size, gather_last)
    cache.batch_repeat_interleave(group_size)
    attn = prompts.attention_mask.repeat_interleave(group_size, dim=0)  # [B, Lp]
    return cache, logits, attn


def _prefill_prompts(
    model: nn.Module, prompts: PromptBatch, group_size: int, gather_last: bool
) -> tuple[Any, Tensor]:
    """Run each prompt once: its KV cache (one row per prompt) and the last logits ``[B, V]``
    repeated for the G rows of its group."""
    from transformers import DynamicCache

    device = prompts.input_ids.device
    cache = DynamicCache(config=getattr(model, "config", None))
    embeddings = getattr(model, "get_output_embeddings", None)
    head: Any = embeddings() if callable(embeddings) else None
    frozen = head is not None and not head.weight.requires_grad
    out = model(
        input_ids=prompts.input_ids,
        attention_mask=prompts.attention_mask,
        position_ids=_positions(prompts.attention_mask),
        **cache_kwargs(model, cache),
        use_cache=True,
        # an index tensor gathers the last position; the int 1 makes HF slice hidden[:, -1:], a
        # strided view, on which torch's CPU linear with a frozen head (LoRA's base, a rollout
        # copy) runs a batched matmul copying the weight per prompt: 0.4 s for 8 SmolLM2 prompts
        # in bf16 against 5 ms gathered, the same logits (tested); evaluation gathers always
        logits_to_keep=torch.tensor([prompts.input_ids.shape[1] - 1], device=device)
        if gather_last or frozen
        else 1,
    )
    logits = out.logits[:, -1].repeat_interleave(group_size, dim=0)  # [B, V]
    return cache, logits


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
