"""Structure check: the working tree trains bit for bit like a baseline commit.

    python scripts/structure_check.py [--base REV] [--only NAME[,NAME]] [--keep] [--jobs N]

A change that only restructures the code must not change a single bit of what training
computes. This script runs the same short float32 tiny-random trainings twice, once with the
package source of the baseline commit (``BASELINE_COMMIT``, or ``--base REV``) and once with the
working tree's ``src/``, and checks, per configuration, that

- every ``metrics.jsonl`` record is exactly equal (keys starting with ``time/``,
  ``step_time`` or ``wall_time`` removed; floats compared with ``==``, NaN equal to NaN),
- ``completions.jsonl`` (every prompt, completion, reward and advantage) is exactly equal,
- ``config.yaml`` and ``summary.json`` are equal once the run directory's path is replaced by
  ``<run>`` (``summary.json`` without its wall-clock times and the precision probe's rates;
  ``config.yaml`` without keys only the working tree has: new settings at their defaults), and
- every tensor of the final weights (``final/**/*.safetensors``) is equal (``torch.equal``).

It prints the first difference of each configuration and exits 1 on any difference (2 when a
run fails or the set-up does).

The baseline is a commit, not a file of recorded numbers: float32 matmul kernels differ in the
low bits between CPUs (AVX2 vs AVX-512), so both sides are computed on the machine at hand. The
base side is ``git archive BASE src`` extracted into a temporary directory and run with the same
interpreter, its ``src/`` first on ``PYTHONPATH`` (ahead of the editable install); the reward
function below prints the ``groupwise`` file each training process imported, and the script
checks that it belongs to the intended tree.

Configurations (``--only``): ``grpo``, ``dapo``, ``dr_grpo`` (each loss type), ``lora``
(``model.lora=true``), ``mu2`` (``algorithm.num_iterations=2``), ``beta`` (``algorithm.beta=0.04``,
a reference model), ``ddp`` and ``fsdp`` (2 CPU processes with gloo under ``torchrun``),
``episodes`` (the guessing game through the multi-turn ``episodes`` engine), ``code`` (the
``functions`` task, its completions run by ``code_tests`` in the sandbox) and ``bf16``
(``training.bf16=true`` with every memory lever and the parameter dtype on ``auto``: bf16 weights,
fused kernels, the reference mapped from disk, stochastic rounding). Each is
``python -m groupwise train`` with ``training.bf16=false`` (and ``training.param_dtype=float32``
where the tree has that key) unless the configuration says otherwise, 3 steps of 16
completions, one thread per process.

The model: ``lora`` trains the ``tiny-random`` preset itself. Its EOS is one token in 49152
that it practically never samples, so every completion runs to ``max_completion_length``, and
with equal lengths the three loss aggregations are the same number (measured: grpo, dapo and
dr_grpo ended in bitwise equal weights), which would hide a mistake in any of them. The other
configurations therefore train a copy of it (``tiny-random-eos``, built once per check by the
base tree and loaded from its directory by both sides) whose tied EOS embedding row is
``EOS_SCALE`` times the first unit vector: the EOS logit becomes ``EOS_SCALE`` times the first
coordinate of the normalised hidden state, and completions end after 1 to 8 tokens.

When a change is meant to change the numbers, move ``BASELINE_COMMIT`` to that change's commit.
``--self`` runs the working tree on both sides (run-to-run reproducibility).
"""

from __future__ import annotations

import argparse
import io
import json
import math
import os
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

BASELINE_COMMIT = "7def894c8918963da23abb0c9fe2453c4caa7612"
"""The commit the working tree must train exactly like: the one that gave the episodes engine
its ``episodes/ended/*`` and ``episodes/turns_cut`` metrics (and chat-templated string prompts).
On every other configuration, and on the episodes configuration's completions and weights, it
trains like the earlier baseline 92592c976c4b, the last commit before the package was regrouped
into the stages of the data flow."""

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = ROOT / "scripts"
STEPS = 3
IGNORED_PREFIXES = ("time/", "step_time", "wall_time", "hacking/")
"""Metric keys left out of the comparison: wall-clock timings (they differ run to run) and the
reward-hacking flags added after the baseline (they observe a step and feed nothing back)."""
MARKER = "structure_check: groupwise imported from "
EOS_SCALE = 4.0
"""The ``tiny-random-eos`` model's EOS embedding row (see the module docstring)."""
PERTURBED_LR = 1.1e-3
"""The working side's learning rate under the hidden ``--perturb`` (the check must then fail)."""


@dataclass(frozen=True)
class Case:
    """One configuration: overrides on top of ``common_overrides``, run in ``nproc`` processes."""

    name: str
    overrides: dict[str, object] = field(default_factory=dict)
    nproc: int = 1
    weights_dtype: str = "float32"
    """The dtype every final tensor must have (a run in another dtype cannot be compared)."""


CASES: tuple[Case, ...] = (
    Case("grpo", {"algorithm.loss_type": "grpo"}),
    Case("dapo", {"algorithm.loss_type": "dapo"}),
    Case("dr_grpo", {"algorithm.loss_type": "dr_grpo"}),
    Case("lora", {"model.lora": "true", "model.name": "tiny-random"}),
    Case("mu2", {"algorithm.num_iterations": 2}),
    Case("beta", {"algorithm.beta": 0.04}),
    # 2 ranks x 8 completions = the same 16 completions per step as the others' 2 micro-batches
    Case("ddp", {"training.strategy": "ddp", "training.gradient_accumulation_steps": 1}, nproc=2),
    Case("fsdp", {"training.strategy": "fsdp", "training.gradient_accumulation_steps": 1}, nproc=2),
    Case(
        "episodes",
        {
            "data.task": "guess",
            "data.params": "{low: 1, high: 20}",
            "rollout.engine": "episodes",
            "rollout.max_completion_length": 16,
            "rollout.engine_kwargs": "{environment: guess, env_kwargs: {low: 1, high: 20, "
            "max_guesses: 3}, max_turns: 3, max_tokens: 16, max_tokens_per_turn: 4}",
            "rewards.funcs": "[env_reward, structure_check:varied_reward]",
        },
    ),
    Case(
        "code",
        {
            "data.task": "functions",
            "data.params": "{demos: 1}",
            "rewards.funcs": "[code_tests, structure_check:varied_reward]",
            "rewards.kwargs": "{code_tests: {max_workers: 1, timeout: 5.0}}",
            "rewards.unsafe_code_execution": "false",
        },
    ),
    Case(
        "bf16",
        {
            "training.bf16": "true",
            "training.param_dtype": "auto",
            "algorithm.beta": 0.04,
            "model.reference_on_disk": "auto",
            "training.fused_kernels": "auto",
            "training.bf16_rounding": "kahan_sr_v",
        },
        weights_dtype="bfloat16",
    ),
)

_announced = False


def varied_reward(prompts: list[Any], completions: list[str], **_: Any) -> list[float]:
    """Spread inside each group (by length), so every step moves the weights.

    The training processes import it as ``structure_check:varied_reward``; its first call in a
    process prints which ``groupwise`` that process imported.
    """
    global _announced
    if not _announced:
        _announced = True
        print(f"{MARKER}{sys.modules['groupwise'].__file__}", file=sys.stderr, flush=True)
    return [float(len(c) % 5) / 4.0 for c in completions]


def common_overrides(out: Path, model: Path, param_dtype: bool) -> dict[str, object]:
    """Settings shared by every configuration: fp32, small, fast, the final weights saved."""
    overrides: dict[str, object] = {
        "model.name": str(model),
        "training.max_steps": STEPS,
        "rollout.num_generations": 4,
        "rollout.max_completion_length": 8,
        "training.per_device_train_batch_size": 8,
        "training.gradient_accumulation_steps": 2,
        "training.learning_rate": 1e-3,
        "training.bf16": "false",
        "training.num_threads": 1,
        "training.device": "cpu",
        "training.save_final": "true",
        "training.save_steps": 0,
        "training.progress": "false",
        "training.report": "false",
        "training.output_dir": str(out),
        "eval.before": "false",
        "eval.after": "false",
        "eval.every_steps": 0,
        "data.train_size": 64,
        "data.eval_size": 8,
        "rewards.funcs": "[structure_check:varied_reward]",
        "training.log_completions": "true",
        "training.log_completions_steps": 1,
        # the baseline sampled with torch.multinomial in one process; the inverse CDF, the
        # default since 2026-11-29, draws other samples (under torchrun both sides use it)
        "rollout.rank_invariant_sampling": "false",
    }
    if param_dtype:
        overrides["training.param_dtype"] = "float32"
    return overrides


# --------------------------------------------------------------------------------- comparison
def _same(a: Any, b: Any) -> bool:
    """Exact equality of JSON values; NaN equals NaN; 1 and 1.0 are not the same value."""
    if isinstance(a, float) and isinstance(b, float):
        return a == b or (math.isnan(a) and math.isnan(b))
    if type(a) is not type(b):
        return False
    if isinstance(a, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    return bool(a == b)


def metric_records(run: Path) -> list[dict[str, Any]]:
    """``run/metrics.jsonl`` without the timing keys."""
    lines = (run / "metrics.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines if line.strip()]
    return [{k: v for k, v in r.items() if not k.startswith(IGNORED_PREFIXES)} for r in records]


SUMMARY_IGNORED = ("train_time_s", "wall_time_s", "probe")
"""``summary.json`` keys that measure the machine, not the run (left out at any depth)."""


def _normalised(value: Any, run: Path) -> Any:
    """``value`` with ``run``'s path replaced by ``<run>`` and the machine's measurements dropped."""
    if isinstance(value, str):
        return value.replace(str(run), "<run>")
    if isinstance(value, list):
        return [_normalised(v, run) for v in value]
    if isinstance(value, dict):
        return {k: _normalised(v, run) for k, v in value.items() if k not in SUMMARY_IGNORED}
    return value


def _first_json_difference(name: str, a: Any, b: Any, where: str = "") -> str | None:
    """Where two JSON values first differ, as ``name: key.path base X != work Y``."""
    if isinstance(a, dict) and isinstance(b, dict):
        for key in a.keys() - b.keys():
            return f"{name}: {where}{key!r} only in base"
        for key in b.keys() - a.keys():
            return f"{name}: {where}{key!r} only in work"
        for key in a:
            found = _first_json_difference(name, a[key], b[key], f"{where}{key}.")
            if found:
                return found
        return None
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            found = _first_json_difference(name, x, y, f"{where}[{i}].")
            if found:
                return found
        return None
    if not _same(a, b):
        return f"{name}: {where.rstrip('.') or 'value'} base {a!r} != work {b!r}"
    return None


def run_files(run: Path) -> dict[str, Any]:
    """``config.yaml``, ``summary.json`` and ``completions.jsonl`` of ``run``, normalised."""
    import yaml

    out: dict[str, Any] = {}
    for name in ("config.yaml", "summary.json", "completions.jsonl"):
        path = run / name
        if not path.is_file():
            out[name] = None
            continue
        text = path.read_text()
        if name.endswith(".yaml"):
            value: Any = yaml.safe_load(text)
        elif name.endswith(".jsonl"):
            value = [json.loads(line) for line in text.splitlines() if line.strip()]
        else:
            value = json.loads(text)
        out[name] = _normalised(value, run)
    return out


def _without_new_keys(base: Any, work: Any) -> Any:
    """``work`` without the mapping keys ``base`` lacks (at any depth)."""
    if isinstance(base, dict) and isinstance(work, dict):
        return {k: _without_new_keys(base[k], v) for k, v in work.items() if k in base}
    return work


NEW_AUTO_DEFAULTS = {("rollout", "engine"): "local"}
"""Settings whose default became ``auto`` after the baseline, with the value the run plan
resolves it to for every baseline configuration: a working-tree ``auto`` there is compared as
that value (what the plan picked shows in the metrics, completions and weights)."""


def _with_planned_defaults(base: Any, work: Any) -> Any:
    """``work``'s config with each :data:`NEW_AUTO_DEFAULTS` key that is ``auto`` in ``work``
    and the planned value in ``base`` replaced by that value."""
    for (section, key), planned in NEW_AUTO_DEFAULTS.items():
        here, there = work.get(section, {}), base.get(section, {})
        if here.get(key) == "auto" and there.get(key) == planned:
            work = {**work, section: {**here, key: planned}}
    return work


def compare_files(base: Path, work: Path) -> str | None:
    """The first difference in ``config.yaml``, ``summary.json`` or ``completions.jsonl``.

    A ``config.yaml`` key only the working tree has is a new setting at its default: it is left
    out (what it changes, if anything, shows in the metrics, completions and weights); so is a
    default turned ``auto`` that the plan resolves to the baseline's value
    (:data:`NEW_AUTO_DEFAULTS`); a key the working tree lost or a changed value is a difference.
    """
    a, b = run_files(base), run_files(work)
    if a["config.yaml"] is not None and b["config.yaml"] is not None:
        b["config.yaml"] = _without_new_keys(a["config.yaml"], b["config.yaml"])
        b["config.yaml"] = _with_planned_defaults(a["config.yaml"], b["config.yaml"])
    for name in a:
        if a[name] is None or b[name] is None:
            if a[name] is not b[name]:
                return f"{name}: only in {'work' if a[name] is None else 'base'}"
            continue
        found = _first_json_difference(name, a[name], b[name])
        if found:
            return found
    if not a["completions.jsonl"]:
        return "base: no completions.jsonl records (nothing to compare)"
    return None


def final_weights(run: Path) -> dict[str, Any]:
    """Every tensor under ``run/final`` keyed ``file:tensor`` (LoRA adds ``adapter/``)."""
    from safetensors.torch import load_file

    final = run / "final"
    out: dict[str, Any] = {}
    for file in sorted(final.rglob("*.safetensors")):
        rel = file.relative_to(final).as_posix()
        out.update({f"{rel}:{name}": t for name, t in load_file(str(file)).items()})
    return out


def compare_runs(
    base: Path,
    work: Path,
    steps: int | None = STEPS,
    weights_dtype: str = "float32",
    files: bool = False,
) -> str | None:
    """The first difference between two run directories, or None when they are identical.

    Also reports a run that cannot show a difference: fewer than ``steps`` records, no
    weights, weights that are not ``weights_dtype``, or gradients that were 0 throughout.
    ``files`` compares ``config.yaml``, ``summary.json`` and ``completions.jsonl`` as well.
    """
    for side, run in (("base", base), ("work", work)):
        if not (run / "metrics.jsonl").is_file():
            return f"{side}: no metrics.jsonl in {run}"
    a, b = metric_records(base), metric_records(work)
    if steps is not None and len(a) != steps:
        return f"base: {len(a)} metrics records, expected {steps}"
    for i, (ra, rb) in enumerate(zip(a, b, strict=False)):  # lengths compared below
        where = f"metrics record {i + 1} (step {ra.get('step')})"
        for key in ra.keys() - rb.keys():
            return f"{where}: {key!r} only in base"
        for key in rb.keys() - ra.keys():
            return f"{where}: {key!r} only in work"
        for key in ra:
            if not _same(ra[key], rb[key]):
                return f"{where}: {key!r} base {ra[key]!r} != work {rb[key]!r}"
    if len(a) != len(b):
        return f"metrics: {len(a)} records in base, {len(b)} in work"
    if not any(r.get("grad_norm") for r in a):
        return "base: grad_norm 0 or missing at every step (the weights may not have moved)"
    if files:
        found = compare_files(base, work)
        if found:
            return found

    import torch

    wa, wb = final_weights(base), final_weights(work)
    if not wa:
        return f"base: no *.safetensors under {base / 'final'}"
    for name in sorted(wa.keys() - wb.keys()):
        return f"final weights: {name} only in base"
    for name in sorted(wb.keys() - wa.keys()):
        return f"final weights: {name} only in work"
    for name in sorted(wa):
        ta, tb = wa[name], wb[name]
        if ta.dtype != getattr(torch, weights_dtype):
            return f"final weights: {name} is {ta.dtype} in base, not {weights_dtype}"
        if ta.dtype != tb.dtype or ta.shape != tb.shape:
            return f"final weights: {name} base {ta.dtype}{list(ta.shape)} != work {tb.dtype}{list(tb.shape)}"
        if not torch.equal(ta, tb):
            diff = (ta.double() - tb.double()).abs().nan_to_num(nan=math.inf)
            return f"final weights: {name} differs (max abs diff {diff.max().item():.3g}, {int((diff > 0).sum())} of {ta.numel()} elements)"
    return None


# ---------------------------------------------------------------------------------- running
@dataclass
class Side:
    """One source tree the configurations run against."""

    label: str
    src: Path
    extra: dict[str, object] = field(default_factory=dict)
    param_dtype: bool = True


@dataclass
class RunResult:
    case: Case
    side: Side
    run: Path
    seconds: float
    error: str | None


def _git(*args: str) -> str:
    proc = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"structure_check: git {' '.join(args)} failed: {proc.stderr.strip()}")
    return proc.stdout.strip()


def resolve_base(rev: str) -> str:
    """The full commit id of ``rev``; exits 2 (with a hint) when this clone lacks it."""
    proc = subprocess.run(
        ["git", "rev-parse", "--verify", "--quiet", f"{rev}^{{commit}}"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    if proc.returncode != 0:
        print(
            f"structure_check: base {rev} is not a commit of this clone "
            "(a shallow CI checkout needs the full history: git fetch --unshallow)",
            file=sys.stderr,
        )
        raise SystemExit(2)
    return proc.stdout.strip()


def extract_src(commit: str, dest: Path) -> Path:
    """``git archive commit src`` extracted under ``dest``; returns ``dest/src``."""
    data = subprocess.run(
        ["git", "archive", "--format=tar", commit, "src"], cwd=ROOT, capture_output=True
    )
    if data.returncode != 0:
        raise SystemExit(f"structure_check: git archive failed: {data.stderr.decode().strip()}")
    with tarfile.open(fileobj=io.BytesIO(data.stdout)) as tar:
        if hasattr(tarfile, "data_filter"):
            tar.extractall(dest, filter="data")
        else:  # Python < 3.10.12 / 3.11.4
            tar.extractall(dest)  # our own repository's archive
    return dest / "src"


def child_env(src: Path) -> dict[str, str]:
    """The environment of a training process: ``src`` ahead of the editable install."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(src), str(SCRIPTS)])
    env["OMP_NUM_THREADS"] = "1"
    return env


def has_param_dtype(src: Path, cwd: Path) -> bool:
    """Whether ``groupwise config --reference`` of the tree at ``src`` lists training.param_dtype."""
    cmd = [sys.executable, "-m", "groupwise", "config", "--reference"]
    proc = subprocess.run(cmd, env=child_env(src), cwd=cwd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"structure_check: {' '.join(cmd)} failed at {src}:\n{proc.stderr}")
    return "`training.param_dtype`" in proc.stdout


_BUILD_MODEL = """
import sys, torch
from groupwise.models import tiny_random_model
model, tokenizer = tiny_random_model(0)
assert model.config.tie_word_embeddings
with torch.no_grad():
    row = model.get_input_embeddings().weight[tokenizer.eos_token_id]
    row.zero_()
    row[0] = float(sys.argv[2])
model.save_pretrained(sys.argv[1])
tokenizer.save_pretrained(sys.argv[1])
"""


def build_eos_model(src: Path, dest: Path) -> Path:
    """``tiny-random-eos`` (see the module docstring), built by the tree at ``src`` into ``dest``."""
    cmd = [sys.executable, "-c", _BUILD_MODEL, str(dest), str(EOS_SCALE)]
    proc = subprocess.run(cmd, env=child_env(src), cwd=dest.parent, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"structure_check: building tiny-random-eos failed:\n{proc.stderr}")
    return dest


def run_case(case: Case, side: Side, workdir: Path, model: Path) -> RunResult:
    """``python -m groupwise train`` (under torchrun when ``case.nproc > 1``) in ``workdir``."""
    workdir.mkdir(parents=True, exist_ok=True)
    run = workdir / "run"
    common = common_overrides(run, model, side.param_dtype)
    overrides = {**common, **case.overrides, **side.extra}
    launcher = [sys.executable]
    if case.nproc > 1:
        launcher += ["-m", "torch.distributed.run", "--standalone"]
        launcher += [f"--nproc_per_node={case.nproc}"]
    cmd = [*launcher, "-m", "groupwise", "train", *(f"{k}={v}" for k, v in overrides.items())]
    start = time.monotonic()
    proc = subprocess.run(
        cmd, env=child_env(side.src), cwd=workdir, capture_output=True, text=True, timeout=600
    )
    seconds = time.monotonic() - start
    (workdir / "stdout.txt").write_text(proc.stdout)
    (workdir / "stderr.txt").write_text(proc.stderr)
    error = None
    if proc.returncode != 0:
        error = f"exit {proc.returncode}; stderr ends:\n{proc.stderr[-3000:]}"
    else:
        imported = {
            line[len(MARKER) :].strip()
            for line in proc.stderr.splitlines()
            if line.startswith(MARKER)
        }
        wrong = [p for p in imported if not Path(p).resolve().is_relative_to(side.src.resolve())]
        if not imported:
            error = "no training process reported which groupwise it imported"
        elif wrong:
            error = f"imported groupwise from {wrong[0]}, not from {side.src}"
    return RunResult(case, side, run, seconds, error)


def run_all(
    cases: Sequence[Case], sides: Sequence[Side], tmp: Path, model: Path, jobs: int
) -> dict[tuple[str, str], RunResult]:
    """Every case on every side: multi-process cases one at a time, then the rest ``jobs`` wide."""
    results: dict[tuple[str, str], RunResult] = {}

    def task(case: Case, side: Side) -> Callable[[], RunResult]:
        return lambda: run_case(case, side, tmp / side.label / case.name, model)

    wide = [task(c, s) for c in cases if c.nproc > 1 for s in sides]
    narrow = [task(c, s) for c in cases if c.nproc == 1 for s in sides]
    done = [t() for t in wide]
    with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
        done += list(pool.map(lambda t: t(), narrow))
    for r in done:
        results[(r.case.name, r.side.label)] = r
    return results


def _cpus() -> int:
    """The CPUs this process may run on."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return os.cpu_count() or 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--base", default=BASELINE_COMMIT, help="baseline git revision")
    parser.add_argument("--only", default="", help="comma-separated configuration names")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    parser.add_argument("--jobs", type=int, default=_cpus(), help="parallel runs (default: CPUs)")
    parser.add_argument(
        "--self", dest="self_check", action="store_true", help="working tree on both sides"
    )
    parser.add_argument("--perturb", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    names = [n for n in args.only.split(",") if n]
    unknown = sorted(set(names) - {c.name for c in CASES})
    if unknown:
        parser.error(f"unknown configuration {unknown}; known: {[c.name for c in CASES]}")
    cases = [c for c in CASES if not names or c.name in names]

    start = time.monotonic()
    tmp = Path(tempfile.mkdtemp(prefix="structure_check-"))
    try:
        work = Side("work", ROOT / "src")
        if args.perturb:
            work.extra["training.learning_rate"] = PERTURBED_LR
        if args.self_check:
            base, what = Side("base", ROOT / "src"), "the working tree (--self)"
        else:
            commit = resolve_base(args.base)
            base = Side("base", extract_src(commit, tmp / "base-tree"))
            what = f"{commit[:12]} ({args.base})" if args.base != commit else commit[:12]
        print(f"structure check: {what} vs the working tree {ROOT}")
        print(f"configurations: {', '.join(c.name for c in cases)}; {args.jobs} parallel runs")
        sys.stdout.flush()
        with ThreadPoolExecutor(max_workers=3) as pool:
            model = pool.submit(build_eos_model, base.src, tmp / "tiny-random-eos")
            flags = list(pool.map(lambda s: has_param_dtype(s.src, tmp), (base, work)))
        base.param_dtype, work.param_dtype = flags
        results = run_all(cases, (base, work), tmp / "runs", model.result(), args.jobs)

        failed = different = 0
        width = max(len(c.name) for c in cases)
        for case in cases:
            rb, rw = results[(case.name, "base")], results[(case.name, "work")]
            took = f"base {rb.seconds:.1f} s, work {rw.seconds:.1f} s"
            errors = [f"{r.side.label}: {r.error}" for r in (rb, rw) if r.error]
            if errors:
                failed += 1
                print(f"{case.name:<{width}}  FAILED     {took}\n  " + "\n  ".join(errors))
                continue
            diff = compare_runs(rb.run, rw.run, weights_dtype=case.weights_dtype, files=True)
            if diff is None:
                print(f"{case.name:<{width}}  identical  {took}")
            else:
                different += 1
                print(f"{case.name:<{width}}  DIFFERENT  {took}\n  {diff}")
        wall = time.monotonic() - start
        ok = len(cases) - failed - different
        print(
            f"{ok}/{len(cases)} identical, {different} different, {failed} failed "
            f"({wall:.0f} s wall)"
        )
        if args.keep:
            print(f"kept {tmp} (runs/<base|work>/<configuration>/{{run,stdout.txt,stderr.txt}})")
        return 2 if failed else 1 if different else 0
    finally:
        if not args.keep:
            import shutil

            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
