"""What ``auto`` resolves to for the memory levers (groupwise.train.build.resolve_memory_levers)."""

from __future__ import annotations

import pytest
import torch

from groupwise.config import ConfigError, load_config
from groupwise.models.precision import PrecisionChoice
from groupwise.train.build import resolve_memory_levers

CPU, CUDA = torch.device("cpu"), torch.device("cuda")
PURE_BF16 = PrecisionChoice(bf16=True, setting="auto", reason="", param_dtype="bfloat16")
FP32 = PrecisionChoice(bf16=False, setting="auto", reason="", param_dtype="float32")
MIXED = PrecisionChoice(bf16=True, setting="auto", reason="", param_dtype="float32")


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
    precision: PrecisionChoice, device: torch.device, want: tuple[bool, bool]
) -> None:
    config = load_config(overrides=["algorithm.beta=0.04"])
    levers = resolve_memory_levers(config, precision, device)
    assert (levers.reference_on_disk, levers.fused_kernels) == want
    assert not levers.merge_in_place  # no LoRA
    lora = load_config(overrides=["model.lora=true"])
    in_place = precision.bf16 and device.type == "cpu"  # LoRA on a bf16 CPU merges in place
    assert resolve_memory_levers(lora, precision, device).merge_in_place is in_place


def test_explicit_settings_win_and_a_cpu_only_one_off_cpu_is_refused() -> None:
    off = load_config(overrides=["model.reference_on_disk=false", "training.fused_kernels=false"])
    assert resolve_memory_levers(off, PURE_BF16, CPU) == (False, False, False)
    on = load_config(overrides=["model.reference_on_disk=true", "training.fused_kernels=true"])
    assert resolve_memory_levers(on, FP32, CPU) == (True, True, False)
    with pytest.raises(ConfigError, match="model.reference_on_disk=true"):
        resolve_memory_levers(on, PURE_BF16, CUDA)
