"""How groupwise's and TRL 1.16's step cost grows with model size and completion length (B1).

The B1 workload of benchmarks/harness.py (4 prompts x 8 completions in one optimizer update,
beta 0.04, mu 1, lr 1e-5 constant, seed 0) at exactly L new tokens per completion, on three
model sizes, each point run by both trainers as a user gets them (the rows "defaults" of
benchmarks/trl_vs_groupwise.py): groupwise's ``groupwise train`` with its defaults plus the
workload's keys (harness.groupwise_command), TRL's GRPOConfig defaults through
benchmarks/trl_b1.py in its own venv (--trl-precision auto: bf16 autocast where groupwise's
``training.bf16=auto`` probe picks bf16, else fp32; gradient checkpointing on, TRL's default).

Models (--models, comma-separated; a ``-lora`` suffix trains LoRA r 16, alpha 32 on every
decoder Linear on both sides, harness.LORA_R / LORA_ALPHA):

- ``135m``: SmolLM2-135M-Instruct itself (harness.resolve_model_dir), full fine-tuning;
- ``360m``: the SmolLM2-360M architecture (hidden 960, 32 layers, 15 heads, 5 KV heads, MLP
  2560), full fine-tuning;
- ``1.7b-lora``: the SmolLM2-1.7B architecture (hidden 2048, 24 layers, 32 heads, 32 KV heads,
  MLP 8192), LoRA only: full fine-tuning's float32 weights, gradients and AdamW moments alone
  would be ~27 GB;
- ``tiny``: 2 layers of width 64, for smoke checks.

All but ``135m`` have RANDOM weights (step time does not depend on their values): the 135M
model's config.json with the sizes changed (vocabulary 49152, tied embeddings, float32, the
135M model's tokenizer files copied beside it), written once as a local HF directory under
--models-dir (:func:`write_random_model`; rewritten only when its shape or seed changes),
loaded by groupwise as ``model.name=<dir>`` and by TRL as ``trl_b1.py --model-dir <dir>``.
Nothing is downloaded. Completion lengths: --lengths (48, 256, 1024).

Recorded per point and side: the median s/step after the first --warmup steps; the peak RSS of
the child's process tree (harness.run_measured, GB = 10^9 bytes); the FLOP floor fraction =
floor seconds / median s/step, the floor being harness.step_flops over harness.floor_seconds at
the matmul rates measured here in the precision the side ran in, the best of a measurement
before and one after the runs (as trl_vs_groupwise.py computes "floor"): 1.0 would be the
step's weight matmuls at the measured rate and nothing else.

Running out of memory or time is a result, not a crash of the benchmark. Every child runs under
harness.Limits, watched at every 20 ms RSS sample: its process tree is killed (SIGKILL) when its
summed RSS exceeds --max-rss-gb (default: the machine's memory less 2 GB) or the system's
MemAvailable falls below --min-available-gb (1.5), and recorded as "OOM"; past --timeout-min
(180) of wall time it is killed and recorded as "timeout". Either way with what was reached:
steps finished (groupwise's metrics.jsonl, trl_b1.py's per-step lines), their times and the
peak RSS until then. A child the kernel killed (SIGKILL not sent here) is "killed"; one whose
log reports a failed allocation is "OOM" too. Why a watcher and not ``prlimit --as`` /
RLIMIT_AS: an address-space limit counts virtual memory (torch's and glibc's per-thread arenas,
groupwise's reference weights mapped from a file, safetensors mappings), several GB more than
what is resident, and applies per process, not to a tree; a bound on it either kills healthy
runs or does not protect the machine. The watcher bounds the resident memory that actually runs
a machine without swap into the kernel's OOM killer (which could pick another process). Once a
model's point ends in OOM, timeout or a kill, its longer lengths are not run for that side
("not run: OOM at L=256"); --run-all runs them anyway.

Outputs: a Markdown table on stdout (model, LoRA, L, s/step each side, TRL / groupwise,
peak RSS each, floor fraction each), --out (JSON: every point, its commands, per-step times,
the commit each side ran at, the machine and the matmul rates) and --result NAME
(benchmarks/results/NAME.json, rendered by scripts/render_results.py's SCALING_TRL_COLUMNS).
Both files are rewritten after every point (floor fractions at the rates measured at the start
until the end's measurement), so a run cut short keeps its finished points; --reuse takes the
sides already in --out (same --steps; not those that failed) and runs only the rest, so the
table can be filled in over several sittings.

How long: a step costs roughly in proportion to the parameters times the tokens. On a 2-core
Xeon (AMX) groupwise's 135M step is ~13 s at L=48 and ~160 s at L=512 (the scaling grid), TRL's
about 3-4x that. Estimated groupwise s/step at L = 48 / 256 / 1024: 135M ~13 / 70 / 330;
360M ~35 / 190 / 900; 1.7B LoRA ~120 / 650 / 3000; TRL's several times more, so its 1.7B points
at L=1024 run into the timeout after a step or two. The whole default table at 3 steps is about
a day of machine time; --lengths 48,256 or fewer --models cut it, --timeout-min bounds each
point (both sides: at most 2 x timeout per point).

Usage (from the repository root, with the groupwise venv; TRL's venv from trl_env.sh):
  .venv/bin/python benchmarks/scaling_trl.py [--models 135m,360m,1.7b-lora]
      [--lengths 48,256,1024] [--steps 3] [--warmup 1] [--timeout-min 180] [--max-rss-gb G]
      [--min-available-gb 1.5] [--run-all] [--trl-precision auto|bf16|fp32]
      [--models-dir runs/scaling-models] [--result NAME] [--out runs/bench-scaling-trl/results.json]
      [--reuse]
Smoke check (tiny random model, a few minutes):
  .venv/bin/python benchmarks/scaling_trl.py --models tiny,tiny-lora --lengths 8,16 --steps 2
      --warmup 1 --out runs/bench-scaling-trl-smoke/r.json --result -
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import statistics
import struct
import subprocess
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness
from harness import GB, GROUP, LORA_R, PROMPTS, ROOT, Limits, StepShape

SHAPES: dict[str, dict[str, int]] = {
    "tiny": {
        "hidden_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "intermediate_size": 128,
    },
    "360m": {
        "hidden_size": 960,
        "num_hidden_layers": 32,
        "num_attention_heads": 15,
        "num_key_value_heads": 5,
        "intermediate_size": 2560,
    },
    "1.7b": {
        "hidden_size": 2048,
        "num_hidden_layers": 24,
        "num_attention_heads": 32,
        "num_key_value_heads": 32,
        "intermediate_size": 8192,
    },
}
"""The architectures written with random weights; the rest of the config is the 135M model's."""
LABELS = {
    "135m": "SmolLM2-135M",
    "360m": "SmolLM2-360M (random)",
    "1.7b": "SmolLM2-1.7B (random)",
    "tiny": "tiny (random)",
}
FULL_FT_TOO_LARGE = ("1.7b",)
"""Sizes run with LoRA only (full fine-tuning's float32 state would not fit in 23 GB)."""
MARKER = "random_model.json"
"""The file in a written model directory that says which shape and seed it holds."""
STOPPED = ("OOM", "timeout", "killed")
"""Statuses after which a model's longer lengths are not run for that side (unless --run-all)."""
MEMORY_ERRORS = ("can't allocate memory", "MemoryError", "OutOfMemoryError", "Cannot allocate")
"""Log text that marks a failed allocation (recorded as OOM)."""


@dataclass(frozen=True)
class ModelSpec:
    """A model size of the table and whether both sides train it with LoRA."""

    size: str
    """A key of :data:`LABELS`: '135m' (the real model) or a key of :data:`SHAPES`."""
    lora: bool

    @property
    def name(self) -> str:
        return f"{self.size}-lora" if self.lora else self.size

    @property
    def label(self) -> str:
        return LABELS[self.size]


def model_spec(text: str) -> ModelSpec:
    """'360m' -> full fine-tuning of the 360M shape, '1.7b-lora' -> LoRA; ValueError naming the
    valid choices otherwise."""
    size, lora = (text[: -len("-lora")], True) if text.endswith("-lora") else (text, False)
    if size not in LABELS:
        raise ValueError(f"unknown model {text!r}; valid: {', '.join(LABELS)} (each with -lora)")
    if size in FULL_FT_TOO_LARGE and not lora:
        raise ValueError(f"{size} runs with LoRA only (full fine-tuning does not fit): {size}-lora")
    return ModelSpec(size, lora)


# ---------------------------------------------------------------------------------------------
# Random models


def random_config(base: dict[str, Any], shape: dict[str, int]) -> dict[str, Any]:
    """``base`` (an HF config.json) with the sizes of ``shape`` and ``head_dim = hidden /
    heads``; vocabulary, tied embeddings, dtype and everything else as in ``base``."""
    hidden, heads = shape["hidden_size"], shape["num_attention_heads"]
    kv = shape["num_key_value_heads"]
    if hidden % heads or heads % kv:
        raise ValueError(f"shape {shape}: hidden must divide by heads, heads by KV heads")
    config = {**base, **shape, "head_dim": hidden // heads}
    config["_model_name_or_path"] = f"random weights, {base.get('_model_name_or_path')} resized"
    return config


_DTYPES = {"float32": ("F32", "float32"), "bfloat16": ("BF16", "bfloat16")}


def write_safetensors(tensors: Any, path: Path, dtype: str, std: float, seed: int) -> None:
    """Write ``tensors`` ((name, shape) pairs) as a safetensors file of random values, one
    tensor in memory at a time: matrices ~ N(0, std^2), vectors (norm weights) ones.

    The format: an 8-byte little-endian header length, the JSON header (name -> dtype, shape,
    byte offsets into the data), padded with spaces to 8 bytes, then the tensors' bytes."""
    import torch

    code, torch_name = _DTYPES[dtype]
    torch_dtype = getattr(torch, torch_name)
    size = torch.empty((), dtype=torch_dtype).element_size()
    header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for name, shape in tensors:
        end = offset + math.prod(shape) * size
        header[name] = {"dtype": code, "shape": list(shape), "data_offsets": [offset, end]}
        offset = end
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    generator = torch.Generator().manual_seed(seed)
    with path.open("wb") as f:
        f.write(struct.pack("<Q", len(text)) + text)
        for _, shape in tensors:
            if len(shape) == 1:
                t = torch.ones(shape, dtype=torch_dtype)
            else:
                t = torch.empty(shape, dtype=torch.float32).normal_(0.0, std, generator=generator)
                t = t.to(torch_dtype)
            f.write(t.contiguous().view(torch.uint8).numpy().tobytes())


def write_random_model(base_dir: Path, out_dir: Path, shape: dict[str, int], seed: int = 0) -> Path:
    """An HF model directory at ``out_dir``: :func:`random_config` of ``base_dir``'s config,
    random weights in its dtype (std ``initializer_range``) under the parameter names
    transformers gives that config, the tied LM head stored once, and every other file of
    ``base_dir`` but its weights (tokenizer, chat template, generation config). Kept when its
    :data:`MARKER` already names this shape, seed and base config; else written to a temporary
    directory and moved into place."""
    base = json.loads((base_dir / "config.json").read_text())
    marker = {"shape": shape, "seed": seed, "base_config": base}
    if (out_dir / MARKER).exists() and json.loads((out_dir / MARKER).read_text()) == marker:
        return out_dir
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    config = random_config(base, shape)
    tmp = out_dir.with_name(f".{out_dir.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    weights = (".safetensors", ".bin", ".gguf", ".pt", ".index.json")
    for f in base_dir.iterdir():
        if f.is_file() and f.name != "config.json" and not f.name.endswith(weights):
            shutil.copy2(f, tmp / f.name)
    (tmp / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    with torch.device("meta"):  # names and shapes only, no memory
        model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(tmp))
    tied = bool(config.get("tie_word_embeddings"))
    tensors = [
        (name, tuple(t.shape))
        for name, t in model.state_dict().items()
        if not (tied and name == "lm_head.weight")
    ]
    dtype = str(config.get("dtype") or config.get("torch_dtype") or "float32")
    std = float(config.get("initializer_range", 0.02))
    write_safetensors(tensors, tmp / "model.safetensors", dtype, std, seed)
    (tmp / MARKER).write_text(json.dumps(marker, indent=1) + "\n")
    shutil.rmtree(out_dir, ignore_errors=True)
    os.replace(tmp, out_dir)
    return out_dir


def safetensors_parameters(model_dir: Path) -> int:
    """Parameters stored in ``model_dir``'s ``*.safetensors`` files, read from their headers."""
    total = 0
    for path in sorted(model_dir.glob("*.safetensors")):
        with path.open("rb") as f:
            (length,) = struct.unpack("<Q", f.read(8))
            header = json.loads(f.read(length))
        total += sum(math.prod(v["shape"]) for k, v in header.items() if k != "__metadata__")
    return total


_WRITE = """
import json, sys
from pathlib import Path
sys.path.insert(0, sys.argv[1])
import scaling_trl
scaling_trl.write_random_model(Path(sys.argv[2]), Path(sys.argv[3]), json.loads(sys.argv[4]))
"""


def model_dir_for(spec: ModelSpec, base_dir: Path, models_dir: Path) -> Path:
    """The HF directory of ``spec``'s size: ``base_dir`` for 135m, else a random model written
    under ``models_dir`` once (in a subprocess: this driver never imports torch)."""
    if spec.size == "135m":
        return base_dir
    out = models_dir / f"smollm2-{spec.size}-random"
    shape = json.dumps(SHAPES[spec.size])
    bench = str(Path(__file__).resolve().parent)
    subprocess.run(
        [sys.executable, "-c", _WRITE, bench, str(base_dir), str(out), shape], check=True
    )
    return out


# ---------------------------------------------------------------------------------------------
# Running one side of a point


@dataclass(frozen=True)
class Point:
    """One model and completion length, run by both trainers."""

    model: ModelSpec
    length: int
    model_dir: Path

    @property
    def key(self) -> str:
        return f"{self.model.name}-L{self.length}"


@dataclass
class SideRun:
    """One trainer's run of a point: how it ended and what it reached."""

    trainer: str
    """groupwise or trl."""
    status: str
    """ok, OOM, timeout, killed (by the kernel), failed, or 'not run'."""
    detail: str = ""
    """Why it was stopped, failed or not run ('' when ok)."""
    steps: int = 0
    """Steps asked for."""
    step_times: list[float] = field(default_factory=list)
    """Seconds of every step it finished."""
    precision: str = ""
    prompt_tokens: list[float] = field(default_factory=list)
    """Mean real tokens per prompt, per step (for the FLOP floor)."""
    completion_lengths: list[tuple[float, float]] = field(default_factory=list)
    peak_rss_kb: int = 0
    wall_s: float = 0.0
    command: list[str] = field(default_factory=list)
    log: str = ""
    commit: str = ""
    """The commit the side ran at (a table extended with --reuse can mix commits)."""


def status_of(measured: harness.Measured, log_text: str) -> tuple[str, str]:
    """(status, detail) of a finished child: the watcher's stop (OOM or timeout), ok, a failed
    allocation in the log (OOM), a SIGKILL not sent by the watcher (killed: the kernel's OOM
    killer, most likely), or failed with the exit code and the log's last line."""
    if measured.stopped:
        return measured.stopped.partition(":")[0], measured.stopped
    if measured.returncode == 0:
        return "ok", ""
    for line in reversed(log_text.splitlines()):
        if any(marker in line for marker in MEMORY_ERRORS):
            return "OOM", line.strip()[:300]
    if measured.returncode == -9:
        return "killed", "SIGKILL from outside the benchmark (the kernel's OOM killer?)"
    last = next((ln.strip() for ln in reversed(log_text.splitlines()) if ln.strip()), "")
    return "failed", f"exit {measured.returncode}: {last[:300]}"


def _measure(command: list[str], env: dict[str, str], log: Path, limits: Limits) -> SideRun:
    measured = harness.run_measured(command, env, log, limits=limits, check=False)
    status, detail = status_of(measured, log.read_text(errors="replace"))
    return SideRun(
        trainer="",
        status=status,
        detail=detail,
        peak_rss_kb=measured.peak_rss_kb,
        wall_s=measured.wall_s,
        command=command,
        log=str(log),
    )


def run_groupwise_side(
    point: Point, steps: int, work: Path, env: dict[str, str], limits: Limits, precision: str
) -> SideRun:
    """``groupwise train`` on the point (B1 or B1-LoRA with L new tokens), read back from
    whatever its metrics.jsonl holds when it ended; ``precision`` where no summary was written."""
    out_dir = work / f"{point.key}-groupwise"
    workload = "B1-LoRA" if point.model.lora else "B1"
    overrides = (
        f"rollout.max_completion_length={point.length}",
        f"rollout.min_new_tokens={point.length}",
    )
    command = harness.groupwise_command(workload, steps, out_dir, point.model_dir, overrides)
    child_env = {k: v for k, v in env.items() if k != "GROUPWISE_MALLOC"}  # as a user gets it
    run = _measure(command, child_env, out_dir.with_suffix(".log"), limits)
    run.trainer, run.steps, run.precision = "groupwise", steps, precision
    rows = harness.groupwise_metrics(out_dir) if (out_dir / "metrics.jsonl").exists() else []
    run.step_times = [float(r["step_time"]) for r in rows]
    run.completion_lengths = [
        (float(r["completions/min_length"]), float(r["completions/max_length"])) for r in rows
    ]
    seen = 0.0
    for r in rows:  # num_tokens is cumulative: completion tokens + G x the prompts' tokens
        added, seen = float(r["num_tokens"]) - seen, float(r["num_tokens"])
        completion = float(r["completions/mean_length"]) * PROMPTS * GROUP
        run.prompt_tokens.append((added - completion) / GROUP / PROMPTS)
    summary = out_dir / "summary.json"
    if summary.exists():
        run.precision = "bf16" if json.loads(summary.read_text())["precision"]["bf16"] else "fp32"
    return run


def run_trl_side(
    point: Point,
    steps: int,
    work: Path,
    env: dict[str, str],
    limits: Limits,
    trl_python: Path,
    precision: str,
) -> SideRun:
    """benchmarks/trl_b1.py on the point in TRL's venv; step times from its result JSON, or
    from its ``step N: S s`` lines when it was stopped before writing it."""
    out = work / f"{point.key}-trl.json"
    out.unlink(missing_ok=True)
    command = [str(trl_python), str(ROOT / "benchmarks" / "trl_b1.py")]
    command += ["--model-dir", str(point.model_dir), "--steps", str(steps)]
    command += ["--precision", precision, "--completion-length", str(point.length)]
    command += ["--out", str(out)] + (["--lora"] if point.model.lora else [])
    offline = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    log = out.with_suffix(".log")
    run = _measure(command, {**env, **offline}, log, limits)
    run.trainer, run.steps, run.precision = "trl", steps, precision
    if out.exists():
        result = json.loads(out.read_text())
        run.step_times = [float(t) for t in result["step_times"]]
        run.precision = result.get("precision", precision)
        run.prompt_tokens = [
            p["prompt_tokens"] / p["prompt_rows"] for p in result["phases"] if p["prompt_rows"]
        ]
        run.completion_lengths = [
            (float(r["completions/min_length"]), float(r["completions/max_length"]))
            for r in result["logs"]
            if "completions/min_length" in r
        ]
    else:
        run.step_times = harness.logged_step_times(log.read_text(errors="replace"))
    return run


# ---------------------------------------------------------------------------------------------
# Figures and the table


def side_floor(
    run: SideRun, point: Point, warmup: int, rates: dict[str, Any]
) -> harness.PhaseFloor | None:
    """The FLOP floor of the side's step (its prompt length, precision and sharing of the
    prompt), None without prompt token counts or a precision."""
    tokens = run.prompt_tokens[warmup:] or run.prompt_tokens
    if not tokens or run.precision not in ("bf16", "fp32"):
        return None
    shape = StepShape(
        PROMPTS,
        GROUP,
        statistics.fmean(tokens),
        point.length,
        shared_prefix=run.trainer == "groupwise",
    )
    params = harness.load_matmul_params(point.model_dir, LORA_R if point.model.lora else 0)
    flops = harness.step_flops(params, shape, lora=point.model.lora)
    return harness.floor_seconds(
        flops, rates["train"][run.precision], rates["decode"][run.precision]
    )


def side_note(run: SideRun) -> str:
    """What the s/step cell says when there is no median: 'OOM after 1/3 steps (last 412 s)',
    'not run: OOM at L=256'; '' for a finished run."""
    if run.status == "ok":
        return ""
    if run.status == "not run":
        return f"not run: {run.detail}"
    done = len(run.step_times)
    last = f" (last {run.step_times[-1]:.0f} s)" if done else ""
    return f"{run.status} after {done}/{run.steps} steps{last}"


def side_figures(run: SideRun, point: Point, warmup: int, rates: dict[str, Any]) -> dict[str, Any]:
    """One side's figures: ``status``, ``note`` (:func:`side_note`), ``s`` (median s/step after
    warm-up; None unless ok), ``steps_done``, ``steps``, ``gb`` (peak RSS, until the stop if
    stopped; None if not run), ``precision``, ``floor_s`` and ``floor_fraction`` (floor seconds
    / median s/step; None without a median), ``exact_length`` and ``detail``."""
    kept = run.step_times[warmup:]
    median = statistics.median(kept) if run.status == "ok" and kept else None
    floor = side_floor(run, point, warmup, rates) if median is not None else None
    exact = all(lo == hi == point.length for lo, hi in run.completion_lengths)
    return {
        "status": run.status,
        "note": side_note(run),
        "detail": run.detail,
        "s": median,
        "steps_done": len(run.step_times),
        "steps": run.steps,
        "gb": None if run.status == "not run" else run.peak_rss_kb * 1024 / GB,
        "precision": run.precision,
        "floor_s": floor.step if floor else None,
        "floor_fraction": floor.step / median if floor and median else None,
        "exact_length": exact and bool(run.completion_lengths),
    }


def point_figures(
    point: Point, params: int, groupwise: SideRun, trl: SideRun, warmup: int, rates: dict[str, Any]
) -> dict[str, Any]:
    """A row of the table: model, LoRA, L, each side's :func:`side_figures` under its prefix
    (``groupwise_s``, ``trl_gb``, ...) and ``ratio`` = TRL s/step / groupwise's (None unless
    both finished)."""
    row: dict[str, Any] = {
        "model": point.model.label,
        "model_key": point.model.name,
        "params_m": round(params / 1e6, 1),
        "lora": point.model.lora,
        "length": point.length,
    }
    for run in (groupwise, trl):
        figures = side_figures(run, point, warmup, rates)
        row.update({f"{run.trainer}_{k}": v for k, v in figures.items()})
    g, t = row["groupwise_s"], row["trl_s"]
    row["ratio"] = t / g if g and t else None
    return row


def seconds_cell(row: dict[str, Any], side: str) -> str:
    s = row[f"{side}_s"]
    return f"{s:.2f}" if s is not None else str(row[f"{side}_note"])


def rss_cell(row: dict[str, Any], side: str) -> str:
    gb, status = row[f"{side}_gb"], row[f"{side}_status"]
    if gb is None:
        return "-"
    return f"{gb:.2f}" if status == "ok" else f"{gb:.2f} at {status}"


def fraction_cell(row: dict[str, Any], side: str) -> str:
    f = row[f"{side}_floor_fraction"]
    return "-" if f is None else f"{f:.2f}"


COLUMNS = (
    "model",
    "LoRA",
    "L",
    "groupwise s/step",
    "TRL s/step",
    "TRL / groupwise",
    "groupwise peak RSS GB",
    "TRL peak RSS GB",
    "groupwise floor fraction",
    "TRL floor fraction",
)


def table(rows: list[dict[str, Any]]) -> str:
    """The Markdown table of :data:`COLUMNS` (scripts/render_results.py's SCALING_TRL_COLUMNS
    renders the same cells from a result file)."""
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + " --- |" * len(COLUMNS)]
    for r in rows:
        cells = [
            str(r["model"]),
            "yes" if r["lora"] else "no",
            str(r["length"]),
            seconds_cell(r, "groupwise"),
            seconds_cell(r, "trl"),
            "-" if r["ratio"] is None else f"{r['ratio']:.2f}x",
            rss_cell(r, "groupwise"),
            rss_cell(r, "trl"),
            fraction_cell(r, "groupwise"),
            fraction_cell(r, "trl"),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# The driver


def int_list(text: str) -> list[int]:
    """'48,256' -> [48, 256]."""
    return [int(x) for x in text.split(",") if x.strip()]


def ensure_trl_env(venv: Path) -> Path:
    """Create (or check: a no-op once made) TRL's venv with benchmarks/trl_env.sh; its python."""
    env = {**os.environ, "TRL_VENV": str(venv)}
    subprocess.run(["bash", str(ROOT / "benchmarks" / "trl_env.sh")], check=True, env=env)
    return venv / "bin" / "python"


def machine_lines(facts: dict[str, Any], trl_setting: str, trl_bf16: bool) -> str:
    """The CPU, each side's precision and the matmul rates the floor uses, printed first."""
    rates = facts["matmul_gflops"]
    rate_text = "; ".join(
        f"{name} {r['shape']}: fp32 {r['fp32']:.1f}, bf16 {r['bf16']:.1f}"
        for name, r in rates.items()
    )
    p = facts["precision"]
    return "\n".join(
        [
            f"- CPU: {facts['cpu']}; torch {facts['torch']}, {facts['threads']} threads",
            f"- groupwise training.bf16=auto -> {'bf16' if p['bf16'] else 'fp32'}: {p['reason']}",
            f"- TRL: --trl-precision {trl_setting} -> {'bf16' if trl_bf16 else 'fp32'}",
            f"- matmul GFLOP/s: {rate_text}",
        ]
    )


def memory_total_gb() -> float:
    """The machine's MemTotal in GB."""
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) * 1024 / GB
    raise RuntimeError("no MemTotal in /proc/meminfo")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="135m,360m,1.7b-lora", help="comma-separated")
    parser.add_argument("--lengths", type=int_list, default=[48, 256, 1024])
    parser.add_argument("--steps", type=int, default=3, help="steps per run (warm-up included)")
    parser.add_argument("--warmup", type=int, default=1, help="steps dropped from each run")
    parser.add_argument("--timeout-min", type=float, default=180.0, help="wall bound per run")
    parser.add_argument(
        "--max-rss-gb", type=float, default=None, help="process tree RSS bound (MemTotal - 2)"
    )
    parser.add_argument("--min-available-gb", type=float, default=1.5)
    parser.add_argument(
        "--run-all", action="store_true", help="run longer lengths after an OOM/timeout too"
    )
    parser.add_argument("--trl-venv", type=Path, default=ROOT / ".venv-trl")
    parser.add_argument("--trl-precision", choices=("auto", "bf16", "fp32"), default="auto")
    parser.add_argument("--models-dir", type=Path, default=ROOT / "runs" / "scaling-models")
    parser.add_argument(
        "--reuse",
        action="store_true",
        help="keep the sides already in --out (same steps) instead of running them again",
    )
    parser.add_argument(
        "--out", type=Path, default=ROOT / "runs" / "bench-scaling-trl" / "results.json"
    )
    harness.add_result_argument(parser, "scaling-trl")
    args = parser.parse_args()
    if args.steps <= args.warmup:
        parser.error("--steps must be larger than --warmup")
    try:
        args.specs = [model_spec(m.strip()) for m in args.models.split(",") if m.strip()]
    except ValueError as e:
        parser.error(str(e))
    if args.max_rss_gb is None:
        args.max_rss_gb = memory_total_gb() - 2.0
    return args


def reusable_sides(out: Path, steps: int) -> dict[tuple[str, str], SideRun]:
    """The sides an earlier run of this script left in ``out`` (its raw JSON), keyed by (point
    key, trainer): those that ran the same number of steps and did not fail (an OOM or a timeout
    is a result and is kept; 'failed' and 'not run' are run again). Empty without the file."""
    if not out.exists():
        return {}
    kept: dict[tuple[str, str], SideRun] = {}
    for entry in json.loads(out.read_text()).get("runs", []):
        for trainer in ("groupwise", "trl"):
            run = SideRun(**entry[trainer])
            if run.steps == steps and run.status not in ("failed", "not run"):
                kept[(entry["point"], trainer)] = run
    return kept


def run_side(
    point: Point, trainer: str, args: argparse.Namespace, trl_python: Path, precision: str
) -> SideRun:
    """One side of a point, bounded by the run's limits, stamped with the commit it ran at."""
    work = args.out.parent / "work"
    env = dict(os.environ)
    limits = Limits(args.max_rss_gb, args.min_available_gb, args.timeout_min * 60)
    if trainer == "groupwise":
        run = run_groupwise_side(point, args.steps, work, env, limits, precision)
    else:
        run = run_trl_side(point, args.steps, work, env, limits, trl_python, precision)
    run.commit = harness.git_state()["commit"]
    return run


def run_points(
    points: list[Point],
    args: argparse.Namespace,
    trl_python: Path,
    precisions: dict[str, str],
    after_point: Any = None,
) -> list[tuple[Point, SideRun, SideRun]]:
    """Both sides of every point (groupwise first at even points, TRL first at odd ones); a
    side whose shorter length on the same model stopped is 'not run' unless --run-all; with
    --reuse a side already in --out is taken from there. ``after_point(points_so_far)`` is
    called after each point (the driver writes its files then) with the points done and the
    later points whose both sides are reused, in the order of ``points``: a run cut short
    keeps in its files every point an earlier run left there."""
    reuse = reusable_sides(args.out, args.steps) if args.reuse else {}
    stopped: dict[tuple[str, str], str] = {}  # (model, trainer) -> why the rest is skipped
    done: list[tuple[Point, SideRun, SideRun]] = []

    def so_far(i: int) -> list[tuple[Point, SideRun, SideRun]]:
        later = [
            (p, reuse[(p.key, "groupwise")], reuse[(p.key, "trl")])
            for p in points[i + 1 :]
            if (p.key, "groupwise") in reuse and (p.key, "trl") in reuse
        ]
        return done + later

    for i, point in enumerate(points):
        runs: dict[str, SideRun] = {}
        for trainer in ("groupwise", "trl") if i % 2 == 0 else ("trl", "groupwise"):
            why = stopped.get((point.model.name, trainer))
            if (point.key, trainer) in reuse:
                runs[trainer], origin = reuse[(point.key, trainer)], " (reused)"
            elif why and not args.run_all:
                runs[trainer], origin = SideRun(trainer, "not run", why, args.steps), ""
            else:
                runs[trainer] = run_side(point, trainer, args, trl_python, precisions[trainer])
                origin = ""
            run = runs[trainer]
            if run.status in STOPPED:
                stopped.setdefault((point.model.name, trainer), f"{run.status} at L={point.length}")
            times = ", ".join(f"{t:.1f}" for t in run.step_times)
            print(
                f"{point.key} {trainer}{origin}: {run.status} {run.detail} steps [{times}] s, "
                f"peak RSS {run.peak_rss_kb * 1024 / GB:.2f} GB, wall {run.wall_s:.0f} s",
                flush=True,
            )
        done.append((point, runs["groupwise"], runs["trl"]))
        if after_point is not None:
            after_point(so_far(i))
    return done


def write_outputs(
    args: argparse.Namespace,
    results: list[tuple[Point, SideRun, SideRun]],
    dirs: dict[str, Path],
    machine: dict[str, Any],
    rates: dict[str, Any],
    precisions: dict[str, str],
    versions: dict[str, Any],
) -> str:
    """Write --out (every side, its command and per-step times, the machine and the rates) and
    the --result figures for the points so far; the Markdown table."""
    params = {size: safetensors_parameters(d) for size, d in dirs.items()}
    rows = [point_figures(p, params[p.model.size], g, t, args.warmup, rates) for p, g, t in results]
    text = table(rows)
    record = {
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "model_dirs": {k: str(v) for k, v in dirs.items()},
        "git": harness.git_state(),
        "machine": {**machine, "matmul_gflops": rates},
        "versions": versions,
        "summary": rows,
        "table": text,
        "runs": [{"point": p.key, "groupwise": asdict(g), "trl": asdict(t)} for p, g, t in results],
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_suffix(".tmp")
    tmp.write_text(json.dumps(record, indent=1, default=str))
    tmp.replace(args.out)
    figures = {
        "rows": rows,
        "steps": args.steps,
        "warmup": args.warmup,
        "precision": precisions,
        "bounds": {
            "max_rss_gb": args.max_rss_gb,
            "min_available_gb": args.min_available_gb,
            "timeout_min": args.timeout_min,
        },
        "commits": sorted({r.commit for _, g, t in results for r in (g, t) if r.commit}),
    }
    harness.write_result(args.result, figures)
    return text


def main() -> None:
    args = parse_args()
    load_before = os.getloadavg()
    trl_python = ensure_trl_env(args.trl_venv)
    base_dir = harness.resolve_model_dir()
    dirs = {s.size: model_dir_for(s, base_dir, args.models_dir) for s in args.specs}
    facts = harness.machine_facts()
    groupwise_bf16 = bool(facts["precision"]["bf16"])
    trl_bf16 = groupwise_bf16 if args.trl_precision == "auto" else args.trl_precision == "bf16"
    precisions = {"groupwise": "bf16" if groupwise_bf16 else "fp32"}
    precisions["trl"] = "bf16" if trl_bf16 else "fp32"
    print(machine_lines(facts, args.trl_precision, trl_bf16), flush=True)
    print(
        f"bounds per run: {args.max_rss_gb:.1f} GB tree RSS, MemAvailable >= "
        f"{args.min_available_gb} GB, {args.timeout_min:.0f} min",
        flush=True,
    )
    points = [
        Point(spec, length, dirs[spec.size])
        for spec in args.specs
        for length in sorted(args.lengths)
    ]
    rates_start = facts["matmul_gflops"]
    machine = {
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "memory_gb": memory_total_gb(),
        "loadavg_before": load_before,
        **facts,
        "matmul_gflops_start": rates_start,
    }

    # each venv's package versions, asked once (a subprocess each), not at every point
    versions = {"trl_env": harness.versions(str(trl_python)), "groupwise_env": harness.versions()}

    def after_point(done: list[tuple[Point, SideRun, SideRun]]) -> None:
        write_outputs(args, done, dirs, machine, rates_start, precisions, versions)

    results = run_points(points, args, trl_python, precisions, after_point)

    rates_end = harness.machine_facts()["matmul_gflops"]
    rates = harness.best_rates(rates_start, rates_end)
    machine.update(loadavg_after=os.getloadavg(), matmul_gflops_end=rates_end)
    text = write_outputs(args, results, dirs, machine, rates, precisions, versions)
    print()
    print(text)
    for p, g, t in results:
        for run in (g, t):
            exact = all(lo == hi == p.length for lo, hi in run.completion_lengths)
            if run.status == "ok" and not exact:
                print(f"WARNING: {p.key} L={p.length} {run.trainer}: lengths not all exact")
    print(f"\nraw results: {args.out}")


if __name__ == "__main__":
    main()
