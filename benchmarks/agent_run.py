"""An outside agent trained through the endpoint: examples/agent_calculator.yaml, one run per seed.

Each seed is ``groupwise train examples/agent_calculator.yaml training.seed=S`` (plus
``--overrides``), run as its own subprocess (wall time and the peak RSS of its process tree,
harness.run_measured), one after the other (``--parallel``: at the same time). Read back from the run's ``metrics.jsonl``: the
mean reward of every step (``reward``: the task's final_answer_match, 1 when the reply after the
last tool result states the product), the mean of the first 5 and of the last 5 steps, the
median step time, and from ``summary.json`` the held-out greedy accuracy before and after
training (``eval_before``, ``eval_after``) when the run evaluated. The run directories (with ``completions.jsonl``) stay under ``--out``.

Usage (from the repository root, with the groupwise venv and openai installed):
  .venv/bin/python benchmarks/agent_run.py [--seeds 0,1] [--overrides "k=v ..."]
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness

CONFIG = "examples/agent_calculator.yaml"
WINDOW = 5
"""Steps averaged at the start and at the end of a run."""


def command(seed: int, out_dir: Path, overrides: list[str]) -> list[str]:
    """``groupwise train`` of the example config for one seed into ``out_dir``."""
    keys = [
        f"training.seed={seed}",
        f"training.output_dir={out_dir}",
        "training.overwrite_output_dir=true",
        "training.progress=false",
    ]
    return [sys.executable, "-m", "groupwise", "train", CONFIG, *keys, *overrides]


def read_run(out_dir: Path) -> dict[str, Any]:
    """Per-step rewards and times, first/last-window means and held-out accuracies of a run."""
    rows = [json.loads(line) for line in (out_dir / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in rows if "step_time" in r]
    rewards = [float(r["reward"]) for r in steps]
    summary = json.loads((out_dir / "summary.json").read_text())
    enough = len(rewards) >= 2 * WINDOW  # else no window means (a short timing run)
    first = statistics.mean(rewards[:WINDOW]) if enough else None
    last = statistics.mean(rewards[-WINDOW:]) if enough else None
    return {
        "rewards": rewards,
        "first5": first,
        "last5": last,
        "gain": None if first is None or last is None else last - first,
        "step_times": [float(r["step_time"]) for r in steps],
        "median_step_s": statistics.median(float(r["step_time"]) for r in steps),
        "eval_before": summary.get("eval_before"),
        "eval_after": summary.get("eval_after"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="0,1", help="comma-separated training.seed values")
    parser.add_argument("--overrides", default="", help="extra 'key=value ...' for every run")
    parser.add_argument(
        "--parallel",
        action="store_true",
        help="run the seeds at the same time (wall times overlap)",
    )
    parser.add_argument("--out", type=Path, default=harness.ROOT / "runs" / "bench-agent")
    harness.add_result_argument(parser, "agent-calculator-xeon")
    args = parser.parse_args()
    seeds = [int(s) for s in args.seeds.split(",") if s]
    overrides = shlex.split(args.overrides)
    per_seed: dict[int, dict[str, Any]] = {}

    def run(seed: int) -> None:
        out_dir = args.out / f"seed{seed}"
        measured = harness.run_measured(
            command(seed, out_dir, overrides), dict(os.environ), out_dir.with_suffix(".log")
        )
        result = {"seed": seed, **read_run(out_dir)}
        result["wall_s"] = measured.wall_s
        result["peak_rss_gb"] = measured.peak_rss_kb * 1024 / harness.GB
        per_seed[seed] = result
        rewards = ", ".join(f"{r:.3f}" for r in result["rewards"])
        times = ", ".join(f"{t:.1f}" for t in result["step_times"])
        print(
            f"seed {seed}: rewards [{rewards}]; first {WINDOW} {result['first5']}, last "
            f"{WINDOW} {result['last5']}; steps [{times}] s, wall {result['wall_s']:.0f} s, "
            f"peak RSS {result['peak_rss_gb']:.2f} GB",
            flush=True,
        )

    if args.parallel:  # the seeds at once, each its own process
        with ThreadPoolExecutor(max_workers=len(seeds)) as pool:
            list(pool.map(run, seeds))
    else:
        for seed in seeds:
            run(seed)
    figures = {
        "config": CONFIG,
        "overrides": overrides,
        "window": WINDOW,
        "parallel": args.parallel,
        "seeds": [per_seed[s] for s in seeds],
    }
    harness.write_result(args.result, figures)


if __name__ == "__main__":
    main()
