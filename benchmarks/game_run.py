"""The guessing game learned: examples/guess.yaml, one run per seed, read back into one result.

Each seed is ``groupwise train examples/guess.yaml training.seed=S`` (plus ``--overrides``), run
here one after the other (``--parallel``: at once), or already run (``--read DIR ...``: run
directories made by that command, their seeds read from their ``config.yaml``). From each run:

- held-out greedy games won before and after training (``summary.json``: ``eval_before``,
  ``eval_after``; every secret of the range once, so 100 distinct games for 1..100), and at each
  evaluation in between;
- guesses per held-out game (``eval_samples.jsonl``: a game's guesses are its policy turns;
  an unsolved game counts its whole budget), the mean over won games and over all games;
- per training step, the sampled episodes' mean reward, share of games won
  (``episodes/ended/env_done``) and segments per episode (``turns/mean``);
- the wall time of ``groupwise train`` (``summary.json``: ``wall_time_s``, both evaluations in).

Usage (from the repository root, with the groupwise venv):
  .venv/bin/python benchmarks/game_run.py [--seeds 0,1] [--parallel] [--result NAME]
  .venv/bin/python benchmarks/game_run.py --read runs/guess-s0 runs/guess-s1 --result NAME
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

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness

CONFIG = "examples/guess.yaml"
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


def guesses(completion: str, solved: bool, budget: int) -> int:
    """A held-out game's guesses: its policy turns (``budget`` when it was not won)."""
    if not solved:
        return budget
    return completion.count("\nassistant\n") + 1


def held_out(out_dir: Path, budget: int) -> dict[str, dict[str, Any]]:
    """Per evaluation (label ``before``, ``step N``, ``after``): games won, mean guesses."""
    games: dict[str, list[tuple[bool, int]]] = {}
    for line in (out_dir / "eval_samples.jsonl").read_text().splitlines():
        row = json.loads(line)
        solved = float(row["score"]) > 0
        label = row["label"] if row["label"] in ("before", "after") else f"step {row['step']}"
        games.setdefault(label, []).append((solved, guesses(row["completion"], solved, budget)))
    out = {}
    for label, played in games.items():
        won = [g for s, g in played if s]
        out[label] = {
            "games": len(played),
            "won": 100.0 * len(won) / len(played),
            "guesses_won": statistics.mean(won) if won else None,
            "guesses_all": statistics.mean(g for _, g in played),
        }
    return out


def window(values: list[float], first: bool) -> float | None:
    if len(values) < 2 * WINDOW:
        return None
    return statistics.mean(values[:WINDOW] if first else values[-WINDOW:])


def read_run(out_dir: Path) -> dict[str, Any]:
    """One run's figures (see the module docstring)."""
    config = yaml.safe_load((out_dir / "config.yaml").read_text())
    budget = int(config["rollout"]["engine_kwargs"]["env_kwargs"]["max_guesses"])
    rows = [json.loads(line) for line in (out_dir / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in rows if "step_time" in r]
    # a run started over in the same directory: its steps from the last step 1
    first = max(i for i, r in enumerate(steps) if r["step"] == 1)
    steps = steps[first:]
    rewards = [float(r["reward"]) for r in steps]
    won = [100.0 * float(r.get("episodes/ended/env_done", 0.0)) for r in steps]
    turns = [float(r["turns/mean"]) for r in steps]
    summary = json.loads((out_dir / "summary.json").read_text())
    evals = held_out(out_dir, budget)
    return {
        "seed": int(config["training"]["seed"]),
        "steps": len(steps),
        "max_guesses": budget,
        "eval_before": 100.0 * summary["eval_before"],
        "eval_after": 100.0 * summary["eval_after"],
        "held_out": evals,
        "rewards": rewards,
        "sampled_won": won,
        "segments": turns,
        "reward_first5": window(rewards, True),
        "reward_last5": window(rewards, False),
        "sampled_won_first5": window(won, True),
        "sampled_won_last5": window(won, False),
        "segments_first5": window(turns, True),
        "segments_last5": window(turns, False),
        "wall_s": float(summary["wall_time_s"]),
    }


def figures_of(runs: list[dict[str, Any]], overrides: list[str]) -> dict[str, Any]:
    """The result: per seed, and the example-table fields (rendered by scripts/render_results)."""
    after = [r["eval_after"] for r in runs]
    return {
        "config": CONFIG,
        "overrides": overrides,
        "example": "guess.yaml",
        "what": "multi-turn game, 100 held-out secrets",
        "metric": "greedy games won",
        "unit": "%",
        "before": runs[0]["eval_before"],
        "after": after,
        "spread": max(after) - min(after),
        "guesses_before": runs[0]["held_out"]["before"]["guesses_all"],
        "guesses_after": [r["held_out"]["after"]["guesses_all"] for r in runs],
        "wall_s": [round(r["wall_s"]) for r in runs],
        "seeds": runs,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="0,1", help="comma-separated training.seed values")
    parser.add_argument("--overrides", default="", help="extra 'key=value ...' for every run")
    parser.add_argument("--parallel", action="store_true", help="run the seeds at the same time")
    parser.add_argument("--read", nargs="+", type=Path, help="finished run directories instead")
    parser.add_argument("--out", type=Path, default=harness.ROOT / "runs" / "bench-guess")
    harness.add_result_argument(parser, "example-guess-xeon")
    args = parser.parse_args()
    overrides = shlex.split(args.overrides)
    if args.read:
        runs = [read_run(d) for d in args.read]
    else:
        seeds = [int(s) for s in args.seeds.split(",") if s]

        def run(seed: int) -> dict[str, Any]:
            out_dir = args.out / f"seed{seed}"
            cmd = command(seed, out_dir, overrides)
            harness.run_measured(cmd, dict(os.environ), out_dir.with_suffix(".log"))
            return read_run(out_dir)

        workers = len(seeds) if args.parallel else 1
        with ThreadPoolExecutor(max_workers=workers) as pool:
            runs = list(pool.map(run, seeds))
    for r in runs:
        print(
            f"seed {r['seed']}: greedy won {r['eval_before']:.0f}% -> {r['eval_after']:.0f}%, "
            f"guesses {r['held_out']['before']['guesses_all']:.2f} -> "
            f"{r['held_out']['after']['guesses_all']:.2f}; sampled won "
            f"{r['sampled_won_first5']} -> {r['sampled_won_last5']}; wall {r['wall_s']:.0f} s"
        )
    harness.write_result(args.result, figures_of(runs, overrides))


if __name__ == "__main__":
    main()
