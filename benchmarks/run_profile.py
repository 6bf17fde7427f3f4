"""Where a finished run's time went, per phase, against the machine's FLOP floor.

Reads a run directory (``metrics.jsonl``, ``summary.json``, the model's ``config.json``) and
sets each phase's measured seconds, summed over the run, against the seconds its weight matmuls
alone would take at a matmul rate measured now on this machine (or given with ``--gflops``):

    generate  2 N (P T_p + sum of completion lengths)        one prefill per prompt, then the
                                                              sampled tokens (rows leave the
                                                              batch when they finish)
    update    6 N k (T_p + G L_mean)                          k = groups with a non-zero
                                                              advantage (the others are skipped)
    evaluation (summary: wall minus the steps): 2 N E (T_p + answer tokens), counted as the
              remainder, not split by the metrics

with N the matmul parameters (benchmarks/harness.py, matmul_params), P prompts of T_p tokens per step (T_p
from ``num_tokens``), G completions each. Attention, sampling, the optimizer step and Python
overhead are not in the floor, so measured / floor >= 1 and its size says how far a phase is
from the matmuls alone. Precision: the run's own (``summary.json`` precision; float32 when
absent), and the rate is measured in it.

Usage: python benchmarks/run_profile.py RUN_DIR [--gflops 180] [--prompts 8] [--group 8]
    [--result NAME]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness

from groupwise.models import resolve_model_path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--gflops", type=float, default=0.0, help="matmul rate (0 = measure)")
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--group", type=int, default=8)
    harness.add_result_argument(parser, "-")
    args = parser.parse_args()
    steps = [json.loads(x) for x in (args.run_dir / "metrics.jsonl").read_text().splitlines()]
    summary = json.loads((args.run_dir / "summary.json").read_text())
    bf16 = bool(summary.get("precision", {}).get("bf16", False))
    rate = args.gflops or harness.matmul_gflops("bf16" if bf16 else "fp32", (512, 576, 1536), 0.5)
    n = harness.load_matmul_params(resolve_model_path(summary["model"])).total
    p, g = args.prompts, args.group
    flops = {"generate": 0.0, "update": 0.0}
    seconds = {"generate": 0.0, "update": 0.0, "other": 0.0}
    previous_tokens = 0
    for m in steps:
        completion = m["completions/mean_length"] * p * g
        prompt_len = (m["num_tokens"] - previous_tokens - completion) / (p * g)
        previous_tokens = m["num_tokens"]
        informative = p * (1.0 - m["frac_reward_zero_std"])
        flops["generate"] += 2 * n * (p * prompt_len + completion)
        flops["update"] += 6 * n * informative * (prompt_len + g * m["completions/mean_length"])
        seconds["generate"] += m["time/generate"]
        seconds["update"] += m["time/update"]
        seconds["other"] += m["step_time"] - m["time/generate"] - m["time/update"]
    wall = float(summary["wall_time_s"])
    rest = wall - sum(m["step_time"] for m in steps)
    print(f"run {args.run_dir}: {len(steps)} steps, wall {wall:.0f} s, CPU {harness.cpu_line()}")
    print(f"precision {'bf16' if bf16 else 'float32'}; matmul rate {rate:.0f} GFLOP/s; N = {n:,}")
    print("| phase | measured s | FLOP floor s | measured / floor |")
    print("| --- | --- | --- | --- |")
    for phase in ("generate", "update"):
        floor = flops[phase] / (rate * 1e9)
        print(f"| {phase} | {seconds[phase]:.0f} | {floor:.0f} | {seconds[phase] / floor:.2f}x |")
    print(f"| score, sync, bookkeeping | {seconds['other']:.0f} | - | - |")
    print(f"| evaluations, load, save, report | {rest:.0f} | - | - |")
    floors = {k: flops[k] / (rate * 1e9) for k in flops}
    harness.write_result(
        args.result,
        {
            "run": str(args.run_dir),
            "precision": "bf16" if bf16 else "fp32",
            "gflops": rate,
            "wall_s": wall,
            **{f"{k}_s": seconds[k] for k in ("generate", "update")},
            **{f"{k}_floor_s": floors[k] for k in ("generate", "update")},
            "rest_s": rest,
        },
    )


if __name__ == "__main__":
    main()
