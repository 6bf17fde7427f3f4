"""Optimizer and learning-rate schedule."""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from torch import nn


def build_optimizer(
    params: Iterable[nn.Parameter],
    *,
    lr: float,
    betas: tuple[float, float],
    weight_decay: float,
) -> torch.optim.Optimizer:
    """AdamW over the trainable parameters (fused/foreach kernels where the device has them)."""
    trainable = [p for p in params if p.requires_grad]
    if not trainable:
        raise ValueError("the model has no trainable parameters")
    return torch.optim.AdamW(trainable, lr=lr, betas=betas, weight_decay=weight_decay)


def lr_lambda(kind: str, warmup_steps: int, total_steps: int) -> LRFactor:
    """Multiplier of the peak learning rate after ``k`` updates: linear warmup, then ``kind``.

    constant: 1; linear: decays to 0 at ``total_steps``; cosine: 0.5 (1 + cos(pi * progress)).
    """
    if kind not in ("constant", "linear", "cosine"):
        raise ValueError(f"unknown lr_scheduler_type {kind!r}; valid: constant, linear, cosine")
    return LRFactor(kind, warmup_steps, total_steps)


class LRFactor:
    """Picklable schedule function (so scheduler state can be checkpointed)."""

    def __init__(self, kind: str, warmup_steps: int, total_steps: int) -> None:
        self.kind, self.warmup, self.total = kind, warmup_steps, max(total_steps, 1)

    def __call__(self, k: int) -> float:
        if k < self.warmup:
            return (k + 1) / (self.warmup + 1)
        if self.kind == "constant":
            return 1.0
        progress = min((k - self.warmup) / max(self.total - self.warmup, 1), 1.0)
        if self.kind == "linear":
            return 1.0 - progress
        return 0.5 * (1.0 + math.cos(math.pi * progress))


def build_scheduler(
    optimizer: torch.optim.Optimizer, kind: str, warmup_steps: int, total_steps: int
) -> torch.optim.lr_scheduler.LambdaLR:
    """LambdaLR with ``lr_lambda``."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(kind, warmup_steps, total_steps))
