"""Rollout records: the prompts of a step and the completions (or episodes) sampled for them.

A :class:`Rollout` holds G completions per prompt, rows of one prompt contiguous. It is ready
for conversations: ``loss_mask`` marks the tokens the policy produced (trained) against tokens
an environment or a tool inserted (kept in the context, no loss, no KL), and ``turn_index``
says which turn each token belongs to. A single-turn rollout leaves both ``None``: every real
completion token is the policy's, all in turn 0.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import Tensor, nn

Row = Mapping[str, Any]
"""A dataset row: a ``prompt`` and any other columns."""


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
    loss_mask: Tensor | None = None  # [B, Lc] 1 = the policy's token, 0 = inserted (no loss)
    turn_index: Tensor | None = None  # [B, Lc] the turn of each token (multi-turn episodes)
    columns: dict[str, list[Any]] | None = None  # per-row values an engine adds for rewards
    metrics: dict[str, float] | None = None  # an engine's statistics of this batch (logged)
    behaviour_logp: Tensor | None = None
    """[B, Lc] float32: the log-probability under the *sampling* engine of each sampled token,
    ``log_softmax(logits / T)`` over the full vocabulary before any top-p/top-k truncation (as
    the trainer computes ``logp``); 0 where ``completion_mask`` is 0. ``None``: the engine samples
    from the trainer's own weights and reports none (no mismatch to correct)."""

    @property
    def completion_lengths(self) -> Tensor:
        """Number of completion tokens of each row."""
        return self.completion_mask.sum(dim=1)  # [B]

    @property
    def policy_mask(self) -> Tensor:
        """[B, Lc] 1 on the completion tokens the policy sampled (those that get a loss)."""
        if self.loss_mask is None:
            return self.completion_mask
        return self.completion_mask * self.loss_mask.to(self.completion_mask.dtype)

    @property
    def num_turns(self) -> Tensor:
        """[B] turns per row (1 for single-turn rollouts)."""
        if self.turn_index is None:
            return torch.ones_like(self.truncated, dtype=torch.long)
        masked = self.turn_index * self.completion_mask
        return masked.max(dim=1).values.long() + 1


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
        entropy=_rows(rollout.entropy, rows, width),
        loss_mask=_rows(rollout.loss_mask, rows, width),
        turn_index=_rows(rollout.turn_index, rows, width),
        behaviour_logp=_rows(rollout.behaviour_logp, rows, width),
        columns=None
        if rollout.columns is None
        else {k: [v[i] for i in rows.tolist()] for k, v in rollout.columns.items()},
    )


def concat_rollouts(parts: Sequence[Rollout], pad_token_id: int) -> Rollout:
    """One rollout holding the groups of ``parts`` in order (the inverse of :func:`take_groups`
    up to padding).

    Prompts are padded on the left to the widest part (``pad_token_id``, attention 0);
    completions and their per-token fields on the right (``completion_ids`` with
    ``pad_token_id``, masks, ``entropy``, ``turn_index`` and ``behaviour_logp`` with 0).
    ``columns`` are concatenated per key; ``metrics`` (an engine's statistics) become their
    row-weighted means over the parts that report them. The parts must share ``group_size``
    and each optional tensor field is set in every part or in none.
    """
    if not parts:
        raise ValueError("concat_rollouts needs at least one rollout")
    g = parts[0].group_size
    if any(p.group_size != g for p in parts):
        sizes = sorted({p.group_size for p in parts})
        raise ValueError(f"concat_rollouts: the rollouts' group sizes differ ({sizes})")
    width = max(p.completion_ids.shape[1] for p in parts)
    prompt_width = max(p.prompts.input_ids.shape[1] for p in parts)
    prompts = PromptBatch(
        torch.cat(
            [_pad(p.prompts.input_ids, prompt_width, pad_token_id, left=True) for p in parts]
        ),
        torch.cat([_pad(p.prompts.attention_mask, prompt_width, 0, left=True) for p in parts]),
    )
    return Rollout(
        prompts=prompts,
        completion_ids=torch.cat([_pad(p.completion_ids, width, pad_token_id) for p in parts]),
        completion_mask=torch.cat([_pad(p.completion_mask, width, 0) for p in parts]),
        truncated=torch.cat([p.truncated for p in parts]),
        group_size=g,
        entropy=_cat_field(parts, "entropy", width),
        loss_mask=_cat_field(parts, "loss_mask", width),
        turn_index=_cat_field(parts, "turn_index", width),
        behaviour_logp=_cat_field(parts, "behaviour_logp", width),
        columns=_cat_columns(parts),
        metrics=_mean_metrics(parts),
    )


def _pad(x: Tensor, width: int, value: float, left: bool = False) -> Tensor:
    """``x`` [n, w] padded with ``value`` to [n, width] (on the right, or the left)."""
    extra = width - x.shape[1]
    if extra == 0:
        return x
    pad = torch.full((x.shape[0], extra), value, dtype=x.dtype, device=x.device)
    return torch.cat([pad, x] if left else [x, pad], dim=1)


def _cat_field(parts: Sequence[Rollout], name: str, width: int) -> Tensor | None:
    values: list[Tensor | None] = [getattr(p, name) for p in parts]
    if all(v is None for v in values):
        return None
    if any(v is None for v in values):
        raise ValueError(f"concat_rollouts: Rollout.{name} is set in some rollouts, not all")
    return torch.cat([_pad(v, width, 0) for v in values if v is not None])


def _cat_columns(parts: Sequence[Rollout]) -> dict[str, list[Any]] | None:
    if all(p.columns is None for p in parts):
        return None
    keys = [set(p.columns or {}) for p in parts]
    if any(k != keys[0] for k in keys):
        raise ValueError("concat_rollouts: the rollouts' columns differ")
    order = list(parts[0].columns or {})
    return {k: [v for p in parts for v in (p.columns or {})[k]] for k in order}


def _mean_metrics(parts: Sequence[Rollout]) -> dict[str, float] | None:
    """Row-weighted mean of each engine statistic over the parts that report it."""
    sums: dict[str, float] = {}
    rows: dict[str, int] = {}
    for p in parts:
        n = int(p.truncated.numel())
        for key, value in (p.metrics or {}).items():
            sums[key] = sums.get(key, 0.0) + value * n
            rows[key] = rows.get(key, 0) + n
    if not sums:
        return None if all(p.metrics is None for p in parts) else {}
    return {k: sums[k] / max(rows[k], 1) for k in sums}


def _rows(x: Tensor | None, rows: Tensor, width: int) -> Tensor | None:
    return None if x is None else x[rows, :width]


def used_width(mask: Tensor) -> int:
    """Columns up to the last one any row of ``mask`` [b, Lc] uses (at least 1)."""
    return max(int(mask.sum(dim=1).max()), 1) if mask.numel() else 1


def split_groups(rollout: Rollout, parts: int) -> Rollout:
    """Each group as ``parts`` groups of ``G / parts`` completions, each with its own copy of
    the prompt: the same rows in the same order, the prompts repeated ``parts`` times.

    A forward over the split rollout computes every completion's log-probs as before (each
    completion attends to its prompt and itself only); the prompt's activations are computed
    once per part instead of once per group, so a long group can be run a part at a time.
    ``parts`` must divide ``G``.
    """
    g = rollout.group_size
    if parts < 1 or g % parts != 0:
        raise ValueError(f"parts must divide the group size {g}; got {parts}")
    if parts == 1:
        return rollout
    prompts = rollout.prompts
    return replace(
        rollout,
        prompts=PromptBatch(
            prompts.input_ids.repeat_interleave(parts, dim=0),  # [P * parts, Lp]
            prompts.attention_mask.repeat_interleave(parts, dim=0),
        ),
        group_size=g // parts,
    )


def group_rows(groups: Tensor, group_size: int) -> Tensor:
    """Row indices of the completions of ``groups``."""
    offsets = torch.arange(group_size, device=groups.device)[None, :]  # [1, G]
    return (groups[:, None] * group_size + offsets).reshape(-1)  # [len(groups) * G]


def row_columns(rows: Sequence[Row], repeat: int = 1) -> dict[str, list[Any]]:
    """Dataset columns other than ``prompt``, one entry per completion (rows repeated)."""
    keys = [k for k in rows[0] if k != "prompt"] if rows else []
    return {k: [row[k] for row in rows for _ in range(repeat)] for k in keys}


def eos_token_ids(tokenizer: Any, model: nn.Module | None = None) -> list[int]:
    """Token ids that end a completion: the tokenizer's EOS and the generation config's."""
    ids: set[int] = set()
    if tokenizer.eos_token_id is not None:
        ids.add(int(tokenizer.eos_token_id))
    gen = getattr(model, "generation_config", None)
    extra = getattr(gen, "eos_token_id", None)
    if isinstance(extra, int):
        ids.add(extra)
    elif isinstance(extra, (list, tuple)):
        ids.update(int(i) for i in extra)
    if not ids:
        raise ValueError("the tokenizer has no eos_token_id; set one so completions can end")
    return sorted(ids)
