"""concat_rollouts: the groups of several rollouts as one, padded, every optional field kept."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from groupwise.rollout import PromptBatch, Rollout, concat_rollouts, take_groups

PAD = 9


def _rollout(prompt_lengths: list[int], completion_lengths: list[int], seed: int) -> Rollout:
    """A hand-built rollout with G = 2 and every optional field set: prompt p has
    ``prompt_lengths[p]`` real tokens, completion i ``completion_lengths[i]``."""
    g = 2
    torch.manual_seed(seed)
    lp, lc = max(prompt_lengths), max(completion_lengths)
    prompt_ids = torch.full((len(prompt_lengths), lp), PAD)
    prompt_mask = torch.zeros((len(prompt_lengths), lp), dtype=torch.long)
    for p, n in enumerate(prompt_lengths):
        prompt_ids[p, lp - n :] = torch.randint(10, 50, (n,))
        prompt_mask[p, lp - n :] = 1
    rows = len(completion_lengths)
    mask = torch.zeros((rows, lc), dtype=torch.long)
    for i, n in enumerate(completion_lengths):
        mask[i, :n] = 1
    ids = torch.where(mask.bool(), torch.randint(10, 50, (rows, lc)), PAD)
    return Rollout(
        prompts=PromptBatch(prompt_ids, prompt_mask),
        completion_ids=ids,
        completion_mask=mask,
        truncated=torch.tensor([n == lc for n in completion_lengths]),
        group_size=g,
        entropy=torch.rand(rows, lc) * mask,
        loss_mask=(torch.rand(rows, lc) > 0.3).long() * mask,
        turn_index=torch.randint(0, 3, (rows, lc)) * mask,
        behaviour_logp=-torch.rand(rows, lc) * mask,
        columns={
            "env_reward": [float(i + seed) for i in range(rows)],
            "tag": ["ab"[i % 2] for i in range(rows)],
        },
        metrics={"tool_calls/mean": float(seed)},
    )


def _fields(r: Rollout) -> dict[str, Any]:
    return {
        "prompt_ids": r.prompts.input_ids,
        "prompt_mask": r.prompts.attention_mask,
        "completion_ids": r.completion_ids,
        "completion_mask": r.completion_mask,
        "truncated": r.truncated,
        "entropy": r.entropy,
        "loss_mask": r.loss_mask,
        "turn_index": r.turn_index,
        "behaviour_logp": r.behaviour_logp,
        "columns": r.columns,
    }


def _assert_equal(a: Rollout, b: Rollout) -> None:
    fa, fb = _fields(a), _fields(b)
    for name, value in fa.items():
        if isinstance(value, torch.Tensor):
            assert value.dtype == fb[name].dtype, name
            assert torch.equal(value, fb[name]), name
        else:
            assert value == fb[name], name


def test_concat_pads_prompts_left_and_completions_right() -> None:
    narrow = _rollout([2], [1, 3], seed=1)  # prompt width 2, completion width 3
    wide = _rollout([4, 1], [5, 2, 4, 1], seed=2)  # prompt width 4, completion width 5
    both = concat_rollouts([narrow, wide], pad_token_id=PAD)
    assert both.group_size == 2
    assert both.prompts.input_ids.shape == (3, 4) and both.completion_ids.shape == (6, 5)
    # the narrow prompt: two pad columns on the left, then its ids
    assert both.prompts.input_ids[0].tolist() == [PAD, PAD, *narrow.prompts.input_ids[0].tolist()]
    assert both.prompts.attention_mask[0].tolist() == [0, 0, 1, 1]
    assert torch.equal(both.prompts.input_ids[1:], wide.prompts.input_ids)
    # the narrow completions: two columns on the right, pad id / 0
    assert both.completion_ids[0].tolist() == [*narrow.completion_ids[0].tolist(), PAD, PAD]
    for name in ("completion_mask", "entropy", "loss_mask", "turn_index", "behaviour_logp"):
        value, part = getattr(both, name), getattr(narrow, name)
        assert torch.equal(value[:2, :3], part) and not value[:2, 3:].any(), name
        assert torch.equal(value[2:], getattr(wide, name)), name
        assert value.dtype == part.dtype, name
    assert both.truncated.tolist() == [*narrow.truncated.tolist(), *wide.truncated.tolist()]
    assert both.columns == {
        "env_reward": [1.0, 2.0, 2.0, 3.0, 4.0, 5.0],
        "tag": ["a", "b", "a", "b", "a", "b"],
    }
    assert both.metrics == {"tool_calls/mean": pytest.approx((1.0 * 2 + 2.0 * 4) / 6)}


def test_take_groups_of_the_concatenation_are_the_parts() -> None:
    parts = [
        _rollout([3], [2, 2], seed=3),
        _rollout([1, 5], [6, 1, 2, 3], seed=4),
        _rollout([2], [4, 4], seed=5),
    ]
    both = concat_rollouts(parts, pad_token_id=PAD)
    start = 0
    for part in parts:
        groups = torch.arange(start, start + part.prompts.input_ids.shape[0])
        taken = take_groups(both, groups)
        # take_groups keeps the prompt width: compare the part's prompts left-padded
        width = both.prompts.input_ids.shape[1] - part.prompts.input_ids.shape[1]
        assert not taken.prompts.attention_mask[:, :width].any()
        taken.prompts = PromptBatch(
            taken.prompts.input_ids[:, width:], taken.prompts.attention_mask[:, width:]
        )
        _assert_equal(taken, take_groups(part, torch.arange(part.prompts.input_ids.shape[0])))
        start += part.prompts.input_ids.shape[0]


def test_optional_fields_left_unset_stay_unset_and_mixed_ones_are_refused() -> None:
    a, b = _rollout([2], [1, 2], seed=6), _rollout([2], [3, 1], seed=7)
    for r in (a, b):
        r.entropy = r.loss_mask = r.turn_index = r.behaviour_logp = None
        r.columns = r.metrics = None
    both = concat_rollouts([a, b], pad_token_id=PAD)
    assert both.entropy is None and both.loss_mask is None and both.turn_index is None
    assert both.behaviour_logp is None and both.columns is None and both.metrics is None
    b.entropy = torch.zeros_like(b.completion_mask, dtype=torch.float32)
    with pytest.raises(ValueError, match=r"Rollout.entropy is set in some rollouts"):
        concat_rollouts([a, b], pad_token_id=PAD)
    b.entropy, b.group_size = None, 3
    with pytest.raises(ValueError, match="group sizes differ"):
        concat_rollouts([a, b], pad_token_id=PAD)
