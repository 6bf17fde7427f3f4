"""Decode steps through ``torch.compile`` over a static KV cache (``rollout.compile=true``).

Eager decoding of a small model on CPU spends about half of each step outside the matmuls: ~40
small element-wise ops per layer (RMSNorm's casts, rotary, SiLU, residual adds, softmax), each a
separate kernel launch, and a ``torch.cat`` per layer that copies the whole KV cache. Compiling
the model's forward for one decode step fuses those ops into a few generated C++ loops and
writes the KV cache in place. The cache must then have a fixed shape: transformers'
``StaticCache`` of ``rows x capacity`` slots, with the capacity ``prompt + max new tokens``
rounded up to ``CAPACITY_MULTIPLE`` so prompts of nearby lengths reuse one compiled graph. Rows
that finish early keep decoding (their tokens are discarded) instead of being dropped from the
batch, which would change the shape.

The first step of each new shape compiles (tens of seconds); measured against eager decoding
in benchmarks/README.md and docs/log.md. The prefill stays eager.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from groupwise.kernels.kv_cache import cache_kwargs

CAPACITY_MULTIPLE = 64
"""The static cache's length is rounded up to a multiple of this (fewer distinct shapes)."""

_COMPILED: weakref.WeakKeyDictionary[nn.Module, Callable[..., Any]] = weakref.WeakKeyDictionary()


def compiled_forward(model: nn.Module) -> Callable[..., Any]:
    """``torch.compile(model.forward)``, created once per model (reused across rollouts)."""
    fn = _COMPILED.get(model)
    if fn is None:
        fn = torch.compile(model.forward, dynamic=False)
        _COMPILED[model] = fn
    return fn


def cache_capacity(prompt_length: int, max_new_tokens: int) -> int:
    """Slots per row of the static cache: prompt + new tokens, rounded up."""
    need = prompt_length + max_new_tokens
    return -(-need // CAPACITY_MULTIPLE) * CAPACITY_MULTIPLE


class StaticDecoder:
    """One rollout's decode steps: a static cache filled from the prefill, then compiled steps.

    ``prefix`` is the prefill's ``DynamicCache`` (already repeated to one row per completion),
    ``prompt_mask`` its ``[R, Lp]`` attention mask. Positions ``Lp + t`` hold decoded token t.
    """

    def __init__(
        self, model: nn.Module, prefix: Any, prompt_mask: Tensor, max_new_tokens: int
    ) -> None:
        from transformers import StaticCache

        rows, prompt_length = prompt_mask.shape
        capacity = cache_capacity(prompt_length, max_new_tokens)
        config: Any = getattr(model, "config", None)
        self.cache = StaticCache(config=config, max_cache_len=capacity)
        for index, layer in enumerate(prefix.layers):
            self.cache.update(layer.keys, layer.values, index)  # slots 0..Lp-1
        tail = torch.ones(
            (rows, capacity - prompt_length), dtype=prompt_mask.dtype, device=prompt_mask.device
        )  # later slots: causality masks the ones not yet written
        self.mask = torch.cat([prompt_mask, tail], dim=1)  # [R, capacity]
        self.prompt_length = prompt_length
        self.forward = compiled_forward(model)
        self.cache_arg = cache_kwargs(model, self.cache)

    def step(self, tokens: Tensor, positions: Tensor, step: int) -> Tensor:
        """Logits ``[R, V]`` after feeding ``tokens`` ``[R]`` (decoded token ``step``) at
        rotary ``positions`` ``[R]``."""
        slot = torch.tensor([self.prompt_length + step], device=tokens.device)  # [1]
        out = self.forward(
            input_ids=tokens[:, None],
            attention_mask=self.mask,
            position_ids=positions[:, None],
            **self.cache_arg,
            cache_position=slot,
            use_cache=True,
        )
        logits: Tensor = out.logits[:, -1]  # [R, V]
        return logits
