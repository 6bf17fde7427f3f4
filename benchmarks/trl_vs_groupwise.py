"""groupwise vs TRL's GRPOTrainer on the same workload: median seconds per step and peak RSS.

Workload B1: SmolLM2-135M-Instruct, 2-digit addition prompts, 4 prompts x 8 completions = 32
completions in one optimizer update per step, exactly 48 new tokens each (EOS suppressed on both
sides), beta = 0.04 (reference model on), mu = 1, lr 1e-5 constant, seed 0, full fine-tuning.
B1-LoRA: the same with LoRA r=16, alpha=32 on all linear layers.

No hand-picked settings (issue 15). Each side runs as a user gets it, plus only the workload:
- groupwise: ``groupwise train`` with its defaults and only the workload's keys (model, batch of
  32 completions in one update, lengths, beta, lr, mu, seed, output dir, the LoRA keys for
  B1-LoRA) and the keys that stop it doing work TRL does not do here (eval, saving, the HTML
  report, completion logs, the progress bar). Precision is its default, ``training.bf16=auto``:
  bf16 only where this CPU computes bf16 natively, decided by groupwise.models.precision's probe.
  ``GROUPWISE_MALLOC`` is removed from its environment.
- TRL: GRPOConfig's defaults apart from the workload (so gradient checkpointing, on by default
  in TRL 1.x; --trl-no-gradient-checkpointing turns it off), in its best precision on this
  machine: --trl-precision auto (the default) takes bf16 (``bf16=True``, autocast over fp32
  weights) where the same probe picks bf16 for groupwise, else fp32 (``bf16=False``).

Rows (each labelled with the precision each side actually used):
- "defaults": groupwise's defaults vs TRL in its best precision.
- "matched fp32" (--matched, on by default; --no-matched skips it): groupwise with
  ``training.bf16=false`` vs TRL with ``bf16=False``, run when either default row computed in
  bf16. Where both defaults already run in fp32 (e.g. an AVX2-only CPU) the default rows are the
  matched rows: the table says so and nothing runs twice.
- "levers" (--levers, off by default): groupwise with the lever set of earlier passes, against
  TRL's default row. Since 2026-11-29 (fourth session) inverse-CDF sampling, the reference mapped
  from disk, the fused kernels and micro-batches of one B1 group (the 512-token budget) are
  defaults; what the set adds beyond them is NON-DEFAULT: stochastically rounded weights
  (``training.bf16_rounding=stochastic``; it learned the default run worse), ``rollout.compile``,
  ``GROUPWISE_MALLOC=tuned`` (unless the caller's environment sets it), pure bf16 weights forced
  even where ``auto`` would not pick them, and for B1-LoRA ``model.lora_merge_in_place``.
--groupwise-extra adds key=value overrides to every groupwise row (their labels then say
"+ extra": they are not the defaults any more).

Each row is its own subprocess of N steps: groupwise through its CLI in this venv, TRL through
benchmarks/trl_b1.py in a separate venv (benchmarks/trl_env.sh creates it, pinned versions).
Within a round the rows run in the order above, reversed in the next round, so drift on the
machine hits both sides alike. Per-step time: groupwise's ``step_time`` from metrics.jsonl;
TRL's on_step_begin -> on_step_end from a TrainerCallback. Both cover generation, rewards,
reference log-probs, forward/backward and the optimizer step, not logging or model loading. The
first --warmup steps of every run are dropped; the median is over the remaining steps of all
rounds. Peak RSS is each child's own ru_maxrss (os.wait4), the maximum over rounds, in GB
(10^9 bytes).

Phases: groupwise's from its ``time/*`` metrics, TRL's from trl_b1.py's method wrappers
(generate, ref_logp, update = the step after the inputs are prepared); "other" is the step minus
the three (rewards, advantages, sync, bookkeeping). Each phase is set against the machine's FLOP
floor (benchmarks/flop_floor.py: the weight matmuls' FLOPs at matmul rates measured here in the
precision the row used, the best of a measurement before and one after the runs): the table
gives floor seconds and measured / floor, so 1.0x would be the matmuls at the measured rate and
nothing else (the JSON also has floor / measured, the fraction of the floor reached).

Printed first and recorded in the results JSON and the Markdown header: the CPU and its ISA
flags, torch's CPU capability, the ISA-limiting environment variables if set, what
``training.bf16=auto`` resolved to and why, and fp32/bf16 matmul GFLOP/s at a training-like
[512, 576] x [576, 1536] and a decode-like [32, 576] x [576, 1536] shape (measured in the
groupwise venv; trl_env.sh pins the same torch). A load average above 0.5 at the start is
warned about: the machine should be otherwise idle.

Usage (from the repository root, with the groupwise venv):
  .venv/bin/python benchmarks/trl_vs_groupwise.py [--steps 5] [--warmup 1] [--rounds 1]
      [--workloads B1,B1-LoRA] [--trl-precision auto|bf16|fp32] [--no-matched] [--levers]
      [--out runs/bench-trl/results.json]
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

sys.path.insert(0, str(Path(__file__).resolve().parent))
from flop_floor import StepShape, floor_seconds, load_matmul_params, step_flops

ROOT = Path(__file__).resolve().parent.parent
WORKLOADS = ("B1", "B1-LoRA")
PROMPTS, GROUP, LENGTH = 4, 8, 48
LORA_R, LORA_ALPHA = 16, 32
GB = 1e9
PHASES = ("generate", "ref_logp", "update")
TRAIN_SHAPE = (512, 576, 1536)
DECODE_SHAPE = (32, 576, 1536)
RATE_SECONDS = 0.3


@dataclass(frozen=True)
class Arm:
    """One configuration of one trainer: a row of the table."""

    key: str
    """Short name, unique per workload (run directories carry it)."""
    trainer: str
    """groupwise or trl."""
    settings: str
    """What the row runs, for the table."""
    precision: str
    """bf16 or fp32: what the row is expected to compute in (checked against the run's own)."""
    overrides: tuple[str, ...] = ()
    """groupwise key=value overrides beyond the workload's."""
    env: tuple[tuple[str, str], ...] = ()
    """Environment variables set for the child (the caller's win)."""


@dataclass(frozen=True)
class Pair:
    """A comparison: a groupwise row against a TRL row."""

    name: str
    groupwise: str
    trl: str


@dataclass
class Run:
    """One trainer subprocess: its per-step times, phases and peak memory."""

    workload: str
    trainer: str
    arm: str
    round: int
    command: list[str]
    step_times: list[float]
    phases: dict[str, list[float]] = field(default_factory=dict)
    prompt_tokens: list[float] = field(default_factory=list)
    """Mean real tokens per prompt, per step."""
    completion_lengths: list[tuple[float, float]] = field(default_factory=list)
    precision: str = ""
    """bf16 or fp32, as the run reported it."""
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


LEVERS = (
    # micro-batches of one group, 4 accumulated into the one update
    "training.per_device_train_batch_size=8",
    "training.gradient_accumulation_steps=4",
    # pure bf16 weights, stochastically rounded AdamW
    "training.bf16=true",
    "training.param_dtype=bfloat16",
    "training.bf16_rounding=stochastic",
    "rollout.compile=true",
    "model.reference_on_disk=true",
    "training.fused_kernels=true",
    "rollout.rank_invariant_sampling=true",
)
"""The lever set of earlier passes (--levers; part of it default now); B1-LoRA adds LORA_LEVERS."""
LORA_LEVERS = ("model.lora_merge_in_place=true",)


def groupwise_command(
    workload: str, steps: int, out_dir: Path, model_dir: Path, overrides: tuple[str, ...] = ()
) -> list[str]:
    """``groupwise train`` with the workload's keys only, then ``overrides`` (later keys win)."""
    keys = {
        # the workload
        "model.name": str(model_dir),
        "training.output_dir": str(out_dir),
        "training.overwrite_output_dir": "true",
        "training.max_steps": str(steps),
        "training.seed": "0",
        "rollout.num_generations": str(GROUP),
        "training.per_device_train_batch_size": str(PROMPTS * GROUP),  # 32 completions...
        "training.gradient_accumulation_steps": "1",  # ...in one optimizer update
        "rollout.max_completion_length": str(LENGTH),
        "rollout.min_new_tokens": str(LENGTH),
        "algorithm.beta": "0.04",
        "algorithm.num_iterations": "1",
        "training.learning_rate": "1e-5",
        "training.lr_scheduler_type": "constant",
        # no work that TRL does not do in trl_b1.py (it logs every step, saves and evaluates
        # nothing, shows no progress bar)
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
        keys.update(
            {
                "model.lora": "true",
                "model.lora_r": str(LORA_R),
                "model.lora_alpha": str(LORA_ALPHA),
                "model.lora_target_modules": "all-linear",
            }
        )
    args = [f"{k}={v}" for k, v in keys.items()]
    return [sys.executable, "-m", "groupwise", "train", *args, *overrides]


def arms_for(
    workload: str,
    groupwise_bf16: bool,
    trl_bf16: bool,
    *,
    matched: bool,
    levers: bool,
    extra: tuple[str, ...],
) -> tuple[list[Arm], list[Pair], list[str]]:
    """The rows to run for ``workload``, the comparisons between them, and notes for the table.

    ``groupwise_bf16``: what ``training.bf16=auto`` resolves to here; ``trl_bf16``: TRL's
    precision. The matched fp32 pair reuses a default row that already runs in fp32.
    """
    word = {True: "bf16", False: "fp32"}
    plus = " + extra" if extra else ""
    gw_default = Arm(
        "groupwise-defaults",
        "groupwise",
        f"defaults (training.bf16=auto){plus}",
        word[groupwise_bf16],
        extra,
    )
    trl_best = Arm(
        f"trl-{word[trl_bf16]}",
        "trl",
        f"GRPOConfig defaults, bf16={trl_bf16} (its best here)",
        word[trl_bf16],
    )
    arms = [gw_default, trl_best]
    pairs = [Pair("defaults", gw_default.key, trl_best.key)]
    notes: list[str] = []
    if groupwise_bf16 and trl_bf16:
        notes.append("defaults: both sides compute in bf16 (matched precision)")
    if matched and (groupwise_bf16 or trl_bf16):
        gw_fp32 = gw_default
        if groupwise_bf16:
            gw_fp32 = Arm(
                "groupwise-fp32",
                "groupwise",
                f"defaults + training.bf16=false{plus}",
                "fp32",
                ("training.bf16=false", *extra),
            )
            arms.append(gw_fp32)
        trl_fp32 = trl_best
        if trl_bf16:
            trl_fp32 = Arm("trl-fp32", "trl", "GRPOConfig defaults, bf16=False", "fp32")
            arms.append(trl_fp32)
        pairs.append(Pair("matched fp32", gw_fp32.key, trl_fp32.key))
    elif not groupwise_bf16 and not trl_bf16:
        notes.append("the default rows are the matched fp32 rows (both sides' best is fp32 here)")
    if levers:
        overrides = LEVERS + (LORA_LEVERS if workload == "B1-LoRA" else ()) + extra
        gw_levers = Arm(
            "groupwise-levers",
            "groupwise",
            f"NON-DEFAULT lever set (--levers){plus}",
            "bf16",
            overrides,
            (("GROUPWISE_MALLOC", "tuned"),),
        )
        arms.append(gw_levers)
        pairs.append(Pair("levers (non-default)", gw_levers.key, trl_best.key))
    return arms, pairs, notes


def run_groupwise(
    workload: str,
    arm: Arm,
    steps: int,
    round_: int,
    work: Path,
    model_dir: Path,
    env: dict[str, str],
) -> Run:
    out_dir = work / f"{workload}-{arm.key}-r{round_}"
    command = groupwise_command(workload, steps, out_dir, model_dir, arm.overrides)
    log = out_dir.with_suffix(".log")
    child_env = {k: v for k, v in env.items() if k != "GROUPWISE_MALLOC"}
    child_env.update(dict(arm.env))
    if "GROUPWISE_MALLOC" in env and arm.env:  # the caller's choice wins for the lever set
        child_env["GROUPWISE_MALLOC"] = env["GROUPWISE_MALLOC"]
    rss, wall = run_measured(command, child_env, log)
    rows = [json.loads(line) for line in (out_dir / "metrics.jsonl").read_text().splitlines()]
    rows = [r for r in rows if "step_time" in r]
    names = ("generate", "score", "old_logp", "ref_logp", "update", "sync")
    phases = {n: [float(r.get(f"time/{n}", 0.0)) for r in rows] for n in names}
    lengths = [
        (float(r["completions/min_length"]), float(r["completions/max_length"])) for r in rows
    ]
    # num_tokens is cumulative: each step adds its completion tokens + G x its prompts' tokens
    prompt_tokens, seen = [], 0.0
    for r in rows:
        added, seen = float(r["num_tokens"]) - seen, float(r["num_tokens"])
        completion = float(r["completions/mean_length"]) * PROMPTS * GROUP
        prompt_tokens.append((added - completion) / GROUP / PROMPTS)
    summary = json.loads((out_dir / "summary.json").read_text())
    precision = "bf16" if summary["precision"]["bf16"] else "fp32"
    step_times = [float(r["step_time"]) for r in rows]
    return Run(
        workload,
        "groupwise",
        arm.key,
        round_,
        command,
        step_times,
        phases,
        prompt_tokens,
        lengths,
        precision,
        rss,
        wall,
        str(log),
    )


def run_trl(
    workload: str,
    arm: Arm,
    steps: int,
    round_: int,
    work: Path,
    model_dir: Path,
    env: dict[str, str],
    trl_python: Path,
    no_checkpointing: bool,
) -> Run:
    out = work / f"{workload}-{arm.key}-r{round_}.json"
    script = ROOT / "benchmarks" / "trl_b1.py"
    command = [str(trl_python), str(script), "--model-dir", str(model_dir), "--steps", str(steps)]
    command += ["--precision", arm.precision, "--out", str(out)]
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
    steps_phases: list[dict[str, float]] = result.get("phases", [])
    phases = {n: [p[n] for p in steps_phases] for n in (*PHASES, "other")} if steps_phases else {}
    prompt_tokens = [
        p["prompt_tokens"] / p["prompt_rows"] for p in steps_phases if p.get("prompt_rows")
    ]
    return Run(
        workload,
        "trl",
        arm.key,
        round_,
        command,
        result["step_times"],
        phases,
        prompt_tokens,
        lengths,
        result.get("precision", "bf16"),
        rss,
        wall,
        str(log),
    )


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


_MACHINE = f"""
import json, os, torch
from groupwise.models.plan import decide_bf16
from groupwise.models.precision import ISA_ENV, cpu_description, matmul_gflops
choice = decide_bf16("auto", torch.device("cpu"))
rates = {{}}
for name, shape in (("train", {TRAIN_SHAPE!r}), ("decode", {DECODE_SHAPE!r})):
    rates[name] = {{
        "shape": list(shape),
        "fp32": matmul_gflops(torch.float32, {RATE_SECONDS}, shape),
        "bf16": matmul_gflops(torch.bfloat16, {RATE_SECONDS}, shape),
    }}
print(json.dumps({{
    "cpu": cpu_description(),
    "cpu_capability": str(torch.backends.cpu.get_cpu_capability()),
    "isa_env": {{k: os.environ[k] for k in ISA_ENV if k in os.environ}},
    "torch": torch.__version__,
    "threads": torch.get_num_threads(),
    "precision": choice.as_dict(),
    "matmul_gflops": rates,
}}))
"""


def machine_facts() -> dict[str, Any]:
    """CPU, torch's CPU capability, ISA env vars, the bf16=auto choice and matmul rates.

    Measured in a subprocess of this venv (torch stays out of the driver)."""
    out = subprocess.run(
        [sys.executable, "-c", _MACHINE], check=True, capture_output=True, text=True, cwd=ROOT
    )
    facts: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return facts


def best_rates(*measured: dict[str, Any]) -> dict[str, Any]:
    """Per shape and dtype, the highest of several ``matmul_gflops`` measurements (a floor
    should not be lowered by a moment of contention)."""
    best: dict[str, Any] = {}
    for rates in measured:
        for name, r in rates.items():
            row = best.setdefault(name, {"shape": r["shape"], "fp32": 0.0, "bf16": 0.0})
            row["fp32"], row["bf16"] = max(row["fp32"], r["fp32"]), max(row["bf16"], r["bf16"])
    return best


def machine_header(facts: dict[str, Any], trl_setting: str, trl_bf16: bool) -> str:
    """The lines printed first and put above the Markdown tables."""
    isa = facts["isa_env"]
    isa_text = ", ".join(f"{k}={v}" for k, v in isa.items()) if isa else "none set"
    p = facts["precision"]
    rates = facts["matmul_gflops"]

    def rate(name: str) -> str:
        r = rates[name]
        m, k, n = r["shape"]
        return f"[{m}, {k}] x [{k}, {n}] fp32 {r['fp32']:.1f}, bf16 {r['bf16']:.1f}"

    trl = "bf16" if trl_bf16 else "fp32"
    return "\n".join(
        [
            f"- CPU: {facts['cpu']}; torch {facts['torch']}, {facts['threads']} threads, "
            f"CPU capability {facts['cpu_capability']}; ISA env: {isa_text}",
            f"- precision, training.bf16=auto -> {'bf16' if p['bf16'] else 'fp32'}: {p['reason']}",
            f"- TRL precision: --trl-precision {trl_setting} -> {trl}",
            f"- matmul GFLOP/s (~{RATE_SECONDS} s each{facts.get('rates_note', '')}): "
            f"training-like {rate('train')}; decode-like {rate('decode')}",
        ]
    )


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


def phase_split(runs: list[Run], warmup: int) -> dict[str, float] | None:
    """Median seconds of generate, ref_logp, update and the rest of the step (None: no split)."""
    per: dict[str, list[float]] = {"generate": [], "ref_logp": [], "update": [], "other": []}
    for run in runs:
        if not all(run.phases.get(k) for k in PHASES):
            return None
        for i, total in enumerate(run.step_times):
            if i < warmup:
                continue
            main = {k: run.phases[k][i] for k in PHASES}
            for k, v in main.items():
                per[k].append(v)
            per["other"].append(total - sum(main.values()))
    return {k: statistics.median(v) for k, v in per.items()}


def floor_for(
    runs: list[Run], warmup: int, model_dir: Path, lora: bool, facts: dict[str, Any]
) -> dict[str, Any]:
    """The FLOP floor of these runs' step (their trainer, precision and mean prompt length)."""
    run = runs[0]
    tokens = [t for r in runs for t in r.prompt_tokens[warmup:]] or [
        t for r in runs for t in r.prompt_tokens
    ]
    prompt_tokens = statistics.fmean(tokens) if tokens else 0.0
    shape = StepShape(PROMPTS, GROUP, prompt_tokens, LENGTH, shared_prefix=run.trainer != "trl")
    params = load_matmul_params(model_dir, LORA_R if lora else 0)
    flops = step_flops(params, shape, lora=lora)
    rates = facts["matmul_gflops"]
    dtype = run.precision
    floor = floor_seconds(flops, rates["train"][dtype], rates["decode"][dtype])
    return {
        "prompt_tokens_mean": prompt_tokens,
        "matmul_params": asdict(params),
        "gflops": {
            "prefill": flops.prefill / 1e9,
            "decode": flops.decode / 1e9,
            "generate": flops.generate / 1e9,
            "ref_logp": flops.ref_logp / 1e9,
            "update": flops.update / 1e9,
            "step": flops.step / 1e9,
        },
        "rates_gflops": {"train": rates["train"][dtype], "decode": rates["decode"][dtype]},
        "floor_s": floor.as_dict(),
    }


def check_lengths(runs: list[Run]) -> list[str]:
    """Warnings for runs whose completions were not all exactly LENGTH tokens."""
    bad = []
    for run in runs:
        name = f"{run.workload} {run.arm} r{run.round}"
        if not run.completion_lengths:
            bad.append(f"{name}: no completion lengths logged")
        elif any(lo != LENGTH or hi != LENGTH for lo, hi in run.completion_lengths):
            bad.append(f"{name}: lengths {run.completion_lengths}")
    return bad


def check_precisions(runs: list[Run], arms: dict[str, Arm]) -> list[str]:
    """Warnings for runs that computed in another precision than their row says."""
    return [
        f"{r.workload} {r.arm} r{r.round}: ran in {r.precision}, expected {arms[r.arm].precision}"
        for r in runs
        if r.precision != arms[r.arm].precision
    ]


def summarize(
    runs: list[Run],
    plan: dict[str, tuple[list[Arm], list[Pair], list[str]]],
    warmup: int,
    model_dir: Path,
    facts: dict[str, Any],
) -> tuple[str, dict[str, Any]]:
    """Markdown tables (rows, comparisons, phases against the FLOP floor) and the same as a dict."""
    rows = [
        "| workload | trainer | settings | precision | median s/step | steps | peak RSS GB |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    comparisons = [
        "| workload | comparison | groupwise (precision) | TRL (precision) "
        "| speed-up (TRL/groupwise) | memory (groupwise/TRL) |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    phase_rows = [
        "| workload | row | precision | generate | ref_logp | update | other | step |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    notes: list[str] = []
    summary: dict[str, Any] = {}
    for workload, (arms, pairs, workload_notes) in plan.items():
        notes += [f"{workload}: {n}" for n in workload_notes]
        stats: dict[str, dict[str, Any]] = {}
        for arm in arms:
            mine = [r for r in runs if r.workload == workload and r.arm == arm.key]
            median, count = median_after_warmup(mine, warmup)
            rss = max(r.peak_rss_kb for r in mine) * 1024 / GB
            precision = "/".join(sorted({r.precision for r in mine}))
            phases = phase_split(mine, warmup)
            floor = floor_for(mine, warmup, model_dir, workload == "B1-LoRA", facts)
            stats[arm.key] = {
                "trainer": arm.trainer,
                "settings": arm.settings,
                "precision": precision,
                "median_s_per_step": median,
                "steps": count,
                "peak_rss_gb": rss,
                "phases_median_s": phases,
                "flop_floor": floor,
            }
            rows.append(
                f"| {workload} | {arm.trainer} | {arm.settings} | {precision} | {median:.2f} "
                f"| {count} | {rss:.2f} |"
            )
            phase_rows.append(_phase_row(workload, arm, precision, median, phases, floor))
            if phases is not None:
                floor_s = floor["floor_s"]
                floor["measured_over_floor"] = {
                    k: phases[k] / floor_s[k] for k in PHASES if floor_s[k] > 0
                }
                floor["measured_over_floor"]["step"] = median / floor_s["step"]
            else:
                floor["measured_over_floor"] = {"step": median / floor["floor_s"]["step"]}
            floor["floor_over_measured"] = {
                k: 1.0 / v for k, v in floor["measured_over_floor"].items()
            }
        pair_stats = []
        for pair in pairs:
            g, t = stats[pair.groupwise], stats[pair.trl]
            speed = t["median_s_per_step"] / g["median_s_per_step"]
            memory = g["peak_rss_gb"] / t["peak_rss_gb"]
            comparisons.append(
                f"| {workload} | {pair.name} | {g['median_s_per_step']:.2f} s ({g['precision']}) "
                f"| {t['median_s_per_step']:.2f} s ({t['precision']}) | {speed:.2f}x "
                f"| {memory:.2f}x |"
            )
            pair_stats.append(
                {
                    **asdict(pair),
                    "speedup_trl_over_groupwise": speed,
                    "memory_groupwise_over_trl": memory,
                }
            )
        summary[workload] = {"rows": stats, "comparisons": pair_stats, "notes": workload_notes}
    text = "\n".join(rows) + "\n\n" + "\n".join(comparisons)
    if notes:
        text += "\n\n" + "\n".join(f"- {n}" for n in notes)
    text += (
        "\n\nPhases, median seconds per step (FLOP floor seconds, measured / floor); the floor "
        "is the weight matmuls at this machine's measured rate in the row's precision "
        "(benchmarks/flop_floor.py):\n\n" + "\n".join(phase_rows)
    )
    return text, summary


def _phase_row(
    workload: str,
    arm: Arm,
    precision: str,
    median: float,
    phases: dict[str, float] | None,
    floor: dict[str, Any],
) -> str:
    floor_s = floor["floor_s"]

    def cell(measured: float, floor_seconds: float) -> str:
        return f"{measured:.2f} ({floor_seconds:.2f}, {measured / floor_seconds:.2f}x)"

    step = cell(median, floor_s["step"])
    if phases is None:
        parts = ["-", "-", "-", "-"]
    else:
        parts = [cell(phases[k], floor_s[k]) for k in PHASES] + [f"{phases['other']:.2f}"]
    return f"| {workload} | {arm.key} | {precision} | {' | '.join(parts)} | {step} |"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=5, help="steps per run (warm-up included)")
    parser.add_argument("--warmup", type=int, default=1, help="steps dropped from each run")
    parser.add_argument("--rounds", type=int, default=1, help="runs per row and workload")
    parser.add_argument("--workloads", default=",".join(WORKLOADS), help="comma-separated")
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "bench-trl" / "results.json")
    parser.add_argument("--trl-venv", type=Path, default=ROOT / ".venv-trl")
    parser.add_argument(
        "--trl-precision",
        choices=("auto", "bf16", "fp32"),
        default="auto",
        help="TRL's precision; auto = bf16 where groupwise's training.bf16=auto probe picks it",
    )
    parser.add_argument(
        "--matched",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also run a matched fp32 pair when a default row computes in bf16 (default: on)",
    )
    parser.add_argument(
        "--levers",
        action="store_true",
        help="also run groupwise with the non-default lever set of earlier passes (own rows)",
    )
    parser.add_argument(
        "--groupwise-extra",
        default="",
        help="extra key=value overrides for every groupwise row, space-separated",
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

    load_before = os.getloadavg()  # before this script's own subprocesses add to it
    trl_python = ensure_trl_env(args.trl_venv)
    model_dir = resolve_model_dir()
    facts = machine_facts()
    groupwise_bf16 = bool(facts["precision"]["bf16"])
    trl_bf16 = groupwise_bf16 if args.trl_precision == "auto" else args.trl_precision == "bf16"
    print(machine_header(facts, args.trl_precision, trl_bf16), flush=True)
    if load_before[0] > 0.5:
        print(
            f"WARNING: the machine is not idle (load average {load_before[0]:.2f}): step times "
            "and matmul rates are skewed by whatever else runs",
            flush=True,
        )
    extra = tuple(args.groupwise_extra.split())
    plan = {
        w: arms_for(
            w, groupwise_bf16, trl_bf16, matched=args.matched, levers=args.levers, extra=extra
        )
        for w in workloads
    }
    arms_by_key = {a.key: a for arms, _, _ in plan.values() for a in arms}
    work = args.out.parent / "work"
    env = dict(os.environ)
    print(f"model: {model_dir}\nruns and logs: {work}", flush=True)
    runs: list[Run] = []
    for workload in workloads:
        arms = plan[workload][0]
        for round_ in range(args.rounds):
            for arm in arms if round_ % 2 == 0 else arms[::-1]:
                if arm.trainer == "groupwise":
                    run = run_groupwise(workload, arm, args.steps, round_, work, model_dir, env)
                else:
                    no_ckpt = args.trl_no_gradient_checkpointing
                    run = run_trl(
                        workload,
                        arm,
                        args.steps,
                        round_,
                        work,
                        model_dir,
                        env,
                        trl_python,
                        no_ckpt,
                    )
                runs.append(run)
                times = ", ".join(f"{t:.1f}" for t in run.step_times)
                print(
                    f"{workload} {arm.key} ({run.precision}) round {round_}: steps [{times}] s, "
                    f"peak RSS {run.peak_rss_kb * 1024 / GB:.2f} GB, wall {run.wall_s:.0f} s",
                    flush=True,
                )

    # the rates again after the runs; the floor uses the best of both measurements
    rates_start = facts["matmul_gflops"]
    rates_end = machine_facts()["matmul_gflops"]
    facts["matmul_gflops_start"], facts["matmul_gflops_end"] = rates_start, rates_end
    facts["matmul_gflops"] = best_rates(rates_start, rates_end)
    facts["rates_note"] = ", best of before and after the runs"
    header = machine_header(facts, args.trl_precision, trl_bf16)
    table, summary = summarize(runs, plan, args.warmup, model_dir, facts)
    table = header + "\n\n" + table
    warnings = check_lengths(runs)
    precision_warnings = check_precisions(runs, arms_by_key)
    print()
    print(table)
    for warning in warnings:
        print(f"WARNING: completions not all {LENGTH} tokens: {warning}")
    for warning in precision_warnings:
        print(f"WARNING: precision: {warning}")
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
    if versions.get("torch") != groupwise_versions.get("torch"):
        print(
            f"WARNING: torch differs between the venvs (TRL {versions.get('torch')}, groupwise "
            f"{groupwise_versions.get('torch')}): the matmul rates were measured in groupwise's"
        )
    record = {
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "model_dir": str(model_dir),
        "git": git_state(),
        "machine": {
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "loadavg_before": load_before,
            "loadavg_after": os.getloadavg(),
            **facts,
        },
        "trl_precision": {"setting": args.trl_precision, "bf16": trl_bf16},
        "plan": {
            w: {"rows": [asdict(a) for a in arms], "comparisons": [asdict(p) for p in pairs]}
            for w, (arms, pairs, _) in plan.items()
        },
        "versions": {"trl_env": versions, "groupwise_env": groupwise_versions},
        "summary": summary,
        "table": table,
        "length_warnings": warnings,
        "precision_warnings": precision_warnings,
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
