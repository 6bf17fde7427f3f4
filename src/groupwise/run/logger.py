"""Where a run's records go, in one place: ``metrics.jsonl``, ``completions.jsonl`` (appended
and flushed to disk per step), ``eval_samples.jsonl`` (every held-out answer of every
evaluation), the trackers of ``training.report_to``, the live view and the console. Only rank 0
writes; the other ranks' calls do nothing. The two record files hold the lines of
:mod:`groupwise.run.records`, appended by :func:`groupwise.run.io.append_jsonl`."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from groupwise.config import Config, config_to_dict
from groupwise.distributed import is_main
from groupwise.run.hacking import HackingMonitor
from groupwise.run.io import append_jsonl
from groupwise.run.live import LiveView
from groupwise.run.records import COMPLETIONS, EVAL_SAMPLES, CompletionRecord, EvalSample
from groupwise.run.tracking import Tracker, build_trackers, close_trackers, completions_markdown

if TYPE_CHECKING:
    from groupwise.eval.evaluate import EvalResult


class RunLogger:
    """The run's outputs other than checkpoints and models."""

    def __init__(self, config: Config, out_dir: Path) -> None:
        self.config = config
        self.out_dir = out_dir
        self.main = is_main()
        t = config.training
        self.trackers: list[Tracker] = (
            build_trackers(t.report_to, out_dir, config_to_dict(config)) if self.main else []
        )
        self.view: LiveView | None = None
        self.hacking = HackingMonitor()  # reward up while held-out accuracy down, across steps

    def start_view(self, initial_step: int, eval_accuracy: float | None) -> None:
        """The progress view (rank 0, ``training.progress``), from ``initial_step``."""
        t = self.config.training
        self.view = LiveView(
            t.max_steps,
            enabled=t.progress and self.main,
            log_completions_steps=t.log_completions_steps,
            num_completions=t.num_completions_to_print,
            initial=initial_step,
        )
        if eval_accuracy is not None:
            self.view.set_eval_accuracy(eval_accuracy)

    def log_step(
        self, step: int, metrics: dict[str, float], records: list[CompletionRecord]
    ) -> None:
        """A finished step: its completions, its metrics when due, the view."""
        t = self.config.training
        metrics.update(self.hacking.update(metrics))
        if t.log_completions and self.main:
            self._write_completions(step, records)
        if self.main and (step % t.logging_steps == 0 or step == t.max_steps):
            append_jsonl(self.out_dir / "metrics.jsonl", metrics)
            for tracker in self.trackers:
                tracker.log(metrics, step)
        if "eval_accuracy" in metrics and self.view is not None:
            self.view.set_eval_accuracy(metrics["eval_accuracy"])
        if self.view is not None:
            self.view.update(step, metrics, records)

    def log_eval(
        self,
        label: str,
        result: EvalResult,
        prompts: Sequence[Any],
        step: int | None,
        metric: str = "accuracy",
        at_step: int = 0,
    ) -> None:
        """A held-out evaluation: its answers to ``eval_samples.jsonl``, the console, and the
        trackers at ``step`` if given. ``prompts`` are the held-out rows' prompts, in order;
        ``metric`` names the score (the task's ``eval_metric``; "accuracy" prints as a %);
        ``at_step``: the steps taken when it ran (kept with the answers: a resumed run drops
        the lines after its checkpoint, as it does the step logs')."""
        accuracy = result.accuracy
        flag = self.hacking.add_evaluation(accuracy) if step is not None else 0.0
        if self.main:
            self._write_eval_samples(label, result, prompts, at_step)
            value = f"{accuracy:.1%}" if metric == "accuracy" else f"{accuracy:.3f}"
            print(
                f"held-out greedy {metric} ({label}): {value} on {len(result.scores)}",
                flush=True,
            )
            if flag:
                print(
                    "groupwise: possible reward hacking: the reward rose while held-out "
                    f"accuracy fell ({HackingMonitor.KEY}); read the completions",
                    file=sys.stderr,
                    flush=True,
                )
        if step is not None:  # before and after training (the others are in a step's metrics)
            for tracker in self.trackers:
                tracker.log({"eval_accuracy": accuracy, HackingMonitor.KEY: flag}, step)

    def close_view(self) -> None:
        """Stop the live view (before the final evaluation prints)."""
        if self.view is not None:
            self.view.close()
            self.view = None

    def close(self) -> None:
        """Close the view and every tracker."""
        self.close_view()
        close_trackers(self.trackers)

    def _write_completions(self, step: int, records: Sequence[CompletionRecord]) -> None:
        """Append the step's records to ``completions.jsonl`` and fsync it; a value that is not
        JSON (in a prompt) raises ``TypeError`` before anything is written."""
        self.out_dir.mkdir(parents=True, exist_ok=True)
        append_jsonl(self.out_dir / COMPLETIONS, *(r.to_json() for r in records), default=None)
        for tracker in self.trackers:
            tracker.log_text("completions", completions_markdown(records), step)

    def _write_eval_samples(
        self, label: str, result: EvalResult, prompts: Sequence[Any], at_step: int
    ) -> None:
        """Append one evaluation's answers to ``eval_samples.jsonl`` and fsync it."""
        if not len(prompts) == len(result.completions) == len(result.scores):
            raise ValueError(
                f"evaluation {label!r}: {len(prompts)} prompts, {len(result.completions)} "
                f"completions and {len(result.scores)} scores do not line up"
            )
        samples = [
            EvalSample(label=label, step=at_step, index=i, prompt=p, completion=c, score=s)
            for i, (p, c, s) in enumerate(
                zip(prompts, result.completions, result.scores, strict=True)
            )
        ]
        self.out_dir.mkdir(parents=True, exist_ok=True)
        append_jsonl(self.out_dir / EVAL_SAMPLES, *(s.to_json() for s in samples), default=None)
