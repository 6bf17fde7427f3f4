"""What ``auto`` resolves to for the memory levers (the run plan, groupwise.models.plan)."""

from __future__ import annotations

import pytest
import torch

from groupwise.config import ConfigError, load_config
from groupwise.models.plan import RunPlan, check_plan, resolve_plan

CPU, CUDA = torch.device("cpu"), torch.device("cuda")
# (training.bf16, training.param_dtype): the precision a plan is resolved with
PURE_BF16 = ("true", "bfloat16")
FP32 = ("false", "float32")
MIXED = ("true", "float32")


def _plan(precision: tuple[str, str], device: torch.device, *overrides: str) -> RunPlan:
    bf16, param_dtype = precision
    extra = [f"training.bf16={bf16}", f"training.param_dtype={param_dtype}", *overrides]
    return resolve_plan(load_config(overrides=extra), device)


@pytest.mark.parametrize(
    ("precision", "device", "want"),
    [
        (PURE_BF16, CPU, (True, True)),  # the AVX512-BF16 CPU default
        (FP32, CPU, (True, False)),  # an AVX2 CPU: float32, the reference still on disk
        (MIXED, CPU, (True, False)),  # float32 masters under bf16 autocast
        (PURE_BF16, CUDA, (False, False)),  # neither on a GPU
        (MIXED, CUDA, (False, False)),
    ],
)
def test_auto_picks_by_device_and_weights(
    precision: tuple[str, str], device: torch.device, want: tuple[bool, bool]
) -> None:
    plan = _plan(precision, device, "algorithm.beta=0.04")
    assert (plan.reference_on_disk, plan.fused_kernels) == want
    assert not plan.merge_in_place  # no LoRA
    # LoRA (training.param_dtype=auto) on a bf16 CPU merges in place
    lora = load_config(overrides=["model.lora=true", f"training.bf16={precision[0]}"])
    in_place = precision[0] == "true" and device.type == "cpu"
    assert resolve_plan(lora, device).merge_in_place is in_place


def test_explicit_settings_win_and_a_cpu_only_one_off_cpu_is_refused() -> None:
    off = ("model.reference_on_disk=false", "training.fused_kernels=false")
    plan = _plan(PURE_BF16, CPU, *off)
    assert (plan.reference_on_disk, plan.fused_kernels, plan.merge_in_place) == (False,) * 3
    on = ("model.reference_on_disk=true", "training.fused_kernels=true")
    plan = _plan(FP32, CPU, *on)
    assert (plan.reference_on_disk, plan.fused_kernels, plan.merge_in_place) == (True, True, False)
    with pytest.raises(ConfigError, match="model.reference_on_disk=true"):
        check_plan(_plan(PURE_BF16, CUDA, *on))
