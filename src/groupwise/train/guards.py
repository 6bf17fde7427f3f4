"""Stopping a run cleanly: on Ctrl-C or SIGTERM, and when updates keep going non-finite.

The first SIGINT or SIGTERM only sets a flag: the trainer finishes the step under way, writes a
checkpoint and raises :class:`TrainingInterrupted`. A second signal abandons the step at once
(``KeyboardInterrupt``); the last complete checkpoint is still on disk, since checkpoints are
renamed into place only when whole.
"""

from __future__ import annotations

import signal
import threading
from types import FrameType, TracebackType
from typing import Any

__all__ = ["NonFiniteUpdatesError", "StopSignals", "TrainingInterrupted"]


class NonFiniteUpdatesError(RuntimeError):
    """Too many non-finite losses or gradients in a row: the run stops, checkpoints intact."""

    def __init__(self, count: int, step: int, checkpoint: str | None) -> None:
        self.count, self.step, self.checkpoint = count, step, checkpoint
        last = f"the last good checkpoint is {checkpoint}" if checkpoint else "no checkpoint yet"
        super().__init__(
            f"{count} non-finite updates in a row (loss or gradient NaN/inf) up to step {step}; "
            f"stopping (training.max_nonfinite_updates={count}). The weights were not changed by "
            f"those updates; {last}. Lower training.learning_rate, check the reward functions "
            "for NaN/inf, or raise training.max_nonfinite_updates"
        )


class TrainingInterrupted(RuntimeError):
    """A run stopped by a signal after saving a checkpoint; ``exit_code`` is 128 + signal."""

    def __init__(self, signum: int, step: int, checkpoint: str | None) -> None:
        self.signum = signum
        self.step = step
        self.checkpoint = checkpoint
        self.exit_code = 128 + signum
        name = signal.Signals(signum).name
        where = f"checkpoint saved in {checkpoint}" if checkpoint else "no checkpoint was written"
        super().__init__(
            f"stopped by {name} after step {step}; {where}. Continue the run with the same "
            "command plus resume=auto"
        )


class StopSignals:
    """Context manager: while active, SIGINT/SIGTERM set ``requested`` instead of killing.

    Outside the main thread signals cannot be caught; then it does nothing.
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.requested: int | None = None
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.requested is not None:  # second signal: abandon the step now
            raise KeyboardInterrupt
        self.requested = signum

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            for sig in self.SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()
