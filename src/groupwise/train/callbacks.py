"""The trainer's callbacks: plain functions, and TRL's (``transformers``') ``TrainerCallback``.

``GRPOTrainer(..., callbacks=[...])`` takes either kind, mixed:

* a function ``fn(trainer, metrics)``, called after every step (logged and checkpointed) with
  the step's metrics; it may raise to stop the run;
* an object with ``on_*`` event methods, as TRL and ``transformers`` write them
  (``class MyCallback(TrainerCallback)``), called as the ``transformers`` Trainer calls them:
  ``on_train_begin``, ``on_step_begin``, ``on_step_end``, ``on_log`` (``logs=`` the step's
  metrics), ``on_evaluate`` (``metrics={"eval_accuracy": ...}``), ``on_save`` and
  ``on_train_end``, each as ``(args, state, control, model=..., processing_class=...)`` with a
  ``transformers.TrainerState`` (``global_step``, ``max_steps``, ``log_history``...) and a
  ``TrainerControl``. ``control.should_training_stop`` ends training after the step (the final
  evaluation and save still run) and ``control.should_save`` checkpoints at once. ``args`` is
  the ``GRPOConfig`` the trainer was given (else groupwise's ``Config``).

Not called: ``on_init_end``, ``on_epoch_*``, ``on_substep_end``, the optimizer and prediction
events (groupwise's step has no such phases to hook).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

StepCallback = Callable[[Any, dict[str, float]], None]
"""Called after every step (logged and checkpointed) with the trainer and the step's metrics."""

EVENTS = (
    "on_train_begin",
    "on_step_begin",
    "on_step_end",
    "on_log",
    "on_evaluate",
    "on_save",
    "on_train_end",
)


def is_event_callback(callback: Any) -> bool:
    """Whether ``callback`` is a TRL/transformers-style object with ``on_*`` event methods."""
    return any(callable(getattr(callback, name, None)) for name in EVENTS)


class Callbacks:
    """Runs the trainer's callbacks at its events (see the module docstring)."""

    def __init__(self, callbacks: Sequence[Any] = (), args: Any = None) -> None:
        self.functions: list[StepCallback] = []
        self.objects: list[Any] = []
        for i, callback in enumerate(callbacks):
            if isinstance(callback, type):
                callback = callback()  # transformers accepts the class too
            if is_event_callback(callback):
                self.objects.append(callback)
            elif callable(callback):
                self.functions.append(callback)
            else:
                raise TypeError(
                    f"callbacks[{i}]: expected fn(trainer, metrics) or a TrainerCallback, "
                    f"got {type(callback).__name__}"
                )
        self.args = args
        self.state: Any = None
        self.control: Any = None

    def __len__(self) -> int:
        return len(self.functions) + len(self.objects)

    def train_begin(self, trainer: Any) -> None:
        """``on_train_begin`` (and a fresh TrainerState/TrainerControl)."""
        if not self.objects:
            return
        from transformers import TrainerControl, TrainerState

        self.state = TrainerState(max_steps=trainer.config.training.max_steps)
        self.control = TrainerControl()
        self._sync(trainer)
        self._fire("on_train_begin", trainer)

    def step_begin(self, trainer: Any) -> None:
        """``on_step_begin``."""
        self._fire("on_step_begin", trainer)

    def step_end(self, trainer: Any, metrics: dict[str, float]) -> bool:
        """After a step: the functions, then ``on_step_end`` and ``on_log``; a callback's
        ``should_save`` checkpoints now. True when one asked training to stop."""
        for function in self.functions:
            function(trainer, metrics)
        if not self.objects:
            return False
        self._sync(trainer)
        self.state.log_history.append({**metrics, "step": trainer.step_count})
        self._fire("on_step_end", trainer)
        self._fire("on_log", trainer, logs=dict(metrics))
        if self.control.should_save:
            self.control.should_save = False
            trainer.save_checkpoint()
        return bool(self.control.should_training_stop)

    def evaluated(self, trainer: Any, score: float) -> None:
        """``on_evaluate`` with ``metrics={"eval_accuracy": score}``."""
        self._fire("on_evaluate", trainer, metrics={"eval_accuracy": score})

    def saved(self, trainer: Any) -> None:
        """``on_save``, after a checkpoint is written."""
        self._fire("on_save", trainer)

    def train_end(self, trainer: Any) -> None:
        """``on_train_end``."""
        self._fire("on_train_end", trainer)

    def _sync(self, trainer: Any) -> None:
        from groupwise.distributed import is_main

        self.state.global_step = trainer.step_count
        self.state.is_world_process_zero = self.state.is_local_process_zero = is_main()

    def _fire(self, event: str, trainer: Any, **extra: Any) -> None:
        if not self.objects or self.state is None:
            return
        self._sync(trainer)
        kwargs = {"model": trainer.policy, "processing_class": trainer.tokenizer, **extra}
        args = self.args if self.args is not None else trainer.config
        for callback in self.objects:
            method = getattr(callback, event, None)
            if callable(method):
                returned = method(args, self.state, self.control, **kwargs)
                if returned is not None:  # transformers lets an event return a new control
                    self.control = returned
