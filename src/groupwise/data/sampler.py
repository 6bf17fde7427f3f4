"""Prompt order: a seeded shuffle per epoch, with a position that a checkpoint can restore."""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any

from groupwise.data.tasks import Row


class PromptSampler:
    """Yields batches of training rows; reshuffles (seeded by epoch) when the data runs out."""

    def __init__(self, rows: Sequence[Row], seed: int) -> None:
        if not rows:
            raise ValueError("the task has no training rows")
        for i, row in enumerate(rows):
            if "prompt" not in row:
                raise ValueError(f"training row {i} has no 'prompt' column (columns: {list(row)})")
        self.rows = list(rows)
        self.seed = seed
        self.epoch = 0
        self.position = 0
        self._order = self._shuffled(0)

    def _shuffled(self, epoch: int) -> list[int]:
        order = list(range(len(self.rows)))
        random.Random(self.seed * 1_000_003 + epoch).shuffle(order)
        return order

    def next_batch(self, size: int) -> list[Row]:
        """The next ``size`` rows in the current order."""
        batch: list[Row] = []
        while len(batch) < size:
            if self.position >= len(self._order):
                self.epoch += 1
                self.position = 0
                self._order = self._shuffled(self.epoch)
            batch.append(self.rows[self._order[self.position]])
            self.position += 1
        return batch

    def state_dict(self) -> dict[str, Any]:
        """Epoch and position, for checkpoints."""
        return {"epoch": self.epoch, "position": self.position, "seed": self.seed}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the epoch and position saved by ``state_dict``."""
        self.seed = int(state["seed"])
        self.epoch = int(state["epoch"])
        self.position = int(state["position"])
        self._order = self._shuffled(self.epoch)
