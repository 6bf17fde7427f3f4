"""The live terminal view of a run: progress, the step's headline numbers, sampled completions.

On a terminal it is a ``rich`` live display: a progress bar with elapsed time and ETA, a line
with the last step's reward (and each reward function's mean), the latest held-out accuracy,
KL, mean completion length and step time, and, every ``log_completions_steps`` steps, the best
and the worst completion of the step with their prompt, reward and advantage, and a warning
line when a ``hacking/...`` metric reaches its threshold (``groupwise.run.hacking``). Anywhere else
(a log file, CI) the same content is printed as plain lines, one per step.

Completions are shown as literal text (never parsed as rich markup), truncated for the screen;
``completions.jsonl`` keeps them whole.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Mapping, Sequence
from typing import Any, TextIO

from rich.console import Console, Group
from rich.live import Live
from rich.panel import Panel
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table
from rich.text import Text

from groupwise.run.hacking import flagged
from groupwise.run.records import CompletionRecord

__all__ = ["LiveView", "hacking_line", "headline", "pick_samples"]


def headline(metrics: Mapping[str, float], eval_accuracy: float | None) -> list[tuple[str, str]]:
    """The (label, value) pairs shown for one step, in display order."""

    def fmt(key: str, spec: str = ".3f") -> str:
        value = metrics.get(key)
        return "-" if value is None or math.isnan(value) else format(value, spec)

    pairs = [("reward", fmt("reward"))]
    for key in sorted(k for k in metrics if k.startswith("rewards/") and k.endswith("/mean")):
        pairs.append((key[len("rewards/") : -len("/mean")], fmt(key)))
    acc = "-" if eval_accuracy is None else f"{eval_accuracy:.1%}"
    pairs += [
        ("held-out acc", acc),
        ("kl", fmt("kl", ".4f")),
        ("len", fmt("completions/mean_length", ".1f")),
        ("zero-std groups", fmt("frac_reward_zero_std", ".2f")),
        ("step time", fmt("step_time", ".1f") + "s"),
    ]
    return pairs


def hacking_line(metrics: Mapping[str, float]) -> str | None:
    """The warning shown when ``hacking/...`` metrics reach their thresholds, else None."""
    hits = flagged(metrics)
    if not hits:
        return None
    parts = ", ".join(f"{name} {value:.2f} (warn at {limit:.2f})" for name, value, limit in hits)
    return f"possible reward hacking: {parts}; read this step's completions"


def pick_samples(records: Sequence[CompletionRecord], n: int) -> list[CompletionRecord]:
    """Up to ``n`` completions of a step: the best first, then the worst, alternating."""
    if n <= 0 or not records:
        return []
    ranked = sorted(records, key=lambda r: r.reward, reverse=True)
    picked: list[CompletionRecord] = []
    lo, hi = 0, len(ranked) - 1
    while len(picked) < min(n, len(ranked)):
        if len(picked) % 2 == 0:
            picked.append(ranked[lo])
            lo += 1
        else:
            picked.append(ranked[hi])
            hi -= 1
    return picked


def _prompt_text(prompt: Any) -> str:
    """The last user turn of a conversational prompt, or the plain prompt."""
    if isinstance(prompt, list) and prompt and isinstance(prompt[-1], Mapping):
        return str(prompt[-1].get("content", ""))
    return str(prompt)


def _clip(text: str, limit: int) -> str:
    text = text.strip()
    return text if len(text) <= limit else text[: limit - 1] + "…"


class LiveView:
    """Progress, headline metrics and sampled completions on ``stream`` (stderr by default).

    Args:
        total: number of steps.
        enabled: show anything at all.
        stream: where to write; a terminal gets the rich live display, anything else plain lines.
        log_completions_steps: show sampled completions every this many steps (0 = never).
        num_completions: how many completions to show each time (best and worst alternating).
        force_terminal: override the terminal detection (tests).
        width: console width for the rich display (None = the terminal's).
        initial: steps already done (a resumed run); the ETA counts from there.
    """

    def __init__(
        self,
        total: int,
        *,
        enabled: bool = True,
        stream: TextIO | None = None,
        log_completions_steps: int = 10,
        num_completions: int = 2,
        force_terminal: bool | None = None,
        width: int | None = None,
        initial: int = 0,
    ) -> None:
        self.total = total
        self.enabled = enabled
        self.stream = stream or sys.stderr
        self.log_completions_steps = log_completions_steps
        self.num_completions = num_completions
        self.eval_accuracy: float | None = None
        self._start = time.perf_counter()
        self._initial = initial
        self._samples: list[CompletionRecord] = []
        self._samples_step = 0
        self._pairs: list[tuple[str, str]] = []
        self._warning: str | None = None
        is_tty = self.stream.isatty() if force_terminal is None else force_terminal
        self._live: Live | None = None
        if enabled and is_tty:
            console = Console(file=self.stream, force_terminal=True, width=width)
            self._bar = Progress(
                TextColumn("[bold]GRPO"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                TextColumn("ETA"),
                TimeRemainingColumn(),
                console=console,
            )
            self._task = self._bar.add_task("train", total=total, completed=initial)
            self._live = Live(self._render(), console=console, refresh_per_second=2)
            self._live.start()

    # ------------------------------------------------------------------ updates
    def set_eval_accuracy(self, accuracy: float) -> None:
        """Record the latest held-out accuracy (shown from the next update on)."""
        self.eval_accuracy = accuracy

    def update(
        self,
        step: int,
        metrics: Mapping[str, float],
        completions: Sequence[CompletionRecord] = (),
    ) -> None:
        """Show step ``step`` (1-based): its metrics, and completions when one is due."""
        if not self.enabled:
            return
        self._pairs = headline(metrics, self.eval_accuracy)
        self._warning = hacking_line(metrics)
        due = self.log_completions_steps > 0 and (
            step % self.log_completions_steps == 0 or step == 1
        )
        fresh = pick_samples(completions, self.num_completions) if due else []
        if fresh:
            self._samples, self._samples_step = fresh, step
        if self._live is not None:
            self._bar.update(self._task, completed=step)
            self._live.update(self._render(), refresh=True)
            return
        elapsed = time.perf_counter() - self._start
        eta = elapsed / max(step - self._initial, 1) * (self.total - step)
        info = "  ".join(f"{k} {v}" for k, v in self._pairs)
        lines = [f"step {step}/{self.total}  {info}  eta {eta:.0f}s"]
        if self._warning:
            lines.append(f"  {self._warning}")
        for record in fresh:
            lines.append(self._plain_sample(record))
        print("\n".join(lines), file=self.stream, flush=True)

    def close(self) -> None:
        """Stop the live display (leaving its last frame on the screen)."""
        if self._live is not None:
            self._live.stop()
            self._live = None

    # ------------------------------------------------------------------ rendering
    def _render(self) -> Group:
        parts: list[Any] = [self._bar]
        if self._pairs:
            table = Table.grid(padding=(0, 2))
            for _ in self._pairs:
                table.add_column(justify="right")
            table.add_row(*[Text(k, style="dim") for k, _ in self._pairs])
            table.add_row(*[Text(v, style="bold") for _, v in self._pairs])
            parts.append(table)
        if self._warning:
            parts.append(Text(self._warning, style="bold yellow"))
        for record in self._samples:
            parts.append(self._sample_panel(record))
        return Group(*parts)

    def _sample_panel(self, record: CompletionRecord) -> Panel:
        body = Text()
        body.append("prompt: ", style="dim")
        body.append(_clip(_prompt_text(record.prompt), 200) + "\n")
        body.append(_clip(record.transcript(), 400))
        title = Text(
            f"step {self._samples_step}  reward {float(record.reward):.3f}  "
            f"advantage {float(record.advantage):+.2f}"
        )
        return Panel(body, title=title, title_align="left", border_style="cyan")

    @staticmethod
    def _plain_sample(record: CompletionRecord) -> str:
        prompt = _clip(_prompt_text(record.prompt), 200).replace("\n", " ")
        completion = _clip(record.transcript(), 400)
        return (
            f"  -- reward {float(record.reward):.3f}  "
            f"advantage {float(record.advantage):+.2f}\n"
            f"  prompt: {prompt}\n  completion: {completion}"
        )
