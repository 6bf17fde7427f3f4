"""How groupwise's step cost grows with completion length L and group size G (workload B1).

B1 as in benchmarks/harness.py: SmolLM2-135M-Instruct, full fine-tuning, beta 0.04 (reference
model on), mu 1, lr 1e-5 constant, pure bf16 weights, 4 prompts per step in micro-batches of one
group, exactly L new tokens per completion (rollout.max_completion_length =
rollout.min_new_tokens = L). Two series share the point (L=48, G=8), which runs once:

- completion length: L in --lengths (48, 128, 256, 512) at G = --length-group (8);
- group size: G in --groups (4, 8, 16) at L = --group-length (48), 4 x G completions per step
  (training.per_device_train_batch_size = G, gradient_accumulation_steps = 4).

Every point is one subprocess of groupwise's CLI (harness.groupwise_command with the point's
overrides appended; later key=value overrides win). Recorded per point: the median
``step_time`` after the first --warmup steps, the medians of ``time/generate``,
``time/ref_logp`` and ``time/update`` (and "other" = step minus those three), the peak RSS of the
child's process tree (harness.run_measured, GB = 10^9 bytes), and tokens per step (completion tokens P G L, and prompt +
completion tokens from ``num_tokens``). Peak RSS is set against the size a float32
``[completion tokens x vocab]`` logits tensor would have (P G L V 4 bytes; V from the model
config, 49152 for SmolLM2): if the update materialised such a tensor, memory would grow with it.

groupwise against TRL as the model size and the completion length grow:
benchmarks/scaling_trl.py (the same B1 points through the same harness, both trainers).

Outputs: a markdown table on stdout, --out (JSON: every point, its command, per-step times) and
--plot (two panels: s/step and peak RSS against L, the G points at L=48 as a second series).

Usage (from the repository root, with the groupwise venv):
  .venv/bin/python benchmarks/scaling.py [--steps 3] [--warmup 1] [--lengths 48,128,256,512]
      [--groups 4,8,16] [--extra "k=v k=v"] [--out runs/bench-scaling/results.json]
      [--plot runs/bench-scaling/scaling.png]
Smoke check (tiny random model, seconds):
  .venv/bin/python benchmarks/scaling.py --extra "model.name=tiny-random" --lengths 8,16
      --groups 2,4 --group-length 8 --steps 2 --warmup 1 --out runs/bench-scaling-smoke/r.json
      --plot runs/bench-scaling-smoke/scaling.png
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness
from harness import GB, PHASES, PROMPTS, ROOT


@dataclass
class Point:
    """One (L, G) run of groupwise: per-step numbers and the child's peak memory."""

    length: int
    group: int
    prompts: int
    command: list[str]
    step_times: list[float]
    phases: dict[str, list[float]] = field(default_factory=dict)
    num_tokens: list[int] = field(default_factory=list)  # cumulative, prompt + completion
    completion_lengths: list[tuple[float, float]] = field(default_factory=list)
    peak_rss_kb: int = 0
    wall_s: float = 0.0
    log: str = ""

    @property
    def completions(self) -> int:
        """Completions per step (P x G)."""
        return self.prompts * self.group


def point_overrides(length: int, group: int, prompts: int) -> tuple[str, ...]:
    """The overrides that turn the harness's B1 command into the (L, G) point."""
    return (
        f"rollout.num_generations={group}",
        # micro-batches of one group
        f"training.per_device_train_batch_size={group}",
        f"training.gradient_accumulation_steps={prompts}",
        f"rollout.max_completion_length={length}",
        f"rollout.min_new_tokens={length}",
    )


def run_point(
    length: int,
    group: int,
    steps: int,
    work: Path,
    model_dir: Path,
    env: dict[str, str],
    extra: tuple[str, ...],
) -> Point:
    """Run groupwise's CLI for one point and read its metrics.jsonl."""
    out_dir = work / f"L{length}-G{group}"
    overrides = (*point_overrides(length, group, PROMPTS), *extra)
    command = harness.groupwise_command("B1", steps, out_dir, model_dir, overrides)
    log = out_dir.with_suffix(".log")
    measured = harness.run_measured(command, env, log)
    rows = harness.groupwise_metrics(out_dir)
    return Point(
        length=length,
        group=group,
        prompts=PROMPTS,
        command=command,
        step_times=[float(r["step_time"]) for r in rows],
        phases={n: [float(r.get(f"time/{n}", 0.0)) for r in rows] for n in PHASES},
        num_tokens=[int(r["num_tokens"]) for r in rows],
        completion_lengths=[
            (float(r["completions/min_length"]), float(r["completions/max_length"])) for r in rows
        ],
        peak_rss_kb=measured.peak_rss_kb,
        wall_s=measured.wall_s,
        log=str(log),
    )


def summarize_point(point: Point, warmup: int, vocab: int) -> dict[str, Any]:
    """Medians after warm-up, memory, tokens and the float32 logits comparison of one point."""
    kept = range(warmup, len(point.step_times))
    if not kept:
        raise ValueError(f"L={point.length} G={point.group}: no steps left after warm-up")
    step = statistics.median(point.step_times[i] for i in kept)
    phases = {n: statistics.median(point.phases[n][i] for i in kept) for n in PHASES}
    other = statistics.median(
        point.step_times[i] - sum(point.phases[n][i] for n in PHASES) for i in kept
    )
    per_step = [b - a for a, b in zip([0, *point.num_tokens], point.num_tokens, strict=False)]
    completion_tokens = point.completions * point.length
    logits_bytes = completion_tokens * vocab * 4
    rss_gb = point.peak_rss_kb * 1024 / GB
    return {
        "length": point.length,
        "group": point.group,
        "prompts": point.prompts,
        "completions": point.completions,
        "steps_measured": len(kept),
        "median_s_per_step": step,
        "phases_median_s": {**phases, "other": other},
        "completion_tokens_per_step": completion_tokens,
        "tokens_per_step": statistics.median(per_step[i] for i in kept),
        "s_per_1k_completion_tokens": step / completion_tokens * 1000,
        "peak_rss_gb": rss_gb,
        "f32_logits_gb": logits_bytes / GB,
        "rss_over_f32_logits": rss_gb / (logits_bytes / GB),
        "exact_length": all(lo == hi == point.length for lo, hi in point.completion_lengths),
    }


def table(rows: list[dict[str, Any]]) -> str:
    """Markdown table of the summarized points."""
    lines = [
        "| L | G | completions | tokens/step (completion / all) | median s/step | generate "
        "| ref_logp | update | other | s per 1k completion tokens | peak RSS GB "
        "| f32 logits GB | RSS / f32 logits |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        p = r["phases_median_s"]
        lines.append(
            f"| {r['length']} | {r['group']} | {r['completions']} "
            f"| {r['completion_tokens_per_step']} / {r['tokens_per_step']:.0f} "
            f"| {r['median_s_per_step']:.2f} | {p['generate']:.2f} | {p['ref_logp']:.2f} "
            f"| {p['update']:.2f} | {p['other']:.2f} | {r['s_per_1k_completion_tokens']:.3f} "
            f"| {r['peak_rss_gb']:.2f} | {r['f32_logits_gb']:.2f} | {r['rss_over_f32_logits']:.2f} |"
        )
    return "\n".join(lines)


def plot(
    rows: list[dict[str, Any]], length_group: int, group_length: int, vocab: int, path: Path
) -> None:
    """Two panels against L: s/step and peak RSS; the G points (at one L) as a second series."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    by_length = sorted((r for r in rows if r["group"] == length_group), key=lambda r: r["length"])
    by_group = sorted((r for r in rows if r["length"] == group_length), key=lambda r: r["group"])
    fig, (ax_t, ax_m) = plt.subplots(1, 2, figsize=(11, 4.2))
    panels = (
        (ax_t, "median_s_per_step", "seconds per step"),
        (ax_m, "peak_rss_gb", "peak RSS (GB)"),
    )
    for ax, key, label in panels:
        xs = [r["length"] for r in by_length]
        ax.plot(xs, [r[key] for r in by_length], "o-", label=f"G = {length_group}, 4 prompts")
        ax.scatter(
            [r["length"] for r in by_group],
            [r[key] for r in by_group],
            marker="s",
            color="tab:orange",
            zorder=3,
            label=f"G varied at L = {group_length}",
        )
        for r in by_group:
            ax.annotate(
                f"G={r['group']}",
                (r["length"], r[key]),
                textcoords="offset points",
                xytext=(6, -3),
                fontsize=8,
                color="tab:orange",
            )
        ax.set_xlabel("completion length L (new tokens)")
        ax.set_ylabel(label)
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
    if by_length:
        ax_m.plot(
            [r["length"] for r in by_length],
            [r["f32_logits_gb"] for r in by_length],
            "k--",
            alpha=0.6,
            label=f"f32 [tokens x vocab] logits, G = {length_group} (V={vocab})",
        )
    ax_t.set_title("groupwise step time (B1, full fine-tuning)")
    ax_m.set_title("groupwise peak RSS")
    for ax in (ax_t, ax_m):
        ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


_VOCAB = """
import json, sys
from pathlib import Path
from groupwise.models import load_tokenizer, resolve_model_path, smollm2_tokenizer_dir
path = resolve_model_path(sys.argv[1])
if path is None:  # tiny-random: its vocabulary is the SmolLM2 tokenizer's
    print(len(load_tokenizer(smollm2_tokenizer_dir())))
else:
    print(json.loads((Path(path) / "config.json").read_text())["vocab_size"])
"""


def vocab_size(model: str) -> int:
    """The vocabulary size of ``model`` (a preset or directory), read in a subprocess."""
    out = subprocess.run(
        [sys.executable, "-c", _VOCAB, model], check=True, capture_output=True, text=True
    )
    return int(out.stdout.strip().splitlines()[-1])


def int_list(text: str) -> list[int]:
    """'48,128' -> [48, 128]."""
    return [int(x) for x in text.split(",") if x.strip()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=3, help="steps per run (warm-up included)")
    parser.add_argument("--warmup", type=int, default=1, help="steps dropped from each run")
    parser.add_argument("--lengths", type=int_list, default=[48, 128, 256, 512])
    parser.add_argument("--groups", type=int_list, default=[4, 8, 16])
    parser.add_argument("--length-group", type=int, default=8, help="G of the length series")
    parser.add_argument("--group-length", type=int, default=48, help="L of the group series")
    parser.add_argument(
        "--extra", default="", help="extra key=value overrides for groupwise, space-separated"
    )
    parser.add_argument(
        "--out", type=Path, default=ROOT / "runs" / "bench-scaling" / "results.json"
    )
    parser.add_argument(
        "--plot", type=Path, default=ROOT / "runs" / "bench-scaling" / "scaling.png"
    )
    harness.add_result_argument(parser, "scaling")
    args = parser.parse_args()
    if args.steps <= args.warmup:
        parser.error("--steps must be larger than --warmup")
    if any(g < 2 for g in args.groups) or args.length_group < 2:
        parser.error("group sizes must be >= 2")

    extra = tuple(args.extra.split())
    names = [e.partition("=")[2] for e in extra if e.partition("=")[0] in ("model.name", "name")]
    if names:  # the last override wins in groupwise's CLI; model_dir is then unused
        model_name, model_dir = names[-1], Path(names[-1])
    else:
        model_dir = harness.resolve_model_dir()
        model_name = str(model_dir)
    vocab = vocab_size(model_name)

    points = [(length, args.length_group) for length in args.lengths]
    points += [(args.group_length, g) for g in args.groups]
    points = list(dict.fromkeys(points))  # (48, 8) is in both series: run it once
    work = args.out.parent / "work"
    env = dict(os.environ)
    load_before = os.getloadavg()
    print(f"model: {model_name} (vocab {vocab})\nruns and logs: {work}", flush=True)
    runs: list[Point] = []
    for length, group in points:
        point = run_point(length, group, args.steps, work, model_dir, env, extra)
        runs.append(point)
        times = ", ".join(f"{t:.2f}" for t in point.step_times)
        print(
            f"L={length} G={group}: steps [{times}] s, peak RSS "
            f"{point.peak_rss_kb * 1024 / GB:.2f} GB, wall {point.wall_s:.0f} s",
            flush=True,
        )

    rows = [summarize_point(p, args.warmup, vocab) for p in runs]
    text = table(rows)
    print()
    print(text)
    bad = [r for r in rows if not r["exact_length"]]
    for r in bad:
        print(f"WARNING: L={r['length']} G={r['group']}: completions not all {r['length']} tokens")
    worst = max(rows, key=lambda r: r["f32_logits_gb"])
    print(
        f"\nlargest point: L={worst['length']} G={worst['group']}: a float32 [tokens x vocab] "
        f"logits tensor would be {worst['f32_logits_gb']:.2f} GB; peak RSS was "
        f"{worst['peak_rss_gb']:.2f} GB ({worst['rss_over_f32_logits']:.2f}x of it)"
    )
    plot(rows, args.length_group, args.group_length, vocab, args.plot)
    record = {
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "model": model_name,
        "vocab_size": vocab,
        "git": harness.git_state(),
        "machine": {
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "loadavg_before": load_before,
            "loadavg_after": os.getloadavg(),
        },
        "versions": harness.versions(),
        "summary": rows,
        "table": text,
        "runs": [asdict(p) for p in runs],
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=1))
    print(f"\nraw results: {args.out}\nplot: {args.plot}")
    harness.write_result(args.result, {"model": model_name, "rows": rows})


if __name__ == "__main__":
    main()
