"""Soak test: a long tiny-random run killed at random moments, resumed each time, nothing lost.

    python scripts/soak.py [--steps 200] [--save-steps 10] [--kills 10] [--seed 0] [--out DIR]

Runs ``groupwise train ... resume=auto`` on the tiny random model (float32, so steps are
bit-reproducible across processes) and kills it --kills times at random moments, with SIGKILL
(no warning: mid-step, mid-log-line or mid-checkpoint) or, one time in four, SIGTERM (the clean
path: finish the step, checkpoint, exit 143). After each kill it relaunches the same command
until the run completes. Then it checks that

- metrics.jsonl and completions.jsonl hold every step 1..N exactly once, in order;
- the newest checkpoint is step N, and at most save_total_limit checkpoints remain;
- with --reference (the default), per-step metrics (timings aside) and the final weights equal
  those of one uninterrupted run of the same config.

Prints a JSON report; exits 1 if any check failed.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

SCRIPTS = Path(__file__).resolve().parent


def varied_reward(prompts: list[Any], completions: list[str], **_: Any) -> list[float]:
    """Spread inside each group (by completion length), so every step moves the weights."""
    return [float(len(c) % 5) / 4.0 for c in completions]


def _command(run: Path, steps: int, save_steps: int) -> list[str]:
    overrides = {
        "model.name": "tiny-random",
        "max_steps": steps,
        "save_steps": save_steps,
        "save_total_limit": 2,
        "num_generations": 4,
        "per_device_train_batch_size": 8,
        "max_completion_length": 8,
        "bf16": False,
        "learning_rate": 1e-3,
        "eval.before": False,
        "eval.after": False,
        "eval.every_steps": 0,
        "progress": False,
        "report": False,
        "data.train_size": 64,
        "data.eval_size": 8,
        "rewards.funcs": "[soak:varied_reward]",
        "output_dir": str(run),
        "resume": "auto",
    }
    args = [f"{k}={v}" for k, v in overrides.items()]
    return [sys.executable, "-m", "groupwise", "train", *args]


def _env() -> dict[str, str]:
    return dict(os.environ, PYTHONPATH=os.pathsep.join([str(SCRIPTS), *sys.path]))


def _steps_logged(run: Path) -> int:
    path = run / "metrics.jsonl"
    return len(path.read_text().splitlines()) if path.exists() else 0


def run_with_kills(
    run: Path, steps: int, save_steps: int, kills: int, rng: random.Random
) -> list[dict[str, Any]]:
    """Launch, kill at random, relaunch until the run completes; returns what happened.

    Each kill waits until the log reaches a random step ahead of where the run stands, then a
    random 0-0.4 s more, so kills land mid-step, mid-log-line and mid-checkpoint alike.
    """
    events: list[dict[str, Any]] = []
    command = _command(run, steps, save_steps)
    while True:
        proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=_env())
        if len(events) < kills:
            start = _steps_logged(run)
            remaining = kills - len(events)
            span = max(1, (steps - start) // (remaining + 1))
            target = min(steps - 1, start + rng.randint(1, 2 * span))
            while proc.poll() is None and _steps_logged(run) < target:
                time.sleep(0.01)
            time.sleep(rng.uniform(0.0, 0.4))
            if proc.poll() is None:
                sig = signal.SIGTERM if rng.random() < 0.25 else signal.SIGKILL
                logged = _steps_logged(run)
                proc.send_signal(sig)
                proc.communicate()
                events.append(
                    {
                        "signal": sig.name,
                        "steps_logged_at_kill": logged,
                        "exit_code": proc.returncode,
                    }
                )
                continue
        _out, err = proc.communicate()
        if proc.returncode != 0:
            raise SystemExit(f"the run failed (exit {proc.returncode}):\n{err.decode()[-2000:]}")
        events.append({"signal": None, "completed": True})
        return events


def _metric_rows(run: Path) -> list[dict[str, Any]]:
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if not k.startswith(("time/", "step_time"))} for r in rows]


def _final_weights(run: Path) -> dict[str, Any]:
    from safetensors.torch import load_file

    return load_file(str(run / "final" / "model.safetensors"))


def check(run: Path, steps: int, reference: Path | None) -> dict[str, bool]:
    """The checks listed in the module docstring."""
    from groupwise.run.checkpoint import list_checkpoints

    metric_steps = [r["step"] for r in _metric_rows(run)]
    lines = (run / "completions.jsonl").read_text().splitlines()
    completion_steps = [json.loads(x)["step"] for x in lines]
    checkpoints = list_checkpoints(run)
    result = {
        "metrics: every step once, in order": metric_steps == list(range(1, steps + 1)),
        "completions: every step, in order": sorted(set(completion_steps)) == metric_steps
        and completion_steps == sorted(completion_steps),
        "newest checkpoint is the last step": bool(checkpoints)
        and checkpoints[-1].name == f"step-{steps:08d}",
        "at most save_total_limit checkpoints": len(checkpoints) <= 2,
    }
    if reference is not None:
        import torch

        result["metrics equal the uninterrupted run"] = _metric_rows(run) == _metric_rows(reference)
        a, b = _final_weights(run), _final_weights(reference)
        result["final weights equal the uninterrupted run"] = a.keys() == b.keys() and all(
            torch.equal(a[k], b[k]) for k in a
        )
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--save-steps", type=int, default=10)
    parser.add_argument("--kills", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("runs/soak"))
    parser.add_argument("--no-reference", action="store_true", help="skip the uninterrupted run")
    args = parser.parse_args(argv)
    if args.out.exists():
        raise SystemExit(f"{args.out} exists; remove it or pass another --out")
    start = time.monotonic()
    events = run_with_kills(
        args.out / "killed", args.steps, args.save_steps, args.kills, random.Random(args.seed)
    )
    killed_s = time.monotonic() - start
    reference = None
    if not args.no_reference:
        reference = args.out / "reference"
        run_with_kills(reference, args.steps, args.save_steps, 0, random.Random(0))
    checks = check(args.out / "killed", args.steps, reference)
    report = {
        "steps": args.steps,
        "save_steps": args.save_steps,
        "kills": [e for e in events if e["signal"]],
        "killed_run_wall_s": round(killed_s, 1),
        "checks": checks,
        "ok": all(checks.values()),
    }
    print(json.dumps(report, indent=1))
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
