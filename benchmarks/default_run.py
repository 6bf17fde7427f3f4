"""The default run (``groupwise train``, 100 steps) under several settings, side by side.

Each variant is the default run plus a few config overrides (``VARIANTS``); every seed runs
every variant, one after the other in the order given (seed-major, so a slow spell of a shared
machine hits the variants alike). Per run it records the held-out greedy accuracy before and
after (and at the intermediate evaluations), the wall time of the whole process, the peak RSS of
its process tree (a rollout engine's own process counted), the median seconds per step and per
phase, the mean of the engine-mismatch metrics (``sampling/...``) over the steps, and the
held-out accuracy at fixed wall times from the process's start (``FIXED_TIMES_S``: the newest
evaluation by then; ``--set eval.every_steps=10`` evaluates more often, in every variant).
The lever variants (``dynamic-sampling`` ... ``mu-2-clip-higher``) compare one change of the
recipe with ``local``, the default on a CPU. (Clip-higher alone is not among them: with one
update per rollout, the default, the ratio is exactly 1 and no clip bound is ever reached; it
comes with two updates per rollout, ``mu-2-clip-higher``.)

    python benchmarks/default_run.py --variants local,llamacpp,llamacpp-nocorr --seeds 0,1 \\
        --result default-run-engines-xeon

The result file is rewritten after every run, so an interrupted benchmark keeps what it
measured; ``--reuse`` reads back runs whose directory already has a ``summary.json``.
``--jobs N --threads T`` runs N trainings at once with T threads each (torch's and llama.cpp's):
their wall times then compare with each other, not with runs of the whole machine.
``--commit C`` runs groupwise as it was at commit C (a git worktree's ``src`` first on
PYTHONPATH, the same venv and model), e.g. a baseline re-measured on the CPU at hand; each
run's record names the commit (``groupwise_commit``; without ``--commit``, the checkout's HEAD,
which the result file marks ``dirty`` if the working tree differs from it).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import (
    GB,
    ROOT,
    add_result_argument,
    command_line,
    commit_source_tree,
    groupwise_metrics,
    resolve_commit,
    run_measured,
    write_result,
)

VARIANTS: dict[str, tuple[str, ...]] = {
    "local": ("rollout.engine=local",),
    # the default's decoding through torch's operations only (no C++ decode kernels)
    "torch-decode": ("rollout.engine=local", "rollout.native_kernels=false"),
    "llamacpp": (
        "rollout.engine=llamacpp",
        "algorithm.vllm_importance_sampling_correction=auto",
    ),
    "llamacpp-nocorr": (
        "rollout.engine=llamacpp",
        "algorithm.vllm_importance_sampling_correction=false",
    ),
    "local-async": ("rollout.engine=local", "rollout.max_staleness=1"),
    "llamacpp-async": ("rollout.engine=llamacpp", "rollout.max_staleness=1"),
    # levers of the recipe (each against "local", the default's engine on a CPU)
    "dynamic-sampling": ("rollout.engine=local", "algorithm.dynamic_sampling=true"),
    "entropy-bonus": ("rollout.engine=local", "algorithm.entropy_coef=0.01"),
    "adaptive-entropy": (
        "rollout.engine=local",
        "algorithm.use_adaptive_entropy=true",
        "algorithm.entropy_target=0.3",
    ),
    "group-16": ("rollout.engine=local", "rollout.num_generations=16"),
    "lr-5e-5": ("rollout.engine=local", "training.learning_rate=5e-5"),
    "lr-constant": ("rollout.engine=local", "training.lr_scheduler_type=constant"),
    "top-entropy-0.2": ("rollout.engine=local", "algorithm.top_entropy_quantile=0.2"),
    "temperature-0.7": ("rollout.engine=local", "rollout.temperature=0.7"),
    "mu-2-clip-higher": (  # two updates per rollout, DAPO's upper clip bound
        "rollout.engine=local",
        "algorithm.num_iterations=2",
        "algorithm.epsilon_high=0.28",
    ),
    "mu-2-clip-higher-50-steps": (  # the same in half the steps (the learning rate decays by 50)
        "rollout.engine=local",
        "algorithm.num_iterations=2",
        "algorithm.epsilon_high=0.28",
        "training.max_steps=50",
    ),
    "lora-2e-4": (  # LoRA r 16 on every linear layer at 10x the rate ("LoRA Without Regret", 2025)
        "rollout.engine=local",
        "model.lora=true",
        "training.learning_rate=2e-4",
    ),
    "scale-rewards-batch": (  # group mean, batch std ("Tricks or Traps", arXiv 2508.08221)
        "rollout.engine=local",
        "algorithm.scale_rewards=batch",
    ),
    "lora-2e-4-scale-rewards-batch": (  # LoRA at 2e-4 with scale-rewards-batch
        "rollout.engine=local",
        "model.lora=true",
        "training.learning_rate=2e-4",
        "algorithm.scale_rewards=batch",
    ),
    "batch-128": (  # 16 prompts x 8 completions a step, twice the default's
        "rollout.engine=local",
        "training.per_device_train_batch_size=128",
    ),
    "lora-2e-4-mu-2-clip-higher": (  # the two above together
        "rollout.engine=local",
        "model.lora=true",
        "training.learning_rate=2e-4",
        "algorithm.num_iterations=2",
        "algorithm.epsilon_high=0.28",
    ),
}
"""Overrides of the default run, by variant name."""


def beside(run: Path, suffix: str) -> Path:
    """``<run><suffix>`` next to the run directory (its name may hold a dot: "temperature-0.7")."""
    return run.parent / (run.name + suffix)


PHASES = ("generate", "score", "prepare", "old_logp", "ref_logp", "update", "sync", "wait_rollout")
SAMPLING = (
    "sampling/sampling_logp_difference/mean",
    "sampling/sampling_logp_difference/max",
    "sampling/importance_sampling_ratio/min",
    "sampling/importance_sampling_ratio/mean",
    "sampling/importance_sampling_ratio/max",
    "sampling/masked_share",
    "sampling/staleness",
)


def run_dir(base: Path, variant: str, seed: int) -> Path:
    return base / f"{variant}-seed{seed}"


def command(
    variant: str, seed: int, out: Path, threads: int = 0, extra: tuple[str, ...] = ()
) -> list[str]:
    """``groupwise train`` with the variant's overrides, the seed and the run directory
    (``threads`` > 0: torch's and llama.cpp's threads; ``extra``: overrides of every variant,
    given before the variant's own)."""
    keys = [
        f"training.seed={seed}",
        f"training.output_dir={out}",
        "training.overwrite_output_dir=true",
        "training.progress=false",
    ]
    if threads > 0:
        keys.append(f"training.num_threads={threads}")
        if "rollout.engine=llamacpp" in VARIANTS[variant]:
            keys.append(f"rollout.engine_kwargs.threads={threads}")
    return [sys.executable, "-m", "groupwise", "train", *keys, *extra, *VARIANTS[variant]]


def read_run(out: Path) -> dict[str, Any]:
    """The figures of one finished run directory (``entropy_below_0_1_step``: the first step
    whose sampling entropy fell below 0.1 nats, None if none did)."""
    summary = json.loads((out / "summary.json").read_text())
    rows = groupwise_metrics(out)
    evals = [
        {
            "step": int(r["step"]),
            "accuracy": float(r["eval_accuracy"]),
            "run_time_s": r.get("wall_time"),
        }
        for r in rows
        if "eval_accuracy" in r
    ]
    phases = {p: statistics.median(float(r.get(f"time/{p}", 0.0)) for r in rows) for p in PHASES}
    sampling = {
        k: statistics.fmean(float(r[k]) for r in rows if k in r)
        for k in SAMPLING
        if any(k in r for r in rows)
    }
    entropy = [(int(r["step"]), float(r["entropy"])) for r in rows if "entropy" in r]
    return {
        "entropy_last5": statistics.fmean(h for _, h in entropy[-5:]) if entropy else None,
        "entropy_below_0_1_step": next((step for step, h in entropy if h < 0.1), None),
        "accuracy_before": summary.get("eval_before"),
        "accuracy_after": summary.get("eval_after"),
        "evals": evals,
        "steps": summary.get("steps"),
        "train_time_s": summary.get("train_time_s"),
        "run_wall_time_s": summary.get("wall_time_s"),
        "median_step_s": statistics.median(float(r["step_time"]) for r in rows),
        "phases_median_s": phases,
        "sampling_mean": sampling,
    }


def accuracy_at(record: dict[str, Any], seconds: float) -> float | None:
    """Held-out accuracy of the newest evaluation finished within ``seconds`` of the process's
    start (``None``: none had; the last evaluation counts at the process's end).

    A step's ``wall_time`` counts from the run's start inside the process; the time before it
    (imports, model loading) is the process's wall time minus the summary's ``wall_time_s``,
    which also holds the report's writing after the run, so each evaluation is placed a little
    late (the same for every variant)."""
    wall, run = record.get("wall_s"), record.get("run_wall_time_s")
    if wall is None or run is None:
        return None
    startup = float(wall) - float(run)
    timeline = [(startup, record.get("accuracy_before"))]
    timeline += [
        (startup + float(e["run_time_s"]), e["accuracy"])
        for e in record["evals"]
        if e.get("run_time_s") is not None
    ]
    timeline.append((float(wall), record.get("accuracy_after")))
    done = [acc for t, acc in timeline if t <= seconds and acc is not None]
    return float(done[-1]) if done else None


FIXED_TIMES_S = (180.0, 360.0, 720.0, 1200.0)
"""Wall times (from the process's start) at which each run's held-out accuracy is read: 3 and
6 minutes for a run with the whole machine, 12 and 20 for runs sharing it (``--jobs 2``)."""


def measure(
    variant: str,
    seed: int,
    out: Path,
    *,
    reuse: bool,
    threads: int = 0,
    extra: tuple[str, ...] = (),
    env: dict[str, str] | None = None,
) -> dict[str, float]:
    """Run the variant (unless ``reuse`` finds it finished): wall seconds and peak RSS (GB)
    of the process tree, also kept beside the run as ``<run>.measured.json``. ``env``: the
    process's environment (default: this one's)."""
    kept = beside(out, ".measured.json")
    if reuse and (out / "summary.json").exists():
        if not kept.exists():  # finished, but its driver stopped before recording it
            raise SystemExit(
                f"{out} finished but its wall time and peak RSS were never recorded ({kept} is "
                f"missing): --reuse will not run it again over it; delete {out} to measure it "
                "afresh"
            )
        figures: dict[str, float] = json.loads(kept.read_text())
        return figures
    cmd = command(variant, seed, out, threads, extra)
    measured = run_measured(cmd, dict(os.environ) if env is None else env, beside(out, ".log"))
    figures = {"wall_s": measured.wall_s, "peak_rss_gb": measured.peak_rss_kb * 1024 / GB}
    kept.write_text(json.dumps(figures))
    return figures


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variants", default="local,llamacpp,llamacpp-nocorr")
    parser.add_argument("--seeds", default="0,1")
    parser.add_argument("--base", default="runs/bench-default", help="where the runs go")
    parser.add_argument("--reuse", action="store_true", help="read back finished runs")
    parser.add_argument("--jobs", type=int, default=1, help="trainings at once")
    parser.add_argument("--threads", type=int, default=0, help="threads per training (0: all)")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="an override of every variant (repeatable), e.g. eval.every_steps=10",
    )
    parser.add_argument(
        "--commit",
        default=None,
        help="run groupwise as at this commit (a git worktree under runs/bench-commits/trees)",
    )
    add_result_argument(parser, "-")
    args = parser.parse_args(argv)
    variants = args.variants.split(",")
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        parser.error(f"unknown variants {unknown}; valid: {', '.join(VARIANTS)}")
    seeds = [int(s) for s in args.seeds.split(",")]
    base = (ROOT / args.base).resolve()
    env = dict(os.environ)
    commit = resolve_commit(args.commit or "HEAD")  # the working tree's HEAD by default
    if args.commit:
        tree = commit_source_tree(commit, ROOT / "runs" / "bench-commits" / "trees")
        env["PYTHONPATH"] = str(tree)
    runs: list[dict[str, Any]] = []
    lock = threading.Lock()

    def one(variant: str, seed: int) -> None:
        out = run_dir(base, variant, seed)
        record: dict[str, Any] = {"variant": variant, "seed": seed}
        record["overrides"] = list(VARIANTS[variant])
        record["threads"] = args.threads or None
        record["concurrent_runs"] = args.jobs
        record["common_overrides"] = list(args.set)
        record["groupwise_commit"] = commit
        extra = tuple(args.set)
        figures = measure(
            variant, seed, out, reuse=args.reuse, threads=args.threads, extra=extra, env=env
        )
        record.update(figures)
        record.update(read_run(out))
        record["accuracy_at_s"] = {str(int(t)): accuracy_at(record, t) for t in FIXED_TIMES_S}
        with lock:
            runs.append(record)
            print(json.dumps(record), flush=True)
            figures = {"workload": "default run", "runs": runs}
            write_result(args.result, figures, command=command_line())

    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        futures = [pool.submit(one, v, s) for s in seeds for v in variants]
        for future in futures:
            future.result()


if __name__ == "__main__":
    main()
