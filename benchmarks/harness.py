"""What every benchmark script shares: the machine, the commit, timing, memory, the B1 workload,
the FLOP floor, and the result files the docs' tables are rendered from.

Only the standard library is imported at module level, so the TRL-side script
(benchmarks/trl_b1.py, in its own venv without groupwise) can import it too; torch and groupwise
are imported inside the functions that need them.

Sections:

- **The machine**: :func:`cpu_facts` (``lscpu``: model name, CPU family, model number and the
  matmul-relevant flags among :data:`RELEVANT_FLAGS`, plus the ISA-limiting environment
  variables if set), :func:`git_state` (``git rev-parse HEAD`` and whether the tree is dirty),
  :func:`machine_facts` (torch's CPU capability, what ``training.bf16=auto`` picks, and the
  matmul-rate probe at a training-like and a decode-like shape, in a subprocess) and
  :func:`matmul_gflops` (the same probe in this process).
- **Timing and memory**: :class:`Timings` (named samples, medians), :func:`run_measured` (a
  child process to completion: wall seconds and the peak RSS of its whole process tree, sampled
  every 20 ms; optionally killed at a bound of :class:`Limits` on that RSS, the system's
  available memory or the wall time), :func:`median_after_warmup` and :func:`phase_split` over
  :class:`Run` records.
- **Workload B1** (shared by trl_vs_groupwise, trl_b1, b1_levers, rss_timeline, scaling,
  scaling_trl, compile_probe): :func:`groupwise_command`, :func:`run_groupwise`, :func:`resolve_model_dir`.
- **The FLOP floor** of a GRPO step (:func:`step_flops`, :func:`floor_seconds`; formulas below).
- **Results**: :func:`write_result` writes ``benchmarks/results/<name>.json``, which
  ``scripts/render_results.py`` renders into the docs' tables.

The FLOP floor, in FLOPs of the weight matmuls only:

    N_body = layers * (q + k + v + o + gate + up + down)   parameters of the decoder's Linears
    N_head = vocab * hidden                                 the LM head (tied to the embedding
                                                            in SmolLM2-135M: counted once, as the
                                                            matmul it is)
    N      = N_body + N_head
    forward of T tokens            = 2 N T
    forward + backward of T tokens = 6 N T   (2 N T forward, 2 N T input gradients, 2 N T
                                              weight gradients)

with the body and the head counted over the tokens that need them: the body over every token
fed, the head only where a next token is predicted. For a step of P prompts of T_p tokens,
G completions each (B = P G rows) of exactly L_c tokens:

    generate   prefill:  body over the prompts (groupwise: P T_p, one prefill per prompt shared
                         by its group; TRL: B T_p, every row prefills its own copy), head on the
                         last prompt token of each prefilled sequence
               decode:   B (L_c - 1) tokens through body and head (the prefill's logits give the
                         first completion token; the last one is never fed back)
    ref_logp   forward:  body over the prompts (groupwise P T_p, TRL B T_p) plus B (L_c - 1)
                         completion tokens, head on B L_c positions
    update     forward + backward of the same tokens as ref_logp. Under LoRA the frozen base
               weights need no weight gradients: 4 (base FLOPs) + 6 (adapter FLOPs), the
               adapters being r (in + out) parameters per adapted Linear (peft's all-linear: every
               decoder Linear, not the LM head)

Floor seconds = FLOPs / the measured matmul rate in the precision the trainer computed in: the
decode part at the rate of a decode-like matmul (32 rows), everything else at the rate of a
training-like one (512 rows).

Not counted, on purpose (so the floor is a floor): attention's own FLOPs (QK^T and AV, 4 d L
per token and layer for a context of L tokens, d = heads x head_dim = 576: at L <= ~100 at most
4 * 576 * 100 * 30 layers ~ 7 MFLOP per token against 2 N ~ 270 MFLOP, under 3%), the adapters
in the rollout and the reference pass (groupwise merges them or disables them there; peft's
unmerged adapters in TRL's rollout add ~4%), gradient checkpointing's recomputed forward (an
implementation choice, not work the step needs), padding tokens, the optimizer step,
element-wise ops, sampling and rewards.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import shlex
import signal
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
GB = 1e9
"""Memory is reported in GB of 10^9 bytes."""

# ---------------------------------------------------------------------------------------------
# The machine and the commit

RELEVANT_FLAGS = ("avx2", "fma", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile")
"""The ``lscpu`` flags that decide how fast float32 and bf16 matmuls run on x86."""
ISA_ENV = ("ONEDNN_MAX_CPU_ISA", "ATEN_CPU_CAPABILITY", "MKL_ENABLE_INSTRUCTIONS")
"""Environment variables that limit which CPU kernels torch runs (recorded when set)."""


def parse_lscpu(text: str) -> dict[str, Any]:
    """``{model, family, model_number, flags}`` from ``lscpu``'s output (flags: only
    :data:`RELEVANT_FLAGS`, in that order; family and model number as integers when numeric)."""
    fields: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep:
            fields.setdefault(key.strip(), value.strip())

    def number(key: str) -> int | str | None:
        value = fields.get(key)
        return int(value) if value is not None and value.isdigit() else value

    present = set(fields.get("Flags", "").split())
    return {
        "model": fields.get("Model name", "unknown"),
        "family": number("CPU family"),
        "model_number": number("Model"),
        "flags": [f for f in RELEVANT_FLAGS if f in present],
    }


def cpu_facts() -> dict[str, Any]:
    """This machine's CPU as :func:`parse_lscpu` reads it, plus ``isa_env`` (the ISA-limiting
    variables of :data:`ISA_ENV` that are set) and ``cores`` (``os.cpu_count()``)."""
    try:
        text = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        text = ""
    facts = parse_lscpu(text)
    isa = {k: os.environ[k] for k in ISA_ENV if os.environ.get(k)}
    if isa:
        facts["isa_env"] = isa
    facts["cores"] = os.cpu_count()
    return facts


def git_state() -> dict[str, Any]:
    """``{commit, dirty, changed}``: HEAD and the files that differ from it (a dirty tree is
    worth knowing when a figure is read later)."""

    def git(*args: str) -> str:
        out = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True)
        return out.stdout.rstrip()

    changed = git("status", "--porcelain").splitlines()
    return {"commit": git("rev-parse", "HEAD"), "dirty": bool(changed), "changed": changed}


def versions(python: str = sys.executable) -> dict[str, str]:
    """Versions of the packages that matter here, as installed for ``python``."""
    out = subprocess.run([python, "-c", _VERSIONS], check=True, capture_output=True, text=True)
    found: dict[str, str] = json.loads(out.stdout)
    return found


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

TRAIN_SHAPE = (512, 576, 1536)
"""A training-like matmul: 512 rows through a SmolLM2-135M MLP projection."""
DECODE_SHAPE = (32, 576, 1536)
"""A decode-like matmul: one token of 32 rows."""
RATE_SECONDS = 0.3


def matmul_gflops(dtype: str, shape: tuple[int, int, int], seconds: float = RATE_SECONDS) -> float:
    """The matmul-rate probe in this process: GFLOP/s of ``[m, k] @ [k, n]`` in ``dtype``
    (``"fp32"`` or ``"bf16"``), as ``training.bf16=auto`` measures it."""
    import torch

    from groupwise.models.precision import matmul_gflops as probe

    return probe({"fp32": torch.float32, "bf16": torch.bfloat16}[dtype], seconds, shape)


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
    """torch's view of the machine: CPU, CPU capability, ISA variables, what
    ``training.bf16=auto`` picks and why, and fp32/bf16 GFLOP/s at :data:`TRAIN_SHAPE` and
    :data:`DECODE_SHAPE`. Measured in a subprocess (torch stays out of a driver process)."""
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


def cpu_line(facts: dict[str, Any] | None = None) -> str:
    """One line naming the CPU, e.g. 'Intel Xeon (family 6, model 167; avx2 fma ...)'."""
    f = facts or cpu_facts()
    limits = " ".join(f"{k}={v}" for k, v in f.get("isa_env", {}).items())
    text = f"{f['model']} (family {f['family']}, model {f['model_number']}; {' '.join(f['flags'])}"
    return text + (f"; limited by {limits})" if limits else ")")


# ---------------------------------------------------------------------------------------------
# Timing and memory


class Timings:
    """Named samples of seconds, e.g. one per variant and repeat; medians over each name."""

    def __init__(self) -> None:
        self.samples: dict[str, list[float]] = {}

    def add(self, name: str, seconds: float) -> None:
        self.samples.setdefault(name, []).append(seconds)

    @contextmanager
    def time(self, name: str) -> Iterator[None]:
        """Add the wall seconds of the ``with`` block to ``name``."""
        start = time.perf_counter()
        try:
            yield
        finally:
            self.add(name, time.perf_counter() - start)

    def call(self, name: str, fn: Callable[[], Any]) -> Any:
        """Call ``fn`` once, adding its seconds to ``name``; return what it returned."""
        with self.time(name):
            return fn()

    def median(self, name: str) -> float:
        return statistics.median(self.samples[name])

    def medians(self) -> dict[str, float]:
        return {k: statistics.median(v) for k, v in self.samples.items()}


def seconds_per_call(fn: Callable[[], object], calls: int, warmup: int = 1) -> float:
    """Mean seconds per call of ``fn`` over ``calls`` calls, after ``warmup`` untimed ones."""
    for _ in range(warmup):
        fn()
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    return (time.perf_counter() - start) / calls


def _children(pid: int) -> list[int]:
    """Direct children of ``pid`` (``/proc/PID/task/*/children``)."""
    found: list[int] = []
    try:
        for task in Path(f"/proc/{pid}/task").iterdir():
            found += [int(c) for c in (task / "children").read_text().split()]
    except OSError:
        pass
    return found


def rss_kb(pid: int) -> int | None:
    """Resident set of one process in kB (``VmRSS``), None once it has exited."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS"):
                return int(line.split()[1])
    except (OSError, ProcessLookupError):
        return None
    return 0  # a zombie has no VmRSS line


def tree_rss_kb(pid: int) -> int | None:
    """Summed resident set of ``pid`` and all its descendants in kB; None once ``pid`` exited."""
    own = rss_kb(pid)
    if own is None:
        return None
    total, todo = own, _children(pid)
    while todo:
        child = todo.pop()
        total += rss_kb(child) or 0
        todo += _children(child)
    return total


def available_gb() -> float | None:
    """The system's ``MemAvailable`` (``/proc/meminfo``) in GB; None where it cannot be read."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024 / GB
    except OSError:
        return None
    return None


@dataclass(frozen=True)
class Limits:
    """Bounds :func:`run_measured` holds a child to; a bound left None is not enforced.

    Breaching one kills the child's process tree (SIGKILL to its process group, which the child
    leads, and to every descendant found) and records why in :attr:`Measured.stopped`. Watched at
    every RSS sample, so a bound can be overshot by what the tree allocates within one sampling
    interval: leave a margin below the machine's memory."""

    max_rss_gb: float | None = None
    """Bound on the process tree's summed RSS (the figure :attr:`Measured.peak_rss_kb` reports)."""
    min_available_gb: float | None = None
    """Stop the child when the system's ``MemAvailable`` falls below this (other processes'
    memory counts too: it keeps the machine out of the kernel's OOM killer)."""
    timeout_s: float | None = None
    """Bound on the child's wall seconds."""

    def breach(self, tree_gb: float, available: float | None, elapsed_s: float) -> str:
        """Why the child must stop ('' while within every bound): ``OOM: ...`` or ``timeout: ...``."""
        if self.max_rss_gb is not None and tree_gb > self.max_rss_gb:
            return f"OOM: process tree RSS {tree_gb:.2f} GB > bound {self.max_rss_gb:.2f} GB"
        if (
            self.min_available_gb is not None
            and available is not None
            and available < self.min_available_gb
        ):
            return (
                f"OOM: MemAvailable {available:.2f} GB < bound {self.min_available_gb:.2f} GB "
                f"(process tree RSS {tree_gb:.2f} GB)"
            )
        if self.timeout_s is not None and elapsed_s > self.timeout_s:
            return f"timeout: wall {elapsed_s:.0f} s > bound {self.timeout_s:.0f} s"
        return ""


def _kill_tree(pid: int) -> None:
    """SIGKILL ``pid``'s process group (``pid`` leads it) and every descendant of ``pid``."""
    todo, tree = [pid], []
    while todo:
        p = todo.pop()
        tree.append(p)
        todo += _children(p)
    with suppress(OSError):
        os.killpg(pid, signal.SIGKILL)
    for p in tree:
        with suppress(OSError):
            os.kill(p, signal.SIGKILL)


@dataclass
class Measured:
    """A child process run to completion (or stopped at a bound of :class:`Limits`)."""

    peak_rss_kb: int
    """Peak RSS in kB (KiB, as ``/proc`` and ``ru_maxrss`` count) of the process tree: the largest sampled sum over the child and its
    descendants, and never below the child's own ``ru_maxrss`` (which catches a peak between
    samples)."""
    wall_s: float
    samples: list[tuple[float, float]] = field(default_factory=list)
    """(seconds since start, tree RSS in GB), every ``interval`` seconds."""
    returncode: int = 0
    """The child's exit code (negative: killed by that signal)."""
    stopped: str = ""
    """Why :func:`run_measured` killed the child (:meth:`Limits.breach`); '' if it did not."""


def run_measured(
    command: list[str],
    env: dict[str, str],
    log: Path,
    interval: float = 0.02,
    *,
    limits: Limits | None = None,
    check: bool = True,
) -> Measured:
    """Run ``command`` from the repository root to completion, its output into ``log``.

    With ``limits`` the child leads a process group of its own (killed with it should this
    process be interrupted) and is killed with its tree at the first breached bound (:attr:`Measured.stopped` says which). ``check``: raise
    RuntimeError (with the log's tail) if it exits non-zero and was not stopped here; with
    ``check=False`` the exit code is only recorded (:attr:`Measured.returncode`)."""
    log.parent.mkdir(parents=True, exist_ok=True)
    samples: list[tuple[float, float]] = []
    stopped: list[str] = []
    done = threading.Event()
    start = time.perf_counter()
    with log.open("w") as out:
        proc = subprocess.Popen(
            command,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=ROOT,
            start_new_session=limits is not None,
        )

        def sample() -> None:
            while not done.is_set():
                kb = tree_rss_kb(proc.pid)
                elapsed = time.perf_counter() - start
                if kb is not None:
                    samples.append((elapsed, kb * 1024 / GB))
                    why = limits.breach(kb * 1024 / GB, available_gb(), elapsed) if limits else ""
                    if why and not stopped:
                        stopped.append(why)
                        _kill_tree(proc.pid)
                done.wait(interval)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        try:
            _, status, usage = os.wait4(proc.pid, 0)
        except BaseException:  # e.g. Ctrl-C: a child in its own session would not see it
            if limits is not None:
                _kill_tree(proc.pid)
            raise
        finally:
            done.set()
            sampler.join()
    proc.returncode = os.waitstatus_to_exitcode(status)  # already reaped by wait4
    wall = time.perf_counter() - start
    if proc.returncode != 0 and check and not stopped:
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-30:])
        raise RuntimeError(f"exit {proc.returncode}: {shlex.join(command)}\n{tail}")
    sampled = max((gb for _, gb in samples), default=0.0) * GB / 1024
    peak = max(int(usage.ru_maxrss), int(sampled))
    return Measured(peak, wall, samples, proc.returncode, stopped[0] if stopped else "")


PHASES = ("generate", "ref_logp", "update")


@dataclass
class Run:
    """One trainer subprocess of a workload: its per-step times, phases and peak memory."""

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
    stopped: str = ""
    """Why the harness stopped the run before its last step (:meth:`Limits.breach`); '' if not."""

    @property
    def peak_rss_gb(self) -> float:
        return self.peak_rss_kb * 1024 / GB


_STEP_LINE = re.compile(r"^step (\d+): ([0-9.]+) s$", re.M)


def logged_step_times(log_text: str) -> list[float]:
    """The seconds of every ``step N: S s`` line benchmarks/trl_b1.py printed, in order (what a
    run stopped before it wrote its result JSON finished)."""
    return [float(seconds) for _, seconds in _STEP_LINE.findall(log_text)]


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


# ---------------------------------------------------------------------------------------------
# Workload B1

WORKLOADS = ("B1", "B1-LoRA")
PROMPTS, GROUP, LENGTH = 4, 8, 48
"""B1: 4 prompts x 8 completions in one optimizer update, exactly 48 new tokens each."""
LORA_R, LORA_ALPHA = 16, 32
"""B1-LoRA: adapters of rank 16, alpha 32, on every decoder Linear."""
B1_PROMPT = "What is {a} + {b}? Reply with only the number."
"""The prompt text of groupwise's arithmetic task, a and b in 10..99 (TRL's side builds it)."""


def groupwise_command(
    workload: str, steps: int, out_dir: Path, model_dir: Path, overrides: tuple[str, ...] = ()
) -> list[str]:
    """``groupwise train`` with the workload's keys only, then ``overrides`` (later keys win).

    B1: beta 0.04, mu 1, lr 1e-5 constant, seed 0, full fine-tuning; B1-LoRA adds LoRA r 16,
    alpha 32 on all linear layers. Evaluation, saving, the report, completion logs and the
    progress bar are off: work the TRL side (trl_b1.py) does not do either."""
    keys = {
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


def resolve_commit(commit: str) -> str:
    """The full hash of ``commit``."""
    out = subprocess.run(
        ["git", "rev-parse", "--verify", f"{commit}^{{commit}}"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    if out.returncode != 0:
        raise SystemExit(f"{commit!r} is not a commit of this repository")
    return out.stdout.strip()


def commit_source_tree(commit: str, work: Path) -> Path:
    """A ``src`` directory holding ``commit``'s package: a detached worktree under ``work``."""
    tree = work / commit[:12]
    if not (tree / "src" / "groupwise").is_dir():
        subprocess.run(
            ["git", "worktree", "add", "--detach", "--force", str(tree), commit],
            cwd=ROOT,
            check=True,
            capture_output=True,
        )
    return tree / "src"


def resolve_model_dir() -> Path:
    """The cached HF directory of SmolLM2-135M-Instruct (converted from the GGUF wheel once).

    Resolved in a subprocess so a driver never imports torch or holds the model."""
    code = (
        "from groupwise.models import resolve_model_path;"
        "print(resolve_model_path('smollm2-135m-instruct'))"
    )
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
    return Path(out.stdout.strip().splitlines()[-1])


def groupwise_metrics(out_dir: Path) -> list[dict[str, Any]]:
    """The step records of a groupwise run directory's ``metrics.jsonl``."""
    rows = [json.loads(line) for line in (out_dir / "metrics.jsonl").read_text().splitlines()]
    return [r for r in rows if "step_time" in r]


def run_groupwise(
    workload: str,
    arm: str,
    overrides: tuple[str, ...],
    *,
    steps: int,
    round_: int,
    out_dir: Path,
    model_dir: Path,
    env: dict[str, str],
) -> Run:
    """One ``groupwise train`` subprocess of ``workload`` plus ``overrides``, read back."""
    command = groupwise_command(workload, steps, out_dir, model_dir, overrides)
    log = out_dir.with_suffix(".log")
    measured = run_measured(command, env, log)
    rows = groupwise_metrics(out_dir)
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
    return Run(
        workload,
        "groupwise",
        arm,
        round_,
        command,
        [float(r["step_time"]) for r in rows],
        phases,
        prompt_tokens,
        lengths,
        precision,
        measured.peak_rss_kb,
        measured.wall_s,
        str(log),
    )


# ---------------------------------------------------------------------------------------------
# The FLOP floor (formulas in the module docstring)


@dataclass(frozen=True)
class MatmulParams:
    """Parameters of a decoder-only model's weight matmuls, from its HF config."""

    body: int
    """All decoder Linear weights: layers x (q, k, v, o, gate, up, down)."""
    head: int
    """The LM head, vocab x hidden (whether or not tied to the embedding)."""
    lora_adapters: int
    """LoRA adapter parameters (A and B) for rank ``lora_r`` on every decoder Linear; 0 if r=0."""

    @property
    def total(self) -> int:
        """N = body + head."""
        return self.body + self.head


def matmul_params(config: dict[str, Any], lora_r: int = 0) -> MatmulParams:
    """Count N_body, N_head (and LoRA adapters of rank ``lora_r``) from an HF ``config.json``.

    Per layer, with h = hidden, d = head_dim, a = heads, k = kv heads, f = intermediate:
    q = h a d, k = v = h k d, o = a d h, gate = up = down = h f; adapters r (in + out) each.
    """
    h = int(config["hidden_size"])
    f = int(config["intermediate_size"])
    layers = int(config["num_hidden_layers"])
    heads = int(config["num_attention_heads"])
    kv = int(config.get("num_key_value_heads") or heads)
    d = int(config.get("head_dim") or h // heads)
    shapes = [  # (in, out) of each decoder Linear
        (h, heads * d),  # q
        (h, kv * d),  # k
        (h, kv * d),  # v
        (heads * d, h),  # o
        (h, f),  # gate
        (h, f),  # up
        (f, h),  # down
    ]
    body = layers * sum(i * o for i, o in shapes)
    adapters = layers * sum(lora_r * (i + o) for i, o in shapes)
    return MatmulParams(body=body, head=int(config["vocab_size"]) * h, lora_adapters=adapters)


def load_matmul_params(model_dir: Path, lora_r: int = 0) -> MatmulParams:
    """:func:`matmul_params` of the HF model directory ``model_dir``."""
    return matmul_params(json.loads((model_dir / "config.json").read_text()), lora_r)


@dataclass(frozen=True)
class StepShape:
    """The token counts of one GRPO step."""

    prompts: int
    """P, prompts per step."""
    group: int
    """G, completions per prompt."""
    prompt_tokens: float
    """T_p, mean real (unpadded) tokens per prompt."""
    completion_tokens: int
    """L_c, tokens per completion (fixed in the benchmark)."""
    shared_prefix: bool
    """True: each prompt is forwarded once per group (groupwise); False: once per row (TRL)."""

    @property
    def rows(self) -> int:
        """B = P G."""
        return self.prompts * self.group

    @property
    def prompt_rows(self) -> int:
        """Sequences the prompt is forwarded for: P with a shared prefix, else B."""
        return self.prompts if self.shared_prefix else self.rows


@dataclass(frozen=True)
class PhaseFlops:
    """FLOPs of one step's phases; ``generate`` = ``prefill`` + ``decode``."""

    prefill: float
    decode: float
    ref_logp: float
    update: float

    @property
    def generate(self) -> float:
        return self.prefill + self.decode

    @property
    def step(self) -> float:
        return self.generate + self.ref_logp + self.update


def step_flops(params: MatmulParams, shape: StepShape, *, lora: bool = False) -> PhaseFlops:
    """Matmul FLOPs of each phase of one GRPO step (formulas in the module docstring).

    prefill  = 2 (N_body T_p rows_p + N_head rows_p)           rows_p = P shared, B per row
    decode   = 2 N B (L_c - 1)
    ref_logp = 2 (N_body T_fed + N_head B L_c)                 T_fed = T_p rows_p + B (L_c - 1)
    update   = 3 ref_logp (full fine-tuning), or
               2 ref_logp + 6 N_lora T_fed (LoRA: no weight gradients for the frozen base)
    """
    rows_p = shape.prompt_rows
    b, lc = shape.rows, shape.completion_tokens
    prefill = 2.0 * (params.body * shape.prompt_tokens * rows_p + params.head * rows_p)
    decode = 2.0 * params.total * b * (lc - 1)
    fed = shape.prompt_tokens * rows_p + b * (lc - 1)
    forward = 2.0 * (params.body * fed + params.head * b * lc)
    update = 2.0 * forward + 6.0 * params.lora_adapters * fed if lora else 3.0 * forward
    return PhaseFlops(prefill=prefill, decode=decode, ref_logp=forward, update=update)


@dataclass(frozen=True)
class PhaseFloor:
    """Seconds the matmuls of each phase take at the measured rates."""

    generate: float
    ref_logp: float
    update: float

    @property
    def step(self) -> float:
        return self.generate + self.ref_logp + self.update

    def as_dict(self) -> dict[str, float]:
        return {**asdict(self), "step": self.step}


def floor_seconds(flops: PhaseFlops, train_gflops: float, decode_gflops: float) -> PhaseFloor:
    """FLOPs over the rates (GFLOP/s): decode at ``decode_gflops``, the rest at ``train_gflops``."""
    train, decode = train_gflops * 1e9, decode_gflops * 1e9
    return PhaseFloor(
        generate=flops.prefill / train + flops.decode / decode,
        ref_logp=flops.ref_logp / train,
        update=flops.update / train,
    )


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


# ---------------------------------------------------------------------------------------------
# Results

REQUIRED = ("name", "commit", "date", "cpu", "command", "figures", "transcribed")
"""Fields every result file has; a transcribed one also has ``source``."""
CPU_FIELDS = ("model", "family", "model_number", "flags")


def add_result_argument(parser: argparse.ArgumentParser, default: str) -> None:
    """``--result NAME``: the figures go to benchmarks/results/NAME.json ('-': no file)."""
    parser.add_argument(
        "--result",
        default=default,
        help=f"write the figures to benchmarks/results/NAME.json (default {default}; '-': none)",
    )


def command_line(argv: list[str] | None = None) -> str:
    """How this process was started, as a shell line from the repository root (ISA-limiting
    variables first when set)."""
    args = list(sys.argv if argv is None else argv)
    script = Path(args[0]).resolve()
    if script.is_relative_to(ROOT):
        args[0] = str(script.relative_to(ROOT))
    env = [f"{k}={os.environ[k]}" for k in ISA_ENV if os.environ.get(k)]
    return " ".join([*env, "python", shlex.join(args)])


def write_result(
    name: str | None,
    figures: dict[str, Any],
    *,
    command: str | None = None,
    results_dir: Path = RESULTS,
) -> Path | None:
    """Write ``results_dir/<name>.json`` = {name, commit, dirty, date, cpu{model, family,
    model_number, flags}, command, figures, transcribed: false}; None (nothing written) when
    ``name`` is None or '-'. ``figures`` must be JSON-serialisable."""
    if not name or name == "-":
        return None
    path = results_dir / f"{name}.json"
    git = git_state()
    # the file this very call rewrites (a benchmark writing after every run) is no dirt
    own = f"benchmarks/results/{path.name}"
    dirty = [line for line in git["changed"] if not line.endswith(own)]
    record = {
        "name": name,
        "commit": git["commit"],
        "dirty": bool(dirty),
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d"),
        "cpu": cpu_facts(),
        "command": command or command_line(),
        "figures": figures,
        "transcribed": False,
    }
    results_dir.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=1) + "\n")
    print(f"result: {path}")
    return path


def missing_fields(record: dict[str, Any]) -> list[str]:
    """The required fields a result record lacks (empty: it is complete)."""
    missing = [k for k in REQUIRED if k not in record]
    cpu = record.get("cpu")
    if isinstance(cpu, dict):
        missing += [f"cpu.{k}" for k in CPU_FIELDS if k not in cpu]
    if record.get("transcribed") and not record.get("source"):
        missing.append("source")
    return missing
