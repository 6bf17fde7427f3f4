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
The rules that read the measurement (and everything else ``auto`` in a run) are in
:mod:`groupwise.models.plan`: :func:`~groupwise.models.plan.decide_bf16` and
:func:`~groupwise.models.plan.decide_param_dtype` (pure bf16 weights where bf16 compute was
picked on a CPU in one process).
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, TypeGuard

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
    """What ``training.bf16`` and ``training.param_dtype`` resolved to, and why: the precision
    part of the run plan (:attr:`groupwise.models.plan.RunPlan.precision`)."""

    bf16: bool
    """bf16 autocast for the policy's forward/backward and a bf16 rollout copy."""
    setting: str
    """The config's value: 'auto', 'true' or 'false'."""
    reason: str
    """One sentence a user can read in the run log."""
    probe: dict[str, float] | None = None
    """The measured rates (``float32_gflops``, ``bfloat16_gflops``) when a probe decided."""
    param_dtype: str = "float32"
    """The weights' dtype, ``training.param_dtype`` resolved."""
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


def measure_cpu(
    probe: Probe | None = None, cache_file: Path | None = None
) -> tuple[dict[str, float], str]:
    """This CPU's matmul rates ``{"float32_gflops": r32, "bfloat16_gflops": r16}`` and where
    they came from ('probe' or 'cached probe'): read from ``cache_file`` (default
    ``cache_dir()/precision.json``) under :func:`machine_key`, else measured with ``probe``
    (default :func:`matmul_gflops`) and cached."""
    cache_file = cache_file or _default_cache_file()
    key = machine_key()
    cache = _read_cache(cache_file)
    cached = cache.get(key)
    if _valid_rates(cached):
        return dict(cached), "cached probe"
    measure = probe or matmul_gflops
    rates = {
        "float32_gflops": round(measure(torch.float32), 2),
        "bfloat16_gflops": round(measure(torch.bfloat16), 2),
    }
    cache[key] = rates
    _write_cache(cache_file, cache)
    return dict(rates), "probe"


def _valid_rates(rates: Any) -> TypeGuard[dict[str, float]]:
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
