"""Workload B1 at several commits of groupwise, alternating: what a change did to the step.

Each commit is checked out into its own git worktree (under ``--work``; the current checkout
for ``HEAD`` when it is clean) and run as ``groupwise train`` with the workload's keys
(harness.groupwise_command) and that tree's ``src`` first on PYTHONPATH, so every commit runs
on the same venv, model and machine. The commits alternate within each round (the order
reversed every other round), so a slow spell of a shared machine hits them alike; a single run
of the TRL harness can swing by a quarter between sittings on the same CPU. The first
--warmup steps of each run are dropped; the table gives the median over the rest of all rounds
of the step and of each phase, the peak RSS of the process tree, and each phase against its
FLOP floor (harness.floor_for, at the best of the matmul rates measured before and after the
runs, as in trl_vs_groupwise.py: measured / floor, 1.0x being the weight matmuls alone).

Usage (from the repository root, with the groupwise venv):
  .venv/bin/python benchmarks/b1_commits.py --commits eae513b,HEAD [--workload B1] [--steps 5]
      [--warmup 1] [--rounds 2] [--result NAME]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness

PHASES = ("generate", "ref_logp", "update")


def summarise(runs: list[harness.Run], warmup: int) -> dict[str, Any]:
    """Medians over the kept steps of all rounds, and the largest peak RSS."""
    steps = [t for r in runs for t in r.step_times[warmup:]]
    row: dict[str, Any] = {"median_s": statistics.median(steps), "steps": len(steps)}
    for name in PHASES:
        row[name] = statistics.median(v for r in runs for v in r.phases[name][warmup:])
    row["peak_rss_gb"] = max(r.peak_rss_kb for r in runs) * 1024 / harness.GB
    return row


def with_floor(row: dict[str, Any], floor: dict[str, Any]) -> dict[str, Any]:
    """``row`` plus its FLOP floor and, per phase and for the step, measured / floor."""
    floor_s = floor["floor_s"]
    ratios = {name: row[name] / floor_s[name] for name in PHASES if floor_s[name] > 0}
    ratios["step"] = row["median_s"] / floor_s["step"]
    return {**row, "flop_floor": floor, "measured_over_floor": ratios}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--commits", required=True, help="comma-separated, oldest first")
    parser.add_argument("--workload", default="B1", choices=harness.WORKLOADS)
    parser.add_argument("--steps", type=int, default=5, help="steps per run (warm-up included)")
    parser.add_argument("--warmup", type=int, default=1, help="steps dropped from each run")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--work", type=Path, default=harness.ROOT / "runs" / "bench-commits")
    harness.add_result_argument(parser, "-")
    args = parser.parse_args()
    names = [c for c in args.commits.split(",") if c]
    commits = {name: harness.resolve_commit(name) for name in names}
    trees = {
        name: harness.commit_source_tree(sha, args.work / "trees") for name, sha in commits.items()
    }
    model_dir = harness.resolve_model_dir()
    facts = harness.machine_facts()
    runs: dict[str, list[harness.Run]] = {n: [] for n in names}
    for round_ in range(args.rounds):
        for name in names if round_ % 2 == 0 else names[::-1]:
            env = {k: v for k, v in os.environ.items() if k != "GROUPWISE_MALLOC"}
            env["PYTHONPATH"] = str(trees[name])
            run = harness.run_groupwise(
                args.workload,
                name,
                (),
                steps=args.steps,
                round_=round_,
                out_dir=args.work / f"{commits[name][:12]}-{round_}",
                model_dir=model_dir,
                env=env,
            )
            runs[name].append(run)
            steps = ", ".join(f"{t:.1f}" for t in run.step_times)
            print(f"{name} round {round_}: steps [{steps}] s", flush=True)
    rates_end = harness.machine_facts()["matmul_gflops"]
    facts["matmul_gflops_start"], facts["matmul_gflops_end"] = facts["matmul_gflops"], rates_end
    facts["matmul_gflops"] = harness.best_rates(facts["matmul_gflops_start"], rates_end)
    lora = args.workload == "B1-LoRA"
    rows = []
    for n in names:
        floor = harness.floor_for(runs[n], args.warmup, model_dir, lora, facts)
        row = {"commit": n, "sha": commits[n], **summarise(runs[n], args.warmup)}
        rows.append(with_floor(row, floor))
    print(f"\n{args.workload}, {args.steps} steps per run, first {args.warmup} dropped")
    print("(seconds, and measured / FLOP floor)\n")
    print("| commit | median s/step | " + " | ".join(PHASES) + " | peak RSS GB |")
    print("| --- " * (len(PHASES) + 3) + "|")
    for r in rows:
        ratio = r["measured_over_floor"]
        cells = [f"{r[p]:.2f} ({ratio[p]:.2f}x)" for p in PHASES]
        step = f"{r['median_s']:.2f} ({ratio['step']:.2f}x)"
        print(f"| {r['commit']} | {step} | {' | '.join(cells)} | {r['peak_rss_gb']:.2f} |")
    figures = {
        "workload": args.workload,
        "rounds": args.rounds,
        "rows": rows,
        "matmul_gflops": facts["matmul_gflops"],
        "matmul_gflops_start": facts["matmul_gflops_start"],
        "matmul_gflops_end": facts["matmul_gflops_end"],
    }
    harness.write_result(args.result, figures, command=harness.command_line())


if __name__ == "__main__":
    main()
