"""The TRL comparison harness (benchmarks/trl_vs_groupwise.py) picks TRL's fastest candidate row
and reports groupwise's defaults against it, in its Markdown, its summary and the figures the
docs' tables render (scripts/render_results.py). Pure functions only: nothing is trained."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.tests_helpers import load_module

ROOT = Path(__file__).resolve().parents[1]
BENCHMARKS = ROOT / "benchmarks"


bench = load_module(BENCHMARKS / "trl_vs_groupwise.py", "trl_vs_groupwise")
render = load_module(ROOT / "scripts" / "render_results.py", "render_results")

# SmolLM2-135M's shape: enough for the FLOP floor the summary computes per row
CONFIG = {
    "hidden_size": 576,
    "intermediate_size": 1536,
    "num_hidden_layers": 30,
    "num_attention_heads": 9,
    "num_key_value_heads": 3,
    "vocab_size": 49152,
}
RATES = {"bf16": 400.0, "fp32": 200.0}
FACTS = {"matmul_gflops": {"train": RATES, "decode": RATES}}


def _plan(**kwargs: Any) -> tuple[list[Any], list[Any], list[str]]:
    options = {"matched": True, "levers": False, "extra": (), **kwargs}
    return bench.arms_for("B1", True, True, **options)


def test_the_fastest_candidate_has_the_lowest_median_and_ties_go_to_the_first() -> None:
    candidates = ("trl-bf16", "trl-bf16-no-gc", "trl-bf16-weights-no-gc")
    medians = {"trl-bf16": 28.0, "trl-bf16-no-gc": 21.0, "trl-bf16-weights-no-gc": 14.5}
    assert bench.fastest_arm(medians, candidates) == "trl-bf16-weights-no-gc"
    assert bench.fastest_arm({**medians, "trl-bf16-weights-no-gc": 30.0}, candidates) == (
        "trl-bf16-no-gc"
    )
    tie = dict.fromkeys(candidates, 20.0)
    assert bench.fastest_arm(tie, candidates) == "trl-bf16"
    assert bench.fastest_arm({"groupwise-defaults": 1.0, **medians}, candidates[:1]) == "trl-bf16"
    with pytest.raises(ValueError, match="trl-bf16-no-gc"):
        bench.fastest_arm({"trl-bf16": 1.0}, candidates[:2])
    with pytest.raises(ValueError, match="no TRL candidate"):
        bench.fastest_arm(medians, ())


def test_the_candidates_are_the_default_row_and_the_speed_settings() -> None:
    arms, pairs, _ = _plan()
    by_key = {a.key: a for a in arms}
    assert [p.name for p in pairs] == ["defaults", "matched fp32", "vs TRL's fastest"]
    fastest = pairs[-1]
    assert fastest.groupwise == "groupwise-defaults" and fastest.trl == ""
    assert fastest.candidates == ("trl-bf16", "trl-bf16-no-gc", "trl-bf16-weights-no-gc")
    assert by_key["trl-bf16"].trl_args == ()  # TRL's defaults: gradient checkpointing on
    assert by_key["trl-fp32"].trl_args == ()
    assert by_key["trl-bf16-no-gc"].trl_args == ("--no-gradient-checkpointing",)
    weights = by_key["trl-bf16-weights-no-gc"]
    assert weights.precision == "bf16"
    assert weights.trl_args == ("--no-gradient-checkpointing", "--weights-dtype", "bf16")
    assert len(arms) == len(by_key)  # nothing runs twice

    # where TRL's best is fp32, the bf16-weights candidate is still measured
    _, fp32_pairs, _ = bench.arms_for(
        "B1", False, False, matched=True, levers=False, extra=(), trl_fastest=True
    )
    assert fp32_pairs[-1].candidates == ("trl-fp32", "trl-fp32-no-gc", "trl-bf16-weights-no-gc")


def test_no_gradient_checkpointing_turns_the_default_row_into_that_candidate() -> None:
    arms, pairs, _ = _plan(trl_no_gc=True)
    by_key = {a.key: a for a in arms}
    assert by_key["trl-bf16"].trl_args == ("--no-gradient-checkpointing",)
    assert by_key["trl-fp32"].trl_args == ("--no-gradient-checkpointing",)
    assert "gradient_checkpointing=False" in by_key["trl-bf16"].settings
    assert pairs[-1].candidates == ("trl-bf16", "trl-bf16-weights-no-gc")


def test_without_trl_fastest_the_rows_and_pairs_are_as_before() -> None:
    arms, pairs, _ = _plan(trl_fastest=False)
    assert [a.key for a in arms] == ["groupwise-defaults", "trl-bf16", "groupwise-fp32", "trl-fp32"]
    assert [(p.name, p.groupwise, p.trl) for p in pairs] == [
        ("defaults", "groupwise-defaults", "trl-bf16"),
        ("matched fp32", "groupwise-fp32", "trl-fp32"),
    ]
    assert all(p.candidates == () for p in pairs)


def _run(arm: Any, step_s: float, rss_gb: float) -> Any:
    steps = 3
    return bench.Run(
        "B1",
        arm.trainer,
        arm.key,
        0,
        [],
        [step_s] * steps,
        {"generate": [step_s / 2] * steps, "ref_logp": [0.1] * steps, "update": [0.2] * steps},
        [50.0] * steps,
        [(48.0, 48.0)] * steps,
        arm.precision,
        int(rss_gb * 1e9 / 1024),
    )


STEP_S = {
    "groupwise-defaults": (7.0, 2.5),
    "trl-bf16": (28.0, 7.5),
    "groupwise-fp32": (18.0, 4.5),
    "trl-fp32": (38.0, 7.4),
    "trl-bf16-no-gc": (21.0, 9.0),
    "trl-bf16-weights-no-gc": (14.0, 5.0),
}


def _summary(tmp_path: Path) -> tuple[str, dict[str, Any]]:
    (tmp_path / "config.json").write_text(json.dumps(CONFIG))
    plan = {"B1": _plan()}
    runs = [_run(a, *STEP_S[a.key]) for a in plan["B1"][0]]
    return bench.summarize(runs, plan, 1, tmp_path, FACTS)


def test_the_summary_pairs_groupwise_defaults_with_the_fastest_trl_row(tmp_path: Path) -> None:
    table, summary = _summary(tmp_path)
    pairs = {p["name"]: p for p in summary["B1"]["comparisons"]}
    assert set(pairs) == {"defaults", "matched fp32", "vs TRL's fastest: trl-bf16-weights-no-gc"}
    fastest = pairs["vs TRL's fastest: trl-bf16-weights-no-gc"]
    assert fastest["trl"] == "trl-bf16-weights-no-gc"
    assert fastest["speedup_trl_over_groupwise"] == pytest.approx(14.0 / 7.0)
    assert fastest["memory_groupwise_over_trl"] == pytest.approx(2.5 / 5.0, rel=1e-3)
    assert pairs["defaults"]["speedup_trl_over_groupwise"] == pytest.approx(28.0 / 7.0)
    listed = {c["row"]: c for c in fastest["candidates"]}
    assert set(listed) == {"trl-bf16", "trl-bf16-no-gc", "trl-bf16-weights-no-gc"}
    assert [c["row"] for c in fastest["candidates"] if c["fastest"]] == ["trl-bf16-weights-no-gc"]
    assert listed["trl-bf16"]["s_over_fastest"] == pytest.approx(2.0)
    assert listed["trl-bf16-no-gc"]["peak_rss_gb"] == pytest.approx(9.0, rel=1e-3)

    assert "| B1 | vs TRL's fastest: trl-bf16-weights-no-gc | 7.00 s (bf16) " in table
    assert "| 14.00 s (bf16) | 2.00x | 0.50x |" in table
    assert "| B1 | trl-bf16 | GRPOConfig defaults, bf16=True (its best here) | bf16 " in table
    assert "| 28.00 | 7.50 | 2.00x |" in table
    assert "| 14.00 | 5.00 | fastest |" in table


def test_the_figures_carry_the_new_pair_and_render(tmp_path: Path) -> None:
    _, summary = _summary(tmp_path)
    figures = bench.result_figures(summary)
    rows = {r["comparison"]: r for r in figures["rows"]}
    row = rows["vs TRL's fastest: trl-bf16-weights-no-gc"]
    assert row["trl_row"] == "trl-bf16-weights-no-gc"
    assert row["trl_s"] == 14.0 and row["speedup"] == pytest.approx(2.0)
    assert row["memory"] == pytest.approx(0.5, rel=1e-3)
    assert rows["defaults"]["trl_row"] == "trl-bf16"
    assert [c["row"] for c in figures["trl_candidates"] if c["fastest"]] == [
        "trl-bf16-weights-no-gc"
    ]
    labels = [p["row"] for p in figures["phases"]]
    assert len(labels) == len(set(labels)) == len(STEP_S)
    assert "B1 trl (bf16)" in labels and "B1 trl (bf16; trl-bf16-no-gc)" in labels

    record = {
        "name": "trl-probe",
        "commit": "0" * 40,
        "date": "2026-12-07",
        "cpu": {"model": "m", "family": 1, "model_number": 2, "flags": ["avx2"]},
        "command": "python benchmarks/trl_vs_groupwise.py",
        "transcribed": False,
        "figures": figures,
    }
    results = {"trl-probe": record}
    headline = render.Table(
        "probe",
        (render.Source("trl-probe", "rows", render._defaults),),
        render.TRL_COLUMNS,
    )
    text = render.render(headline, results)
    assert "| B1 | defaults | 7.00 | 28.00 | 4.00x |" in text
    assert "| B1 | vs TRL's fastest: trl-bf16-weights-no-gc | 7.00 | 14.00 | 2.00x |" in text
    assert "matched fp32" not in text
    candidates = render.Table(
        "probe", (render.Source("trl-probe", "trl_candidates"),), render.TRL_CANDIDATE_COLUMNS
    )
    text = render.render(candidates, results)
    assert (
        "| B1 | trl-bf16 | GRPOConfig defaults, bf16=True (its best here) | bf16 | 28.00 " in text
    )
    assert "| 14.00 | 5.00 | fastest |" in text and "| 21.00 | 9.00 | 1.50x |" in text


def _fp32_plan() -> tuple[list[Any], list[Any], list[str]]:
    """An AVX2-only CPU: both defaults in fp32, TRL's bf16-weights candidate emulated."""
    return bench.arms_for("B1", False, False, matched=True, levers=False, extra=())


def test_a_candidate_is_timed_out_against_the_quickest_finished_trl_run() -> None:
    arms, pairs, _ = _fp32_plan()
    by_key = {a.key: a for a in arms}
    assert set(by_key) == {
        "groupwise-defaults",
        "trl-fp32",
        "trl-fp32-no-gc",
        "trl-bf16-weights-no-gc",
    }
    default = _run(by_key["trl-fp32"], 40.0, 7.0)
    default.wall_s = 200.0
    no_gc = _run(by_key["trl-fp32-no-gc"], 30.0, 9.0)
    no_gc.wall_s = 150.0
    runs = [default, no_gc]
    assert bench.candidate_timeout("trl-bf16-weights-no-gc", pairs, runs, "B1", 3.0) == 450.0
    assert bench.candidate_timeout("trl-fp32-no-gc", pairs, [default], "B1", 3.0) == 600.0
    # TRL's default row and groupwise's always run to the end; 0 turns the bound off
    assert bench.candidate_timeout("trl-fp32", pairs, runs, "B1", 3.0) is None
    assert bench.candidate_timeout("groupwise-defaults", pairs, runs, "B1", 3.0) is None
    assert bench.candidate_timeout("trl-bf16-weights-no-gc", pairs, runs, "B1", 0) is None
    # nothing finished yet, or only stopped runs: no bound to set
    assert bench.candidate_timeout("trl-bf16-weights-no-gc", pairs, [], "B1", 3.0) is None
    no_gc.stopped = "timeout: wall 700 s > bound 600 s"
    assert bench.candidate_timeout("trl-bf16-weights-no-gc", pairs, runs, "B1", 3.0) == 600.0


def test_a_stopped_candidate_is_listed_but_never_the_fastest(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps(CONFIG))
    plan = {"B1": _fp32_plan()}
    step_s = {
        "groupwise-defaults": (9.0, 3.0),
        "trl-fp32": (40.0, 7.0),
        "trl-fp32-no-gc": (30.0, 9.0),
        "trl-bf16-weights-no-gc": (1.0, 4.0),
    }
    runs = [_run(a, *step_s[a.key]) for a in plan["B1"][0]]
    stopped = runs[-1]
    assert stopped.arm == "trl-bf16-weights-no-gc"
    stopped.step_times, stopped.phases = [], {}  # not even the warm-up step finished
    stopped.stopped = "timeout: wall 450 s > bound 450 s"
    table, summary = bench.summarize(runs, plan, 1, tmp_path, FACTS)
    pairs = {p["name"]: p for p in summary["B1"]["comparisons"]}
    fastest = pairs["vs TRL's fastest: trl-fp32-no-gc"]
    assert fastest["speedup_trl_over_groupwise"] == pytest.approx(30.0 / 9.0)
    listed = {c["row"]: c for c in fastest["candidates"]}
    assert listed["trl-bf16-weights-no-gc"]["median_s_per_step"] is None
    assert listed["trl-bf16-weights-no-gc"]["stopped"].startswith("timeout")
    assert listed["trl-fp32"]["s_over_fastest"] == pytest.approx(40.0 / 30.0)
    assert "| - | 4.00 | stopped (timeout: wall 450 s > bound 450 s) |" in table
    figures = bench.result_figures(summary)
    assert "B1 trl (bf16)" not in [p["row"] for p in figures["phases"]]
    results = {
        "trl-probe": {
            "name": "trl-probe",
            "commit": "0" * 40,
            "date": "2026-12-08",
            "cpu": {"model": "m", "family": 1, "model_number": 2, "flags": ["avx2"]},
            "command": "c",
            "transcribed": False,
            "figures": figures,
        }
    }
    candidates = render.Table(
        "probe", (render.Source("trl-probe", "trl_candidates"),), render.TRL_CANDIDATE_COLUMNS
    )
    text = render.render(candidates, results)
    assert "| - | 4.00 | stopped (timeout: wall 450 s > bound 450 s) |" in text
    assert "| 30.00 | 9.00 | fastest |" in text
