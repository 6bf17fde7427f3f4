"""Which precision to compute in, chosen by what the device does well (``training.bf16=auto``).

bf16 autocast (with float32 master weights and a bf16 rollout copy) is only a speed lever where
the hardware multiplies bf16 natively: CUDA GPUs from Ampere on, and CPUs with AVX512-BF16 or
AMX. Elsewhere torch emulates it, far slower than float32 (docs/log.md has an AVX2-only CPU
where bf16 made the default run's steps many times longer). So on CPU the choice is measured,
not assumed:

    probe:    r32 = GFLOP/s of a [64, 576] x [576, 1536] float32 matmul (SmolLM2-135M's MLP)
              r16 = the same in bfloat16
    choose:   bf16  if r16 >= BF16_MIN_SPEEDUP * r32  else float32

The probe takes well under a second and its result is cached per machine in
``cache_dir()/precision.json``, keyed by the CPU's model and ISA flags, the torch version, the
thread count and the ISA-limiting environment variables (``ONEDNN_MAX_CPU_ISA``,
``ATEN_CPU_CAPABILITY``, ``MKL_ENABLE_INSTRUCTIONS``), so a changed machine is probed again.
On CUDA the choice is ``torch.cuda.is_bf16_supported()``; on other devices float32. An explicit
``training.bf16=true/false`` always wins, and ``training.param_dtype=bfloat16`` (pure bf16
weights) implies bf16 compute. :func:`resolve_param_dtype` then resolves
``training.param_dtype=auto``: pure bf16 weights where bf16 compute was picked on a CPU in one
process, float32 master weights otherwise (the default run with and without pure bf16 on an
AVX512-BF16 CPU learned as well in less wall time; docs/log.md).
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch

BF16_MIN_SPEEDUP = 1.5
"""bf16 is picked on CPU when its matmul is at least this much faster than float32's: below it
the casts autocast adds and the bf16 rollout copy's rounding buy too little (CPUs with native
bf16 clear it by far; docs/log.md)."""

PROBE_SHAPE = (64, 576, 1536)
"""[rows, in, out] of the probe matmul: SmolLM2-135M's up-projection on 64 tokens."""

ISA_ENV = ("ONEDNN_MAX_CPU_ISA", "ATEN_CPU_CAPABILITY", "MKL_ENABLE_INSTRUCTIONS")
"""Environment variables that change which CPU kernels torch runs (part of the cache key)."""

Probe = Callable[[torch.dtype], float]
"""Measures the matmul rate of one dtype, in GFLOP/s."""


@dataclass(frozen=True)
class PrecisionChoice:
    """What ``training.bf16`` resolved to on this device, and why."""

    bf16: bool
    """bf16 autocast for the policy's forward/backward and a bf16 rollout copy."""
    setting: str
    """The config's value: 'auto', 'true' or 'false'."""
    reason: str
    """One sentence a user can read in the run log."""
    probe: dict[str, float] | None = None
    """The measured rates (``float32_gflops``, ``bfloat16_gflops``) when a probe decided."""
    param_dtype: str = "float32"
    """The weights' dtype, ``training.param_dtype`` resolved (:func:`resolve_param_dtype`)."""
    param_reason: str = ""
    """Why that weight dtype."""

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def matmul_gflops(
    dtype: torch.dtype, seconds: float = 0.15, shape: tuple[int, int, int] = PROBE_SHAPE
) -> float:
    """Rate of ``[m, k] @ [k, n]`` in ``dtype`` on the CPU: GFLOP/s = 2 m k n / time per call."""
    m, k, n = shape
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(m, k, generator=gen).to(dtype)  # [m, k]
    b = torch.randn(k, n, generator=gen).to(dtype)  # [k, n]
    a @ b  # warm-up: kernel selection, packing
    calls, start = 0, time.perf_counter()
    while calls < 3 or time.perf_counter() - start < seconds:
        a @ b
        calls += 1
    elapsed = time.perf_counter() - start
    return 2.0 * m * k * n * calls / elapsed / 1e9


def machine_key() -> str:
    """A short hash of what decides CPU matmul speed here (see the module docstring)."""
    parts = [
        _cpu_identity(),
        torch.__version__,
        str(torch.get_num_threads()),
        str(torch.backends.cpu.get_cpu_capability()),
        *(f"{name}={os.environ.get(name, '')}" for name in ISA_ENV),
    ]
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]


def cpu_description() -> str:
    """The CPU's model name and its matmul-relevant ISA flags, e.g. 'AMD EPYC (avx2 fma)'."""
    model, flags = _cpu_model_and_flags()
    wanted = ("avx2", "fma", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile", "asimd", "bf16")
    shown = [f for f in wanted if f in flags]
    limits = [f"{name}={os.environ[name]}" for name in ISA_ENV if os.environ.get(name)]
    kernels = f"torch kernels {torch.backends.cpu.get_cpu_capability()}"
    return f"{model} ({' '.join(shown) if shown else 'no SIMD flags read'}; {kernels}" + (
        f"; {' '.join(limits)})" if limits else ")"
    )


def resolve_precision(
    setting: bool | str,
    device: torch.device,
    *,
    param_dtype: str = "float32",
    probe: Probe | None = None,
    cache_file: Path | None = None,
) -> PrecisionChoice:
    """Resolve ``training.bf16`` (``True``, ``False`` or ``"auto"``) for ``device``.

    ``probe`` measures a dtype's matmul rate (default :func:`matmul_gflops`); ``cache_file``
    keeps probe results per machine (default ``cache_dir()/precision.json``; tests inject both).
    """
    if setting is True or setting is False:
        word = "true" if setting else "false"
        return PrecisionChoice(setting, word, f"training.bf16={word} was set explicitly")
    if setting != "auto":
        raise ValueError(f"training.bf16: {setting!r} is not one of: true, false, auto")
    if param_dtype == "bfloat16":
        return PrecisionChoice(True, "auto", "training.param_dtype=bfloat16 computes in bf16")
    if device.type == "cuda":
        ok = torch.cuda.is_bf16_supported()
        why = "this GPU supports bf16" if ok else "this GPU has no bf16 support"
        return PrecisionChoice(ok, "auto", why)
    if device.type != "cpu":
        return PrecisionChoice(False, "auto", f"float32 on {device.type} (no bf16 probe there)")
    return _probe_cpu(probe or matmul_gflops, cache_file or _default_cache_file())


def resolve_param_dtype(
    setting: str,
    choice: PrecisionChoice,
    device: torch.device,
    *,
    lora: bool = False,
    merge_in_place: bool = False,
    world_size: int = 1,
) -> PrecisionChoice:
    """``choice`` with ``training.param_dtype`` (``auto``, ``float32``, ``bfloat16``) resolved.

    auto = bfloat16 weights (pure bf16 training: Kahan-compensated AdamW, no rollout copy) where
    all of these hold, float32 master weights otherwise:

    - bf16 compute was picked (natively fast bf16);
    - the device is a CPU (on GPUs float32 masters under autocast are the norm and memory is
      less tight);
    - one process (pure bf16 training is single-process for now);
    - full fine-tuning, or LoRA decoding with the adapters merged in place (which needs the base
      weights in the rollout dtype); other LoRA runs keep float32 adapters.
    """
    if setting in ("float32", "bfloat16"):
        return replace(choice, param_dtype=setting, param_reason=f"training.param_dtype={setting}")
    if setting != "auto":
        raise ValueError(
            f"training.param_dtype: {setting!r} is not one of: auto, float32, bfloat16"
        )
    blockers = [
        (not choice.bf16, "float32 compute"),
        (device.type != "cpu", f"float32 masters on {device.type}"),
        (world_size > 1, "pure bf16 is single-process only"),
        (lora and not merge_in_place, "LoRA keeps float32 adapters"),
    ]
    why = next((reason for blocked, reason in blockers if blocked), None)
    if why is not None:
        return replace(choice, param_dtype="float32", param_reason=f"auto -> float32 ({why})")
    reason = "auto -> bfloat16 (native bf16 on this CPU, one process: pure bf16 training)"
    return replace(choice, param_dtype="bfloat16", param_reason=reason)


def resolve_merge_in_place(
    setting: bool | str,
    choice: PrecisionChoice,
    device: torch.device,
    *,
    lora: bool,
    rollout_copy: bool,
    param_setting: str,
    world_size: int = 1,
) -> bool:
    """``model.lora_merge_in_place`` with ``auto`` resolved: on for LoRA with a rollout copy on a
    CPU that computes in bf16, in one process, unless ``training.param_dtype=float32`` keeps the
    base in float32 (merging in place decodes with the base weights, so they must be bf16). It
    is exact: the run equals the merged-copy run completion for completion (tests/train/test_trainer.py).
    """
    if setting != "auto":
        return bool(setting)
    return (
        lora
        and rollout_copy
        and choice.bf16
        and device.type == "cpu"
        and world_size == 1
        and param_setting in ("auto", "bfloat16")
    )


def run_merge_in_place(config: Any, choice: PrecisionChoice, device: torch.device) -> bool:
    """:func:`resolve_merge_in_place` for a run's config (false without LoRA): the one place
    both the precision choice and the model build read it from."""
    from groupwise.distributed import world_size

    m = config.model
    return m.lora and resolve_merge_in_place(
        m.lora_merge_in_place,
        choice,
        device,
        lora=m.lora,
        rollout_copy=m.lora_rollout_copy,
        param_setting=config.training.param_dtype,
        world_size=world_size(),
    )


def _probe_cpu(probe: Probe, cache_file: Path) -> PrecisionChoice:
    key = machine_key()
    cache = _read_cache(cache_file)
    rates = cache.get(key)
    source = "cached probe"
    if not _valid_rates(rates):
        rates = {
            "float32_gflops": round(probe(torch.float32), 2),
            "bfloat16_gflops": round(probe(torch.bfloat16), 2),
        }
        source = "probe"
        cache[key] = rates
        _write_cache(cache_file, cache)
    assert rates is not None
    r32, r16 = rates["float32_gflops"], rates["bfloat16_gflops"]
    bf16 = r16 >= BF16_MIN_SPEEDUP * r32
    verdict = "bf16 is faster" if bf16 else "bf16 is not natively fast here"
    reason = (
        f"{source} on {cpu_description()}: bf16 matmul {r16:.1f} vs float32 {r32:.1f} "
        f"GFLOP/s ({r16 / max(r32, 1e-9):.2f}x; bf16 needs >= {BF16_MIN_SPEEDUP}x): {verdict}"
    )
    return PrecisionChoice(bf16, "auto", reason, dict(rates))


def _valid_rates(rates: Any) -> bool:
    return isinstance(rates, dict) and all(
        isinstance(rates.get(k), (int, float)) and rates[k] > 0
        for k in ("float32_gflops", "bfloat16_gflops")
    )


def _default_cache_file() -> Path:
    from groupwise.models import cache_dir

    return cache_dir() / "precision.json"


def _read_cache(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _write_cache(path: Path, data: dict[str, Any]) -> None:
    """Atomic (a temporary file renamed over the old one); a read-only cache is not an error."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(data, indent=1, sort_keys=True))
        os.replace(tmp, path)
    except OSError:
        pass


def _cpu_model_and_flags() -> tuple[str, set[str]]:
    model, flags = platform.processor() or platform.machine(), set[str]()
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return model, flags
    for line in text.splitlines():
        name, _, value = line.partition(":")
        name = name.strip()
        if name in ("model name", "Model") and value.strip():
            model = value.strip()
        elif name in ("flags", "Features") and not flags:
            flags = set(value.split())
    return model, flags


def _cpu_identity() -> str:
    model, flags = _cpu_model_and_flags()
    return f"{platform.machine()} {model} {' '.join(sorted(flags))}"


def run_precision(config: Any, device: torch.device) -> PrecisionChoice:
    """``training.bf16`` and ``training.param_dtype`` of a run on ``device``, printed (rank 0
    decides and tells the others: a probe per rank would differ)."""
    from groupwise.distributed import broadcast_object, is_main, world_size

    t, m = config.training, config.model
    choice = None
    if is_main():
        choice = resolve_precision(t.bf16, device, param_dtype=t.param_dtype)
        merge = run_merge_in_place(config, choice, device)
        choice = resolve_param_dtype(
            t.param_dtype,
            choice,
            device,
            lora=m.lora,
            merge_in_place=merge,
            world_size=world_size(),
        )
        compute = "bf16" if choice.bf16 else "float32"
        print(f"precision: {compute} compute ({choice.reason})", flush=True)
        print(f"precision: {choice.param_dtype} weights ({choice.param_reason})", flush=True)
    shared = broadcast_object(choice)
    assert shared is not None
    return shared
