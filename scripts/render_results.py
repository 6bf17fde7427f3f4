"""Render the docs' tables of measured figures from benchmarks/results/*.json.

    python scripts/render_results.py          # rewrite every generated table in the docs
    python scripts/render_results.py --check  # exit 1, naming each table that differs

A generated table sits in a doc between two markers, and everything between them is rewritten:

    <!-- results:TABLE_NAME -->
    ...
    <!-- /results:TABLE_NAME -->

:data:`TABLES` is the one place that says which result files feed a table, which columns it has
and how each cell is formatted. Under every table a caption line names each result file with its
CPU, commit and date (and says when a figure was transcribed from older docs rather than written
by a benchmark script). Result files come from ``write_result`` in benchmarks/harness.py (or
were transcribed once from the docs, ``"transcribed": true``, with their source). To change a
figure, change or add a result file and run this script; tests/test_results.py fails when a doc
and the result files disagree.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
DOCS = ("README.md", "docs/guide.md", "benchmarks/README.md")
"""The docs that hold generated tables, relative to the repository root."""
BLOCK = re.compile(
    r"(<!-- results:(?P<name>[\w.-]+) -->\n)(?P<body>.*?)(<!-- /results:(?P=name) -->)", re.S
)
Row = dict[str, Any]
"""One table row: a result's figures (or one entry of a list in them) plus ``_result``, the
whole result record."""


@dataclass(frozen=True)
class Column:
    header: str
    cell: Callable[[Row], str]


@dataclass(frozen=True)
class Source:
    """Rows of a table from one result file."""

    result: str
    """The file's name without ``.json``."""
    rows: str | None = None
    """The key in ``figures`` holding a list of rows; None: the figures are one row."""
    where: Callable[[Row], bool] | None = None
    """Keep only the rows this accepts."""


@dataclass(frozen=True)
class Table:
    name: str
    sources: tuple[Source, ...]
    columns: tuple[Column, ...]
    note: str = ""
    """Added to the caption line, e.g. what a mark in the cells means."""


# ---------------------------------------------------------------------------------------------
# Cell formats


def _percent(value: float | None) -> str:
    """``0.835`` -> ``83.5%``; None (not measured by then) -> a dash."""
    return "-" if value is None else f"{100 * value:.1f}%"


B1_PHASES = ("generate", "ref_logp", "update")


def _commit_cell(row: Row) -> str:
    """The commit as given, with its short hash when it was given by another name."""
    commit, sha = str(row["commit"]), str(row["sha"])
    return commit if sha.startswith(commit) else f"{commit} ({sha[:7]})"


def _with_floor_ratio(key: str, phase: str) -> Callable[[Row], str]:
    """``12.34 (2.06x)``: the row's ``key`` seconds and its measured / FLOP floor for
    ``phase``."""

    def cell(row: Row) -> str:
        ratio = row.get("measured_over_floor", {}).get(phase)
        value = row.get(key)
        if value is None:
            return "-"
        return f"{value:.2f}" if ratio is None else f"{value:.2f} ({ratio:.2f}x)"

    return cell


def _timed_accuracy(seconds: str) -> Callable[[Row], str]:
    """The held-out accuracy at ``seconds`` from the process's start; '-' for a run whose
    evaluations carry no times (a commit that did not log them)."""

    def cell(row: Row) -> str:
        if any(e.get("run_time_s") is None for e in row["evals"]):
            return "-"
        return _percent(row["accuracy_at_s"][seconds])

    return cell


def _eval_steps(steps: tuple[int, ...]) -> Callable[[Row], str]:
    """The held-out accuracy of the evaluations at ``steps``, ' / '-joined ('-' if none)."""

    def cell(row: Row) -> str:
        at = {int(e["step"]): float(e["accuracy"]) for e in row["evals"]}
        return " / ".join(_percent(at.get(step)) for step in steps)

    return cell


def num(key: str, spec: str = ".2f", suffix: str = "") -> Callable[[Row], str]:
    """The row's ``key`` formatted with ``spec`` plus ``suffix``; '-' when absent or None."""

    def cell(row: Row) -> str:
        value = row.get(key)
        return "-" if value is None else f"{value:{spec}}{suffix}"

    return cell


def text(key: str) -> Callable[[Row], str]:
    return lambda row: str(row.get(key, "-"))


def cpu_name(cpu: dict[str, Any]) -> str:
    """'AMD EPYC (family 26), AVX512-BF16', '..., limited to AVX2', 'AMD EPYC, AVX2 only'."""
    name = cpu["model"] + (f" (family {cpu['family']})" if cpu.get("family") is not None else "")
    flags = set(cpu.get("flags", []))
    if cpu.get("isa_env"):
        kind = "limited to AVX2"
    elif "amx_bf16" in flags:
        kind = "AMX-BF16"
    elif "avx512_bf16" in flags:
        kind = "AVX512-BF16, no AMX"
    else:
        kind = "AVX2 only" if "avx2" in flags else "no AVX2"
    return f"{name}, {kind}"


def cpu_label(row: Row) -> str:
    return cpu_name(row["_result"]["cpu"])


def seeds_cell(row: Row) -> str:
    """'83.5% (seed 0), 79.5% (seed 1)', or what the result says instead of a finished run."""
    seeds = row.get("seeds") or []
    if not seeds:
        minutes = row.get("estimated_wall_min")
        return "not run to the end" + (f" (~{minutes} min est.)" if minutes else "")
    return ", ".join(f"{s['accuracy']:.1f}% (seed {s['seed']})" for s in seeds)


def walls_cell(row: Row) -> str:
    """Wall seconds per seed, ' *' where another job shared the machine."""
    walls = [
        f"{s['wall_s']:.0f} s" + (" *" if s.get("shared_machine") else "") for s in row["seeds"]
    ]
    return ", ".join(walls) or "-"


def peaks_cell(row: Row) -> str:
    peaks = [s["peak_rss_gb"] for s in row.get("seeds", []) if "peak_rss_gb" in s]
    return " / ".join(f"{p:.2f}" for p in peaks) + " GB" if peaks else "-"


def step_cell(row: Row) -> str:
    if row.get("s_per_step") is not None:
        return f"{row['s_per_step']:.1f}"
    low, high = row.get("s_per_step_range") or (None, None)
    return "-" if low is None else f"{low:g}-{high:g}"


def seed_accuracy(index: int) -> Callable[[Row], str]:
    def cell(row: Row) -> str:
        seeds = row["seeds"]
        if index >= len(seeds):
            return "-"
        s = seeds[index]
        return (
            f"{s['accuracy']:.1f}% ({s['wall_s']:.0f} s{' *' if s.get('shared_machine') else ''})"
        )

    return cell


def example_cell(row: Row) -> str:
    """'greedy accuracy 0.0% -> 100.0% / 100.0%' plus what else the example recorded."""
    unit = row["unit"]

    def value(v: float) -> str:
        return f"{v:.1f}{unit}" if unit == "%" and isinstance(v, float) else f"{v}{unit}"

    after = " / ".join(value(v) for v in row["after"])
    cell = f"{row['metric']} {value(row['before'])} -> {after}"
    if "at_step_25" in row:
        cell += f" ({' / '.join(value(v) for v in row['at_step_25'])} at step 25)"
    if "on_topic_before" in row:
        on_topic = " / ".join(f"{v:.2f}" for v in row["on_topic_after"])
        cell += f"; on-topic share {row['on_topic_before']:.2f} -> {on_topic}"
    if "greedy_before" in row:
        cell += f"; greedy held-out {row['greedy_before']}% -> {row['greedy_after']}%"
    if "guesses_before" in row:
        after = " / ".join(f"{v:.2f}" for v in row["guesses_after"])
        cell += f"; guesses per game {row['guesses_before']:.2f} -> {after}"
    return cell


def tensor_types_cell(row: Row) -> str:
    """'Q8_0 x 210, F32 x 61': the tensor types a GGUF file holds, most common first."""
    counts = sorted(row["tensor_types"].items(), key=lambda kv: -kv[1])
    return ", ".join(f"{name} x {count}" for name, count in counts)


def ratio_cell(measured: str) -> Callable[[Row], str]:
    """'2.15 (0.74, 2.89x)': measured seconds (floor seconds, measured / floor)."""

    def cell(row: Row) -> str:
        m, floor, ratio = (
            row.get(measured),
            row.get(f"{measured}_floor"),
            row.get(f"{measured}_ratio"),
        )
        if m is None:
            return "-"
        if floor is None:
            return f"{m:.2f}"
        return (
            f"{m:.2f} ({floor:.2f}, {ratio:.2f}x)"
            if ratio is not None
            else f"{m:.2f} ({floor:.2f})"
        )

    return cell


def profile_cell(phase: str) -> Callable[[Row], str]:
    def cell(row: Row) -> str:
        m, f, r = row[f"{phase}_s"], row[f"{phase}_floor_s"], row[f"{phase}_ratio"]
        return f"{m:.0f} / {f:.0f} s ({r:.2f}x)"

    return cell


def accuracy_cell(row: Row) -> str:
    note = f" ({row['accuracy_note']})" if row.get("accuracy_note") else ""
    return f"{row['accuracy']:.1f}%{note}"


def held_out_cell(row: Row) -> str:
    """'0.0% -> 62.0%' from a run's held-out accuracies (fractions), '-' when not evaluated."""
    before, after = row.get("eval_before"), row.get("eval_after")
    if before is None or after is None:
        return "-"
    return f"{100 * before:.1f}% -> {100 * after:.1f}%"


def wall_cell(row: Row) -> str:
    return f"{row['wall_s']:.0f} s" + (" *" if row.get("shared_machine") else "")


# ---------------------------------------------------------------------------------------------
# The tables

SHARED = "`*`: another job shared the machine during part of that run."
DEFAULT_RUNS = (
    "default-run-epyc-bf16",
    "default-run-epyc-avx2",
    "default-run-epyc-avx2-only-reported",
    "default-run-epyc-bf16-earlier-defaults",
    "default-run-epyc-bf16-baseline",
    "default-run-epyc-avx2-earlier-defaults",
    "default-run-xeon-seed0",
    "default-run-xeon-seed1",
    "default-run-xeon-2026-11-24",
)
CURRENT_DEFAULT_RUNS = DEFAULT_RUNS[:3]
"""The default run with today's defaults, per CPU kind (the README shows only these)."""
TRL_COLUMNS = (
    Column("workload", text("workload")),
    Column("comparison", text("comparison")),
    Column("groupwise s/step", num("groupwise_s")),
    Column("TRL s/step", num("trl_s")),
    Column("speed-up", num("speedup", ".2f", "x")),
    Column("groupwise GB", num("groupwise_gb")),
    Column("TRL GB", num("trl_gb")),
    Column("memory", num("memory", ".2f", "x")),
)
PHASE_COLUMNS = (
    Column("row", text("row")),
    Column("generate", ratio_cell("generate")),
    Column("ref_logp", ratio_cell("ref_logp")),
    Column("update", ratio_cell("update")),
    Column("step", ratio_cell("step")),
)
SCALING_COLUMNS = (
    Column("L", text("length")),
    Column("G", text("group")),
    Column(
        "tokens/step (completion / all)",
        lambda r: f"{r['completion_tokens_per_step']} / {r['tokens_per_step']:.0f}",
    ),
    Column("median s/step", num("median_s_per_step")),
    Column("generate", num("generate")),
    Column("ref_logp", num("ref_logp")),
    Column("update", num("update")),
    Column("s per 1k completion tokens", num("s_per_1k_completion_tokens", ".1f")),
    Column(
        "peak RSS GB",
        lambda r: (
            f"{r['peak_rss_gb']:.2f}" + (f" ({r['peak_note']})" if r.get("peak_note") else "")
        ),
    ),
    Column("f32 logits GB", num("f32_logits_gb")),
)


def _defaults(row: Row) -> bool:
    """The headline comparisons: both defaults, and groupwise's defaults against TRL's fastest
    candidate row (benchmarks/trl_vs_groupwise.py, "vs TRL's fastest: KEY")."""
    return str(row["comparison"]).startswith(("defaults", "vs TRL's fastest"))


def fastest_cell(row: Row) -> str:
    """'fastest', a slower TRL candidate's s/step over the fastest's ('1.31x'), or why the
    harness stopped one before it finished a measured step."""
    if row.get("fastest"):
        return "fastest"
    if row.get("s") is None and row.get("stopped"):
        return f"stopped ({row['stopped']})"
    return num("s_over_fastest", ".2f", "x")(row)


TRL_CANDIDATE_COLUMNS = (
    Column("workload", text("workload")),
    Column("TRL row", text("row")),
    Column("settings", text("settings")),
    Column("precision", text("precision")),
    Column("s/step", num("s")),
    Column("peak RSS GB", num("gb")),
    Column("vs fastest", fastest_cell),
)
"""The candidates of "vs TRL's fastest", from a trl_vs_groupwise result's ``trl_candidates``
(results before it had none: point a table at a result that has them)."""


def side_seconds(side: str) -> Callable[[Row], str]:
    """A benchmarks/scaling_trl.py side's median s/step, or what stopped it ('OOM after 1/3
    steps (last 412 s)', 'not run: OOM at L=256')."""

    def cell(row: Row) -> str:
        s = row.get(f"{side}_s")
        return f"{s:.2f}" if s is not None else str(row.get(f"{side}_note") or "-")

    return cell


def side_rss(side: str) -> Callable[[Row], str]:
    """A scaling_trl.py side's peak RSS in GB; 'GB at OOM' / 'GB at timeout' where it was
    stopped (the peak until then); '-' where it did not run."""

    def cell(row: Row) -> str:
        gb, status = row.get(f"{side}_gb"), row.get(f"{side}_status")
        if gb is None:
            return "-"
        return f"{gb:.2f}" if status == "ok" else f"{gb:.2f} at {status}"

    return cell


SCALING_TRL_COLUMNS = (
    Column("model", text("model")),
    Column("LoRA", lambda r: "yes" if r["lora"] else "no"),
    Column("L", text("length")),
    Column("groupwise s/step", side_seconds("groupwise")),
    Column("TRL s/step", side_seconds("trl")),
    Column("TRL / groupwise", num("ratio", ".2f", "x")),
    Column("groupwise peak RSS GB", side_rss("groupwise")),
    Column("TRL peak RSS GB", side_rss("trl")),
    Column("groupwise floor fraction", num("groupwise_floor_fraction")),
    Column("TRL floor fraction", num("trl_floor_fraction")),
)
"""groupwise vs TRL by model size and completion length, from a benchmarks/scaling_trl.py
result's ``rows`` (the same cells as that script's Markdown table)."""


DEFAULT_RUN_COLUMNS = (
    Column("CPU (`lscpu`)", cpu_label),
    Column("picked", text("picked")),
    Column("s/step", step_cell),
    Column("held-out accuracy after", seeds_cell),
    Column("wall", lambda r: walls_cell(r) if r.get("seeds") else "-"),
    Column("peak RSS", peaks_cell),
)

RECIPE_COLUMNS: tuple[Column, ...] = (
    Column("variant", text("variant")),
    Column("seed", lambda r: str(r["seed"])),
    Column("before", lambda r: _percent(r["accuracy_before"])),
    Column("at 3 min", lambda r: _percent(r["accuracy_at_s"]["180"])),
    Column("at 6 min", lambda r: _percent(r["accuracy_at_s"]["360"])),
    Column("at the end", lambda r: _percent(r["accuracy_after"])),
    Column("wall", num("wall_s", ".0f", " s")),
    Column("median s/step", num("median_step_s")),
    Column("entropy, last 5 steps", num("entropy_last5", ".3f")),
    Column(
        "first step with entropy < 0.1",
        lambda r: (
            "none" if r["entropy_below_0_1_step"] is None else str(r["entropy_below_0_1_step"])
        ),
    ),
    Column("peak RSS", num("peak_rss_gb", ".2f", " GB")),
)
"""The columns of a comparison of recipe levers (benchmarks/default_run.py's runs)."""

RECIPE_COLUMNS_LONG: tuple[Column, ...] = (
    *RECIPE_COLUMNS[:5],
    Column("at 12 min", lambda r: _percent(r["accuracy_at_s"]["720"])),
    Column("at 20 min", lambda r: _percent(r["accuracy_at_s"]["1200"])),
    *RECIPE_COLUMNS[5:],
)
"""The same, with the accuracy at 12 and 20 minutes (runs that share the machine are slower)."""

EVAL_STEPS_COLUMN = Column("at steps 25 / 50 / 75", _eval_steps((25, 50, 75)))
"""Accuracy at each evaluation of a default-length run (evaluated every 25 steps)."""

RECIPE_COLUMNS_STEPS: tuple[Column, ...] = (
    *RECIPE_COLUMNS[:5],
    EVAL_STEPS_COLUMN,
    *RECIPE_COLUMNS[5:],
)
"""The recipe columns with the accuracy at each evaluation step."""

RECIPE_COLUMNS_SCREEN: tuple[Column, ...] = (
    *RECIPE_COLUMNS[:3],
    EVAL_STEPS_COLUMN,
    RECIPE_COLUMNS[5],
    *RECIPE_COLUMNS[7:],
)
"""The recipe columns by evaluation step only (no wall-clock columns: runs that shared the
machine with a varying number of others)."""

TWO_AT_A_TIME = (
    "Two trainings at a time, one thread each (`--jobs 2 --threads 1`), evaluated every 10 "
    "steps (`--set eval.every_steps=10`): the wall times compare with each other, not with a "
    "run that has the whole machine. Accuracy at a time is the newest evaluation finished by "
    "then."
)
"""How the recipe-lever runs measured from 2026-12-07 shared the machine."""


B1_LEVER_COLUMNS: tuple[Column, ...] = (
    Column("variant", text("variant")),
    Column("median s/step", num("median_s")),
    Column("generate", num("generate")),
    Column("ref_logp", num("ref_logp")),
    Column("update", num("update")),
    Column("peak RSS", num("peak_rss_gb", ".2f", " GB")),
)
"""The columns of a comparison of lever sets on B1 (benchmarks/b1_levers.py's rows)."""

B1_COMMIT_FLOOR_COLUMNS: tuple[Column, ...] = (
    Column("commit", _commit_cell),
    Column("s/step (x floor)", _with_floor_ratio("median_s", "step")),
    *(Column(f"{p} (x floor)", _with_floor_ratio(p, p)) for p in B1_PHASES),
    Column("peak RSS", num("peak_rss_gb", ".2f", " GB")),
)
"""The columns of B1 at several commits, each phase against its FLOP floor (b1_commits.py)."""


def trl_tables(result: str) -> tuple[Table, Table, Table]:
    """The three tables of one ``trl_vs_groupwise.py`` result, named after it: its rows, their
    phases against the FLOP floor (``-phases``) and TRL's candidate rows (``-candidates``)."""
    return (
        Table(result, (Source(result, "rows"),), TRL_COLUMNS),
        Table(f"{result}-phases", (Source(result, "phases"),), PHASE_COLUMNS),
        Table(f"{result}-candidates", (Source(result, "trl_candidates"),), TRL_CANDIDATE_COLUMNS),
    )


TABLES: tuple[Table, ...] = (
    Table(
        "default-run-current",
        tuple(Source(name) for name in CURRENT_DEFAULT_RUNS),
        DEFAULT_RUN_COLUMNS,
        SHARED,
    ),
    Table(
        "default-run-per-cpu",
        tuple(Source(name) for name in DEFAULT_RUNS),
        (
            Column("CPU (`lscpu`)", cpu_label),
            Column("defaults", text("defaults")),
            Column("picked", text("picked")),
            Column("s/step", step_cell),
            Column("held-out accuracy after", seeds_cell),
            Column("wall", lambda r: walls_cell(r) if r.get("seeds") else "-"),
            Column("peak RSS", peaks_cell),
        ),
        SHARED,
    ),
    Table(
        "default-run-now",
        (Source("default-run-epyc-bf16"),),
        (
            Column("CPU (`lscpu`)", cpu_label),
            Column("picked", text("picked")),
            Column("before", num("accuracy_before", ".1f", "%")),
            Column("seed 0 after (wall)", seed_accuracy(0)),
            Column("seed 1 after (wall)", seed_accuracy(1)),
            Column("peak RSS", peaks_cell),
        ),
        SHARED,
    ),
    Table(
        "default-run-eval",
        (Source("default-run-eval-xeon", "rows"),),
        (
            Column("model", text("model")),
            Column("accuracy (greedy)", num("greedy", ".1f", "%")),
            Column("pass@8", num("pass_at_8", ".1f", "%")),
            Column("pass@1 (sampled)", num("pass_at_1", ".1f", "%")),
            Column("maj@8", num("maj_at_8", ".1f", "%")),
        ),
    ),
    Table(
        "examples",
        (
            *(Source(f"example-{name}-epyc") for name in ("calculator", "code", "dialogue")),
            Source("example-guess-xeon"),
        ),
        (
            Column("example", lambda r: f"`{r['example']}` ({r['what']})"),
            Column("held-out before -> after (seeds 0 / 1)", example_cell),
            Column("wall", lambda r: ", ".join(f"{w} s" for w in r["wall_s"])),
        ),
    ),
    Table(
        "env-examples",
        (Source("env-examples-xeon", "rows"),),
        (
            Column("script", lambda r: f"`{r['script']}`"),
            Column("steps", lambda r: str(len(r["rewards"]))),
            Column(
                "mean reward, first 5 -> last 5 steps",
                lambda r: f"{r['first5']:.3f} -> {r['last5']:.3f}",
            ),
            Column(
                "held-out greedy accuracy",
                lambda r: f"{_percent(r['eval_before'])} -> {_percent(r['eval_after'])}",
            ),
        ),
    ),
    Table(
        "gguf-roundtrip",
        (Source("gguf-roundtrip-xeon", "rows"),),
        (
            Column("type", lambda r: f"`{r['type']}`"),
            Column("file", lambda r: f"{r['bytes'] / 1e6:.0f} MB"),
            Column("export", num("export_s", ".1f", " s")),
            Column("tensor types", tensor_types_cell),
            Column("held-out accuracy (llama.cpp)", lambda r: _percent(r.get("accuracy"))),
            Column(
                "same answer as final/",
                lambda r: f"{r['identical_answers']} of {r['n']}" if "n" in r else "-",
            ),
            Column("same completion", lambda r: _percent(r.get("token_identical_share"))),
        ),
    ),
    Table(
        "gguf-reload",
        (Source("gguf-roundtrip-xeon"),),
        (
            Column("held-out prompts", lambda r: str(r["held_out"])),
            Column("final/ through groupwise", lambda r: _percent(r["final_accuracy"])),
            Column(
                "its own-dtype GGUF back into groupwise as model.name",
                lambda r: f"{_percent(r['reloaded']['accuracy'])} (`{r['reloaded']['type']}`)",
            ),
        ),
    ),
    Table(
        "trl-defaults",
        (
            Source("trl-epyc-bf16", "rows", lambda r: r["workload"] == "B1" and _defaults(r)),
            Source("trl-epyc-bf16-lora-in-place", "rows"),
        ),
        TRL_COLUMNS,
    ),
    Table("trl-epyc-bf16", (Source("trl-epyc-bf16", "rows"),), TRL_COLUMNS),
    Table("trl-epyc-bf16-phases", (Source("trl-epyc-bf16", "phases"),), PHASE_COLUMNS),
    Table("trl-lora-in-place", (Source("trl-epyc-bf16-lora-in-place", "rows"),), TRL_COLUMNS),
    Table(
        "trl-lora-in-place-phases",
        (Source("trl-epyc-bf16-lora-in-place", "phases"),),
        PHASE_COLUMNS,
    ),
    Table("trl-epyc-avx2", (Source("trl-epyc-avx2", "rows"),), TRL_COLUMNS),
    Table("trl-xeon-fastest", (Source("trl-xeon-fastest", "rows"),), TRL_COLUMNS),
    Table("trl-xeon-fastest-phases", (Source("trl-xeon-fastest", "phases"),), PHASE_COLUMNS),
    Table(
        "trl-xeon-candidates",
        (Source("trl-xeon-fastest", "trl_candidates"),),
        TRL_CANDIDATE_COLUMNS,
    ),
    Table("trl-xeon-onepass", (Source("trl-xeon-onepass", "rows"),), TRL_COLUMNS),
    Table("trl-xeon-onepass-phases", (Source("trl-xeon-onepass", "phases"),), PHASE_COLUMNS),
    *trl_tables("trl-epyc25"),
    *trl_tables("trl-epyc25-lora"),
    *trl_tables("trl-epyc25-native"),
    *trl_tables("trl-epyc25-native-training"),
    *trl_tables("trl-avx2-zen3"),
    *trl_tables("trl-xeon-lora"),
    Table("trl-epyc-avx2-phases", (Source("trl-epyc-avx2", "phases"),), PHASE_COLUMNS),
    Table(
        "engines-b1",
        (Source("engines-b1-xeon", "rows"),),
        (
            Column(
                "engine (variant)", lambda r: {"pure-bf16": "local"}.get(r["variant"], r["variant"])
            ),
            Column("median s/step", num("median_s")),
            Column("generate", num("generate")),
            Column("ref_logp", num("ref_logp")),
            Column("update", num("update")),
            Column("other (sync, scoring)", num("other")),
            Column("peak RSS", num("peak_rss_gb", ".2f", " GB")),
        ),
    ),
    Table(
        "default-run-async",
        (Source("default-run-async-xeon", "runs"),),
        (
            Column("variant", text("variant")),
            Column("seed", lambda r: str(r["seed"])),
            Column(
                "held-out accuracy before -> after",
                lambda r: f"{100 * r['accuracy_before']:.1f}% -> {100 * r['accuracy_after']:.1f}%",
            ),
            Column("training time", num("train_time_s", ".0f", " s")),
            Column("wall", num("wall_s", ".0f", " s")),
            Column("median s/step", num("median_step_s")),
            Column("generate", lambda r: f"{r['phases_median_s']['generate']:.2f}"),
            Column("update", lambda r: f"{r['phases_median_s']['update']:.2f}"),
            Column("sync (waiting included)", lambda r: f"{r['phases_median_s']['sync']:.2f}"),
            Column("peak RSS", num("peak_rss_gb", ".2f", " GB")),
        ),
        "Medians over the 100 steps, in seconds. The first run (local, seed 0) began while "
        "other jobs still loaded the machine, which its wall and training time include; the "
        "medians are the fair comparison.",
    ),
    Table(
        "default-run-correction",
        (Source("default-run-correction-xeon", "runs"),),
        (
            Column("variant", text("variant")),
            Column("seed", lambda r: str(r["seed"])),
            Column(
                "held-out accuracy before -> after",
                lambda r: f"{100 * r['accuracy_before']:.1f}% -> {100 * r['accuracy_after']:.1f}%",
            ),
            Column("wall", num("wall_s", ".0f", " s")),
            Column("median s/step", num("median_step_s")),
            Column("generate", lambda r: f"{r['phases_median_s']['generate']:.2f}"),
            Column("sync", lambda r: f"{r['phases_median_s']['sync']:.2f}"),
            Column(
                "logp difference (mean / max)",
                lambda r: (
                    f"{r['sampling_mean']['sampling/sampling_logp_difference/mean']:.4f} / "
                    f"{r['sampling_mean']['sampling/sampling_logp_difference/max']:.3f}"
                ),
            ),
            Column(
                "importance weight (min / mean / max)",
                lambda r: (
                    f"{r['sampling_mean']['sampling/importance_sampling_ratio/min']:.3f} / "
                    f"{r['sampling_mean']['sampling/importance_sampling_ratio/mean']:.3f} / "
                    f"{r['sampling_mean']['sampling/importance_sampling_ratio/max']:.3f}"
                ),
            ),
            Column(
                "tokens masked",
                lambda r: f"{100 * r['sampling_mean'].get('sampling/masked_share', 0.0):.2f}%",
            ),
            Column("peak RSS", num("peak_rss_gb", ".2f", " GB")),
        ),
        "Medians over the 100 steps, in seconds; the sampling columns are means over the steps "
        "of each step's metric (measured with the correction off too). The first run (llamacpp, "
        "seed 0) shared the machine with test runs for most of its time, which its wall time "
        "includes.",
    ),
    Table(
        "default-run-epyc25",
        (
            Source("default-run-baseline-epyc25", "runs"),
            Source("default-run-epyc25", "runs"),
        ),
        (
            Column("groupwise at", lambda r: (r.get("groupwise_commit") or "d93c4b2")[:7]),
            RECIPE_COLUMNS[1],
            RECIPE_COLUMNS[2],
            Column("at 3 min", _timed_accuracy("180")),
            Column("at 6 min", _timed_accuracy("360")),
            *RECIPE_COLUMNS[5:],
        ),
        "`python benchmarks/default_run.py --variants local --seeds 0,1,2` with `--commit "
        "92592c9` (the baseline) and without (d93c4b2, whose package is that of 6185158): "
        "`groupwise train` with each "
        "commit's defaults, evaluated before, every 25 steps and after, one run at a time with "
        "the whole machine, baseline and current alternating seed by seed; wall is the "
        "process end to end. The test suite's docs checks shared the machine for two minutes "
        "of the baseline's seed-0 run.",
    ),
    Table(
        "default-run-native-epyc25",
        (Source("default-run-native-epyc25", "runs"),),
        RECIPE_COLUMNS_STEPS,
        "`python benchmarks/default_run.py --variants local,torch-decode --seeds 0`: the "
        "default run (`local`: `rollout.native_kernels=auto`, on here) and the same with "
        "`rollout.native_kernels=false`, one after the other with the whole machine, evaluated "
        "before, every 25 steps and after; wall is the process end to end (the first includes "
        "no build: the kernels were built before).",
    ),
    Table(
        "recipe-levers",
        (Source("recipe-levers-xeon", "runs"),),
        RECIPE_COLUMNS,
        "Two trainings at a time, one thread each (`--jobs 2 --threads 1`), evaluated every 10 "
        "steps (`--set eval.every_steps=10`): the wall times compare with each other, not with "
        "a run that has the whole machine. Accuracy at a time is the newest evaluation finished "
        "by then, counted from the process's start (the accuracy before training if none "
        "was). The seed-0 pair shared the machine with test runs for much of its time, and the "
        "lr-5e-5 and group-16 runs, measured later, with test runs and other trainings for most "
        "of theirs: compare their accuracy at the end and per evaluation step, not their times. "
        "The local and adaptive-entropy rows were measured at commit 02a67dc and read back "
        "(`--reuse`); the code the default run executes is the same at both commits.",
    ),
    Table(
        "recipe-levers-dynamic",
        (Source("recipe-levers-dynamic-xeon", "runs"),),
        RECIPE_COLUMNS_LONG,
        "Two trainings at a time, one thread each (`--jobs 2 --threads 1`), evaluated every 10 "
        "steps (`--set eval.every_steps=10`): the wall times compare with each other (queued "
        "seed by seed, two at a time), not with a run that has the whole "
        "machine. Accuracy at a time is the newest evaluation finished by then. Seed 0's runs "
        "ran the code of commit ded13e2 (the AdamW step eager), seeds 1 and 2 that of 2869a20 "
        "(its compiled kernel, `training.compile_optimizer`): within a seed every variant ran "
        "the same code; read back (`--reuse`) at the commit named. Test and benchmark runs also "
        "shared the machine for part of seed 0's runs and of seed 1's dynamic-sampling and "
        "lr-constant runs (about 12 and 25 minutes).",
    ),
    Table(
        "recipe-levers-sampling",
        (Source("recipe-levers-sampling-xeon", "runs"),),
        RECIPE_COLUMNS_LONG,
        TWO_AT_A_TIME + " Short test and benchmark runs shared the machine at times.",
    ),
    Table(
        "recipe-levers-mu2",
        (Source("recipe-levers-mu2-xeon", "runs"),),
        RECIPE_COLUMNS_LONG,
        TWO_AT_A_TIME + " Queued seed by seed. The test suite shared the machine for the "
        "first 25 minutes (seed 0's runs). Seed 2's runs stopped when the disk filled.",
    ),
    Table(
        "recipe-levers-mu2-epyc25",
        (
            Source("default-run-epyc25", "runs"),
            Source("recipe-levers-mu2-epyc25", "runs"),
        ),
        RECIPE_COLUMNS,
        "`python benchmarks/default_run.py --variants mu-2-clip-higher --seeds 0,1,2`, one run "
        "at a time with the whole machine, evaluated every 25 steps (the default), after the "
        "default's runs (`local`, the current code's rows of the table in \"What the default "
        'run does"), measured the same way the same morning.',
    ),
    Table(
        "recipe-lora-epyc25",
        (
            Source("default-run-epyc25", "runs"),
            Source("default-run-check-epyc25", "runs"),
            Source("recipe-lora-epyc25", "runs"),
            Source("recipe-lora-mu2-epyc25", "runs"),
            Source("recipe-mu2-50-epyc25", "runs"),
        ),
        (
            RECIPE_COLUMNS[0],
            Column("groupwise at", lambda r: (r.get("groupwise_commit") or "d93c4b2")[:7]),
            *RECIPE_COLUMNS[1:5],
            EVAL_STEPS_COLUMN,
            *RECIPE_COLUMNS[5:],
        ),
        "`python benchmarks/default_run.py --variants V --seeds S`, one run at a time with the "
        "whole machine, evaluated every 25 steps. `local` is the default (full fine-tuning): "
        'its d93c4b2 rows are those of "What the default run does", measured the day '
        "before on the same CPU kind; the 06a3a33 row re-runs seed 0 on the morning of the "
        "other rows, with the same accuracies and a 5% shorter median step (8% shorter wall), "
        "so the other rows' times compare with the d93c4b2 rows' less that much. "
        "`lora-2e-4`: `model.lora=true training.learning_rate=2e-4`; "
        "`lora-2e-4-mu-2-clip-higher`: that and `algorithm.num_iterations=2 "
        "algorithm.epsilon_high=0.28` (a short measuring script shared the machine for a "
        "minute of its seed-0 run); `mu-2-clip-higher-50-steps`: full fine-tuning with those "
        "two and `training.max_steps=50`.",
    ),
    Table(
        "recipe-lora-alternating-epyc25",
        (Source("recipe-lora-alternating-epyc25", "runs"),),
        RECIPE_COLUMNS_STEPS,
        "`python benchmarks/default_run.py --variants local,lora-2e-4 --seeds 0,1,2`: the "
        "default (full fine-tuning) and LoRA at 2e-4 (`model.lora=true "
        "training.learning_rate=2e-4`), alternating seed by seed, one run at a time with the "
        "whole machine, evaluated every 25 steps; with a frozen LM head's prefill on the "
        "gathered path (LoRA's rollouts as before, 0.4-0.5 s shorter).",
    ),
    Table(
        "recipe-screens-epyc25",
        (
            Source("recipe-screens-epyc25", "runs"),
            Source("recipe-batch-128-epyc25", "runs"),
        ),
        RECIPE_COLUMNS_SCREEN,
        "`python benchmarks/default_run.py --variants V --seeds S --jobs 2 --threads 1`: one "
        "thread per training, two to five trainings sharing the machine at a time (the median "
        "s/step compares with nothing), evaluated every 25 steps. `scale-rewards-batch`: "
        "`algorithm.scale_rewards=batch`; `lora-2e-4-scale-rewards-batch`: that with "
        "`model.lora=true training.learning_rate=2e-4`; `batch-128`: "
        "`training.per_device_train_batch_size=128` (16 prompts x 8 completions a step). "
        "`batch-128` seeds 1 and 2 ran at the later commit (re-read with `--reuse`), whose "
        "default-run code is the same; three trainings and the test suite shared the machine "
        "during them.",
    ),
    Table(
        "recipe-batch-128-timed-epyc25",
        (Source("recipe-batch-128-timed-epyc25", "runs"),),
        RECIPE_COLUMNS_STEPS,
        "`python benchmarks/default_run.py --variants batch-128 --seeds 0`: 16 prompts a step, "
        "one run with the whole machine, evaluated every 25 steps.",
    ),
    Table(
        "recipe-batch-128-timed-epyc25-seeds12",
        (Source("recipe-batch-128-timed-epyc25-seeds12", "runs"),),
        RECIPE_COLUMNS_STEPS,
        "`python benchmarks/default_run.py --variants local,batch-128 --seeds 1,2`: the default "
        "and 16 prompts a step, alternating seed by seed, one run at a time with the whole "
        "machine, evaluated every 25 steps, in a later sitting than seed 0's row.",
    ),
    Table(
        "recipe-lora-alternating-epyc25-seeds345",
        (Source("recipe-lora-alternating-epyc25-seeds345", "runs"),),
        RECIPE_COLUMNS_STEPS,
        "`python benchmarks/default_run.py --variants local,lora-2e-4 --seeds 3,4,5`: the "
        "table above on three more seeds, in a later sitting, alternating, one run at "
        "a time with the whole machine, at commit fbc05de (the AdamW change later reverted; "
        "both variants ran it).",
    ),
    Table(
        "optimizer-step",
        (Source("optimizer-step-xeon", "rows"),),
        (
            Column("threads", lambda r: str(r["threads"])),
            Column("eager", num("eager_s", ".3f", " s")),
            Column("compiled", num("compiled_s", ".3f", " s")),
            Column("speed-up", num("speedup", ".2f", "x")),
        ),
        "`python benchmarks/optimizer_step.py`: the default pure-bf16 AdamW (Kahan-compensated "
        "weights, stochastically rounded bf16 second moment) over all the weights of "
        "SmolLM2-135M-Instruct, medians of alternating steps in one process. Measured while "
        "two trainings ran on the machine's two cores: the two-thread row had less than two "
        "cores to itself.",
    ),
    Table(
        "optimizer-step-epyc25",
        (Source("optimizer-step-epyc25", "rows"),),
        (
            Column("threads", lambda r: str(r["threads"])),
            Column("eager", num("eager_s", ".3f", " s")),
            Column("compiled, a call per slice (48a0a8b, kept)", num("baseline_s", ".3f", " s")),
            Column("compiled, slices as rows (fbc05de, reverted)", num("compiled_s", ".3f", " s")),
            Column("fbc05de against 48a0a8b", num("speedup_vs_baseline", ".2f", "x")),
        ),
        "`python benchmarks/optimizer_step.py --threads 1,2 --repeats 7 --baseline 48a0a8b` at "
        "commit fbc05de: the default pure-bf16 AdamW over all the weights of "
        "SmolLM2-135M-Instruct, eager, compiled as at 48a0a8b and compiled as at fbc05de, "
        "medians of steps taken in turn in one process with the whole machine, seeded fresh "
        "gradients at every step. fbc05de's kernel recompiled again and again (dynamo's guards "
        "on the views' bases, offsets and sizes), and its weights ended apart from 48a0a8b's "
        "(`baseline_max_weight_difference` in the result file).",
    ),
    Table(
        "memory-levers-b1",
        (Source("memory-levers-b1-epyc", "rows"),),
        (
            Column("row", text("row")),
            Column("overrides", text("overrides")),
            Column("peak RSS", num("peak_rss_gb", ".2f", " GB")),
            Column(
                "s/step",
                lambda r: f"{r['s_per_step']:.2f}" + (f" ({r['note']})" if r.get("note") else ""),
            ),
            Column("generate / update, s", lambda r: f"{r['generate_s']} / {r['update_s']}"),
        ),
    ),
    Table(
        "memory-levers-default-run",
        (Source("memory-levers-default-run-epyc", "rows"),),
        (
            Column("configuration", text("configuration")),
            Column("seed 0 (wall)", seed_accuracy(0)),
            Column("seed 1 (wall)", seed_accuracy(1)),
            Column("mean", num("mean", ".1f", "%")),
            Column("peak RSS (s0, s1)", peaks_cell),
        ),
        SHARED,
    ),
    Table(
        "fp32-rollout-levers",
        (Source("fp32-rollout-levers-epyc-avx2", "rows"),),
        (
            Column("variant", text("variant")),
            Column("s / rollout", num("s")),
            Column("vs multinomial", num("vs_first", ".2f", "x")),
            Column("floor / measured", num("floor_share", ".0%")),
        ),
    ),
    Table(
        "update-levers-fp32",
        (Source("update-levers-fp32-epyc-avx2", "rows"),),
        (
            Column("precision", text("precision")),
            Column("attention", text("attention")),
            Column("path", text("path")),
            Column("seconds", num("s")),
        ),
    ),
    Table(
        "run-profile",
        (
            Source("run-profile-epyc-avx2", "rows"),
            Source("run-profile-epyc-avx2-memory-levers", "rows"),
        ),
        (
            Column("run (float32)", text("run")),
            Column("held-out", accuracy_cell),
            Column("wall", wall_cell),
            Column("generate: measured / floor", profile_cell("generate")),
            Column("update: measured / floor", profile_cell("update")),
            Column("evals, load, save", num("rest_s", ".0f", " s")),
        ),
        SHARED,
    ),
    Table(
        "update-levers",
        (Source("update-levers-xeon", "rows"),),
        (
            Column("precision", text("precision")),
            Column("attention", text("attention")),
            Column("path", text("path")),
            Column("seconds", num("s")),
            Column("speed-up vs first row", num("speedup", ".2f", "x")),
        ),
    ),
    Table(
        "update-levers-bf16",
        (
            Source("update-levers-bf16-default-xeon", "rows"),
            Source("update-levers-bf16-b1-xeon", "rows"),
        ),
        (
            Column("completions x tokens", lambda r: f"{r['completions']} x {r['length']}"),
            Column("precision", text("precision")),
            Column("attention", text("attention")),
            Column("path", text("path")),
            Column("seconds", num("s", ".3f")),
            Column("speed-up vs first row", num("speedup", ".2f", "x")),
        ),
        "`python benchmarks/update_levers.py --pure-bf16`: bf16 weights with the fused kernels "
        "installed (the training default on a CPU with native bf16), one forward + backward of "
        "the policy's log-probs, medians of alternating repeats in one process, 2 threads, the "
        "machine otherwise quiet.",
    ),
    Table(
        "b1-commits",
        (Source("b1-one-pass-xeon", "rows"),),
        (
            Column("commit", _commit_cell),
            Column("median s/step", num("median_s")),
            Column("generate", num("generate")),
            Column("ref_logp", num("ref_logp")),
            Column("update", num("update")),
            Column("peak RSS", num("peak_rss_gb", ".2f", " GB")),
        ),
        "`python benchmarks/b1_commits.py --commits eae513b,HEAD --rounds 2`: B1 with "
        "groupwise's defaults at each commit, the commits alternating, 5 steps per run of which "
        "the first is dropped; seconds are medians over both rounds, the machine otherwise quiet.",
    ),
    Table(
        "b1-commits-floor",
        (Source("b1-commits-epyc25", "rows"),),
        B1_COMMIT_FLOOR_COLUMNS,
        "`python benchmarks/b1_commits.py --commits 92592c9,377dbde,6185158 --rounds 2`: B1 "
        "with groupwise's defaults at each commit, the commits alternating, 5 steps per run of "
        "which the first is dropped; seconds are medians over both rounds, in brackets measured "
        "/ FLOP floor (the weight matmuls at the best matmul rates measured before and after "
        "the runs).",
    ),
    Table(
        "b1-commits-native-epyc25",
        (Source("b1-commits-native-epyc25", "rows"),),
        B1_COMMIT_FLOOR_COLUMNS,
        "`python benchmarks/b1_commits.py --commits 92592c9,2d670b5,d95e23c --steps 5 --rounds "
        "2`: B1 with groupwise's defaults at the issue's baseline commit, before the native "
        "kernels and with them, the commits alternating, 5 steps per run of which the first "
        "is dropped; seconds are medians over both rounds, in brackets measured / FLOP floor "
        "(the weight matmuls at the best matmul rates measured before and after the runs).",
    ),
    Table(
        "b1-commits-adamw-epyc25",
        (Source("b1-adamw-epyc25", "rows"),),
        B1_COMMIT_FLOOR_COLUMNS,
        "`python benchmarks/b1_commits.py --commits 48a0a8b,fbc05de --steps 6 --rounds 2`: B1 "
        "with groupwise's defaults before and with the AdamW change of fbc05de (reverted), "
        "alternating, 6 steps per run of which the first is dropped; seconds are medians over "
        "both rounds, in brackets measured / FLOP floor.",
    ),
    Table(
        "decode-levers",
        (Source("decode-levers-packed-xeon", "rows"),),
        (
            Column("attention", text("attention")),
            Column("KV cache", text("cache")),
            Column("ms / decode step", num("ms", ".1f")),
            Column("speed-up vs sdpa+dynamic", num("speedup", ".2f", "x")),
        ),
    ),
    Table(
        "packed-decode-b1",
        (Source("b1-packed-decode-xeon", "rows"),),
        B1_LEVER_COLUMNS,
        "B1 with groupwise's defaults (`pure-bf16`: the packed decode step) and with "
        "`rollout.packed_decode=false`, alternating, 2 rounds of 5 steps, the first of each "
        "dropped; seconds are medians.",
    ),
    Table(
        "native-decode-b1",
        (Source("native-decode-epyc25", "rows"),),
        B1_LEVER_COLUMNS,
        "`python benchmarks/b1_levers.py --variants pure-bf16,torch-decode --steps 6 --rounds "
        "2`: B1 with groupwise's defaults (`pure-bf16`: `rollout.native_kernels=auto`, on here) "
        "and with `rollout.native_kernels=false` (the packed decode step and the sampler in "
        "torch's operations), alternating, 2 rounds of 6 steps, the first of each dropped; "
        "seconds are medians, the machine otherwise quiet.",
    ),
    Table(
        "native-training-update",
        (Source("update-native-epyc25", "rows"),),
        (
            Column("completions x tokens", lambda r: f"{r['completions']} x {r['length']}"),
            Column("path", text("path")),
            Column("seconds", num("s", ".3f")),
            Column("speed-up vs first row", num("speedup", ".2f", "x")),
        ),
        "`python benchmarks/update_levers.py --pure-bf16 --native --prompts 4 --group 8 "
        "--length 48 --repeats 9`: one forward + backward of the policy's log-probs over B1's "
        "whole batch in bf16 weights with the fused kernels, without and with "
        "`training.native_kernels` (the log-prob rows and the RMSNorms in C++), medians of 9 "
        "alternating repeats in one process, 2 threads.",
    ),
    Table(
        "native-training-b1",
        (Source("native-training-epyc25", "rows"),),
        B1_LEVER_COLUMNS,
        "`python benchmarks/b1_levers.py --variants pure-bf16,torch-training --steps 6 --rounds "
        "2`: B1 with groupwise's defaults (`pure-bf16`: `training.native_kernels=auto`, on here) "
        "and with `training.native_kernels=false`, alternating processes, 2 rounds of 6 steps, "
        "the first of each dropped; seconds are medians.",
    ),
    Table(
        "group-parts-b1",
        (Source("group-parts-256-epyc25", "rows"),),
        (
            Column("new tokens", lambda r: str(r["_result"]["figures"]["completion_tokens"])),
            *B1_LEVER_COLUMNS,
        ),
        "`python benchmarks/b1_levers.py --variants pure-bf16,whole-groups --length L`: B1 at "
        "exactly L new tokens per completion, groupwise's defaults at that commit (`pure-bf16`: "
        "at most 512 tokens per forward/backward, so each group of 8 completions runs in 8 parts of one "
        "completion and its prompt) against one whole group per forward/backward "
        "(`whole-groups`), the behaviour before; one run each of 3 steps, seconds are medians "
        "after the first step; four other trainings on the machine were paused (stopped, "
        "their memory resident) while it ran.",
    ),
    Table(
        "auto-budget-b1",
        (Source("auto-budget-256-epyc25", "rows"), Source("auto-budget-1024-epyc25", "rows")),
        (
            Column("new tokens", lambda r: str(r["_result"]["figures"]["completion_tokens"])),
            *B1_LEVER_COLUMNS,
        ),
        "`python benchmarks/b1_levers.py --variants pure-bf16,split-512,whole-groups --length "
        "256 --steps 3`: B1 at exactly 256 new tokens per completion, groupwise's defaults "
        "(`pure-bf16`: `training.max_tokens_per_microbatch=auto`, each group whole here), a "
        "hard bound of 512 tokens (`split-512`, the default before: each group in 8 parts of "
        "one completion and its prompt) and no bound (`whole-groups`); one run each of 3 "
        "steps, seconds are medians after the first step; the machine otherwise quiet. The "
        "1,024-token row: `--variants pure-bf16 --length 1024 --steps 2`, the second step "
        "(auto with 6.1 GB allowed ran each group of 8,239 tokens in 2 parts of 4,143; the "
        "others were not run at that length).",
    ),
    Table(
        "compiled-optimizer-b1",
        (Source("b1-compiled-optimizer-xeon", "rows"),),
        B1_LEVER_COLUMNS,
        "B1 with groupwise's defaults (`pure-bf16`: the AdamW step compiled) and with "
        "`training.compile_optimizer=false`, alternating, 2 rounds of 5 steps, the first of each "
        "dropped (it compiles); seconds are medians; the machine otherwise quiet.",
    ),
    Table(
        "sandbox-overhead",
        (Source("sandbox-overhead-epyc", "rows"),),
        (
            Column("", text("what")),
            Column("before (commit c5919e3)", text("before")),
            Column("after", text("after")),
        ),
    ),
    Table(
        "generation-throughput",
        (Source("generation-throughput-xeon", "rows"),),
        (
            Column("path", text("path")),
            Column("median s", num("median_s")),
            Column("new tokens/s", num("tokens_per_s", ".0f")),
            Column("speed-up", num("speedup", ".2f", "x")),
        ),
    ),
    Table(
        "agent-calculator",
        (Source("agent-calculator-xeon", "seeds"),),
        (
            Column("seed", text("seed")),
            Column("mean reward, steps 1-5", num("first5", ".3f")),
            Column("mean reward, last 5 steps", num("last5", ".3f")),
            Column("gain", num("gain", "+.3f")),
            Column("held-out greedy before -> after", held_out_cell),
            Column("median s/step", num("median_step_s", ".1f")),
            Column("wall", wall_cell),
            Column("peak RSS", num("peak_rss_gb", ".2f", " GB")),
        ),
        "The machine was shared with other jobs during both runs; with `--parallel` the two "
        "seeds also ran at the same time.",
    ),
    Table("scaling-grid", (Source("scaling-xeon-grid", "rows"),), SCALING_COLUMNS),
    Table("scaling-sdpa", (Source("scaling-xeon-sdpa", "rows"),), SCALING_COLUMNS),
    Table(
        "scaling-trl",
        (Source("scaling-trl-xeon", "rows"),),
        SCALING_TRL_COLUMNS,
        "Each side's s/step is the median after its warm-up step; a cell that names a status "
        "(OOM, timeout, not run) is that side's result at that point.",
    ),
)


# ---------------------------------------------------------------------------------------------
# Rendering and checking


def load_results(results_dir: Path = RESULTS) -> dict[str, dict[str, Any]]:
    """Every ``*.json`` in ``results_dir`` by its name."""
    return {p.stem: json.loads(p.read_text()) for p in sorted(results_dir.glob("*.json"))}


def _rows(source: Source, results: dict[str, dict[str, Any]]) -> list[Row]:
    if source.result not in results:
        raise KeyError(f"no result file benchmarks/results/{source.result}.json")
    record = results[source.result]
    figures = record["figures"]
    rows = [figures] if source.rows is None else figures[source.rows]
    rows = [{**row, "_result": record} for row in rows]
    return [r for r in rows if source.where is None or source.where(r)]


def cpu_text(cpu: dict[str, Any]) -> str:
    """'AMD EPYC family 26 (avx2 fma avx512f avx512_bf16; ONEDNN_MAX_CPU_ISA=AVX2 ...)'."""
    name = cpu["model"]
    if cpu.get("family") is not None:
        name += f" family {cpu['family']}"
    if cpu.get("model_number") is not None:
        name += f" model {cpu['model_number']}"
    limits = " ".join(f"{k}={v}" for k, v in cpu.get("isa_env", {}).items())
    return f"{name} ({' '.join(cpu.get('flags', []))}{'; ' + limits if limits else ''})"


def caption(names: Iterable[str], results: dict[str, dict[str, Any]], note: str = "") -> str:
    """One line naming each result file with its commit and date, grouped by CPU."""
    by_cpu: dict[str, list[str]] = {}
    origins = set()
    for name in dict.fromkeys(names):
        r = results[name]
        commit = f"commit {str(r['commit'])[:7]}"
        if r.get("commit_kind") == "recorded":
            commit = f"recorded at {commit}"
        by_cpu.setdefault(cpu_text(r["cpu"]), []).append(f"`{name}` ({commit}, {r['date']})")
        origins.add("transcribed from earlier docs" if r["transcribed"] else "measured")
    groups = "; ".join(f"on {cpu}: {', '.join(items)}" for cpu, items in by_cpu.items())
    line = f"Source: benchmarks/results/, {' and '.join(sorted(origins))}; {groups}."
    return f"<sub>{line}{' ' + note if note else ''}</sub>"


def render(table: Table, results: dict[str, dict[str, Any]]) -> str:
    """The Markdown of ``table`` (header, rows, caption line), ending with a newline."""
    rows = [row for source in table.sources for row in _rows(source, results)]
    lines = [
        "| " + " | ".join(c.header for c in table.columns) + " |",
        "| " + " | ".join("---" for _ in table.columns) + " |",
    ]
    lines += ["| " + " | ".join(c.cell(row) for c in table.columns) + " |" for row in rows]
    lines += ["", caption((s.result for s in table.sources), results, table.note)]
    return "\n".join(lines) + "\n"


def rewrite(text: str, rendered: dict[str, str]) -> tuple[str, list[str]]:
    """``text`` with every generated block replaced; and the names of the blocks that changed.

    Raises KeyError for a block naming a table that :data:`TABLES` does not define."""
    changed: list[str] = []

    def replace(match: re.Match[str]) -> str:
        name = match.group("name")
        if name not in rendered:
            raise KeyError(f"no table {name!r} in scripts/render_results.py TABLES")
        body = "\n" + rendered[name] + "\n"
        if match.group("body") != body:
            changed.append(name)
        return match.group(1) + body + match.group(4)

    return BLOCK.sub(replace, text), changed


def render_all(results: dict[str, dict[str, Any]]) -> dict[str, str]:
    return {table.name: render(table, results) for table in TABLES}


def check(docs: dict[str, str], results: dict[str, dict[str, Any]]) -> list[str]:
    """'doc: table' for every generated block in ``docs`` (name -> text) that differs."""
    rendered = render_all(results)
    return [f"{doc}: {name}" for doc, text in docs.items() for name in rewrite(text, rendered)[1]]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if a table differs")
    args = parser.parse_args(argv)
    results = load_results()
    rendered = render_all(results)
    stale = []
    for doc in DOCS:
        path = ROOT / doc
        new, changed = rewrite(path.read_text(), rendered)
        stale += [f"{doc}: {name}" for name in changed]
        if changed and not args.check:
            path.write_text(new)
    if args.check and stale:
        print("generated tables differ from benchmarks/results (run scripts/render_results.py):")
        print("\n".join(f"  {s}" for s in stale))
        return 1
    for s in stale:
        print(f"rewrote {s}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
