"""training.bf16=auto: the precision picked per device, from an injected matmul probe."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
import yaml

from groupwise import GRPOTrainer, load_config
from groupwise.config import ConfigError
from groupwise.models.plan import (
    PLAN_FILE,
    decide_bf16,
    decide_merge_in_place,
    decide_param_dtype,
)
from groupwise.models.precision import BF16_MIN_SPEEDUP, machine_key, matmul_gflops
from tests.tests_helpers import tiny_overrides, varied_reward

CPU = torch.device("cpu")


class FakeProbe:
    """A probe returning fixed rates per dtype and counting its calls."""

    def __init__(self, fp32: float, bf16: float) -> None:
        self.rates = {torch.float32: fp32, torch.bfloat16: bf16}
        self.calls = 0

    def __call__(self, dtype: torch.dtype) -> float:
        self.calls += 1
        return self.rates[dtype]


@pytest.mark.parametrize(
    ("fp32", "bf16", "expected"),
    [
        (40.0, 0.9, False),  # emulated bf16 (an AVX2-only AMD EPYC)
        (200.0, 800.0, True),  # native AVX512-BF16
        (100.0, 100.0 * BF16_MIN_SPEEDUP, True),  # exactly at the threshold
        (100.0, 100.0 * BF16_MIN_SPEEDUP - 1.0, False),  # faster, but not enough
    ],
)
def test_auto_follows_the_probe_on_cpu(
    tmp_path: Path, fp32: float, bf16: float, expected: bool
) -> None:
    probe = FakeProbe(fp32, bf16)
    choice = decide_bf16("auto", CPU, probe=probe, cache_file=tmp_path / "p.json")
    assert choice.bf16 is expected
    assert choice.setting == "auto"
    assert choice.probe == {"float32_gflops": fp32, "bfloat16_gflops": bf16}
    assert f"{bf16:.1f} vs float32 {fp32:.1f}" in choice.reason
    assert probe.calls == 2


@pytest.mark.parametrize("setting", [True, False])
def test_an_explicit_setting_wins_without_probing(tmp_path: Path, setting: bool) -> None:
    probe = FakeProbe(40.0, 0.9 if setting else 900.0)  # the probe would say the opposite
    choice = decide_bf16(setting, CPU, probe=probe, cache_file=tmp_path / "p.json")
    assert choice.bf16 is setting and probe.calls == 0
    assert "set explicitly" in choice.reason


def test_the_probe_is_cached_per_machine(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cache = tmp_path / "precision.json"
    probe = FakeProbe(40.0, 0.9)
    first = decide_bf16("auto", CPU, probe=probe, cache_file=cache)
    second = decide_bf16("auto", CPU, probe=probe, cache_file=cache)
    assert probe.calls == 2  # the second call read the cache
    assert second.bf16 == first.bf16 and "cached probe" in second.reason
    assert json.loads(cache.read_text()) == {machine_key(): first.probe}
    # limiting the ISA is another machine as far as matmul speed goes: probe again
    current = os.environ.get("ONEDNN_MAX_CPU_ISA")
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "SSE41" if current == "AVX2" else "AVX2")
    decide_bf16("auto", CPU, probe=probe, cache_file=cache)
    assert probe.calls == 4 and len(json.loads(cache.read_text())) == 2


def test_a_corrupt_cache_is_probed_again(tmp_path: Path) -> None:
    cache = tmp_path / "precision.json"
    cache.write_text(json.dumps({machine_key(): {"float32_gflops": "fast"}}))
    probe = FakeProbe(200.0, 800.0)
    assert decide_bf16("auto", CPU, probe=probe, cache_file=cache).bf16
    assert probe.calls == 2


def test_pure_bf16_weights_and_other_devices(tmp_path: Path) -> None:
    probe = FakeProbe(40.0, 0.9)
    cache = tmp_path / "p.json"
    pure = decide_bf16("auto", CPU, param_dtype="bfloat16", probe=probe, cache_file=cache)
    assert pure.bf16 and probe.calls == 0
    other = decide_bf16("auto", torch.device("meta"), probe=probe, cache_file=cache)
    assert not other.bf16 and probe.calls == 0
    with pytest.raises(ValueError, match="true, false, auto"):
        decide_bf16("sometimes", CPU, probe=probe, cache_file=cache)


def test_the_real_probe_measures_a_positive_rate() -> None:
    assert matmul_gflops(torch.float32, seconds=0.01, shape=(8, 16, 16)) > 0


@pytest.mark.parametrize(
    ("bf16", "device", "kwargs", "expected", "why"),
    [
        (True, CPU, {}, "bfloat16", "pure bf16 training"),
        (False, CPU, {}, "float32", "float32 compute"),
        (True, torch.device("cuda"), {}, "float32", "float32 masters on cuda"),
        (True, CPU, {"world_size": 2}, "float32", "single-process only"),
        (True, CPU, {"lora": True}, "float32", "LoRA keeps float32 adapters"),
        (True, CPU, {"lora": True, "merge_in_place": True}, "bfloat16", "pure bf16"),
    ],
)
def test_param_dtype_auto(
    bf16: bool,
    device: torch.device,
    kwargs: dict[str, object],
    expected: str,
    why: str,
) -> None:
    dtype, reason = decide_param_dtype("auto", bf16, device, **kwargs)  # type: ignore[arg-type]
    assert dtype == expected and why in reason


@pytest.mark.parametrize("setting", ["float32", "bfloat16"])
def test_an_explicit_param_dtype_wins(setting: str) -> None:
    dtype, _ = decide_param_dtype(setting, True, torch.device("cuda"), lora=True, world_size=4)
    assert dtype == setting
    with pytest.raises(ValueError, match="auto, float32, bfloat16"):
        decide_param_dtype("float16", True, CPU)


def _cache_rates(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, bf16_rate: float) -> dict:
    """Point GROUPWISE_CACHE at tmp_path/cache holding a probe result for this machine."""
    monkeypatch.setenv("GROUPWISE_CACHE", str(tmp_path / "cache"))
    (tmp_path / "cache").mkdir(exist_ok=True)
    rates = {"float32_gflops": 40.0, "bfloat16_gflops": bf16_rate}
    (tmp_path / "cache" / "precision.json").write_text(json.dumps({machine_key(): rates}))
    return rates


def test_a_resume_keeps_the_plan_it_started_with(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """On a CPU whose probe now picks float32, a resumed bf16 run keeps its plan.json (and says
    what this machine would choose); without plan.json it resolves afresh and is refused."""
    _cache_rates(tmp_path, monkeypatch, 900.0)  # a bf16 CPU: pure bf16 weights
    overrides = tiny_overrides(tmp_path, max_steps=1, save_steps=1, param_dtype="auto")
    GRPOTrainer(load_config(overrides=overrides), reward_funcs=[varied_reward]).train()
    saved = json.loads((tmp_path / "run" / PLAN_FILE).read_text())
    assert saved["bf16"] is True and saved["param_dtype"] == "bfloat16"
    _cache_rates(tmp_path, monkeypatch, 0.9)  # now float32 weights
    capsys.readouterr()
    more = load_config(overrides=[*overrides, "max_steps=2", "resume=auto"])
    trainer = GRPOTrainer(more, reward_funcs=[varied_reward])
    err = capsys.readouterr().err
    assert "training.bf16: true -> false" in err
    assert "training.param_dtype: bfloat16 -> float32" in err
    assert trainer.plan.as_dict() == saved
    assert {p.dtype for p in trainer.policy.parameters()} == {torch.bfloat16}
    assert trainer.train()["precision"]["param_dtype"] == "bfloat16"
    assert json.loads((tmp_path / "run" / PLAN_FILE).read_text()) == saved
    # a run saved before plan.json existed resolves afresh, and the checkpoint refuses it
    (tmp_path / "run" / PLAN_FILE).unlink()
    again = load_config(overrides=[*overrides, "max_steps=3", "resume=auto"])
    with pytest.raises(ConfigError, match="set training.param_dtype=bfloat16"):
        GRPOTrainer(again, reward_funcs=[varied_reward]).train()


@pytest.mark.parametrize(("bf16_rate", "expected"), [(0.9, False), (900.0, True)])
def test_the_run_says_what_it_picked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, bf16_rate: float, expected: bool
) -> None:
    """A cached probe result decides a real run; config.yaml and summary.json say so."""
    rates = _cache_rates(tmp_path, monkeypatch, bf16_rate)
    config = load_config(overrides=tiny_overrides(tmp_path, max_steps=1, param_dtype="auto"))
    assert config.training.bf16 == "auto" and config.training.param_dtype == "auto"
    trainer = GRPOTrainer(config, reward_funcs=[varied_reward])
    assert (trainer.parts.amp_dtype == torch.bfloat16) is expected
    weights = torch.bfloat16 if expected else torch.float32  # pure bf16 where bf16 is native
    assert {p.dtype for p in trainer.policy.parameters()} == {weights}
    # no rollout copy: the weights are in the compute dtype either way
    assert trainer.rollout_model is trainer.policy
    summary = trainer.train()
    assert summary["precision"]["bf16"] is expected
    assert summary["precision"]["probe"] == rates
    on_disk = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert on_disk["precision"] == summary["precision"]
    assert on_disk["precision"]["param_dtype"] == ("bfloat16" if expected else "float32")
    text = (tmp_path / "run" / "config.yaml").read_text()
    assert text.startswith(f"# training.bf16: auto -> {'true' if expected else 'false'}\n")
    assert f"# training.param_dtype: {'bfloat16' if expected else 'float32'} (auto" in text
    assert yaml.safe_load(text)["training"]["bf16"] == "auto"  # still loads as a config


@pytest.mark.parametrize(
    ("bf16", "device", "param_setting", "world", "rollout_copy", "want"),
    [
        (True, "cpu", "auto", 1, True, True),  # an AVX512-BF16 CPU: merge in place, bf16 base
        (True, "cpu", "bfloat16", 1, True, True),
        (True, "cpu", "float32", 1, True, False),  # a float32 base cannot be the rollout model
        (False, "cpu", "auto", 1, True, False),  # float32 compute (an AVX2 CPU)
        (True, "cuda", "auto", 1, True, False),  # a GPU keeps the merged copy
        (True, "cpu", "auto", 2, True, False),  # pure bf16 is single-process
        (True, "cpu", "auto", 1, False, False),  # decoding through the adapters instead
    ],
)
def test_merge_in_place_auto(
    bf16: bool, device: str, param_setting: str, world: int, rollout_copy: bool, want: bool
) -> None:
    got = decide_merge_in_place(
        "auto",
        bf16=bf16,
        device=torch.device(device),
        lora=True,
        rollout_copy=rollout_copy,
        param_setting=param_setting,
        world_size=world,
    )
    assert got is want
    if want:  # and param_dtype=auto then picks bf16 weights for the LoRA run
        dtype, _ = decide_param_dtype(
            "auto", bf16, torch.device(device), lora=True, merge_in_place=True
        )
        assert dtype == "bfloat16"
    explicit = decide_merge_in_place(
        False,
        bf16=bf16,
        device=torch.device(device),
        lora=True,
        rollout_copy=True,
        param_setting="auto",
    )
    assert explicit is False  # an explicit setting wins
    assert not decide_merge_in_place(
        "auto",
        bf16=bf16,
        device=torch.device(device),
        lora=False,
        rollout_copy=True,
        param_setting="auto",
    )
