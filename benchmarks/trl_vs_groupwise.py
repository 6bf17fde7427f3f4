"""groupwise vs TRL's GRPOTrainer on the same workload: median seconds per step and peak RSS.

Workload B1: SmolLM2-135M-Instruct, 2-digit addition prompts, 4 prompts x 8 completions = 32
completions per optimizer step, exactly 48 new tokens each (EOS suppressed on both sides),
beta = 0.04 (reference model on), mu = 1, lr 1e-5 constant, full fine-tuning, bf16 where each
trainer supports it: TRL's bf16 autocast over fp32 master weights; groupwise's levers:
- pure bf16 weights (``training.param_dtype=bfloat16``) with stochastically rounded AdamW
  (``training.bf16_rounding=stochastic``: bf16 first and second moments, no compensation buffer);
- micro-batches of one group (8 completions, 4 accumulated per update);
- sampling by inverse CDF (``rollout.rank_invariant_sampling=true``; torch.multinomial is the
  single-process default);
- decoding through ``torch.compile`` over a static KV cache (``rollout.compile=true``; it
  compiles during the warm-up step);
- the frozen reference memory-mapped from a file whose pages are released after each reference
  pass (``model.reference_on_disk=true``; full fine-tuning only);
- glibc malloc tunables (``GROUPWISE_MALLOC=tuned`` in groupwise's environment: the command
  re-executes itself under them).
- the fused training kernels (``training.fused_kernels=true``: RMSNorm, SwiGLU MLP and
  attention softmax saving bf16 inputs instead of float32 copies).
B1-LoRA: the same with LoRA r=16, alpha=32 on all linear layers (groupwise: bf16 frozen base
and bf16 adapters, decoding with the adapters merged into the base weights in place,
``model.lora_merge_in_place=true``, restored bitwise after each rollout).

Each trainer runs as its own subprocess of N steps: groupwise through its CLI in this venv, TRL
through benchmarks/trl_b1.py in a separate venv (benchmarks/trl_env.sh creates it, pinned
versions). Runs alternate (groupwise, TRL, then TRL, groupwise in the next round, ...) so drift
on the machine hits both alike. Per-step time: groupwise's ``step_time`` from metrics.jsonl;
TRL's on_step_begin -> on_step_end from a TrainerCallback. Both cover generation, rewards,
reference log-probs, forward/backward and the optimizer step, not logging or model loading. The
first --warmup steps of every run are dropped; the median is over the remaining steps of all
rounds. Peak RSS is each child's own ru_maxrss (os.wait4), the maximum over rounds, in GB
(10^9 bytes). groupwise's phase split comes from its ``time/*`` metrics; "other" is step_time
minus generate, ref_logp and update (score, sync, bookkeeping).

TRL runs with its GRPOConfig defaults apart from the workload, which includes gradient
checkpointing (on by default in TRL 1.x; --trl-no-gradient-checkpointing turns it off).

Usage (from the repository root, with the groupwise venv):
  .venv/bin/python benchmarks/trl_vs_groupwise.py [--steps 5] [--warmup 1] [--rounds 1]
      [--workloads B1,B1-LoRA] [--out runs/bench-trl/results.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
WORKLOADS = ("B1", "B1-LoRA")
LENGTH = 48
GB = 1e9


@dataclass
class Run:
    """One trainer subprocess: its per-step times, phases and peak memory."""

    workload: str
    trainer: str
    round: int
    command: list[str]
    step_times: list[float]
    phases: dict[str, list[float]] = field(default_factory=dict)
    completion_lengths: list[tuple[float, float]] = field(default_factory=list)
    peak_rss_kb: int = 0
    wall_s: float = 0.0
    log: str = ""


def run_measured(command: list[str], env: dict[str, str], log: Path) -> tuple[int, float]:
    """Run ``command`` to completion; return its own peak RSS (kB) and wall seconds."""
    log.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    with log.open("w") as out:
        proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
        _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)  # already reaped by wait4
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-30:])
        raise RuntimeError(f"exit {proc.returncode}: {shlex.join(command)}\n{tail}")
    return int(usage.ru_maxrss), wall


def groupwise_command(
    workload: str, steps: int, out_dir: Path, model_dir: Path, extra: tuple[str, ...] = ()
) -> list[str]:
    """groupwise's CLI on the workload, every extra (eval, saving, report, logs) turned off."""
    overrides = {
        "model.name": str(model_dir),
        "training.output_dir": str(out_dir),
        "training.overwrite_output_dir": "true",
        "training.max_steps": str(steps),
        "rollout.num_generations": "8",
        # groupwise's levers (same work: 32 completions, one optimizer update per step):
        # micro-batches of one group, and pure bf16 weights (Kahan-compensated AdamW)
        "training.per_device_train_batch_size": "8",
        "training.gradient_accumulation_steps": "4",
        "training.param_dtype": "bfloat16",
        "training.bf16_rounding": "stochastic",
        "rollout.compile": "true",
        "model.reference_on_disk": "true",
        # RMSNorm, SwiGLU and softmax saving bf16 inputs (groupwise.kernels.fused)
        "training.fused_kernels": "true",
        # inverse-CDF sampling (one uniform per row and token) instead of torch.multinomial
        "rollout.rank_invariant_sampling": "true",
        "rollout.max_completion_length": str(LENGTH),
        "rollout.min_new_tokens": str(LENGTH),
        "algorithm.beta": "0.04",
        "algorithm.num_iterations": "1",
        "training.learning_rate": "1e-5",
        "training.lr_scheduler_type": "constant",
        "training.bf16": "true",
        "training.logging_steps": "1",
        "training.log_completions": "false",
        "training.save_final": "false",
        "training.save_steps": "0",
        "training.report": "false",
        "training.progress": "false",
        "eval.before": "false",
        "eval.after": "false",
        "eval.every_steps": "0",
    }
    if workload == "B1-LoRA":
        overrides.update({"model.lora": "true", "model.lora_r": "16", "model.lora_alpha": "32"})
        # decode with the adapters merged into the (shared) base weights, restored after
        overrides["model.lora_merge_in_place"] = "true"
    args = [f"{k}={v}" for k, v in overrides.items()]
    return [sys.executable, "-m", "groupwise", "train", *args, *extra]


def run_groupwise(
    workload: str,
    steps: int,
    round_: int,
    work: Path,
    model_dir: Path,
    env: dict[str, str],
    extra: tuple[str, ...] = (),
) -> Run:
    out_dir = work / f"{workload}-groupwise-r{round_}"
    command = groupwise_command(workload, steps, out_dir, model_dir, extra)
    log = out_dir.with_suffix(".log")
    # the malloc tunables, unless the caller chose (GROUPWISE_MALLOC=default measures without)
    rss, wall = run_measured(command, {"GROUPWISE_MALLOC": "tuned", **env}, log)
    rows = [json.loads(line) for line in (out_dir / "metrics.jsonl").read_text().splitlines()]
    rows = [r for r in rows if "step_time" in r]
    names = ("generate", "score", "old_logp", "ref_logp", "update", "sync")
    phases = {n: [float(r.get(f"time/{n}", 0.0)) for r in rows] for n in names}
    lengths = [
        (float(r["completions/min_length"]), float(r["completions/max_length"])) for r in rows
    ]
    step_times = [float(r["step_time"]) for r in rows]
    return Run(
        workload, "groupwise", round_, command, step_times, phases, lengths, rss, wall, str(log)
    )


def run_trl(
    workload: str,
    steps: int,
    round_: int,
    work: Path,
    model_dir: Path,
    env: dict[str, str],
    trl_python: Path,
    no_checkpointing: bool,
) -> Run:
    out = work / f"{workload}-trl-r{round_}.json"
    script = ROOT / "benchmarks" / "trl_b1.py"
    command = [str(trl_python), str(script), "--model-dir", str(model_dir), "--steps", str(steps)]
    command += ["--out", str(out)]
    if workload == "B1-LoRA":
        command.append("--lora")
    if no_checkpointing:
        command.append("--no-gradient-checkpointing")
    trl_env = {
        **env,
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
    }
    log = out.with_suffix(".log")
    rss, wall = run_measured(command, trl_env, log)
    result = json.loads(out.read_text())
    lengths = [
        (float(r["completions/min_length"]), float(r["completions/max_length"]))
        for r in result["logs"]
        if "completions/min_length" in r
    ]
    run = Run(workload, "trl", round_, command, result["step_times"], {}, lengths, rss, wall)
    run.log = str(log)
    return run


def ensure_trl_env(venv: Path) -> Path:
    """Create (or check) the TRL venv; return its python."""
    env = {**os.environ, "TRL_VENV": str(venv)}
    subprocess.run(["bash", str(ROOT / "benchmarks" / "trl_env.sh")], check=True, env=env)
    return venv / "bin" / "python"


def resolve_model_dir() -> Path:
    """The cached HF directory of SmolLM2-135M-Instruct (converted from the GGUF wheel once).

    Resolved in a subprocess so this driver never imports torch or holds the model.
    """
    code = (
        "from groupwise.models import resolve_model_path;"
        "print(resolve_model_path('smollm2-135m-instruct'))"
    )
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
    return Path(out.stdout.strip().splitlines()[-1])


def git_state() -> dict[str, Any]:
    """The commit measured and the files that differed from it (a dirty tree is worth knowing)."""

    def git(*args: str) -> str:
        out = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True)
        return out.stdout.rstrip()

    return {"commit": git("rev-parse", "HEAD"), "dirty": git("status", "--porcelain").splitlines()}


def median_after_warmup(runs: list[Run], warmup: int) -> tuple[float, int]:
    """Median step time over every run's steps after the first ``warmup``; and how many."""
    times = [t for run in runs for t in run.step_times[warmup:]]
    if not times:
        raise ValueError(f"no steps left after dropping {warmup} warm-up steps")
    return statistics.median(times), len(times)


def phase_split(runs: list[Run], warmup: int) -> dict[str, float]:
    """Median seconds of generate, ref_logp, update and the rest of groupwise's step."""
    per: dict[str, list[float]] = {"generate": [], "ref_logp": [], "update": [], "other": []}
    for run in runs:
        for i, total in enumerate(run.step_times):
            if i < warmup:
                continue
            main = {k: run.phases[k][i] for k in ("generate", "ref_logp", "update")}
            for k, v in main.items():
                per[k].append(v)
            per["other"].append(total - sum(main.values()))
    return {k: statistics.median(v) for k, v in per.items()}


def check_lengths(runs: list[Run]) -> list[str]:
    """Warnings for runs whose completions were not all exactly LENGTH tokens."""
    bad = []
    for run in runs:
        if not run.completion_lengths:
            bad.append(f"{run.workload} {run.trainer} r{run.round}: no completion lengths logged")
        elif any(lo != LENGTH or hi != LENGTH for lo, hi in run.completion_lengths):
            bad.append(
                f"{run.workload} {run.trainer} r{run.round}: lengths {run.completion_lengths}"
            )
    return bad


def summarize(runs: list[Run], workloads: list[str], warmup: int) -> tuple[str, dict[str, Any]]:
    """Markdown tables (times, memory, ratios; groupwise phases) and the same numbers as a dict."""
    lines = [
        "| workload | trainer | median s/step | steps | peak RSS GB | speed-up (TRL/groupwise) "
        "| memory (groupwise/TRL) |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    phase_lines = [
        "| workload | generate | ref_logp | update | other | step (groupwise) |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    summary: dict[str, Any] = {}
    for workload in workloads:
        stats: dict[str, dict[str, float]] = {}
        for trainer in ("groupwise", "trl"):
            mine = [r for r in runs if r.workload == workload and r.trainer == trainer]
            median, count = median_after_warmup(mine, warmup)
            rss = max(r.peak_rss_kb for r in mine) * 1024 / GB
            stats[trainer] = {"median_s_per_step": median, "steps": count, "peak_rss_gb": rss}
        g, t = stats["groupwise"], stats["trl"]
        speed = t["median_s_per_step"] / g["median_s_per_step"]
        memory = g["peak_rss_gb"] / t["peak_rss_gb"]
        for trainer, s in stats.items():
            ratios = f"{speed:.2f}x | {memory:.2f}x" if trainer == "groupwise" else " | "
            lines.append(
                f"| {workload} | {trainer} | {s['median_s_per_step']:.2f} | {s['steps']:.0f} "
                f"| {s['peak_rss_gb']:.2f} | {ratios} |"
            )
        mine = [r for r in runs if r.workload == workload and r.trainer == "groupwise"]
        phases = phase_split(mine, warmup)
        phase_lines.append(
            f"| {workload} | {phases['generate']:.2f} | {phases['ref_logp']:.2f} "
            f"| {phases['update']:.2f} | {phases['other']:.2f} | {g['median_s_per_step']:.2f} |"
        )
        summary[workload] = {
            **stats,
            "speedup_trl_over_groupwise": speed,
            "memory_groupwise_over_trl": memory,
            "groupwise_phases_median_s": phases,
        }
    text = "\n".join(lines) + "\n\ngroupwise phase split (median seconds per step):\n\n"
    return text + "\n".join(phase_lines), summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=5, help="steps per run (warm-up included)")
    parser.add_argument("--warmup", type=int, default=1, help="steps dropped from each run")
    parser.add_argument("--rounds", type=int, default=1, help="runs per trainer and workload")
    parser.add_argument("--workloads", default=",".join(WORKLOADS), help="comma-separated")
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "bench-trl" / "results.json")
    parser.add_argument("--trl-venv", type=Path, default=ROOT / ".venv-trl")
    parser.add_argument(
        "--groupwise-extra",
        default="",
        help="extra key=value overrides for groupwise, space-separated (a lever to measure)",
    )
    parser.add_argument(
        "--trl-no-gradient-checkpointing",
        action="store_true",
        help="turn off TRL's default gradient checkpointing",
    )
    args = parser.parse_args()
    workloads = [w.strip() for w in args.workloads.split(",") if w.strip()]
    unknown = [w for w in workloads if w not in WORKLOADS]
    if unknown:
        parser.error(f"unknown workload {unknown[0]!r}; valid: {', '.join(WORKLOADS)}")
    if args.steps <= args.warmup:
        parser.error("--steps must be larger than --warmup")

    trl_python = ensure_trl_env(args.trl_venv)
    model_dir = resolve_model_dir()
    work = args.out.parent / "work"
    env = dict(os.environ)
    load_before = os.getloadavg()
    print(f"model: {model_dir}\nruns and logs: {work}", flush=True)
    runs: list[Run] = []
    for workload in workloads:
        for round_ in range(args.rounds):
            order = ("groupwise", "trl") if round_ % 2 == 0 else ("trl", "groupwise")
            for trainer in order:
                if trainer == "groupwise":
                    extra = tuple(args.groupwise_extra.split())
                    run = run_groupwise(workload, args.steps, round_, work, model_dir, env, extra)
                else:
                    no_ckpt = args.trl_no_gradient_checkpointing
                    run = run_trl(
                        workload, args.steps, round_, work, model_dir, env, trl_python, no_ckpt
                    )
                runs.append(run)
                times = ", ".join(f"{t:.1f}" for t in run.step_times)
                print(
                    f"{workload} {trainer} round {round_}: steps [{times}] s, "
                    f"peak RSS {run.peak_rss_kb * 1024 / GB:.2f} GB, wall {run.wall_s:.0f} s",
                    flush=True,
                )

    table, summary = summarize(runs, workloads, args.warmup)
    warnings = check_lengths(runs)
    print()
    print(table)
    for warning in warnings:
        print(f"WARNING: completions not all {LENGTH} tokens: {warning}")
    versions = json.loads(
        subprocess.run(
            [str(trl_python), "-c", _VERSIONS], check=True, capture_output=True, text=True
        ).stdout
    )
    groupwise_versions = json.loads(
        subprocess.run(
            [sys.executable, "-c", _VERSIONS], check=True, capture_output=True, text=True
        ).stdout
    )
    record = {
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "model_dir": str(model_dir),
        "machine": {
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "loadavg_before": load_before,
            "loadavg_after": os.getloadavg(),
        },
        "versions": {"trl_env": versions, "groupwise_env": groupwise_versions},
        "summary": summary,
        "table": table,
        "length_warnings": warnings,
        "runs": [asdict(r) for r in runs],
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=1))
    print(f"\nraw results: {args.out}")


_VERSIONS = """
import json
from importlib.metadata import PackageNotFoundError, version
names = ("trl", "transformers", "peft", "torch", "accelerate", "datasets", "groupwise")
found = {}
for name in names:
    try:
        found[name] = version(name)
    except PackageNotFoundError:
        pass
print(json.dumps(found))
"""


if __name__ == "__main__":
    main()
