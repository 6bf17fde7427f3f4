"""The docs' tables of measured figures agree with benchmarks/results/*.json
(scripts/render_results.py), every result file is complete, and the benchmark harness
(benchmarks/harness.py) reads the CPU and writes results as documented."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.tests_helpers import load_module

ROOT = Path(__file__).resolve().parents[1]
BENCHMARKS = ROOT / "benchmarks"


render = load_module(ROOT / "scripts" / "render_results.py", "render_results")
harness = load_module(BENCHMARKS / "harness.py", "harness")


def _docs() -> dict[str, str]:
    return {doc: (ROOT / doc).read_text() for doc in render.DOCS}


def test_the_docs_agree_with_the_results() -> None:
    out = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "render_results.py"), "--check"],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert out.returncode == 0, out.stdout + out.stderr


def test_a_tampered_doc_is_caught() -> None:
    docs = _docs()
    text = docs["README.md"]
    block = text[text.index("<!-- results:trl-defaults -->") :]
    assert "| 4.13x |" in block
    docs["README.md"] = text.replace("| 4.13x |", "| 4.31x |", 1)
    assert render.check(docs, render.load_results()) == ["README.md: trl-defaults"]
    assert render.check(_docs(), render.load_results()) == []


def test_a_changed_result_is_caught() -> None:
    results = render.load_results()
    results["trl-epyc-bf16"]["figures"]["rows"][0]["trl_s"] = 30.0
    stale = render.check(_docs(), results)
    assert "README.md: trl-defaults" in stale
    assert "benchmarks/README.md: trl-epyc-bf16" in stale


def test_every_block_names_a_defined_table_and_every_table_is_shown() -> None:
    shown = {m.group("name") for text in _docs().values() for m in render.BLOCK.finditer(text)}
    defined = {t.name for t in render.TABLES}
    assert shown <= defined, shown - defined
    assert defined <= shown, f"tables in no doc: {sorted(defined - shown)}"
    with pytest.raises(KeyError, match="no table 'nope'"):
        render.rewrite("<!-- results:nope -->\n<!-- /results:nope -->", {})


def test_every_result_file_has_the_required_fields() -> None:
    files = sorted((BENCHMARKS / "results").glob("*.json"))
    assert files
    for path in files:
        record = json.loads(path.read_text())
        assert harness.missing_fields(record) == [], path.name
        assert record["name"] == path.stem
        assert isinstance(record["transcribed"], bool)
        assert isinstance(record["figures"], dict) and record["figures"], path.name
        assert record["cpu"]["model"] and isinstance(record["cpu"]["flags"], list)


def test_a_table_names_the_cpu_of_each_of_its_results() -> None:
    results = render.load_results()
    for table in render.TABLES:
        caption = render.render(table, results).strip().splitlines()[-1]
        for source in table.sources:
            record: dict[str, Any] = results[source.result]
            assert render.cpu_text(record["cpu"]) in caption, (table.name, source.result)
            assert str(record["commit"])[:7] in caption, (table.name, source.result)
            assert f"`{source.result}`" in caption


def test_missing_fields_names_what_is_absent() -> None:
    record = {"name": "x", "commit": "abc", "date": "2026-12-06", "command": "python x.py"}
    record |= {"cpu": {"model": "m", "flags": []}, "figures": {"a": 1}, "transcribed": True}
    assert harness.missing_fields(record) == ["cpu.family", "cpu.model_number", "source"]


LSCPU = """Architecture:            x86_64
Model name:              AMD EPYC 9B45
CPU family:              26
Model:                   2
Flags:                   fpu sse avx2 fma avx512f avx512_bf16 sha_ni
"""


def test_cpu_facts_come_from_lscpu() -> None:
    facts = harness.parse_lscpu(LSCPU)
    assert facts == {
        "model": "AMD EPYC 9B45",
        "family": 26,
        "model_number": 2,
        "flags": ["avx2", "fma", "avx512f", "avx512_bf16"],
    }


def test_write_result_writes_a_complete_record(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")
    path = harness.write_result(
        "probe", {"rows": [{"s": 1.5}]}, command="python x.py", results_dir=tmp_path
    )
    assert path == tmp_path / "probe.json"
    record = json.loads(path.read_text())
    assert harness.missing_fields(record) == []
    assert record["transcribed"] is False and record["figures"] == {"rows": [{"s": 1.5}]}
    assert len(record["commit"]) == 40 and isinstance(record["dirty"], bool)
    assert record["cpu"]["isa_env"] == {"ONEDNN_MAX_CPU_ISA": "AVX2"}
    assert harness.write_result("-", {"a": 1}, results_dir=tmp_path) is None


def test_the_process_tree_peak_counts_children(tmp_path: Path) -> None:
    """A parent that holds little and a child that holds ~200 MB, killed and never waited for
    (so the parent's own ``ru_maxrss`` cannot include it): the sampled tree's peak sees it."""
    child = "import time; b = b'x' * (200 * 10**6); time.sleep(30)"
    parent = (
        "import subprocess, sys, time; "
        f"p = subprocess.Popen([sys.executable, '-c', {child!r}]); time.sleep(1.5); p.kill()"
    )
    measured = harness.run_measured([sys.executable, "-c", parent], {}, tmp_path / "log")
    assert measured.peak_rss_kb * 1024 > 200e6
    with pytest.raises(RuntimeError, match="exit 3"):
        harness.run_measured([sys.executable, "-c", "exit(3)"], {}, tmp_path / "log")


def test_no_benchmark_script_imports_a_sibling_but_the_harness() -> None:
    scripts = {p.stem for p in BENCHMARKS.glob("*.py")}
    for path in BENCHMARKS.glob("*.py"):
        tree = ast.parse(path.read_text())
        names = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        names |= {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
        siblings = {n.split(".")[0] for n in names} & scripts
        assert siblings <= {"harness"}, (path.name, siblings)
        if path.stem != "harness":
            assert "harness" in siblings, f"{path.name} does not use benchmarks/harness.py"


def test_accuracy_at_a_wall_time_is_the_newest_evaluation_by_then() -> None:
    sys.path.insert(0, str(BENCHMARKS))
    default_run = load_module(BENCHMARKS / "default_run.py", "default_run")
    record: dict[str, Any] = {
        "wall_s": 400.0,
        "run_wall_time_s": 380.0,  # 20 s before the run: imports, model loading
        "accuracy_before": 0.2,
        "accuracy_after": 0.85,
        "evals": [
            {"step": 25, "accuracy": 0.5, "run_time_s": 150.0},  # at 170 s
            {"step": 50, "accuracy": 0.7, "run_time_s": 300.0},  # at 320 s
        ],
    }
    at = default_run.accuracy_at
    assert at(record, 10.0) is None  # nothing evaluated yet
    assert at(record, 20.0) == 0.2
    assert at(record, 169.9) == 0.2
    assert at(record, 180.0) == 0.5
    assert at(record, 360.0) == 0.7
    assert at(record, 400.0) == 0.85
    assert at({**record, "run_wall_time_s": None}, 400.0) is None


def test_a_run_directory_is_read_into_a_record(tmp_path: Path) -> None:
    sys.path.insert(0, str(BENCHMARKS))
    default_run = load_module(BENCHMARKS / "default_run.py", "default_run")
    run = tmp_path / "run"
    run.mkdir()
    summary = {"eval_before": 0.2, "eval_after": 0.8, "steps": 3, "train_time_s": 30.0}
    (run / "summary.json").write_text(json.dumps({**summary, "wall_time_s": 40.0}))
    rows = [
        {"step": 1, "step_time": 9.0, "entropy": 1.5, "wall_time": 12.0},
        {"step": 2, "step_time": 11.0, "entropy": 0.05, "wall_time": 25.0, "eval_accuracy": 0.6},
        {"step": 3, "step_time": 10.0, "entropy": 0.5, "wall_time": 36.0},
    ]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    record = {"wall_s": 45.0, **default_run.read_run(run)}
    assert record["accuracy_before"] == 0.2 and record["accuracy_after"] == 0.8
    assert record["evals"] == [{"step": 2, "accuracy": 0.6, "run_time_s": 25.0}]
    assert record["median_step_s"] == 10.0
    assert record["entropy_below_0_1_step"] == 2
    assert record["entropy_last5"] == pytest.approx((1.5 + 0.05 + 0.5) / 3)
    # 5 s before the run (45 - 40): the evaluation at step 2 is done 30 s after the start
    assert default_run.accuracy_at(record, 29.0) == 0.2
    assert default_run.accuracy_at(record, 30.0) == 0.6


def test_default_run_keeps_each_runs_files_apart_when_its_name_has_a_dot(tmp_path: Path) -> None:
    """Variant names like "temperature-0.7" hold a dot: the log and the measured figures of
    each seed's run must not share one file ("temperature-0.log")."""
    bench = load_module(BENCHMARKS / "default_run.py", "default_run")
    names = {bench.beside(tmp_path / f"temperature-0.7-seed{s}", ".log").name for s in (0, 1)}
    assert names == {"temperature-0.7-seed0.log", "temperature-0.7-seed1.log"}


def test_default_run_reuse_refuses_a_finished_run_it_cannot_read_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """--reuse reads a finished run's recorded figures back; a finished run without them (its
    driver stopped first) stops the script instead of being run again over."""
    bench = load_module(BENCHMARKS / "default_run.py", "default_run")

    def never(*args: object, **kwargs: object) -> None:
        raise AssertionError("the finished run was launched again")

    monkeypatch.setattr(bench, "run_measured", never)
    out = tmp_path / "local-seed0"
    out.mkdir()
    (out / "summary.json").write_text("{}")
    with pytest.raises(SystemExit, match="never recorded"):
        bench.measure("local", 0, out, reuse=True)
    assert (out / "summary.json").read_text() == "{}"  # left as it was
    bench.beside(out, ".measured.json").write_text('{"wall_s": 1.0, "peak_rss_gb": 2.0}')
    assert bench.measure("local", 0, out, reuse=True) == {"wall_s": 1.0, "peak_rss_gb": 2.0}
