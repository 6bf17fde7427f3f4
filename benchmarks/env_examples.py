"""The environment example scripts trained on the real model: OpenEnv and verifiers.

Each run is one example script (``examples/openenv_env.py``, ``--server`` too, and
``examples/verifiers_env.py``) for ``--max-steps`` steps, run here one after the other, or
already run (``--read NAME=DIR ...``: run directories those scripts wrote). From each run
(``read_run``): the mean reward of every step and of the first and last 5, the held-out
greedy accuracy before and after (``summary.json``), the median step time; and the wall time
(``summary.json``: ``wall_time_s``).

Usage (from the repository root, with the groupwise venv and the extras installed):
  .venv/bin/python benchmarks/env_examples.py [--max-steps 10] [--result NAME]
  .venv/bin/python benchmarks/env_examples.py --read openenv-server=runs/openenv-seed0 ...
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness

SCRIPTS = {
    "openenv": ["examples/openenv_env.py"],
    "openenv-server": ["examples/openenv_env.py", "--server"],
    "verifiers": ["examples/verifiers_env.py"],
}
"""The runs by name: the script and its arguments."""
WINDOW = 5
"""Steps averaged at the start and at the end of a run."""


def read_run(out_dir: Path) -> dict[str, Any]:
    """Per-step rewards, the first and last 5 steps' means, held-out accuracies of a run."""
    rows = [json.loads(line) for line in (out_dir / "metrics.jsonl").read_text().splitlines()]
    rewards = [float(r["reward"]) for r in rows if "step_time" in r]
    summary = json.loads((out_dir / "summary.json").read_text())
    enough = len(rewards) >= 2 * WINDOW
    return {
        "rewards": rewards,
        "first5": statistics.mean(rewards[:WINDOW]) if enough else None,
        "last5": statistics.mean(rewards[-WINDOW:]) if enough else None,
        "eval_before": summary.get("eval_before"),
        "eval_after": summary.get("eval_after"),
    }


def one(name: str, out_dir: Path) -> dict[str, Any]:
    """A run's figures, named."""
    summary = json.loads((out_dir / "summary.json").read_text())
    script, *args = SCRIPTS[name]
    return {
        "run": name,
        "script": " ".join([script, *args]),
        "task": summary.get("task"),
        **read_run(out_dir),
        "wall_s": float(summary["wall_time_s"]),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", default=",".join(SCRIPTS), help="which of " + ", ".join(SCRIPTS))
    parser.add_argument("--max-steps", type=int, default=10)
    parser.add_argument("--read", nargs="+", help="NAME=DIR of finished runs instead")
    parser.add_argument("--note", default="", help="how the --read runs were made")
    parser.add_argument("--out", type=Path, default=harness.ROOT / "runs" / "bench-env-examples")
    harness.add_result_argument(parser, "env-examples-xeon")
    args = parser.parse_args()
    if args.read:
        pairs = [item.split("=", 1) for item in args.read]
        rows = [one(name, Path(path)) for name, path in pairs]
    else:
        rows = []
        for name in args.runs.split(","):
            out_dir = args.out / name
            cmd = [sys.executable, *SCRIPTS[name], "--max-steps", str(args.max_steps)]
            cmd += ["--output-dir", str(out_dir)]
            harness.run_measured(cmd, dict(os.environ), out_dir.with_suffix(".log"))
            rows.append(one(name, out_dir))
    for r in rows:
        print(
            f"{r['run']}: reward first 5 {r['first5']}, last 5 {r['last5']}; held-out "
            f"{r['eval_before']} -> {r['eval_after']}; wall {r['wall_s']:.0f} s"
        )
    harness.write_result(args.result, {"rows": rows, "note": args.note})


if __name__ == "__main__":
    main()
