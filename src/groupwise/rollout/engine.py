"""The rollout engine interface: the one seam through which completions enter training.

An engine turns a batch of prompts and a :class:`RolloutRequest` into a :class:`~groupwise.rollout.records.Rollout` of G
completions each, takes the policy's new weights after every update, and serves evaluation
(greedy or sampled decoding of held-out prompts). The trainer and the evaluator only call
:meth:`RolloutEngine.generate`, :meth:`RolloutEngine.sync_weights` and
:meth:`RolloutEngine.serving`; everything about *how* tokens are produced lives behind them.

Engines are registered by name in :data:`ENGINES` (config key ``rollout.engine``) as factories
taking an :class:`EngineContext`::

    @ENGINES.register("my_server")
    def build(ctx: EngineContext) -> RolloutEngine:
        return MyServerEngine(ctx.policy, ctx.tokenizer, url=...)

``local`` (decoding in-process, :mod:`groupwise.rollout.local`) is the default; ``replay``
(:mod:`groupwise.rollout.replay`) returns recorded completions, for tests of everything
downstream of generation.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import torch
from torch import nn

from groupwise.registry import Registry
from groupwise.rollout.records import PromptBatch, Rollout

if TYPE_CHECKING:
    from groupwise.config import RolloutConfig
    from groupwise.rollout.weights import RolloutWeights


@dataclass(frozen=True)
class SamplingParams:
    """How to sample: the rollout config's sampling keys, or greedy for evaluation."""

    max_tokens: int
    """At most this many completion tokens per row."""
    temperature: float = 1.0
    """Softmax temperature; 0 = greedy."""
    top_p: float = 1.0
    """Nucleus sampling mass (1 = off)."""
    top_k: int = 0
    """Keep the k most likely tokens (0 = off)."""
    min_new_tokens: int = 0
    """Forbid EOS before this many tokens."""

    @classmethod
    def of(cls, config: RolloutConfig) -> SamplingParams:
        """The rollout config's sampling keys."""
        return cls(
            config.max_completion_length,
            config.temperature,
            config.top_p,
            config.top_k,
            config.min_new_tokens,
        )


@dataclass(frozen=True)
class RolloutRequest:
    """What to generate for a batch of prompts."""

    group_size: int
    """G completions per prompt (rows of one prompt contiguous)."""
    sampling: SamplingParams
    """How to sample."""
    generator: torch.Generator | None = None
    """Seeds the draws."""
    row_offset: int = 0
    """This batch's first row in the global batch (ranks decode slices of it)."""
    total_rows: int | None = None
    """Rows of the global batch: draws then depend only on a row's global index."""
    evaluation: bool = False
    """A held-out pass (engines may pick kernels that favour small batches)."""
    rows: Sequence[Mapping[str, Any]] | None = None
    """The dataset rows of the prompts (environments start from them)."""
    behaviour_logp: bool = False
    """Report ``Rollout.behaviour_logp`` (mismatch correction asks; engines that always report
    it may ignore this, engines that cannot leave it ``None``)."""


class RolloutEngine(Protocol):
    """Produces groups of completions and follows the policy's weights."""

    def generate(self, prompts: PromptBatch, request: RolloutRequest) -> Rollout:
        """``request.group_size`` completions per prompt, rows of one prompt contiguous."""
        ...

    def sync_weights(self) -> None:
        """Take the policy's current weights (after an optimizer step; every rank calls it)."""
        ...

    def serving(self) -> AbstractContextManager[None]:
        """A block of several ``generate`` calls with weights prepared once (evaluation)."""
        ...


@dataclass
class EngineContext:
    """What an engine factory may use to build its engine."""

    policy: nn.Module
    """The policy being trained (under LoRA the peft model)."""
    weights: RolloutWeights
    """The local weight strategy (engines that decode elsewhere may ignore it)."""
    tokenizer: Any
    """The policy's tokenizer."""
    eos_token_ids: Sequence[int]
    """Token ids that end a completion."""
    compile_decode: bool = False
    """``rollout.compile``."""
    options: dict[str, Any] | None = None
    """``rollout.engine_kwargs``: engine-specific settings."""
    packed_decode: bool = True
    """``rollout.packed_decode``."""
    native_kernels: bool = False
    """The run plan's ``rollout.native_kernels``."""


EngineFactory = Callable[[EngineContext], RolloutEngine]


def engine_options(
    ctx: EngineContext, engine: str, valid: Sequence[str], required: str | None = None
) -> dict[str, Any]:
    """``rollout.engine_kwargs`` of ``ctx`` for ``engine``; an unknown key, or a missing
    ``required`` one, is an error naming the key and listing the valid ones."""
    options = dict(ctx.options or {})
    unknown = sorted(set(options) - set(valid))
    if unknown or (required is not None and required not in options):
        problem = f"unknown keys {unknown}" if unknown else f"{required!r} is required"
        raise ValueError(
            f"rollout.engine_kwargs for the {engine} engine: {problem}; valid: {', '.join(valid)}"
        )
    return options


ENGINES: Registry[EngineFactory] = Registry("rollout.engine", builtin=True)
"""Rollout engines by name (``rollout.engine``)."""


def build_engine(name: str, ctx: EngineContext) -> RolloutEngine:
    """The engine registered as ``name``, built for ``ctx``."""
    return ENGINES.get(name)(ctx)
