"""scripts/structure_check.py: the working tree trains bit for bit like the baseline commit.

``test_trains_like_the_baseline`` runs the whole check (every configuration, both sides; 2-3 min on
2 CPU cores). The other tests feed ``compare_runs`` two small run directories, so the
comparison is shown to catch what it must catch (and to ignore timings).
"""

from __future__ import annotations

import importlib.util
import json
import math
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import torch
from safetensors.torch import save_file

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "structure_check.py"


def _load_script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("structure_check", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


sc = _load_script()


def _git_checkout() -> bool:
    if shutil.which("git") is None:
        return False
    proc = subprocess.run(
        ["git", "rev-parse", "--is-inside-work-tree"], cwd=ROOT, capture_output=True, text=True
    )
    return proc.returncode == 0 and proc.stdout.strip() == "true"


@pytest.mark.slow  # about 100 s: run with -m slow (or scripts/structure_check.py) before a release
@pytest.mark.skipif(not _git_checkout(), reason="needs a git checkout holding the baseline")
def test_trains_like_the_baseline() -> None:
    proc = subprocess.run(
        [sys.executable, str(SCRIPT)], cwd=ROOT, capture_output=True, text=True, timeout=900
    )
    print(proc.stdout)  # the per-configuration table (pytest -rP shows it)
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr[-3000:]}"
    assert f"{len(sc.CASES)}/{len(sc.CASES)} identical" in proc.stdout


# ------------------------------------------------------------------------------ compare_runs
def _record(step: int, **extra: Any) -> dict[str, Any]:
    return {
        "step": step,
        "loss": 0.25 * step,
        "grad_norm": 1.0 + step,
        "entropy": math.nan,
        "num_tokens": 100,
        "time/generate": 0.1 * step,
        "step_time": 0.3,
        **extra,
    }


def _write_run(run: Path, records: list[dict[str, Any]], tensors: dict[str, torch.Tensor]) -> Path:
    (run / "final" / "adapter").mkdir(parents=True)
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    save_file(tensors, str(run / "final" / "model.safetensors"))
    save_file({"lora_A": torch.ones(2, 2)}, str(run / "final" / "adapter" / "a.safetensors"))
    return run


def _weights() -> dict[str, torch.Tensor]:
    return {"w": torch.arange(6.0).reshape(2, 3), "b": torch.zeros(3)}


def _pair(
    tmp_path: Path,
    work_records: list[dict[str, Any]] | None = None,
    work_tensors: dict[str, torch.Tensor] | None = None,
) -> tuple[Path, Path]:
    records = [_record(s) for s in (1, 2, 3)]
    base = _write_run(tmp_path / "base", records, _weights())
    work = _write_run(
        tmp_path / "work",
        records if work_records is None else work_records,
        _weights() if work_tensors is None else work_tensors,
    )
    return base, work


def test_identical_runs_pass_timings_and_nan_aside(tmp_path: Path) -> None:
    other_timings = [_record(s, **{"time/generate": 9.0, "step_time": 9.0}) for s in (1, 2, 3)]
    assert sc.compare_runs(*_pair(tmp_path, work_records=other_timings)) is None


def test_a_changed_metric_is_reported(tmp_path: Path) -> None:
    records = [_record(1), _record(2, loss=0.5 + 2**-40), _record(3)]
    diff = sc.compare_runs(*_pair(tmp_path, work_records=records))
    assert diff is not None and "step 2" in diff and "'loss'" in diff


def test_an_int_turned_float_and_a_missing_key_are_reported(tmp_path: Path) -> None:
    records = [_record(1, num_tokens=100.0), _record(2), _record(3)]
    diff = sc.compare_runs(*_pair(tmp_path / "a", work_records=records))
    assert diff is not None and "'num_tokens'" in diff
    records = [_record(s) for s in (1, 2, 3)]
    del records[0]["entropy"]
    diff = sc.compare_runs(*_pair(tmp_path / "b", work_records=records))
    assert diff == "metrics record 1 (step 1): 'entropy' only in base"


def test_a_missing_step_is_reported(tmp_path: Path) -> None:
    diff = sc.compare_runs(*_pair(tmp_path, work_records=[_record(1), _record(2)]))
    assert diff == "metrics: 3 records in base, 2 in work"


def test_a_changed_tensor_is_reported(tmp_path: Path) -> None:
    tensors = _weights()
    tensors["w"][1, 2] = torch.nextafter(tensors["w"][1, 2], torch.tensor(math.inf))
    diff = sc.compare_runs(*_pair(tmp_path, work_tensors=tensors))
    assert diff is not None and diff.startswith("final weights: model.safetensors:w differs")
    assert "1 of 6 elements" in diff


def test_a_missing_tensor_and_a_non_fp32_run_are_reported(tmp_path: Path) -> None:
    diff = sc.compare_runs(*_pair(tmp_path / "a", work_tensors={"w": _weights()["w"]}))
    assert diff == "final weights: model.safetensors:b only in base"
    half = {k: v.bfloat16() for k, v in _weights().items()}
    base = _write_run(tmp_path / "b" / "base", [_record(s) for s in (1, 2, 3)], half)
    work = _write_run(tmp_path / "b" / "work", [_record(s) for s in (1, 2, 3)], half)
    diff = sc.compare_runs(base, work)
    assert diff is not None and "not float32" in diff


def test_a_run_without_gradients_cannot_pass(tmp_path: Path) -> None:
    records = [_record(s, grad_norm=0.0) for s in (1, 2, 3)]
    base = _write_run(tmp_path / "base", records, _weights())
    work = _write_run(tmp_path / "work", records, _weights())
    diff = sc.compare_runs(base, work)
    assert diff is not None and "grad_norm" in diff


def test_unknown_configuration_is_refused() -> None:
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--only", "dapo,nope"], capture_output=True, text=True
    )
    assert proc.returncode == 2 and "unknown configuration ['nope']" in proc.stderr


def _with_files(run: Path, completion: str, seconds: float) -> Path:
    (run / "config.yaml").write_text(f"training:\n  output_dir: {run}\n")
    summary = {"run_dir": str(run), "wall_time_s": seconds, "precision": {"probe": {"x": seconds}}}
    (run / "summary.json").write_text(json.dumps(summary))
    record = {"step": 1, "completion": completion, "reward": 0.5}
    (run / "completions.jsonl").write_text(json.dumps(record) + "\n")
    return run


def test_run_files_compared_with_paths_and_times_aside(tmp_path: Path) -> None:
    base, work = _pair(tmp_path)
    _with_files(base, "42", seconds=1.0)
    _with_files(work, "42", seconds=2.0)  # other path, other times: still identical
    assert sc.compare_runs(base, work, files=True) is None
    _with_files(work, "43", seconds=2.0)
    diff = sc.compare_runs(base, work, files=True)
    assert diff == "completions.jsonl: [0].completion base '42' != work '43'"


def test_missing_run_files_are_reported(tmp_path: Path) -> None:
    base, work = _pair(tmp_path)
    _with_files(base, "42", seconds=1.0)
    diff = sc.compare_runs(base, work, files=True)
    assert diff == "config.yaml: only in base"


def test_a_bf16_case_checks_its_own_dtype(tmp_path: Path) -> None:
    half = {k: v.bfloat16() for k, v in _weights().items()}
    base = _write_run(tmp_path / "base", [_record(s) for s in (1, 2, 3)], half)
    work = _write_run(tmp_path / "work", [_record(s) for s in (1, 2, 3)], half)
    for run in (base, work):
        (run / "final" / "adapter" / "a.safetensors").unlink()  # a float32 LoRA adapter
    assert sc.compare_runs(base, work, weights_dtype="bfloat16") is None
    diff = sc.compare_runs(base, work)
    assert diff is not None and "not float32" in diff


def test_a_new_config_key_is_allowed_but_a_changed_or_lost_one_is_not(tmp_path: Path) -> None:
    base, work = _pair(tmp_path)
    _with_files(base, "42", seconds=1.0)
    _with_files(work, "42", seconds=1.0)
    (base / "config.yaml").write_text("algorithm:\n  beta: 0.0\n")
    (work / "config.yaml").write_text("algorithm:\n  beta: 0.0\n  new_setting: 3\n")
    assert sc.compare_runs(base, work, files=True) is None
    (work / "config.yaml").write_text("algorithm:\n  beta: 0.1\n  new_setting: 3\n")
    assert sc.compare_runs(base, work, files=True) == (
        "config.yaml: algorithm.beta base 0.0 != work 0.1"
    )
    (work / "config.yaml").write_text("algorithm:\n  new_setting: 3\n")
    assert sc.compare_runs(base, work, files=True) == "config.yaml: algorithm.'beta' only in base"


def test_a_default_turned_auto_compares_as_what_the_plan_picks(tmp_path: Path) -> None:
    base, work = _pair(tmp_path)
    _with_files(base, "42", seconds=1.0)
    _with_files(work, "42", seconds=1.0)
    (base / "config.yaml").write_text("rollout:\n  engine: local\n")
    (work / "config.yaml").write_text("rollout:\n  engine: auto\n")
    assert sc.compare_runs(base, work, files=True) is None
    (base / "config.yaml").write_text("rollout:\n  engine: episodes\n")
    assert sc.compare_runs(base, work, files=True) == (
        "config.yaml: rollout.engine base 'episodes' != work 'auto'"
    )
