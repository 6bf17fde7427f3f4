"""benchmarks/b1_commits.py (a workload at several commits, alternating): its medians drop each
run's warm-up steps and pool the rounds, its peak is the largest, and an unknown commit is a
clear error. Nothing is trained here."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from tests.tests_helpers import load_module

ROOT = Path(__file__).resolve().parents[1]
bench = load_module(ROOT / "benchmarks" / "b1_commits.py", "b1_commits")
harness = sys.modules["harness"]  # the one b1_commits.py imported


def _run(steps: list[float], update: list[float], rss_kb: int) -> object:
    phases = {"generate": [1.0] * len(steps), "ref_logp": [0.5] * len(steps), "update": update}
    return harness.Run(
        workload="B1",
        trainer="groupwise",
        arm="x",
        round=0,
        command=[],
        step_times=steps,
        phases=phases,
        peak_rss_kb=rss_kb,
    )


def test_summary_drops_warmup_and_pools_rounds() -> None:
    runs = [
        _run([99.0, 10.0, 12.0], [50.0, 5.0, 7.0], 2_000_000),
        _run([88.0, 11.0, 13.0], [40.0, 6.0, 8.0], 3_000_000),
    ]
    row = bench.summarise(runs, warmup=1)
    assert row["median_s"] == pytest.approx(11.5)  # median of 10, 12, 11, 13
    assert row["steps"] == 4
    assert row["update"] == pytest.approx(6.5)  # median of 5, 7, 6, 8
    assert row["generate"] == 1.0
    assert row["peak_rss_gb"] == pytest.approx(3_000_000 * 1024 / 1e9)


def test_an_unknown_commit_is_named() -> None:
    with pytest.raises(SystemExit, match="no-such-commit"):
        harness.resolve_commit("no-such-commit")
    assert len(harness.resolve_commit("HEAD")) == 40


def test_floor_ratios_are_measured_over_floor() -> None:
    row = {"median_s": 10.0, "generate": 4.0, "ref_logp": 1.0, "update": 5.0}
    floor = {"floor_s": {"generate": 2.0, "ref_logp": 0.5, "update": 1.0, "step": 4.0}}
    out = bench.with_floor(row, floor)
    assert out["measured_over_floor"] == {
        "generate": 2.0,
        "ref_logp": 2.0,
        "update": 5.0,
        "step": 2.5,
    }
    assert out["flop_floor"] is floor and out["median_s"] == 10.0
