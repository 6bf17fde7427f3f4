"""Which weights the local rollout decodes with: four strategies behind one small interface.

=================  ===========================================  ==================================
strategy           when (``training.param_dtype``, LoRA keys)   what ``sync`` / ``active`` do
=================  ===========================================  ==================================
SharedWeights      pure bf16 full fine-tuning: the policy        nothing: the policy is the model
                   decodes itself, no copy
MergedCopy         float32 masters (bf16 or float32 rollout      ``sync``: copy the policy's weights
                   copy); LoRA with ``lora_rollout_copy``        (adapters merged) into the copy
AdapterDecode      LoRA, ``lora_rollout_copy=false``             nothing: decodes through peft's
                                                                 unmerged adapters
InPlaceMerge       LoRA, ``lora_merge_in_place=true``            ``active``: adapters merged into
                                                                 the base weights for the block,
                                                                 restored bitwise afterwards
=================  ===========================================  ==================================

A run's plan names the strategy (``RunPlan.rollout_weights``, decided by
:func:`groupwise.models.plan.decide_rollout_weights`); the trainer builds it with
:func:`build_rollout_weights` and hands it to the engine; an engine
that decodes elsewhere (a server, another library) can ignore it and read the policy instead.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from pathlib import Path
from typing import Protocol

import torch
from torch import nn

from groupwise.models import (
    MappedSnapshot,
    lora_base_weights,
    make_rollout_model,
    make_rollout_shell,
    merge_lora_in_place,
    sync_rollout_model,
)
from groupwise.models.plan import ROLLOUT_WEIGHTS


class RolloutWeights(Protocol):
    """The model a local engine decodes with, kept up to date with the policy."""

    name: str
    model: nn.Module
    """The module to decode with."""

    def sync(self) -> None:
        """After an optimizer step: bring ``model`` up to the policy (a collective under FSDP)."""

    def active(self) -> AbstractContextManager[None]:
        """A block during which ``model`` decodes with the policy's current weights."""


class SharedWeights:
    """The policy decodes itself (pure bf16 training): no copy, nothing to sync."""

    name = "shared"

    def __init__(self, policy: nn.Module) -> None:
        self.model = policy

    def sync(self) -> None:
        """Nothing: the model is the policy."""

    def active(self) -> AbstractContextManager[None]:
        """No preparation."""
        return nullcontext()


class AdapterDecode(SharedWeights):
    """LoRA decoding through peft's unmerged adapters (``model.lora_rollout_copy=false``)."""

    name = "adapters"


class MergedCopy:
    """A frozen low-precision inference copy, refreshed from the policy after every update
    (LoRA deltas merged in); decoding under autocast would re-cast every weight per token."""

    name = "copy"

    def __init__(self, policy: nn.Module, copy: nn.Module) -> None:
        self.policy = policy
        self.model = copy

    def sync(self) -> None:
        """Copy the policy's weights (merged adapters) into the copy."""
        sync_rollout_model(self.policy, self.model)

    def active(self) -> AbstractContextManager[None]:
        """No preparation: ``sync`` already ran."""
        return nullcontext()


class InPlaceMerge:
    """LoRA merged into the base's own weights for a rollout (``model.lora_merge_in_place``):
    a shell model shares the base's tensors; its snapshot restores them bitwise afterwards."""

    name = "merge_in_place"

    def __init__(self, policy: nn.Module, shell: nn.Module, snapshot: MappedSnapshot) -> None:
        self.policy = policy
        self.model = shell
        self.snapshot = snapshot

    def sync(self) -> None:
        """Nothing: the merge happens under :meth:`active`."""

    @contextmanager
    def active(self) -> Iterator[None]:
        """Adapters merged into the base weights for the block, then restored."""
        merge_lora_in_place(self.policy)
        try:
            yield
        finally:
            self.snapshot.restore()


class ServesWeights:
    """What an engine that decodes on a :class:`RolloutWeights` strategy shares: taking the
    policy's weights, and preparing them once for a block of ``generate`` calls."""

    weights: RolloutWeights
    _depth = 0

    def sync_weights(self) -> None:
        """Bring the decoding weights up to the policy."""
        self.weights.sync()

    @contextmanager
    def serving(self) -> Iterator[None]:
        """The weights' preparation (e.g. adapters merged in place) once for the block."""
        if self._depth:
            yield
            return
        self._depth += 1
        try:
            with self.weights.active():
                yield
        finally:
            self._depth -= 1


WEIGHT_STRATEGIES = ROLLOUT_WEIGHTS
"""The strategies by name; which one a run uses is its plan's ``rollout_weights``
(:func:`groupwise.models.plan.decide_rollout_weights`)."""


def build_rollout_weights(
    base: nn.Module,
    make_policy: Callable[[nn.Module], nn.Module],
    *,
    strategy: str,
    rollout_dtype: torch.dtype,
    snapshot_dir: Path,
) -> tuple[nn.Module, RolloutWeights]:
    """The policy (``make_policy(base)``: gradient checkpointing, LoRA) and its rollout weights.

    A copy or shell is taken from ``base`` *before* ``make_policy`` wraps it, so it carries no
    adapters and no checkpointing.
    """
    if strategy == "copy":
        copy = make_rollout_model(base, rollout_dtype)
        policy = make_policy(base)
        weights: RolloutWeights = MergedCopy(policy, copy)
    elif strategy == "merge_in_place":
        shell = make_rollout_shell(base)
        policy = make_policy(base)
        weights = InPlaceMerge(
            policy, shell, MappedSnapshot(lora_base_weights(policy), snapshot_dir)
        )
    elif strategy in ("shared", "adapters"):
        policy = make_policy(base)
        weights = SharedWeights(policy) if strategy == "shared" else AdapterDecode(policy)
    else:
        raise ValueError(
            f"unknown rollout weights {strategy!r}; valid: {', '.join(WEIGHT_STRATEGIES)}"
        )
    weights.sync()
    return policy, weights
