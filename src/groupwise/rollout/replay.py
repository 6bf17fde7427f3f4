"""The ``replay`` engine: returns recorded completions instead of decoding.

Rewards, losses and the trainer can then be tested (and a reward changed and re-run on a real
run's completions) without a model that writes anything sensible. Completions are taken in
order, cycling, P * G per call; each is tokenized, cut at ``sampling.max_tokens`` and ended
with EOS if it fits (a completion cut short is *truncated*, as a decoded one would be).

Config: ``rollout.engine=replay`` with ``rollout.engine_kwargs`` holding ``completions`` (a
list of strings) or ``file`` (a ``completions.jsonl`` of an earlier run, its ``completion``
fields in order).
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from groupwise.rollout.engine import ENGINES, EngineContext, RolloutEngine, RolloutRequest
from groupwise.rollout.records import PromptBatch, Rollout


class ReplayEngine:
    """Serves ``completions`` in order (cycling) as the rollout of each call."""

    def __init__(self, tokenizer: Any, completions: Sequence[str], eos_token_id: int) -> None:
        if not completions:
            raise ValueError(
                "rollout.engine_kwargs: the replay engine needs at least one completion"
            )
        self.tokenizer = tokenizer
        self.completions = list(completions)
        self.eos_token_id = eos_token_id
        self.position = 0
        self.syncs = 0

    def generate(self, prompts: PromptBatch, request: RolloutRequest) -> Rollout:
        """The next P * G recorded completions as a rollout (no sampling)."""
        group_size, sampling = request.group_size, request.sampling
        rows = prompts.input_ids.shape[0] * group_size
        ids, truncated = [], []
        for _ in range(rows):
            text = self.completions[self.position % len(self.completions)]
            self.position += 1
            tokens = self.tokenizer(text, add_special_tokens=False)["input_ids"]
            cut = len(tokens) >= sampling.max_tokens
            tokens = tokens[: sampling.max_tokens] if cut else [*tokens, self.eos_token_id]
            ids.append(tokens)
            truncated.append(cut)
        width = max(1, max(len(t) for t in ids))
        pad = self.tokenizer.pad_token_id
        device = prompts.input_ids.device
        completion_ids = torch.full((rows, width), pad, dtype=torch.long, device=device)
        mask = torch.zeros((rows, width), dtype=torch.long, device=device)
        for i, tokens in enumerate(ids):
            completion_ids[i, : len(tokens)] = torch.tensor(tokens, dtype=torch.long)
            mask[i, : len(tokens)] = 1
        return Rollout(
            prompts=prompts,
            completion_ids=completion_ids,
            completion_mask=mask,
            truncated=torch.tensor(truncated, dtype=torch.bool, device=device),
            group_size=group_size,
        )

    def sync_weights(self) -> None:
        """Counts the calls (tests check the trainer syncs after every update)."""
        self.syncs += 1

    @contextmanager
    def serving(self) -> Iterator[None]:
        """Nothing to prepare."""
        yield


def read_completions(path: Path) -> list[str]:
    """The ``completion`` fields of a ``completions.jsonl``, in order."""
    lines = Path(path).read_text(encoding="utf-8").splitlines()
    return [str(json.loads(line)["completion"]) for line in lines if line.strip()]


@ENGINES.register("replay")
def build_replay_engine(ctx: EngineContext) -> RolloutEngine:
    """``rollout.engine_kwargs``: ``completions`` (list of strings) or ``file`` (jsonl)."""
    options = ctx.options or {}
    if "file" in options:
        completions = read_completions(Path(options["file"]))
    elif "completions" in options:
        completions = [str(c) for c in options["completions"]]
    else:
        raise ValueError(
            "rollout.engine_kwargs: the replay engine needs 'completions' (a list of strings) "
            "or 'file' (a completions.jsonl)"
        )
    return ReplayEngine(ctx.tokenizer, completions, int(ctx.eos_token_ids[0]))
