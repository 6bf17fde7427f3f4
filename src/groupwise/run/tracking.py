"""Experiment trackers: send each step's metrics to TensorBoard and/or Weights & Biases.

The trainer always writes ``metrics.jsonl``; ``training.report_to`` adds live dashboards::

    trackers = build_trackers(["tensorboard"], run_dir, config_dict)
    for tracker in trackers:
        tracker.log(metrics, step)
        tracker.log_text("completions", completions_markdown(records), step)
    for tracker in trackers:
        tracker.close()

Backends are optional installs: ``pip install tensorboard`` (or ``groupwise[tensorboard]``)
and ``pip install wandb``. Asking for one that is not installed raises
:class:`TrackerUnavailableError` naming the package.
"""

from __future__ import annotations

import html
import importlib
import math
import os
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from groupwise.run.records import CompletionRecord

TRACKERS: dict[str, str] = {"tensorboard": "tensorboard", "wandb": "wandb"}
"""Known ``training.report_to`` names and the pip package each needs."""

WANDB_MODES = ("online", "offline", "disabled")


@runtime_checkable
class Tracker(Protocol):
    """Where step metrics go besides metrics.jsonl."""

    def log(self, metrics: Mapping[str, Any], step: int) -> None:
        """Record every numeric entry of ``metrics`` at ``step`` (others are ignored)."""

    def log_text(self, name: str, text: str, step: int) -> None:
        """Record a block of (markdown) text, e.g. sample completions, at ``step``."""

    def close(self) -> None:
        """Flush and release the backend."""


class TrackerUnavailableError(ImportError):
    """A tracker in ``training.report_to`` needs a package that is not installed."""


def _require(module: str, tracker: str) -> Any:
    """Import ``module`` or raise TrackerUnavailableError naming the pip package to install."""
    package = TRACKERS[tracker]
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise TrackerUnavailableError(
            f"training.report_to includes {tracker!r} but {module!r} cannot be imported "
            f"({exc}); install it with: pip install {package}"
        ) from exc


def scalar_items(metrics: Mapping[str, Any]) -> Iterator[tuple[str, float]]:
    """(name, value) of the numeric metrics; ``step`` itself, bools and non-numbers are skipped."""
    for name, value in metrics.items():
        if name == "step" or isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        yield name, float(value)


class TensorBoardTracker:
    """Scalars and text to TensorBoard event files in ``log_dir`` (``tensorboard --logdir``)."""

    def __init__(self, log_dir: str | Path, *, flush_secs: int = 30) -> None:
        _require("tensorboard", "tensorboard")
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as exc:
            raise TrackerUnavailableError(
                f"torch.utils.tensorboard failed to import ({exc}); "
                "reinstall it with: pip install -U tensorboard"
            ) from exc
        self.log_dir = Path(log_dir)
        self._writer = SummaryWriter(log_dir=str(self.log_dir), flush_secs=flush_secs)

    def log(self, metrics: Mapping[str, Any], step: int) -> None:
        """One scalar per numeric metric (NaN is kept: a NaN loss is worth seeing)."""
        for name, value in scalar_items(metrics):
            self._writer.add_scalar(name, value, global_step=step)

    def log_text(self, name: str, text: str, step: int) -> None:
        """TensorBoard's Text tab renders ``text`` as markdown."""
        self._writer.add_text(name, text, global_step=step)

    def close(self) -> None:
        """Flush the event file and close it."""
        self._writer.flush()
        self._writer.close()


class WandbTracker:
    """Metrics and text to a Weights & Biases run; ``mode="offline"`` needs no network.

    ``mode`` None leaves it to wandb (``WANDB_MODE`` or its default, online). Offline runs are
    written under ``dir/wandb`` and can be uploaded later with ``wandb sync``.
    """

    def __init__(
        self,
        project: str,
        run_name: str | None = None,
        config: Mapping[str, Any] | None = None,
        mode: str | None = None,
        dir: str | Path | None = None,
    ) -> None:
        if mode is not None and mode not in WANDB_MODES:
            raise ValueError(f"wandb mode must be one of {WANDB_MODES}, got {mode!r}")
        self._wandb = _require("wandb", "wandb")
        if dir is not None:
            Path(dir).mkdir(parents=True, exist_ok=True)
        self._run = self._wandb.init(
            project=project,
            name=run_name,
            config=dict(config or {}),
            mode=mode,
            dir=None if dir is None else str(dir),
        )

    def log(self, metrics: Mapping[str, Any], step: int) -> None:
        """Numeric metrics at ``step`` (wandb needs steps that never decrease)."""
        self._run.log(dict(scalar_items(metrics)), step=step)

    def log_text(self, name: str, text: str, step: int) -> None:
        """Text as a preformatted HTML panel."""
        panel = self._wandb.Html(f"<pre>{html.escape(text)}</pre>")
        self._run.log({name: panel}, step=step)

    def close(self) -> None:
        """Finish the run (offline: its files are complete after this)."""
        self._run.finish()


def parse_report_to(names: str | Sequence[str] | None) -> list[str]:
    """Tracker names from a list or a comma-separated string; "none" and "" mean none.

    Raises ValueError naming ``training.report_to`` for an unknown name.
    """
    if names is None:
        return []
    items = names.split(",") if isinstance(names, str) else list(names)
    out: list[str] = []
    for item in items:
        name = str(item).strip().lower()
        if name in ("", "none"):
            continue
        if name not in TRACKERS:
            raise ValueError(
                f"unknown tracker {item!r} in training.report_to; "
                f"choose from: {', '.join(TRACKERS)} (or none)"
            )
        if name not in out:
            out.append(name)
    return out


def _make_tracker(name: str, run_dir: Path, config_dict: Mapping[str, Any]) -> Tracker:
    if name == "tensorboard":
        return TensorBoardTracker(run_dir / "tensorboard")
    project = os.environ.get("WANDB_PROJECT", "groupwise")
    return WandbTracker(project, run_name=run_dir.name, config=config_dict, dir=run_dir)


def build_trackers(
    names: str | Sequence[str] | None, run_dir: str | Path, config_dict: Mapping[str, Any]
) -> list[Tracker]:
    """The trackers named in ``training.report_to``, writing under ``run_dir``.

    TensorBoard logs to ``run_dir/tensorboard``; wandb uses project ``$WANDB_PROJECT``
    (default "groupwise"), the run directory's name and ``$WANDB_MODE``. All names are checked
    before any tracker starts; if one fails to start, those already started are closed.
    """
    wanted = parse_report_to(names)
    run_dir = Path(run_dir)
    trackers: list[Tracker] = []
    try:
        for name in wanted:
            trackers.append(_make_tracker(name, run_dir, config_dict))
    except BaseException:
        close_trackers(trackers)
        raise
    return trackers


def close_trackers(trackers: Sequence[Tracker]) -> None:
    """Close every tracker, even if one of them fails (the first error is raised after)."""
    error: BaseException | None = None
    for tracker in trackers:
        try:
            tracker.close()
        except Exception as exc:  # a dashboard must not hide the others' last data
            error = error or exc
    if error is not None:
        raise error


def _indented(text: str) -> str:
    """``text`` as a markdown code block (4-space indent: nothing in it is interpreted)."""
    return "\n".join("    " + line for line in (text or " ").splitlines() or [" "])


def completions_markdown(records: Sequence[CompletionRecord], limit: int = 8) -> str:
    """The first ``limit`` completion records as markdown.

    The first records of a step are the first group(s), so the text shows the within-group
    spread of rewards that GRPO learns from.
    """
    parts: list[str] = []
    for i, record in enumerate(records[:limit]):
        head = f"**#{i}** reward {_fmt(record.reward)}, advantage {_fmt(record.advantage)}"
        if record.rewards:
            head += " (" + ", ".join(f"{k} {_fmt(v)}" for k, v in record.rewards.items()) + ")"
        if record.truncated:
            head += ", truncated"
        prompt = prompt_text(record.prompt)
        parts.append(
            f"{head}\n\nprompt:\n\n{_indented(prompt)}\n\n"
            f"completion:\n\n{_indented(record.completion)}"
        )
    return "\n\n---\n\n".join(parts)


def _fmt(value: Any) -> str:
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        return f"{value:.3g}"
    return "n/a"


def prompt_text(prompt: Any) -> str:
    """A prompt as plain text: a string as is, chat messages as ``role: content`` lines."""
    if isinstance(prompt, list):
        return "\n".join(
            f"{m.get('role', '?')}: {m.get('content', '')}" if isinstance(m, Mapping) else str(m)
            for m in prompt
        )
    return "" if prompt is None else str(prompt)


__all__ = [
    "TRACKERS",
    "TensorBoardTracker",
    "Tracker",
    "TrackerUnavailableError",
    "WandbTracker",
    "build_trackers",
    "close_trackers",
    "completions_markdown",
    "parse_report_to",
    "prompt_text",
    "scalar_items",
]
