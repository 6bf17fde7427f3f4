"""groupwise vs TRL's GRPOTrainer on the same workload: median seconds per step and peak RSS.

Workload B1: SmolLM2-135M-Instruct, 2-digit addition prompts, 4 prompts x 8 completions = 32
completions in one optimizer update per step, exactly 48 new tokens each (EOS suppressed on both
sides), beta = 0.04 (reference model on), mu = 1, lr 1e-5 constant, seed 0, full fine-tuning.
B1-LoRA: the same with LoRA r=16, alpha=32 on all linear layers.

No hand-picked settings. Each side runs as a user gets it, plus only the workload:
- groupwise: ``groupwise train`` with its defaults and only the workload's keys (model, batch of
  32 completions in one update, lengths, beta, lr, mu, seed, output dir, the LoRA keys for
  B1-LoRA) and the keys that stop it doing work TRL does not do here (eval, saving, the HTML
  report, completion logs, the progress bar). Precision is its default, ``training.bf16=auto``:
  bf16 only where this CPU computes bf16 natively, decided by groupwise.models.precision's probe.
  ``GROUPWISE_MALLOC`` is removed from its environment.
- TRL: GRPOConfig's defaults apart from the workload (so gradient checkpointing, on by default
  in TRL 1.x; --trl-no-gradient-checkpointing turns it off in the default and matched rows), in
  its best precision on this machine: --trl-precision auto (the default) takes bf16
  (``bf16=True``, autocast over fp32 weights) where the same probe picks bf16 for groupwise,
  else fp32 (``bf16=False``). Beside it, TRL's fastest setting on this CPU is measured (below).

Rows (each labelled with the precision each side actually used):
- "defaults": groupwise's defaults vs TRL in its best precision.
- "matched fp32" (--matched, on by default; --no-matched skips it): groupwise with
  ``training.bf16=false`` vs TRL with ``bf16=False``, run when either default row computed in
  bf16. Where both defaults already run in fp32 (e.g. an AVX2-only CPU) the default rows are the
  matched rows: the table says so and nothing runs twice.
- "levers" (--levers, off by default): groupwise with the lever set of earlier passes, against
  TRL's default row. Since 2026-11-29 inverse-CDF sampling, the reference mapped
  from disk, the fused kernels and micro-batches of one B1 group (the 512-token budget) are
  defaults; what the set adds beyond them is NON-DEFAULT: stochastically rounded weights
  (``training.bf16_rounding=stochastic``; it learned the default run worse), ``rollout.compile``,
  ``GROUPWISE_MALLOC=tuned`` (unless the caller's environment sets it), pure bf16 weights forced
  even where ``auto`` would not pick them, and for B1-LoRA ``model.lora_merge_in_place``.
- "vs TRL's fastest: KEY" (--trl-fastest, on by default; --no-trl-fastest skips it): groupwise's
  defaults against the TRL row of lowest median s/step among the candidates: the default TRL
  row; gradient checkpointing off (its rows' key ends in ``-no-gc``; not run again when
  --trl-no-gradient-checkpointing already turned it off in the default row); gradient
  checkpointing off with bf16 weights (``trl-bf16-weights-no-gc``: ``model_init_kwargs={"dtype":
  torch.bfloat16}``, ``bf16=True``; TRL then trains the bf16 weights directly, each AdamW update
  rounded to nearest, where groupwise's bf16 default holds bf16 weights with a compensated
  update, ``training.bf16_rounding``). KEY names the winner; a table lists every candidate's
  s/step and peak RSS. A candidate beyond TRL's default row is stopped once its wall time
  exceeds --trl-candidate-timeout (default 2) times that of the quickest TRL run of the
  workload finished before it: it cannot be the fastest then, and the table says it was
  stopped (on a CPU without native bf16 the bf16-weights row computes at ~1 GFLOP/s, hours
  a step).
  ``trl_candidates`` says which other GRPOConfig settings were considered and why they are not
  candidates.
--groupwise-extra adds key=value overrides to every groupwise row (their labels then say
"+ extra": they are not the defaults any more).

Each row is its own subprocess of N steps: groupwise through its CLI in this venv, TRL through
benchmarks/trl_b1.py in a separate venv (benchmarks/trl_env.sh creates it, pinned versions).
Within a round the rows run in the order above, reversed in the next round, so drift on the
machine hits both sides alike. Per-step time: groupwise's ``step_time`` from metrics.jsonl;
TRL's on_step_begin -> on_step_end from a TrainerCallback. Both cover generation, rewards,
reference log-probs, forward/backward and the optimizer step, not logging or model loading. The
first --warmup steps of every run are dropped; the median is over the remaining steps of all
rounds. Peak RSS is each child's process tree's (benchmarks/harness.py, run_measured), the
maximum over rounds, in GB (10^9 bytes).

Phases: groupwise's from its ``time/*`` metrics, TRL's from trl_b1.py's method wrappers
(generate, ref_logp, update = the step after the inputs are prepared); "other" is the step minus
the three (rewards, advantages, sync, bookkeeping). Each phase is set against the machine's FLOP
floor (benchmarks/harness.py: the weight matmuls' FLOPs at matmul rates measured here in the
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
      [--no-trl-fastest] [--trl-no-gradient-checkpointing] [--groupwise-extra "k=v ..."]
      [--result NAME] [--out runs/bench-trl/results.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness
from harness import (
    GB,
    LENGTH,
    PHASES,
    RATE_SECONDS,
    ROOT,
    WORKLOADS,
    Run,
    floor_for,
    median_after_warmup,
    phase_split,
)


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
    trl_args: tuple[str, ...] = ()
    """benchmarks/trl_b1.py options beyond the workload's and ``--precision``."""


@dataclass(frozen=True)
class Pair:
    """A comparison: a groupwise row against a TRL row, or against the fastest of ``candidates``."""

    name: str
    groupwise: str
    trl: str
    """The TRL row's key; empty when ``candidates`` decide it after the runs."""
    candidates: tuple[str, ...] = ()
    """TRL rows to pick from: the one with the lowest median s/step (:func:`fastest_arm`)."""


def fastest_arm(medians: dict[str, float], candidates: tuple[str, ...]) -> str:
    """The candidate with the lowest median s/step in ``medians`` (row key -> seconds); on a tie
    the earlier candidate, so TRL's default row (listed first) wins ties. ValueError when there
    is no candidate or one has no median."""
    if not candidates:
        raise ValueError("no TRL candidate rows to pick the fastest from")
    missing = [c for c in candidates if c not in medians]
    if missing:
        raise ValueError(f"no median s/step for the TRL candidate row(s) {missing}")
    return min(candidates, key=lambda key: medians[key])  # min keeps the first of equals


def candidate_timeout(
    key: str, pairs: list[Pair], runs: list[Run], workload: str, factor: float
) -> float | None:
    """The wall-time bound of TRL row ``key``: ``factor`` x the wall of the quickest unstopped
    TRL run of ``workload`` so far when ``key`` is a candidate of a "fastest" pair other than
    the first (TRL's default row, always run to the end); None otherwise. Every run of a
    workload has the same steps, so a run still going at that bound cannot turn out the
    fastest (its loading takes seconds, its steps the rest)."""
    extra = {k for pair in pairs for k in pair.candidates[1:]}
    done = [
        r.wall_s
        for r in runs
        if r.workload == workload and r.trainer == "trl" and not r.stopped and r.step_times
    ]
    if factor <= 0 or key not in extra or not done:
        return None
    return factor * min(done)


def trl_candidates(default: Arm, default_no_gc: bool) -> list[Arm]:
    """The TRL rows "vs TRL's fastest" picks from: ``default`` (TRL's default row) and the
    settings a user would turn to for speed on a CPU that train the same workload:

    - gradient checkpointing off (on by default in TRL 1.x; it recomputes the forward in the
      backward to save memory). Not a row of its own when ``default_no_gc`` (the default row
      already runs without it);
    - gradient checkpointing off and bf16 weights (``model_init_kwargs={"dtype":
      torch.bfloat16}`` with ``bf16=True``): TRL then trains the bf16 weights directly, rounding
      each AdamW update to nearest, with no float32 master copy (groupwise's bf16 default holds
      bf16 weights too, with a compensated update). It runs on every CPU, native bf16 or not:
      which setting is fastest is measured, not assumed.

    Considered and not run: ``use_cpu`` (already set; a CPU-only machine runs on the CPU
    anyway), ``torch_compile`` (every new prompt length recompiles, the generation loop too),
    ``cache_implementation="static"`` (a fixed-size KV cache, meant for compiled decoding),
    ``use_transformers_continuous_batching`` and ``use_vllm`` (other generation engines, not
    validated on CPU with this workload's fixed 48-token completions), ``use_liger_kernel`` and
    ``model_init_kwargs={"use_kernels": True}`` (GPU kernels, the latter downloaded from the Hub),
    ``cast_lm_head_to_fp32`` (slower, and refused for tied embeddings); ``steps_per_generation``
    or ``generation_batch_size`` would change the batches trained on."""
    word = default.precision
    arms = [default]
    if not default_no_gc:
        arms.append(
            Arm(
                f"trl-{word}-no-gc",
                "trl",
                f"gradient_checkpointing=False, bf16={word == 'bf16'}",
                word,
                trl_args=("--no-gradient-checkpointing",),
            )
        )
    arms.append(
        Arm(
            "trl-bf16-weights-no-gc",
            "trl",
            "gradient_checkpointing=False, bf16 weights (model_init_kwargs dtype=bfloat16), "
            "bf16=True",
            "bf16",
            trl_args=("--no-gradient-checkpointing", "--weights-dtype", "bf16"),
        )
    )
    return arms


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


def arms_for(
    workload: str,
    groupwise_bf16: bool,
    trl_bf16: bool,
    *,
    matched: bool,
    levers: bool,
    extra: tuple[str, ...],
    trl_fastest: bool = True,
    trl_no_gc: bool = False,
) -> tuple[list[Arm], list[Pair], list[str]]:
    """The rows to run for ``workload``, the comparisons between them, and notes for the table.

    ``groupwise_bf16``: what ``training.bf16=auto`` resolves to here; ``trl_bf16``: TRL's
    precision; ``trl_no_gc``: TRL's default and matched rows run without gradient checkpointing.
    The matched fp32 pair reuses a default row that already runs in fp32; ``trl_fastest`` adds
    :func:`trl_candidates` and the pair "vs TRL's fastest" (groupwise's defaults against the
    candidate with the lowest median s/step, picked after the runs).
    """
    word = {True: "bf16", False: "fp32"}
    no_gc = ("--no-gradient-checkpointing",) if trl_no_gc else ()
    no_gc_text = ", gradient_checkpointing=False" if trl_no_gc else ""
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
        f"GRPOConfig defaults, bf16={trl_bf16} (its best here){no_gc_text}",
        word[trl_bf16],
        trl_args=no_gc,
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
            trl_fp32 = Arm(
                "trl-fp32",
                "trl",
                f"GRPOConfig defaults, bf16=False{no_gc_text}",
                "fp32",
                trl_args=no_gc,
            )
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
    if trl_fastest:
        candidates = trl_candidates(trl_best, trl_no_gc)
        known = {a.key for a in arms}
        arms += [a for a in candidates if a.key not in known]
        keys = tuple(a.key for a in candidates)
        pairs.append(Pair("vs TRL's fastest", gw_default.key, "", keys))
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
    """One groupwise row: the harness's B1 command with the arm's overrides and environment
    (``GROUPWISE_MALLOC`` removed unless the arm sets it; the caller's value wins then)."""
    child_env = {k: v for k, v in env.items() if k != "GROUPWISE_MALLOC"}
    child_env.update(dict(arm.env))
    if "GROUPWISE_MALLOC" in env and arm.env:  # the caller's choice wins for the lever set
        child_env["GROUPWISE_MALLOC"] = env["GROUPWISE_MALLOC"]
    return harness.run_groupwise(
        workload,
        arm.key,
        arm.overrides,
        steps=steps,
        round_=round_,
        out_dir=work / f"{workload}-{arm.key}-r{round_}",
        model_dir=model_dir,
        env=child_env,
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
    timeout_s: float | None = None,
) -> Run:
    """One TRL row: benchmarks/trl_b1.py in TRL's venv with the arm's precision and options.
    With ``timeout_s`` the run is stopped after that many wall seconds; a stopped run keeps
    the steps it finished (its ``step N: S s`` lines) and says why in ``Run.stopped``."""
    out = work / f"{workload}-{arm.key}-r{round_}.json"
    out.unlink(missing_ok=True)
    script = ROOT / "benchmarks" / "trl_b1.py"
    command = [str(trl_python), str(script), "--model-dir", str(model_dir), "--steps", str(steps)]
    command += ["--precision", arm.precision, *arm.trl_args, "--out", str(out)]
    if workload == "B1-LoRA":
        command.append("--lora")
    trl_env = {
        **env,
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
    }
    log = out.with_suffix(".log")
    limits = harness.Limits(timeout_s=timeout_s) if timeout_s else None
    measured = harness.run_measured(command, trl_env, log, limits=limits)
    run = Run(workload, "trl", arm.key, round_, command, [], precision=arm.precision)
    run.peak_rss_kb, run.wall_s, run.log, run.stopped = (
        measured.peak_rss_kb,
        measured.wall_s,
        str(log),
        measured.stopped,
    )
    if measured.stopped:  # no result JSON: the steps it printed
        run.step_times = harness.logged_step_times(log.read_text(errors="replace"))
        return run
    result = json.loads(out.read_text())
    run.step_times = result["step_times"]
    run.precision = result.get("precision", "bf16")
    run.completion_lengths = [
        (float(r["completions/min_length"]), float(r["completions/max_length"]))
        for r in result["logs"]
        if "completions/min_length" in r
    ]
    steps_phases: list[dict[str, float]] = result.get("phases", [])
    if steps_phases:
        run.phases = {n: [p[n] for p in steps_phases] for n in (*PHASES, "other")}
    run.prompt_tokens = [
        p["prompt_tokens"] / p["prompt_rows"] for p in steps_phases if p.get("prompt_rows")
    ]
    return run


def ensure_trl_env(venv: Path) -> Path:
    """Create (or check) the TRL venv; return its python."""
    env = {**os.environ, "TRL_VENV": str(venv)}
    subprocess.run(["bash", str(ROOT / "benchmarks" / "trl_env.sh")], check=True, env=env)
    return venv / "bin" / "python"


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
    candidate_rows = [
        "| workload | TRL row | settings | precision | median s/step | peak RSS GB | vs fastest |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    notes: list[str] = []
    summary: dict[str, Any] = {}
    for workload, (arms, pairs, workload_notes) in plan.items():
        notes += [f"{workload}: {n}" for n in workload_notes]
        stats: dict[str, dict[str, Any]] = {}
        for arm in arms:
            mine = [r for r in runs if r.workload == workload and r.arm == arm.key]
            rss = max(r.peak_rss_kb for r in mine) * 1024 / GB
            precision = "/".join(sorted({r.precision for r in mine}))
            stopped = "; ".join(sorted({r.stopped for r in mine if r.stopped}))
            if stopped and sum(len(r.step_times[warmup:]) for r in mine) == 0:
                stats[arm.key] = _stopped_stats(arm, precision, rss, stopped, mine)
                rows.append(
                    f"| {workload} | {arm.trainer} | {arm.settings} | {precision} "
                    f"| stopped ({stopped}) | 0 | {rss:.2f} |"
                )
                continue
            median, count = median_after_warmup(mine, warmup)
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
                "stopped": stopped,
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
        pair_stats = [pair_figures(pair, stats) for pair in pairs]
        for entry in pair_stats:
            g, t = stats[entry["groupwise"]], stats[entry["trl"]]
            comparisons.append(
                f"| {workload} | {entry['name']} "
                f"| {g['median_s_per_step']:.2f} s ({g['precision']}) "
                f"| {t['median_s_per_step']:.2f} s ({t['precision']}) "
                f"| {entry['speedup_trl_over_groupwise']:.2f}x "
                f"| {entry['memory_groupwise_over_trl']:.2f}x |"
            )
            candidate_rows += [_candidate_row(workload, c) for c in entry.get("candidates", [])]
        summary[workload] = {"rows": stats, "comparisons": pair_stats, "notes": workload_notes}
    text = "\n".join(rows) + "\n\n" + "\n".join(comparisons)
    if len(candidate_rows) > 2:
        text += (
            "\n\nTRL's candidate rows for \"vs TRL's fastest\" (median s/step, peak RSS of the "
            "process tree; the slower ones as s/step over the fastest's):\n\n"
            + "\n".join(candidate_rows)
        )
    if notes:
        text += "\n\n" + "\n".join(f"- {n}" for n in notes)
    text += (
        "\n\nPhases, median seconds per step (FLOP floor seconds, measured / floor); the floor "
        "is the weight matmuls at this machine's measured rate in the row's precision "
        "(benchmarks/harness.py):\n\n" + "\n".join(phase_rows)
    )
    return text, summary


def _stopped_stats(
    arm: Arm, precision: str, rss: float, stopped: str, runs: list[Run]
) -> dict[str, Any]:
    """A row whose every run the harness stopped before a step past the warm-up finished: no
    median, no phases or floor; ``stopped`` says why and ``finished_steps`` what did finish."""
    return {
        "trainer": arm.trainer,
        "settings": arm.settings,
        "precision": precision,
        "median_s_per_step": None,
        "steps": 0,
        "finished_steps": [t for r in runs for t in r.step_times],
        "wall_s": max(r.wall_s for r in runs),
        "peak_rss_gb": rss,
        "phases_median_s": None,
        "flop_floor": None,
        "stopped": stopped,
    }


def pair_figures(pair: Pair, stats: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """One comparison from the rows' figures (row key -> :func:`summarize`'s per-row dict):
    the pair with ``trl`` set to the TRL row compared (for a pair with ``candidates``, the
    fastest of them, :func:`fastest_arm`), ``speedup_trl_over_groupwise`` = TRL's median s/step
    / groupwise's and ``memory_groupwise_over_trl`` = groupwise's peak RSS / TRL's. A pair with
    candidates also lists each (``row``, ``settings``, ``precision``, ``median_s_per_step``,
    ``peak_rss_gb``, ``fastest``, ``s_over_fastest``) and names the winner in ``name``."""
    entry: dict[str, Any] = asdict(pair)
    trl = pair.trl
    if pair.candidates:
        medians = {
            key: stats[key]["median_s_per_step"]
            for key in pair.candidates
            if key in stats and stats[key]["median_s_per_step"] is not None
        }
        trl = fastest_arm(medians, tuple(k for k in pair.candidates if k in medians))
        best = stats[trl]["median_s_per_step"]
        entry["name"] = f"{pair.name}: {trl}"
        entry["candidates"] = [
            {
                "row": key,
                "settings": stats[key]["settings"],
                "precision": stats[key]["precision"],
                "median_s_per_step": medians.get(key),
                "peak_rss_gb": stats[key]["peak_rss_gb"],
                "fastest": key == trl,
                "s_over_fastest": medians[key] / best if key in medians else None,
                "stopped": stats[key].get("stopped", ""),
            }
            for key in pair.candidates
        ]
    g, t = stats[pair.groupwise], stats[trl]
    entry["trl"] = trl
    entry["speedup_trl_over_groupwise"] = t["median_s_per_step"] / g["median_s_per_step"]
    entry["memory_groupwise_over_trl"] = g["peak_rss_gb"] / t["peak_rss_gb"]
    return entry


def result_figures(summary: dict[str, Any]) -> dict[str, Any]:
    """The figures the docs' tables show, from :func:`summarize`'s dict: ``rows`` (one per
    comparison: s/step, peak RSS GB and the ratios, and which TRL row it used), ``phases`` (one
    per row: each phase's median seconds, its FLOP floor in seconds and measured / floor; None
    where a run had no phase split; a row whose label repeats an earlier one's in its workload
    adds its key) and ``trl_candidates`` (one per candidate of "vs TRL's fastest": s/step, peak
    RSS GB, whether it was the fastest and its s/step over the fastest's; empty without)."""
    rows, phases, candidates = [], [], []
    for workload, entry in summary.items():
        stats = entry["rows"]
        for pair in entry["comparisons"]:
            g, t = stats[pair["groupwise"]], stats[pair["trl"]]
            rows.append(
                {
                    "workload": workload,
                    "comparison": pair["name"],
                    "groupwise_precision": g["precision"],
                    "trl_precision": t["precision"],
                    "groupwise_s": g["median_s_per_step"],
                    "trl_s": t["median_s_per_step"],
                    "speedup": pair["speedup_trl_over_groupwise"],
                    "groupwise_gb": g["peak_rss_gb"],
                    "trl_gb": t["peak_rss_gb"],
                    "memory": pair["memory_groupwise_over_trl"],
                    "trl_row": pair["trl"],
                    "trl_settings": t["settings"],
                }
            )
            candidates += [
                {
                    "workload": workload,
                    "row": c["row"],
                    "settings": c["settings"],
                    "precision": c["precision"],
                    "s": c["median_s_per_step"],
                    "gb": c["peak_rss_gb"],
                    "fastest": c["fastest"],
                    "s_over_fastest": c["s_over_fastest"],
                    "stopped": c.get("stopped", ""),
                }
                for c in pair.get("candidates", [])
            ]
        labels: set[str] = set()
        for key, stat in stats.items():
            if stat["flop_floor"] is None:  # stopped before a measured step: no phases
                continue
            label = f"{workload} {stat['trainer']} ({stat['precision']})"
            if label in labels:
                label = f"{workload} {stat['trainer']} ({stat['precision']}; {key})"
            labels.add(label)
            phases.append(_phase_figures(label, stat))
    return {"rows": rows, "phases": phases, "trl_candidates": candidates}


def _phase_figures(label: str, stat: dict[str, Any]) -> dict[str, Any]:
    """One row's phases: measured median seconds, FLOP floor seconds, measured / floor."""
    measured = {**(stat["phases_median_s"] or {}), "step": stat["median_s_per_step"]}
    row: dict[str, Any] = {"row": label, "settings": stat["settings"]}
    for k in (*PHASES, "step"):
        row[k] = measured.get(k)
        row[f"{k}_floor"] = stat["flop_floor"]["floor_s"][k]
        row[f"{k}_ratio"] = stat["flop_floor"]["measured_over_floor"].get(k)
    return row


def _candidate_row(workload: str, candidate: dict[str, Any]) -> str:
    """A Markdown row of the TRL candidates' table: the fastest marked, the others as s/step
    over the fastest's."""
    c = candidate
    if c["median_s_per_step"] is None:
        return (
            f"| {workload} | {c['row']} | {c['settings']} | {c['precision']} "
            f"| - | {c['peak_rss_gb']:.2f} | stopped ({c['stopped']}) |"
        )
    mark = "fastest" if c["fastest"] else f"{c['s_over_fastest']:.2f}x"
    return (
        f"| {workload} | {c['row']} | {c['settings']} | {c['precision']} "
        f"| {c['median_s_per_step']:.2f} | {c['peak_rss_gb']:.2f} | {mark} |"
    )


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
    harness.add_result_argument(parser, "trl_vs_groupwise")
    parser.add_argument(
        "--trl-no-gradient-checkpointing",
        action="store_true",
        help="turn off gradient checkpointing in TRL's default (and matched) rows",
    )
    parser.add_argument(
        "--trl-fastest",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also run TRL's speed settings (gradient checkpointing off; off + bf16 weights) and "
        "compare groupwise's defaults with the fastest TRL row (default: on)",
    )
    parser.add_argument(
        "--trl-candidate-timeout",
        type=float,
        default=2.0,
        metavar="FACTOR",
        help="stop a TRL candidate row of \"vs TRL's fastest\" beyond TRL's default row once "
        "its wall time exceeds FACTOR x that of the quickest TRL run of the workload finished "
        "before it (it cannot be the fastest then; the table says it was stopped); 0: never",
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
    model_dir = harness.resolve_model_dir()
    facts = harness.machine_facts()
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
            w,
            groupwise_bf16,
            trl_bf16,
            matched=args.matched,
            levers=args.levers,
            extra=extra,
            trl_fastest=args.trl_fastest,
            trl_no_gc=args.trl_no_gradient_checkpointing,
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
                    timeout = candidate_timeout(
                        arm.key, plan[workload][1], runs, workload, args.trl_candidate_timeout
                    )
                    run = run_trl(
                        workload,
                        arm,
                        args.steps,
                        round_,
                        work,
                        model_dir,
                        env,
                        trl_python,
                        timeout,
                    )
                runs.append(run)
                times = ", ".join(f"{t:.1f}" for t in run.step_times)
                print(
                    f"{workload} {arm.key} ({run.precision}) round {round_}: steps [{times}] s, "
                    f"peak RSS {run.peak_rss_kb * 1024 / GB:.2f} GB, wall {run.wall_s:.0f} s"
                    + (f", STOPPED: {run.stopped}" if run.stopped else ""),
                    flush=True,
                )

    # the rates again after the runs; the floor uses the best of both measurements
    rates_start = facts["matmul_gflops"]
    rates_end = harness.machine_facts()["matmul_gflops"]
    facts["matmul_gflops_start"], facts["matmul_gflops_end"] = rates_start, rates_end
    facts["matmul_gflops"] = harness.best_rates(rates_start, rates_end)
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
    versions = harness.versions(str(trl_python))
    groupwise_versions = harness.versions()
    if versions.get("torch") != groupwise_versions.get("torch"):
        print(
            f"WARNING: torch differs between the venvs (TRL {versions.get('torch')}, groupwise "
            f"{groupwise_versions.get('torch')}): the matmul rates were measured in groupwise's"
        )
    record = {
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "model_dir": str(model_dir),
        "git": harness.git_state(),
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
    harness.write_result(args.result, result_figures(summary))


if __name__ == "__main__":
    main()
