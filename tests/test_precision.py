"""training.bf16=auto: the precision picked per device, from an injected matmul probe."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

from groupwise import GRPOTrainer, load_config
from groupwise.precision import (
    BF16_MIN_SPEEDUP,
    machine_key,
    matmul_gflops,
    resolve_precision,
)
from tests_helpers import tiny_overrides, varied_reward

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
        (40.0, 0.9, False),  # emulated bf16 (AVX2 EPYC, issue 15)
        (200.0, 800.0, True),  # native AVX512-BF16
        (100.0, 100.0 * BF16_MIN_SPEEDUP, True),  # exactly at the threshold
        (100.0, 100.0 * BF16_MIN_SPEEDUP - 1.0, False),  # faster, but not enough
    ],
)
def test_auto_follows_the_probe_on_cpu(
    tmp_path: Path, fp32: float, bf16: float, expected: bool
) -> None:
    probe = FakeProbe(fp32, bf16)
    choice = resolve_precision("auto", CPU, probe=probe, cache_file=tmp_path / "p.json")
    assert choice.bf16 is expected
    assert choice.setting == "auto"
    assert choice.probe == {"float32_gflops": fp32, "bfloat16_gflops": bf16}
    assert f"{bf16:.1f} vs float32 {fp32:.1f}" in choice.reason
    assert probe.calls == 2


@pytest.mark.parametrize("setting", [True, False])
def test_an_explicit_setting_wins_without_probing(tmp_path: Path, setting: bool) -> None:
    probe = FakeProbe(40.0, 0.9 if setting else 900.0)  # the probe would say the opposite
    choice = resolve_precision(setting, CPU, probe=probe, cache_file=tmp_path / "p.json")
    assert choice.bf16 is setting and probe.calls == 0
    assert "set explicitly" in choice.reason


def test_the_probe_is_cached_per_machine(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cache = tmp_path / "precision.json"
    probe = FakeProbe(40.0, 0.9)
    first = resolve_precision("auto", CPU, probe=probe, cache_file=cache)
    second = resolve_precision("auto", CPU, probe=probe, cache_file=cache)
    assert probe.calls == 2  # the second call read the cache
    assert second.bf16 == first.bf16 and "cached probe" in second.reason
    assert json.loads(cache.read_text()) == {machine_key(): first.probe}
    # limiting the ISA is another machine as far as matmul speed goes: probe again
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")
    resolve_precision("auto", CPU, probe=probe, cache_file=cache)
    assert probe.calls == 4 and len(json.loads(cache.read_text())) == 2


def test_a_corrupt_cache_is_probed_again(tmp_path: Path) -> None:
    cache = tmp_path / "precision.json"
    cache.write_text(json.dumps({machine_key(): {"float32_gflops": "fast"}}))
    probe = FakeProbe(200.0, 800.0)
    assert resolve_precision("auto", CPU, probe=probe, cache_file=cache).bf16
    assert probe.calls == 2


def test_pure_bf16_weights_and_other_devices(tmp_path: Path) -> None:
    probe = FakeProbe(40.0, 0.9)
    cache = tmp_path / "p.json"
    pure = resolve_precision("auto", CPU, param_dtype="bfloat16", probe=probe, cache_file=cache)
    assert pure.bf16 and probe.calls == 0
    other = resolve_precision("auto", torch.device("meta"), probe=probe, cache_file=cache)
    assert not other.bf16 and probe.calls == 0
    with pytest.raises(ValueError, match="true, false, auto"):
        resolve_precision("sometimes", CPU, probe=probe, cache_file=cache)


def test_the_real_probe_measures_a_positive_rate() -> None:
    assert matmul_gflops(torch.float32, seconds=0.01, shape=(8, 16, 16)) > 0


@pytest.mark.parametrize(("bf16_rate", "expected"), [(0.9, False), (900.0, True)])
def test_the_run_says_what_it_picked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, bf16_rate: float, expected: bool
) -> None:
    """A cached probe result decides a real run; config.yaml and summary.json say so."""
    monkeypatch.setenv("GROUPWISE_CACHE", str(tmp_path / "cache"))
    (tmp_path / "cache").mkdir()
    rates = {"float32_gflops": 40.0, "bfloat16_gflops": bf16_rate}
    (tmp_path / "cache" / "precision.json").write_text(json.dumps({machine_key(): rates}))
    config = load_config(overrides=tiny_overrides(tmp_path, max_steps=1))
    assert config.training.bf16 == "auto"
    trainer = GRPOTrainer(config, reward_funcs=[varied_reward])
    assert (trainer.amp_dtype == torch.bfloat16) is expected
    summary = trainer.train()
    assert summary["precision"]["bf16"] is expected
    assert summary["precision"]["probe"] == rates
    on_disk = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert on_disk["precision"] == summary["precision"]
    text = (tmp_path / "run" / "config.yaml").read_text()
    assert text.startswith(f"# training.bf16: auto -> {'true' if expected else 'false'}\n")
    assert yaml.safe_load(text)["training"]["bf16"] == "auto"  # still loads as a config
