"""A self-contained HTML report of a finished (or running) training run.

``write_report(run_dir)`` reads what the trainer wrote (``metrics.jsonl``, ``completions.jsonl``,
``eval_samples.jsonl``, ``summary.json``, ``config.yaml``), draws PNG plots into
``run_dir/plots/`` and writes ``run_dir/report.html`` with the plots embedded as base64, so the
one file can be mailed or opened offline: no JavaScript, no external CSS, no network.

Sections: a summary table (model, task, steps, times, held-out accuracy before -> after), the
training curves (reward, held-out accuracy, KL, entropy, completion length, clip ratios, loss,
grad norm, learning rate, per-phase time, reward-hacking signals), the reward-hacking signals
(``hacking/...`` metrics of ``groupwise.run.hacking``: last and largest value, the steps at or above
the warning threshold), the best and worst completions by reward at the first and the last
logged step, the held-out answers before and after training side by side (from
``eval_samples.jsonl``: the first :data:`MAX_EVAL_SAMPLES` held-out prompts, each with its
greedy answer and correctness score at the first and at the last evaluation), and the run's
config. A plot whose metrics the run did not log is left out; every file is written atomically
(:func:`groupwise.run.io.write_bytes_atomic`).

The JSON-lines files are read by :func:`groupwise.run.io.read_jsonl` (a torn or still growing
last line is skipped, a damaged line elsewhere raises naming it) and the record files through
:mod:`groupwise.run.records` (a line that is not such a record raises naming its file and line).
"""

from __future__ import annotations

import base64
import fnmatch
import html
import io
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import PercentFormatter

from groupwise.run.hacking import PREFIX as HACKING_PREFIX
from groupwise.run.hacking import threshold
from groupwise.run.io import read_jsonl, write_bytes_atomic
from groupwise.run.records import (
    COMPLETIONS,
    EVAL_SAMPLES,
    CompletionRecord,
    EvalSample,
    read_records,
)
from groupwise.run.tracking import prompt_text

REPORT_NAME = "report.html"
PLOTS_DIR = "plots"
MAX_TEXT_CHARS = 3000
"""Longer prompts and completions are cut to this many characters in the report."""
MAX_FLAGGED_STEPS = 20
"""The reward-hacking table lists at most this many flagged steps per signal."""
MAX_EVAL_SAMPLES = 8
"""The before/after table shows the first this many held-out prompts."""


# ---------------------------------------------------------------------------- reading the run
@dataclass
class RunData:
    """What a run directory holds, as loaded by :func:`load_run`."""

    run_dir: Path
    metrics: list[dict[str, Any]] = field(default_factory=list)
    """One record per logged step (metrics.jsonl), in file order."""
    summary: dict[str, Any] = field(default_factory=dict)
    """summary.json (empty while the run is still going or if it crashed)."""
    config_text: str | None = None
    """config.yaml, verbatim."""
    first_completions: list[CompletionRecord] = field(default_factory=list)
    """completions.jsonl records of the first logged step."""
    last_completions: list[CompletionRecord] = field(default_factory=list)
    """completions.jsonl records of the last logged step."""
    evaluations: dict[str, dict[int, EvalSample]] = field(default_factory=dict)
    """eval_samples.jsonl: label ("before", "step N", "after") -> held-out index -> record,
    labels in order of first appearance (a label written again, as by a resumed run, keeps
    its last records)."""

    @property
    def steps(self) -> list[float]:
        """The x axis: each record's ``step`` (its 1-based position when missing)."""
        return [_number(r.get("step"), default=i + 1) for i, r in enumerate(self.metrics)]

    def series(self, key: str) -> list[float]:
        """Values of one metric per record (NaN where a record lacks it)."""
        return [_number(r.get(key), default=math.nan) for r in self.metrics]

    def keys(self) -> list[str]:
        """Every metric name, in order of first appearance."""
        seen: dict[str, None] = {}
        for record in self.metrics:
            seen.update(dict.fromkeys(record))
        return list(seen)


def _number(value: Any, *, default: float) -> float:
    """``value`` as a float (bools and non-numbers give ``default``)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return default
    return float(value)


def _first_and_last_step(path: Path) -> tuple[list[CompletionRecord], list[CompletionRecord]]:
    """Completions of the lowest and the highest step, in one streaming pass over the file."""
    first: list[CompletionRecord] = []
    last: list[CompletionRecord] = []
    first_step = last_step = math.nan
    for record in read_records(path, CompletionRecord):
        step = record.step
        if not first or step < first_step:
            first, first_step = [record], step
        elif step == first_step:
            first.append(record)
        if not last or step > last_step:
            last, last_step = [record], step
        elif step == last_step:
            last.append(record)
    return first, last


def _evaluations(path: Path) -> dict[str, dict[int, EvalSample]]:
    """eval_samples.jsonl grouped by label, then by held-out index (see ``RunData``)."""
    grouped: dict[str, dict[int, EvalSample]] = {}
    for sample in read_records(path, EvalSample):
        grouped.setdefault(sample.label, {})[sample.index] = sample
    return grouped


def load_run(run_dir: Path) -> RunData:
    """Read a run directory; raises FileNotFoundError if it has neither metrics nor a summary."""
    run_dir = Path(run_dir)
    metrics_path, summary_path = run_dir / "metrics.jsonl", run_dir / "summary.json"
    if not metrics_path.is_file() and not summary_path.is_file():
        raise FileNotFoundError(
            f"{run_dir} has no metrics.jsonl or summary.json: not a groupwise run directory"
        )
    data = RunData(run_dir=run_dir, metrics=[m for _, m in read_jsonl(metrics_path)])
    if summary_path.is_file():
        loaded = json.loads(summary_path.read_text(encoding="utf-8"))
        data.summary = loaded if isinstance(loaded, dict) else {}
    config_path = run_dir / "config.yaml"
    if config_path.is_file():
        data.config_text = config_path.read_text(encoding="utf-8")
    data.first_completions, data.last_completions = _first_and_last_step(run_dir / COMPLETIONS)
    data.evaluations = _evaluations(run_dir / EVAL_SAMPLES)
    return data


# ---------------------------------------------------------------------------- plots
@dataclass(frozen=True)
class Panel:
    """One axes of a plot: the metrics (names or fnmatch patterns) drawn on it."""

    ylabel: str
    keys: tuple[str, ...]
    smooth: bool = True
    stacked: bool = False


@dataclass(frozen=True)
class PlotSpec:
    """One PNG: a file stem, a title and one or more panels stacked vertically."""

    name: str
    title: str
    panels: tuple[Panel, ...]


PLOTS: tuple[PlotSpec, ...] = (
    PlotSpec(
        "reward",
        "Reward",
        (
            Panel("reward", ("reward", "rewards/*/mean")),
            Panel("within-group", ("reward_std", "frac_reward_zero_std")),
        ),
    ),
    PlotSpec("kl", "KL divergence to the reference", (Panel("KL", ("kl",)),)),
    PlotSpec("entropy", "Policy entropy", (Panel("entropy (nats)", ("entropy",)),)),
    PlotSpec(
        "completion_length",
        "Completion length",
        (
            Panel(
                "tokens",
                (
                    "completions/mean_length",
                    "completions/min_length",
                    "completions/max_length",
                    "completions/mean_terminated_length",
                ),
            ),
            Panel("clipped ratio", ("completions/clipped_ratio",)),
        ),
    ),
    PlotSpec("clip_ratio", "Clip ratios", (Panel("ratio", ("clip_ratio/*",)),)),
    PlotSpec("loss", "Loss", (Panel("loss", ("loss",)),)),
    PlotSpec("grad_norm", "Gradient norm (before clipping)", (Panel("grad norm", ("grad_norm",)),)),
    PlotSpec(
        "learning_rate",
        "Learning rate",
        (Panel("learning rate", ("learning_rate",), smooth=False),),
    ),
    PlotSpec(
        "time",
        "Time per step by phase",
        (Panel("seconds", ("time/*",), smooth=False, stacked=True),),
    ),
    PlotSpec(
        "hacking",
        "Reward-hacking signals (share; see the table)",
        (Panel("share", (f"{HACKING_PREFIX}*",), smooth=False),),
    ),
)
ACCURACY_PLOT = "accuracy"
ACCURACY_TITLE = "Held-out accuracy (greedy)"


def ema(values: Sequence[float], weight: float) -> list[float]:
    """Debiased exponential moving average (TensorBoard's smoothing); NaNs are passed over."""
    out: list[float] = []
    average, count = 0.0, 0
    for value in values:
        if not math.isfinite(value):
            out.append(math.nan)
            continue
        count += 1
        average = weight * average + (1.0 - weight) * value
        out.append(average / (1.0 - weight**count))
    return out


def _matching_keys(data: RunData, patterns: Sequence[str]) -> list[str]:
    """Metric names matching any pattern that have at least one finite value."""
    names = data.keys()
    found: list[str] = []
    for pattern in patterns:
        for name in fnmatch.filter(names, pattern):
            if name not in found and any(math.isfinite(v) for v in data.series(name)):
                found.append(name)
    return found


def _draw_lines(ax: Axes, data: RunData, keys: Sequence[str], smooth: float | None) -> None:
    """One line per metric; with ``smooth`` a faint raw line under its EMA."""
    steps = data.steps
    marker = "o" if len(steps) <= 30 else None
    for key in keys:
        values = data.series(key)
        if smooth is None or sum(math.isfinite(v) for v in values) < 8:
            ax.plot(steps, values, label=key, marker=marker, markersize=3)
            continue
        (raw,) = ax.plot(steps, values, alpha=0.3, linewidth=1)
        ax.plot(steps, ema(values, smooth), color=raw.get_color(), label=f"{key} (EMA)")


def _draw_stacked(ax: Axes, data: RunData, keys: Sequence[str]) -> None:
    """A stacked area per metric (missing values count as 0)."""
    layers = [[v if math.isfinite(v) else 0.0 for v in data.series(k)] for k in keys]
    labels = [k.split("/", 1)[-1] for k in keys]
    if len(data.steps) == 1:  # an area needs two x values: draw stacked bars instead
        bottom = 0.0
        for layer, label in zip(layers, labels, strict=True):
            ax.bar(data.steps, layer, bottom=bottom, label=label, width=0.6)
            bottom += layer[0]
        return
    ax.stackplot(data.steps, *layers, labels=labels, alpha=0.85)


def _new_figure(title: str, panels: int) -> tuple[Figure, list[Axes]]:
    """An Agg figure with ``panels`` axes sharing the step axis."""
    fig = Figure(figsize=(8.0, 1.0 + 2.6 * panels), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    axes = [fig.add_subplot(panels, 1, i + 1) for i in range(panels)]
    for ax in axes[1:]:
        ax.sharex(axes[0])
    axes[-1].set_xlabel("step")
    fig.suptitle(title)
    return fig, axes


def _finish_axes(ax: Axes, ylabel: str) -> None:
    ax.set_ylabel(ylabel)
    ax.grid(True, alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize="small", loc="best")


def plot_metrics(data: RunData, spec: PlotSpec, smoothing: float | None) -> Figure | None:
    """The figure of ``spec``, or None when the run logged none of its metrics."""
    panels = [(p, keys) for p in spec.panels if (keys := _matching_keys(data, p.keys))]
    if not panels:
        return None
    fig, axes = _new_figure(spec.title, len(panels))
    for ax, (panel, keys) in zip(axes, panels, strict=True):
        if panel.stacked:
            _draw_stacked(ax, data, keys)
        else:
            _draw_lines(ax, data, keys, smoothing if panel.smooth else None)
        _finish_axes(ax, panel.ylabel)
    return fig


def accuracy_points(data: RunData) -> list[tuple[float, float]]:
    """(step, accuracy): eval_before at step 0, each eval_accuracy, eval_after at the end."""
    points: list[tuple[float, float]] = []
    before = _number(data.summary.get("eval_before"), default=math.nan)
    if math.isfinite(before):
        points.append((0.0, before))
    for step, value in zip(data.steps, data.series("eval_accuracy"), strict=True):
        if math.isfinite(value):
            points.append((step, value))
    after = _number(data.summary.get("eval_after"), default=math.nan)
    if math.isfinite(after):
        last = _number(data.summary.get("steps"), default=max(data.steps, default=0.0))
        points.append((last, after))
    return points


def plot_accuracy(data: RunData) -> Figure | None:
    """Held-out accuracy over training, or None when the run was never evaluated."""
    points = accuracy_points(data)
    if not points:
        return None
    fig, (ax,) = _new_figure(ACCURACY_TITLE, 1)
    xs, ys = zip(*points, strict=True)
    ax.plot(xs, ys, marker="o", label="accuracy")
    for x, y in points:
        ax.annotate(f"{y:.1%}", (x, y), textcoords="offset points", xytext=(0, 6), ha="center")
    ax.set_ylim(0.0, 1.05)
    ax.yaxis.set_major_formatter(PercentFormatter(xmax=1.0))
    _finish_axes(ax, "accuracy")
    return fig


def render_plots(data: RunData, smoothing: float | None) -> list[tuple[str, str, bytes]]:
    """(name, title, PNG bytes) of every plot the run has data for, in report order."""
    figures: list[tuple[str, str, Figure | None]] = [
        (PLOTS[0].name, PLOTS[0].title, plot_metrics(data, PLOTS[0], smoothing)),
        (ACCURACY_PLOT, ACCURACY_TITLE, plot_accuracy(data)),
    ]
    figures += [(s.name, s.title, plot_metrics(data, s, smoothing)) for s in PLOTS[1:]]
    out: list[tuple[str, str, bytes]] = []
    for name, title, fig in figures:
        if fig is None:
            continue
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png")
        out.append((name, title, buffer.getvalue()))
    return out


# ---------------------------------------------------------------------------- HTML
CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2em auto;
max-width:1400px;padding:0 1em;color:#222}
h1{font-size:1.6em}h2{border-bottom:1px solid #ccc;padding-bottom:.2em;margin-top:2em}
table{border-collapse:collapse;margin:.5em 0}
th,td{border:1px solid #ddd;padding:.3em .6em;vertical-align:top;text-align:left}
th{background:#f4f4f4}
pre{white-space:pre-wrap;word-break:break-word;margin:0;font-size:.85em;max-width:60em}
.plots{display:grid;grid-template-columns:repeat(auto-fill,minmax(520px,1fr));gap:1em}
figure{margin:0}figure img{max-width:100%;border:1px solid #eee}
figcaption{color:#555;font-size:.9em}
.num{text-align:right;font-variant-numeric:tabular-nums}
.muted{color:#777}
"""


def _esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _format_seconds(value: Any) -> str:
    seconds = _number(value, default=math.nan)
    if not math.isfinite(seconds):
        return "—"
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    clock = f"{hours}h {minutes:02d}m {secs:02d}s" if hours else f"{minutes}m {secs:02d}s"
    return f"{seconds:.0f} s ({clock})"


def _accuracy_text(summary: dict[str, Any]) -> str:
    before = _number(summary.get("eval_before"), default=math.nan)
    after = _number(summary.get("eval_after"), default=math.nan)
    if math.isfinite(before) and math.isfinite(after):
        return f"{before:.1%} → {after:.1%} ({(after - before) * 100:+.1f} points)"
    if math.isfinite(before):
        return f"{before:.1%} before (no evaluation after)"
    if math.isfinite(after):
        return f"{after:.1%} after (no evaluation before)"
    return "—"


def summary_rows(data: RunData) -> list[tuple[str, str]]:
    """(label, text) rows of the summary table."""
    s = data.summary
    last = data.metrics[-1] if data.metrics else {}
    steps = s.get("steps", last.get("step", "—"))
    reward = _number(last.get("reward"), default=math.nan)
    return [
        ("Model", str(s.get("model", "—"))),
        ("Task", str(s.get("task", "—"))),
        ("Steps", f"{steps}" + ("" if s else " (no summary.json: run unfinished?)")),
        ("Wall time", _format_seconds(s.get("wall_time_s"))),
        ("Train time", _format_seconds(s.get("train_time_s"))),
        ("Held-out accuracy", _accuracy_text(s)),
        ("Reward at the last step", f"{reward:.4g}" if math.isfinite(reward) else "—"),
        ("Run directory", str(s.get("run_dir", data.run_dir))),
    ]


def _summary_html(data: RunData) -> str:
    rows = "".join(f"<tr><th>{_esc(k)}</th><td>{_esc(v)}</td></tr>" for k, v in summary_rows(data))
    return f'<section id="summary"><h2>Summary</h2><table>{rows}</table></section>'


def _plots_html(plots: Sequence[tuple[str, str, bytes]]) -> str:
    if not plots:
        return '<section id="plots"><h2>Training curves</h2><p class="muted">No metrics logged.</p></section>'
    figures = "".join(
        f'<figure id="plot-{_esc(name)}"><img alt="{_esc(title)}" '
        f'src="data:image/png;base64,{base64.b64encode(png).decode("ascii")}">'
        f"<figcaption>{_esc(title)} (plots/{_esc(name)}.png)</figcaption></figure>"
        for name, title, png in plots
    )
    return (
        f'<section id="plots"><h2>Training curves</h2><div class="plots">{figures}</div></section>'
    )


def _clip_text(text: str, limit: int = MAX_TEXT_CHARS) -> str:
    if len(text) <= limit:
        return text
    return f"{text[:limit]}… [{len(text) - limit} more characters]"


def _reward_key(record: CompletionRecord) -> float:
    return _number(record.reward, default=math.nan)


def best_and_worst(
    records: Sequence[CompletionRecord], count: int
) -> tuple[list[CompletionRecord], list[CompletionRecord]]:
    """The ``count`` highest-reward completions and the ``count`` lowest of the others.

    The lists never share a record: with few records "worst" is short or empty. Records
    without a finite reward rank after every scored one and are never "worst".
    """
    scored = [r for r in records if math.isfinite(_reward_key(r))]
    unscored = [r for r in records if not math.isfinite(_reward_key(r))]
    best = (sorted(scored, key=_reward_key, reverse=True) + unscored)[:count]
    chosen = {id(r) for r in best}
    rest = [r for r in scored if id(r) not in chosen]
    return best, sorted(rest, key=_reward_key)[:count]


def _fmt_value(value: Any) -> str:
    number = _number(value, default=math.nan)
    return f"{number:.3g}" if math.isfinite(number) else "—"


def _completions_table(records: Sequence[CompletionRecord]) -> str:
    """An HTML table of completions: reward, advantage, per-function rewards, text."""
    rows = []
    for r in records:
        funcs = "<br>".join(f"{_esc(k)}: {_fmt_value(v)}" for k, v in r.rewards.items())
        flag = " <span class='muted'>(truncated)</span>" if r.truncated else ""
        rows.append(
            f"<tr><td class='num'>{_fmt_value(r.reward)}</td>"
            f"<td class='num'>{_fmt_value(r.advantage)}</td><td>{funcs}</td>"
            f"<td><pre>{_esc(_clip_text(prompt_text(r.prompt)))}</pre></td>"
            f"<td><pre>{_esc(_clip_text(r.transcript()))}</pre>{flag}</td></tr>"
        )
    head = "<tr><th>reward</th><th>advantage</th><th>rewards</th><th>prompt</th><th>completion</th></tr>"
    return f"<table>{head}{''.join(rows)}</table>"


def _step_block(label: str, records: Sequence[CompletionRecord], count: int) -> str:
    step = records[0].step
    best, worst = best_and_worst(records, count)
    parts = [f"<h3>{_esc(label)} (step {_esc(step)}, {len(records)} completions)</h3>"]
    parts.append(f"<h4>Best</h4>{_completions_table(best)}")
    if worst:
        parts.append(f"<h4>Worst</h4>{_completions_table(worst)}")
    return "".join(parts)


def _completions_html(data: RunData, count: int) -> str:
    head = '<section id="completions"><h2>Completions</h2>'
    if not data.first_completions:
        note = "No completions.jsonl in this run (training.log_completions = false?)."
        return f'{head}<p class="muted">{_esc(note)}</p></section>'
    blocks = [_step_block("Start", data.first_completions, count)]
    first_step = data.first_completions[0].step
    if data.last_completions and data.last_completions[0].step != first_step:
        blocks.append(_step_block("End", data.last_completions, count))
    return f"{head}{''.join(blocks)}</section>"


def before_and_after(
    data: RunData,
) -> tuple[str | None, str | None, list[tuple[Any, EvalSample | None, EvalSample | None]]]:
    """(first label, last label, rows): the first and the last evaluation in eval_samples.jsonl
    ("before" and "after" when the run did both) and, for the first :data:`MAX_EVAL_SAMPLES`
    held-out indices, (prompt, first record, last record); a record is None where that
    evaluation lacks the index. Labels are None when the file has no such evaluation."""
    labels = list(data.evaluations)
    if "before" in labels:  # "before" first and "after" last, whatever the file order
        labels = ["before", *(x for x in labels if x != "before")]
    if "after" in labels:
        labels = [*(x for x in labels if x != "after"), "after"]
    first = labels[0] if labels else None
    last = labels[-1] if len(labels) > 1 else None
    early = data.evaluations.get(first, {}) if first else {}
    late = data.evaluations.get(last, {}) if last else {}
    indices = sorted(set(early) | set(late))[:MAX_EVAL_SAMPLES]
    rows = []
    for index in indices:
        a, b = early.get(index), late.get(index)
        shown = a if a is not None else b
        rows.append((None if shown is None else shown.prompt, a, b))
    return first, last, rows


def _answer_cell(record: EvalSample | None) -> str:
    if record is None:
        return "<td class='muted'>—</td>"
    text = _esc(_clip_text(record.completion))
    score = _fmt_value(record.score)
    return f"<td><pre>{text}</pre><span class='muted'>score {score}</span></td>"


def _eval_samples_html(data: RunData) -> str:
    head = '<section id="eval-samples"><h2>Held-out answers, before and after</h2>'
    first, last, rows = before_and_after(data)
    if first is None:
        note = f"No {EVAL_SAMPLES} in this run (no held-out evaluation, or an older run)."
        return f'{head}<p class="muted">{_esc(note)}</p></section>'
    intro = (
        f"Greedy answers to the first {len(rows)} held-out prompts with their correctness "
        f"score, at the first ({first}) and the last ({last or 'none'}) evaluation."
    )
    body = "".join(
        f"<tr><td><pre>{_esc(_clip_text(prompt_text(prompt)))}</pre></td>"
        f"{_answer_cell(a)}{_answer_cell(b)}</tr>"
        for prompt, a, b in rows
    )
    cols = f"<tr><th>prompt</th><th>{_esc(first)}</th><th>{_esc(last or '—')}</th></tr>"
    return f'{head}<p class="muted">{_esc(intro)}</p><table>{cols}{body}</table></section>'


def hacking_rows(data: RunData) -> list[tuple[str, str, str, str, str]]:
    """(signal, warn at, last, max at step, steps at or above the threshold) of every
    ``hacking/...`` metric the run logged, in order of first appearance."""
    rows = []
    names = data.keys()
    for key in [k for k in names if k.startswith(HACKING_PREFIX)]:
        series = zip(data.steps, data.series(key), strict=True)
        points = [(s, v) for s, v in series if math.isfinite(v)]
        if not points:
            continue
        limit = threshold(key)
        top_step, top = max(points, key=lambda p: p[1])
        hits = [f"{s:g}" for s, v in points if limit is not None and v >= limit]
        shown = ", ".join(hits[:MAX_FLAGGED_STEPS]) + (
            " …" if len(hits) > MAX_FLAGGED_STEPS else ""
        )
        rows.append(
            (
                key[len(HACKING_PREFIX) :],
                "—" if limit is None else f"{limit:.2f}",
                f"{points[-1][1]:.3f}",
                f"{top:.3f} (step {top_step:g})",
                f"{len(hits)}: {shown}" if hits else "none",
            )
        )
    return rows


def _hacking_html(data: RunData) -> str:
    head = '<section id="hacking"><h2>Reward-hacking signals</h2>'
    rows = hacking_rows(data)
    if not rows:
        note = "No hacking/* metrics in metrics.jsonl."
        return f'{head}<p class="muted">{_esc(note)}</p></section>'
    intro = (
        "Flags that the policy may score without solving (groupwise.run.hacking); the rewards are "
        "unchanged. Read the completions of the flagged steps."
    )
    cols = ("signal", "warn at", "last", "max", "steps at or above warn")
    head_row = "".join(f"<th>{c}</th>" for c in cols)
    body = "".join(
        "<tr>" + "".join(f"<td>{_esc(cell)}</td>" for cell in row) + "</tr>" for row in rows
    )
    return f'{head}<p class="muted">{_esc(intro)}</p><table><tr>{head_row}</tr>{body}</table></section>'


def _config_html(data: RunData) -> str:
    if data.config_text is None:
        return ""
    return (
        '<section id="config"><h2>Config</h2><details><summary>config.yaml</summary>'
        f"<pre>{_esc(data.config_text)}</pre></details></section>"
    )


def render_html(data: RunData, plots: Sequence[tuple[str, str, bytes]], count: int = 3) -> str:
    """The whole report page."""
    title = f"groupwise report: {data.run_dir.name}"
    body = "".join(
        [
            f"<h1>{_esc(title)}</h1>",
            _summary_html(data),
            _plots_html(plots),
            _hacking_html(data),
            _completions_html(data, count),
            _eval_samples_html(data),
            _config_html(data),
        ]
    )
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{_esc(title)}</title><style>{CSS}</style></head><body>{body}</body></html>\n"
    )


# ---------------------------------------------------------------------------- writing
def write_report(run_dir: Path, *, smoothing: float | None = 0.8, examples: int = 3) -> Path:
    """Write ``run_dir/plots/*.png`` and ``run_dir/report.html``; returns the HTML's path.

    ``smoothing`` is the EMA weight drawn over noisy curves with 8+ points (None: raw only);
    ``examples`` is how many best and worst completions to show per step.
    """
    run_dir = Path(run_dir)
    data = load_run(run_dir)
    plots = render_plots(data, smoothing)
    plots_dir = run_dir / PLOTS_DIR
    plots_dir.mkdir(exist_ok=True)
    for name, _, png in plots:
        write_bytes_atomic(plots_dir / f"{name}.png", png)
    out = run_dir / REPORT_NAME
    write_bytes_atomic(out, render_html(data, plots, examples).encode("utf-8"))
    return out


def report_main(run_dir: str | Path) -> int:
    """``groupwise report RUN_DIR``: write the report and print where it is; returns 0."""
    path = write_report(Path(run_dir))
    print(f"report: {path}")
    return 0


__all__ = [
    "PLOTS",
    "RunData",
    "accuracy_points",
    "before_and_after",
    "best_and_worst",
    "ema",
    "hacking_rows",
    "load_run",
    "prompt_text",
    "render_html",
    "report_main",
    "write_report",
]
