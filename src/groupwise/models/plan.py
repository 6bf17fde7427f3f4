"""The run plan: every ``auto`` setting of a run, resolved once, in one record.

A run resolves its plan once (:func:`run_plan`: rank 0 decides and tells the others, the block
is printed once), saves it in the run directory as ``plan.json`` and reads it from there on
resume, so a resumed run computes exactly as it started even where this machine would choose
otherwise (another CPU's probe, say); the settings that differ are named in a warning.
Everything that depends on an ``auto`` setting reads the plan instead of resolving it again.

Each decision is a small function of the settings and the device, its rule in its docstring:

- ``training.bf16`` (:func:`decide_bf16`): auto = native bf16 (CUDA with bf16; a CPU whose
  cached matmul probe measures bf16 >= 1.5x float32);
- ``model.lora_merge_in_place`` (:func:`decide_merge_in_place`): auto = LoRA with a rollout copy
  on a bf16 CPU, one process;
- ``training.param_dtype`` (:func:`decide_param_dtype`): auto = bf16 weights on a bf16 CPU, one
  process, full fine-tuning or LoRA merged in place;
- ``training.fused_kernels`` (:func:`decide_fused_kernels`): auto = pure bf16 weights on CPU;
- ``training.compile_optimizer`` (:func:`decide_compile_optimizer`): auto = pure bf16 weights on
  CPU with a C++ compiler on PATH;
- ``rollout.native_kernels`` and ``training.native_kernels`` (:func:`decide_native_kernels`):
  auto = bf16 compute on a CPU where groupwise's C++ kernels can be built (AVX-512, a C++
  compiler, ninja);
- ``model.reference_on_disk`` (:func:`decide_reference_on_disk`): auto = on CPU;
- the rollout weights (:func:`decide_rollout_weights`, no key of its own): follow from the above
  (a copy whenever the engine runs in its own process);
- ``model.attn_implementation`` (:func:`decide_attn_implementation`): auto = grouped on CPU,
  sdpa elsewhere;
- ``rollout.engine`` (:func:`decide_rollout_engine`): auto = ``local``, with the reason for this
  CPU kind or device.

The device (``training.device`` resolved) and the number of processes are inputs, recorded in
the plan with the decisions.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from dataclasses import MISSING, asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

import torch

from groupwise.config import Config, ConfigError, check_merge_in_place_dtype, engine_in_process
from groupwise.distributed import broadcast_object, is_main
from groupwise.models.loading import default_attn_implementation
from groupwise.models.precision import (
    BF16_MIN_SPEEDUP,
    PrecisionChoice,
    Probe,
    cpu_description,
    measure_cpu,
)

PLAN_FILE = "plan.json"
"""The plan's file in the run directory."""

ROLLOUT_WEIGHTS = ("shared", "copy", "adapters", "merge_in_place")
"""The rollout weight strategies by name (the classes are in ``groupwise.rollout.weights``)."""


@dataclass(frozen=True)
class RunPlan:
    """Every ``auto`` setting of a run, resolved (:func:`resolve_plan`)."""

    device: str
    """The device type the run computes on (``training.device`` resolved; each rank its own
    index)."""
    world_size: int
    """Processes taking part."""
    bf16: bool
    """bf16 autocast for the policy's forward/backward and bf16 rollout weights."""
    bf16_setting: str
    """``training.bf16`` as configured: 'auto', 'true' or 'false'."""
    bf16_reason: str
    """Why bf16 (or float32) compute, one sentence."""
    probe: dict[str, float] | None
    """The CPU matmul rates (``float32_gflops``, ``bfloat16_gflops``) when a probe decided."""
    param_dtype: str
    """The weights' dtype: 'float32' or 'bfloat16'."""
    param_reason: str
    """Why that weight dtype."""
    fused_kernels: bool
    """Train through ``groupwise.kernels.fused``."""
    reference_on_disk: bool
    """Map the frozen reference from a file in the cache dir."""
    merge_in_place: bool
    """Under LoRA, decode with the adapters merged into the base weights (no merged copy)."""
    rollout_weights: str
    """Which weights the local rollout decodes with, one of ``ROLLOUT_WEIGHTS``."""
    attn_implementation: str
    """The attention kernel ('grouped', 'sdpa', or the configured name)."""
    rollout_engine: str = "local"
    """The rollout engine (``rollout.engine`` resolved; a plan saved before the engine was
    planned reads as ``local``, the engine such runs used)."""
    rollout_engine_reason: str = ""
    """Why that engine, one sentence."""
    compile_optimizer: bool = False
    """Run the bf16 AdamW step through its compiled kernel (a plan saved before this was
    planned reads as False, the eager step such runs took)."""
    native_kernels: bool = False
    """Decode through groupwise's C++ kernels (``rollout.native_kernels``; a plan saved before
    this was planned reads as False, the torch operations such runs decoded with)."""
    training_native_kernels: bool = False
    """Compute log-probs and RMSNorms through groupwise's C++ kernels
    (``training.native_kernels``; a plan
    saved before this was planned reads as False, the torch operations such runs used)."""
    activation_memory: int | None = None
    """Bytes the ``auto`` token budget lets one forward/backward's activations take
    (``training.max_tokens_per_microbatch=auto``; :func:`groupwise.train.batch.token_budget`);
    None for an integer budget, and for a plan saved before this was planned (such runs split
    at 512 tokens)."""

    @property
    def precision(self) -> PrecisionChoice:
        """The precision part (``summary.json``'s ``precision`` block, config.yaml's header)."""
        return PrecisionChoice(
            self.bf16,
            self.bf16_setting,
            self.bf16_reason,
            self.probe,
            self.param_dtype,
            self.param_reason,
        )

    @property
    def rollout_dtype(self) -> torch.dtype:
        """The dtype decoding and the reference run in: bf16 under bf16 compute."""
        return torch.bfloat16 if self.bf16 else torch.float32

    def as_dict(self) -> dict[str, Any]:
        """The plan as ``plan.json`` holds it."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Any, source: str = PLAN_FILE) -> RunPlan:
        """The plan :meth:`as_dict` wrote; a ConfigError naming ``source`` if it is not one."""
        names = {f.name for f in fields(cls)}
        required = {f.name for f in fields(cls) if f.default is MISSING}
        if not isinstance(data, dict) or not required <= set(data) <= names:
            got = sorted(data) if isinstance(data, dict) else type(data).__name__
            raise ConfigError(
                f"{source} is not a run plan (keys {got}, expected {sorted(names)}): delete it "
                "to resolve the auto settings afresh on resume"
            )
        return cls(**data)


# ---------------------------------------------------------------------- the decisions
def decide_rollout_engine(setting: str, device: torch.device, *, bf16: bool) -> tuple[str, str]:
    """``rollout.engine``: ``(engine, reason)``; a named engine is taken as set.

    auto = ``local`` (groupwise's own decoder, in the process) on every device: it is the only
    engine measured faster end to end where both ran. On a CPU with native bf16 (an Intel Xeon
    with AMX) the default run took less wall time with ``local`` than with ``llamacpp`` at the
    same accuracy (the ``default-run-engines-*`` results; docs/log.md), ``llamacpp`` paying for
    its slower prompt prefill, the file sync and its own copy of the weights. On CPUs without
    native bf16 (float32 runs) ``llamacpp`` has not been measured against ``local``; on a GPU
    the inference engine is ``vllm``, which needs a server of its own, so nothing is picked for
    the user there either.
    """
    if setting != "auto":
        return setting, f"rollout.engine={setting}"
    if device.type != "cpu":
        why = f"on {device.type}: set rollout.engine=vllm to decode with a vLLM server"
    elif bf16:
        why = "measured faster than llamacpp on the default run on a CPU with native bf16"
    else:
        why = "llamacpp has not been measured against it on CPUs without native bf16"
    return "local", f"auto: local ({why})"


def decide_bf16(
    setting: bool | str,
    device: torch.device,
    *,
    param_dtype: str = "float32",
    probe: Probe | None = None,
    cache_file: Path | None = None,
) -> PrecisionChoice:
    """``training.bf16`` (``True``, ``False`` or ``"auto"``) on ``device``.

    An explicit true/false wins. auto = bf16 when ``training.param_dtype=bfloat16`` (pure bf16
    weights compute in bf16); on CUDA ``torch.cuda.is_bf16_supported()``; on a CPU bf16 when its
    measured bf16 matmul rate r16 >= ``BF16_MIN_SPEEDUP`` * the float32 rate r32
    (:func:`~groupwise.models.precision.measure_cpu`, cached per machine); float32 elsewhere.
    ``probe`` and ``cache_file`` replace the measurement and its cache (tests inject both).
    Returns the choice with its reason (the param fields at their defaults).
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
    rates, source = measure_cpu(probe, cache_file)
    r32, r16 = rates["float32_gflops"], rates["bfloat16_gflops"]
    bf16 = r16 >= BF16_MIN_SPEEDUP * r32
    verdict = "bf16 is faster" if bf16 else "bf16 is not natively fast here"
    reason = (
        f"{source} on {cpu_description()}: bf16 matmul {r16:.1f} vs float32 {r32:.1f} "
        f"GFLOP/s ({r16 / max(r32, 1e-9):.2f}x; bf16 needs >= {BF16_MIN_SPEEDUP}x): {verdict}"
    )
    return PrecisionChoice(bf16, "auto", reason, dict(rates))


def decide_param_dtype(
    setting: str,
    bf16: bool,
    device: torch.device,
    *,
    lora: bool = False,
    merge_in_place: bool = False,
    world_size: int = 1,
) -> tuple[str, str]:
    """``training.param_dtype`` (``auto``, ``float32``, ``bfloat16``): ``(dtype, reason)``.

    auto = bfloat16 weights (pure bf16 training: Kahan-compensated AdamW, no rollout copy) where
    all of these hold, float32 master weights otherwise:

    - bf16 compute was picked (natively fast bf16);
    - the device is a CPU (on GPUs float32 masters under autocast are the norm and memory is
      less tight);
    - one process (pure bf16 training is single-process for now);
    - full fine-tuning, or LoRA decoding with the adapters merged in place (which needs the base
      weights in the rollout dtype); other LoRA runs keep float32 adapters.

    On an AVX512-BF16 CPU the default run scored 83.3% (pure bf16) vs 83.8% held-out on
    average over two seeds, in 12-18% less wall time.
    """
    if setting in ("float32", "bfloat16"):
        return setting, f"training.param_dtype={setting}"
    if setting != "auto":
        raise ValueError(
            f"training.param_dtype: {setting!r} is not one of: auto, float32, bfloat16"
        )
    blockers = [
        (not bf16, "float32 compute"),
        (device.type != "cpu", f"float32 masters on {device.type}"),
        (world_size > 1, "pure bf16 is single-process only"),
        (lora and not merge_in_place, "LoRA keeps float32 adapters"),
    ]
    why = next((reason for blocked, reason in blockers if blocked), None)
    if why is not None:
        return "float32", f"auto -> float32 ({why})"
    return "bfloat16", "auto -> bfloat16 (native bf16 on this CPU, one process: pure bf16 training)"


def decide_merge_in_place(
    setting: bool | str,
    *,
    bf16: bool,
    device: torch.device,
    lora: bool,
    rollout_copy: bool,
    param_setting: str,
    world_size: int = 1,
    engine_process: bool = False,
) -> bool:
    """``model.lora_merge_in_place``: false without LoRA; an explicit setting wins; auto = on
    for LoRA with a rollout copy on a CPU that computes in bf16, in one process, unless
    ``training.param_dtype=float32`` keeps the base in float32 (merging in place decodes with
    the base weights, so they must be bf16), or the engine runs in its own process (it decodes
    a merged copy in shared memory). It is exact: the run equals the merged-copy run
    completion for completion (tests/train/test_trainer.py)."""
    if not lora:
        return False
    if setting != "auto":
        return bool(setting)
    return (
        not engine_process
        and rollout_copy
        and bf16
        and device.type == "cpu"
        and world_size == 1
        and param_setting in ("auto", "bfloat16")
    )


def decide_reference_on_disk(setting: bool | str, device: torch.device) -> bool:
    """``model.reference_on_disk``: auto = on CPU, where mapping the frozen reference from a
    file is exact and its pages can leave the process's memory after each reference pass."""
    return device.type == "cpu" if setting == "auto" else bool(setting)


def decide_fused_kernels(setting: bool | str, device: torch.device, param_dtype: str) -> bool:
    """``training.fused_kernels``: auto = under pure bf16 weights on CPU, where their bf16
    saved inputs were measured to save activation memory."""
    if setting != "auto":
        return bool(setting)
    return device.type == "cpu" and param_dtype == "bfloat16"


def decide_compile_optimizer(setting: bool | str, device: torch.device, param_dtype: str) -> bool:
    """``training.compile_optimizer``: auto = under pure bf16 weights (the compensated AdamW
    step it compiles) on CPU, when a C++ compiler for torch.compile's CPU backend is on PATH
    (``CXX``, else ``c++``, ``g++`` or ``clang++``)."""
    if setting != "auto":
        return bool(setting) and param_dtype == "bfloat16"
    if device.type != "cpu" or param_dtype != "bfloat16":
        return False
    names = [os.environ.get("CXX", ""), "c++", "g++", "clang++"]
    return any(name and shutil.which(name) for name in names)


def decide_native_kernels(setting: bool | str, device: torch.device, bf16: bool) -> bool:
    """``rollout.native_kernels`` and ``training.native_kernels``: auto = bf16 compute on CPU
    where the C++ kernels can be built here (:func:`groupwise.kernels.native.buildable`:
    AVX-512, a C++ compiler and ninja). They only ever replace bf16 operations on CPU, so true
    elsewhere is moot."""
    from groupwise.kernels import native

    if setting != "auto":
        return bool(setting) and device.type == "cpu" and bf16
    return device.type == "cpu" and bf16 and native.buildable() is None


def decide_rollout_weights(
    *,
    lora: bool,
    param_dtype: str,
    bf16: bool,
    lora_rollout_copy: bool,
    merge_in_place: bool,
    engine_process: bool = False,
    world_size: int = 1,
) -> str:
    """Which weights the local rollout decodes with (one of ``ROLLOUT_WEIGHTS``):
    ``copy`` when the engine runs in its own process (``rollout.engine_process`` or
    ``rollout.max_staleness`` > 0: it decodes a copy in shared memory while the policy
    changes); ``merge_in_place`` for LoRA merged in place; ``adapters`` for LoRA without a
    rollout copy; ``shared`` (the policy decodes itself) for full fine-tuning in one process
    whose weights are already in the compute dtype (bf16 weights under bf16 compute, float32
    weights under float32 compute: a copy would hold the same values); ``copy`` (a rollout copy
    in the compute dtype, all-gathered under FSDP) otherwise."""
    if engine_process:
        return "copy"
    if lora and merge_in_place:
        return "merge_in_place"
    if lora and not lora_rollout_copy:
        return "adapters"
    compute_dtype = "bfloat16" if bf16 else "float32"
    if not lora and world_size == 1 and param_dtype == compute_dtype:
        return "shared"
    return "copy"


MEMORY_SHARE = 0.25
"""The share of the memory available at the start that ``auto`` gives one forward/backward's
activations (the weights, optimizer states, reference and rollout take the rest)."""


def available_memory(device: torch.device) -> int | None:
    """Bytes free for the run on ``device``: the GPU's free memory, or the kernel's
    ``MemAvailable`` on a CPU (None where neither can be read)."""
    if device.type == "cuda":
        if not torch.cuda.is_available():  # a plan for a GPU resolved elsewhere (tests)
            return None
        free, _ = torch.cuda.mem_get_info(device)
        return int(free)
    if device.type != "cpu":
        return None
    try:
        for line in Path("/proc/meminfo").read_text(encoding="ascii").splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024  # kB
    except (OSError, ValueError, IndexError):
        return None
    return None


def decide_activation_memory(
    setting: int | str, device: torch.device, available: int | None = None
) -> int | None:
    """``training.max_tokens_per_microbatch``: auto = ``MEMORY_SHARE`` of the memory available
    now (``available``, else read from the device) for one forward/backward's activations;
    None for an integer budget or when the free memory cannot be read."""
    if setting != "auto":
        return None
    free = available if available is not None else available_memory(device)
    return None if free is None else int(free * MEMORY_SHARE)


def decide_attn_implementation(setting: str, device: torch.device) -> str:
    """``model.attn_implementation``: auto = groupwise's grouped-query attention on CPU, SDPA
    elsewhere (:func:`~groupwise.models.loading.default_attn_implementation`)."""
    return default_attn_implementation(device) if setting == "auto" else setting


# ---------------------------------------------------------------------- the plan
def resolve_plan(
    config: Config,
    device: torch.device,
    world_size: int = 1,
    *,
    probe: Probe | None = None,
    cache_file: Path | None = None,
) -> RunPlan:
    """The plan of ``config`` on ``device`` with ``world_size`` processes: each decision above,
    in the order they depend on each other (bf16 compute, the merge, the weights' dtype, the
    rest). ``probe``/``cache_file``: see :func:`decide_bf16`. Nothing is printed or checked
    (:func:`check_plan`)."""
    t, m = config.training, config.model
    in_process = engine_in_process(config.rollout)
    choice = decide_bf16(
        t.bf16, device, param_dtype=t.param_dtype, probe=probe, cache_file=cache_file
    )
    merge = decide_merge_in_place(
        m.lora_merge_in_place,
        bf16=choice.bf16,
        device=device,
        lora=m.lora,
        rollout_copy=m.lora_rollout_copy,
        param_setting=t.param_dtype,
        world_size=world_size,
        engine_process=in_process,
    )
    param_dtype, param_reason = decide_param_dtype(
        t.param_dtype, choice.bf16, device, lora=m.lora, merge_in_place=merge, world_size=world_size
    )
    engine, engine_reason = decide_rollout_engine(config.rollout.engine, device, bf16=choice.bf16)
    weights = decide_rollout_weights(
        lora=m.lora,
        param_dtype=param_dtype,
        bf16=choice.bf16,
        lora_rollout_copy=m.lora_rollout_copy,
        merge_in_place=merge,
        engine_process=in_process,
        world_size=world_size,
    )
    return RunPlan(
        device=device.type,
        world_size=world_size,
        bf16=choice.bf16,
        bf16_setting=choice.setting,
        bf16_reason=choice.reason,
        probe=choice.probe,
        param_dtype=param_dtype,
        param_reason=param_reason,
        fused_kernels=decide_fused_kernels(t.fused_kernels, device, param_dtype),
        reference_on_disk=decide_reference_on_disk(m.reference_on_disk, device),
        merge_in_place=merge,
        rollout_weights=weights,
        attn_implementation=decide_attn_implementation(m.attn_implementation, device),
        rollout_engine=engine,
        rollout_engine_reason=engine_reason,
        compile_optimizer=decide_compile_optimizer(t.compile_optimizer, device, param_dtype),
        native_kernels=decide_native_kernels(config.rollout.native_kernels, device, choice.bf16),
        training_native_kernels=decide_native_kernels(t.native_kernels, device, choice.bf16),
        activation_memory=decide_activation_memory(t.max_tokens_per_microbatch, device),
    )


def check_plan(plan: RunPlan) -> None:
    """Refuse a plan the run cannot train with, naming the setting to change: pure bf16 weights
    in several processes, a CPU-only lever (the merge in place, the reference on disk) off CPU,
    a merge in place whose base weights are not in the rollout dtype or whose engine runs in its
    own process."""
    if plan.param_dtype == "bfloat16" and plan.world_size > 1:
        raise ConfigError(
            "training.param_dtype=bfloat16 is single-process only for now (its multi-process "
            "equivalence is not tested); use training.param_dtype=float32 under torchrun"
        )
    for enabled, key in (
        (plan.merge_in_place, "model.lora_merge_in_place"),
        (plan.reference_on_disk, "model.reference_on_disk"),
    ):
        if enabled and plan.device != "cpu":
            raise ConfigError(
                f"{key}=true keeps its weights in CPU memory; the model runs on {plan.device}: "
                "set it to false"
            )
    if plan.merge_in_place:
        check_merge_in_place_dtype(plan.param_dtype, plan.bf16)
        if plan.rollout_weights != "merge_in_place":
            raise ConfigError(
                "model.lora_merge_in_place=true merges the adapters for decoding in the trainer's "
                "process, and the rollout engine runs in its own process (rollout.engine_process "
                "or rollout.max_staleness): set model.lora_merge_in_place=false"
            )


def plan_lines(plan: RunPlan, config: Config) -> list[str]:
    """The plan as the run log shows it: the precision, then the memory levers in use."""
    compute = "bf16" if plan.bf16 else "float32"
    lines = [
        f"precision: {compute} compute ({plan.bf16_reason})",
        f"precision: {plan.param_dtype} weights ({plan.param_reason})",
    ]
    if not config.model.lora and config.algorithm.beta > 0:
        where = "mapped from disk" if plan.reference_on_disk else "in RAM"
        lines.append(f"memory: reference {where}")
    if plan.fused_kernels:
        lines.append("memory: fused RMSNorm / SwiGLU / softmax kernels (training.fused_kernels)")
    if plan.compile_optimizer:
        lines.append("speed: the bf16 AdamW step compiled (training.compile_optimizer)")
    if plan.native_kernels:
        lines.append("speed: decoding through groupwise's C++ kernels (rollout.native_kernels)")
    if plan.training_native_kernels:
        lines.append(
            "speed: log-probs and RMSNorms through groupwise's C++ kernels (training.native_kernels)"
        )
    if plan.activation_memory is not None:
        lines.append(
            f"memory: activations of a forward/backward within {plan.activation_memory / 1e9:.1f}"
            " GB (training.max_tokens_per_microbatch=auto: long groups whole where they fit)"
        )
    if plan.merge_in_place:
        lines.append(
            "memory: LoRA adapters merged into the base weights for decoding, no merged copy"
        )
    return lines


SETTING_NAMES = {
    "device": "training.device",
    "world_size": "processes",
    "bf16": "training.bf16",
    "param_dtype": "training.param_dtype",
    "fused_kernels": "training.fused_kernels",
    "reference_on_disk": "model.reference_on_disk",
    "merge_in_place": "model.lora_merge_in_place",
    "rollout_weights": "rollout weights",
    "attn_implementation": "model.attn_implementation",
    "rollout_engine": "rollout.engine",
    "compile_optimizer": "training.compile_optimizer",
    "native_kernels": "rollout.native_kernels",
    "training_native_kernels": "training.native_kernels",
}
"""The plan's decisions by the setting a user knows them as (reasons and rates left out)."""


def plan_differences(saved: RunPlan, here: RunPlan) -> list[str]:
    """``"setting: saved -> here"`` for each decision ``here`` makes otherwise than ``saved``
    (with ``here``'s reason for the precision ones)."""
    reasons = {"bf16": here.bf16_reason, "param_dtype": here.param_reason}
    out = []
    for name, setting in SETTING_NAMES.items():
        old, new = getattr(saved, name), getattr(here, name)
        if old != new:
            why = f" ({reasons[name]})" if name in reasons else ""
            out.append(f"{setting}: {_word(old)} -> {_word(new)}{why}")
    return out


def _word(value: Any) -> str:
    return ("true" if value else "false") if isinstance(value, bool) else str(value)


def adopt_saved_plan(saved: RunPlan, here: RunPlan, source: str = PLAN_FILE) -> RunPlan:
    """The plan a resumed run uses: ``saved`` (what the run started with), on this run's device
    and processes; a warning on stderr names each decision this machine makes otherwise."""
    differences = plan_differences(saved, here)
    if differences:
        print(
            f"groupwise: resuming with the plan the run started with ({source}); auto would "
            "choose differently here:\n  " + "\n  ".join(differences),
            file=sys.stderr,
            flush=True,
        )
    return replace(saved, device=here.device, world_size=here.world_size)


def run_plan(
    config: Config, device: torch.device, world_size: int, saved: Path | None = None
) -> RunPlan:
    """The plan a run trains with, resolved on rank 0 (a probe per rank could differ) and shared
    with the others, checked (:func:`check_plan`) and printed once. ``saved``: the
    ``plan.json`` of the run this one resumes, used instead of this machine's choices."""
    from_file = load_plan(saved) if saved is not None else None  # every rank: all stop on error
    plan = None
    if is_main():
        plan = resolve_plan(config, device, world_size)
        if from_file is not None:
            plan = adopt_saved_plan(from_file, plan, str(saved))
        for line in plan_lines(plan, config):
            print(line, flush=True)
    shared = broadcast_object(plan)
    assert shared is not None
    check_plan(shared)  # every rank
    return shared


def load_plan(path: Path) -> RunPlan:
    """The plan saved at ``path`` (a ``plan.json``)."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ConfigError(
            f"cannot read the run plan {path}: {exc}; delete it to resolve the auto settings "
            "afresh on resume"
        ) from exc
    return RunPlan.from_dict(data, str(path))
