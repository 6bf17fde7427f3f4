"""Where a step's rollout comes from: generated at the step's start, or one step ahead.

The step asks its :class:`RolloutSource` for "the rows of the next step" (:meth:`next_rows`),
"the rollout of these rows" (:meth:`take`) and, after the update, to bring the engine up to the
new weights (:meth:`sync`). ``rollout.max_staleness`` picks the source:

- ``0`` (:class:`Synchronous`): the rows are drawn and generated at the step's start with the
  current weights theta_{k-1}, then the engine takes theta_k. What every run did before.
- ``1`` (:class:`OneStepOff`): the engine runs in its own process
  (:class:`~groupwise.rollout.process.EngineProcess`). At step k the rollout of step k is taken
  (generated during step k - 1; step 1 generates its own), the rows of step k + 1 are drawn and
  their generation submitted, so the child decodes them with the weights it has, theta_{k-1},
  while the trainer scores, prepares and updates; ``sync`` waits for that rollout
  (``time/wait_rollout``), then writes theta_k into the shared copy. Step k + 1 thus trains on a
  batch sampled from theta_{k-1} by theta_k: staleness 1 (``sampling/staleness``), corrected by
  the engine-mismatch weights exp(old_logp - behaviour_logp) (the batch carries the engine's
  log-probs, so ``algorithm.vllm_importance_sampling_correction=auto`` turns them on).

The draws are those of the synchronous run: the sampler draws the same rows in the same order (a
step earlier) and the generator is consumed by the same sequence of generations. A checkpoint
after step k holds the rows and rollout of step k + 1 (:meth:`OneStepOff.state_dict`), so a
resumed run takes exactly the steps the uninterrupted one takes.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, Protocol

from groupwise.config import Config, ConfigError
from groupwise.data import Row
from groupwise.rollout import PromptBatch, Rollout, RolloutEngine, RolloutRequest
from groupwise.rollout.process import EngineProcess

RequestOf = Callable[[list[Row]], tuple[PromptBatch, RolloutRequest]]
"""The step's request for a batch of rows: their prompts and what to generate."""


class RolloutSource(Protocol):
    """Hands each step its rows and their rollout, and keeps the engine's weights current."""

    def next_rows(self) -> list[Row]:
        """This rank's rows for the next step (drawn now, or drawn a step ahead)."""
        ...

    def take(self, rows: list[Row]) -> Rollout:
        """The rollout of ``rows`` (generated now, or ahead); may start the next one."""
        ...

    def sync(self) -> None:
        """After the update: the engine takes the policy's new weights."""
        ...

    def metrics(self) -> dict[str, float]:
        """This step's rollout metrics (staleness, waits); empty when synchronous."""
        ...

    def state_dict(self) -> dict[str, Any] | None:
        """What a checkpoint keeps (the rollout generated ahead), or None."""
        ...

    def load_state_dict(self, state: dict[str, Any] | None) -> None:
        """Restore :meth:`state_dict`."""
        ...


class Synchronous:
    """``max_staleness=0``: each step's rows drawn and generated at its start."""

    def __init__(self, draw: Callable[[], list[Row]], request_of: RequestOf, engine: RolloutEngine):
        self.draw, self.request_of, self.engine = draw, request_of, engine

    def next_rows(self) -> list[Row]:
        """Drawn now."""
        return self.draw()

    def take(self, rows: list[Row]) -> Rollout:
        """Generated now, with the current weights."""
        return self.engine.generate(*self.request_of(rows))

    def sync(self) -> None:
        """The engine takes the new weights."""
        self.engine.sync_weights()

    def metrics(self) -> dict[str, float]:
        """Nothing beyond the step's own."""
        return {}

    def state_dict(self) -> dict[str, Any] | None:
        """Nothing: no rollout outlives its step."""
        return None

    def load_state_dict(self, state: dict[str, Any] | None) -> None:
        """Nothing to restore."""


class OneStepOff:
    """``max_staleness=1``: step k + 1's rollout is decoded by the engine's process during
    step k (see the module docstring). ``steps_left()``: steps after the current one (none
    left: nothing is generated ahead)."""

    def __init__(
        self,
        draw: Callable[[], list[Row]],
        request_of: RequestOf,
        engine: EngineProcess,
        steps_left: Callable[[], int],
    ) -> None:
        self.draw, self.request_of, self.engine = draw, request_of, engine
        self.steps_left = steps_left
        self.ahead_rows: list[Row] | None = None  # drawn for the next step
        self.ahead: Rollout | None = None  # their rollout, once collected
        self.submitted = False  # their generation is under way in the child
        self.staleness = 0.0
        self.waited = 0.0

    def next_rows(self) -> list[Row]:
        """The rows drawn a step ahead, else drawn now."""
        return self.ahead_rows if self.ahead_rows is not None else self.draw()

    def take(self, rows: list[Row]) -> Rollout:
        """The rollout generated ahead for ``rows`` (staleness 1), else generated now
        (staleness 0); then the next step's rows are drawn and their generation submitted."""
        if self.ahead is not None and rows is self.ahead_rows:
            rollout, self.staleness = self.ahead, 1.0
        else:
            if self.submitted:
                raise RuntimeError("a rollout was generated ahead for other rows than these")
            rollout, self.staleness = self.engine.generate(*self.request_of(rows)), 0.0
        self.ahead_rows, self.ahead = None, None
        if self.steps_left() > 0:
            self.ahead_rows = self.draw()
            self.engine.submit(*self.request_of(self.ahead_rows))
            self.submitted = True
        return rollout

    def sync(self) -> None:
        """Wait for the rollout generated ahead, then the engine takes the new weights."""
        start = time.perf_counter()
        if self.submitted:
            self.ahead, self.submitted = self.engine.result(), False
        self.waited = time.perf_counter() - start
        self.engine.sync_weights()

    def metrics(self) -> dict[str, float]:
        """``sampling/staleness`` (updates between the batch's weights and the policy's) and
        ``time/wait_rollout`` (seconds the trainer waited for the engine in ``sync``)."""
        return {"sampling/staleness": self.staleness, "time/wait_rollout": self.waited}

    def state_dict(self) -> dict[str, Any] | None:
        """The next step's rows and rollout (collected by :meth:`sync`), or None."""
        if self.ahead is None:
            return None
        return {"rows": self.ahead_rows, "rollout": self.ahead}

    def load_state_dict(self, state: dict[str, Any] | None) -> None:
        """Restore the rows and rollout generated ahead."""
        if state is not None:
            self.ahead_rows, self.ahead = state["rows"], state["rollout"]


def rollout_source(
    config: Config,
    engine: RolloutEngine,
    draw: Callable[[], list[Row]],
    request_of: RequestOf,
    steps_left: Callable[[], int],
) -> RolloutSource:
    """The source ``rollout.max_staleness`` asks for."""
    if config.rollout.max_staleness == 0:
        return Synchronous(draw, request_of, engine)
    if not isinstance(engine, EngineProcess):
        raise ConfigError(
            "rollout.max_staleness=1 needs the rollout engine in its own process; build the "
            "parts with groupwise.train.build.build_parts"
        )
    return OneStepOff(draw, request_of, engine, steps_left)
