"""One groupwise run of a B1 workload with extra overrides: per-step phase times and the resident
memory of its process tree sampled every 20 ms (peak, and the per-second maximum, to see which
phase peaks).

The memory-lever table of benchmarks/README.md comes from runs of this script, one per row,
run one after another, e.g.:
  .venv/bin/python benchmarks/rss_timeline.py B1 5 training.bf16_rounding=stochastic \\
      rollout.compile=true model.reference_on_disk=true
The workload's command (``groupwise_command`` in benchmarks/harness.py: groupwise's defaults
plus the workload's keys) is the baseline; the overrides given here come after it and win. Set
GROUPWISE_MALLOC=tuned in the environment for the malloc tunables.

Usage: python benchmarks/rss_timeline.py WORKLOAD STEPS [KEY=VALUE ...] [--result NAME]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("workload", choices=harness.WORKLOADS)
    parser.add_argument("steps", type=int)
    parser.add_argument("overrides", nargs="*", help="groupwise key=value overrides")
    harness.add_result_argument(parser, "-")
    args = parser.parse_args()
    out = Path("runs") / f"rss-timeline-{args.workload}"
    command = harness.groupwise_command(
        args.workload, args.steps, out, harness.resolve_model_dir(), tuple(args.overrides)
    )
    try:
        measured = harness.run_measured(command, dict(os.environ), out.parent / f"{out.name}.log")
    except RuntimeError as error:
        raise SystemExit(str(error)) from error
    per_second: dict[int, float] = defaultdict(float)
    for t, rss in measured.samples:
        per_second[int(t)] = max(per_second[int(t)], rss)
    peak = measured.peak_rss_kb * 1024 / harness.GB
    print(f"exit 0, wall {measured.wall_s:.0f} s, peak RSS {peak:.2f} GB")
    print(
        "per-second max RSS (s:GB): "
        + " ".join(f"{k}:{v:.2f}" for k, v in sorted(per_second.items()))
    )
    steps = harness.groupwise_metrics(out)
    for row in steps:
        phases = {
            k.removeprefix("time/"): round(v, 2) for k, v in row.items() if k.startswith("time/")
        }
        print(f"step {row['step']}: {row['step_time']:.2f} s {phases}")
    later = [float(r["step_time"]) for r in steps[1:]] or [float(r["step_time"]) for r in steps]
    harness.write_result(
        args.result,
        {
            "workload": args.workload,
            "overrides": args.overrides,
            "peak_rss_gb": peak,
            "s_per_step": statistics.median(later),
            "wall_s": measured.wall_s,
        },
    )


if __name__ == "__main__":
    main()
