"""The HTML run report: sections, embedded plots, escaped completions, missing pieces."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

import pytest

from groupwise.run.records import CompletionRecord
from groupwise.run.report import (
    accuracy_points,
    best_and_worst,
    ema,
    load_run,
    prompt_text,
    report_main,
    write_report,
)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
EVIL = "<script>alert('x')</script> & done"


def _full_metrics(step: int) -> dict[str, Any]:
    """Every metric the trainer logs (values made up, varying with the step)."""
    record: dict[str, Any] = {
        "step": step,
        "reward": 0.1 * step,
        "reward_std": 0.3,
        "rewards/correct/mean": 0.1 * step,
        "rewards/correct/std": 0.4,
        "rewards/format/mean": float("nan") if step == 1 else 0.5,
        "rewards/format/std": 0.0,
        "frac_reward_zero_std": 0.25,
        "kl": 0.01 * step,
        "entropy": 1.5 - 0.1 * step,
        "clip_ratio/low_mean": 0.0,
        "clip_ratio/low_min": 0.0,
        "clip_ratio/high_mean": 0.01,
        "clip_ratio/high_max": 0.02,
        "clip_ratio/region_mean": 0.01,
        "completions/mean_length": 10.0 + step,
        "completions/min_length": 2.0,
        "completions/max_length": 16.0,
        "completions/mean_terminated_length": 9.0,
        "completions/clipped_ratio": 0.1,
        "loss": 0.01,
        "grad_norm": 0.5,
        "learning_rate": 1e-5,
        "num_tokens": 1000 * step,
        "step_time": 2.0,
        "time/generate": 1.0,
        "time/score": 0.1,
        "time/old_logp": 0.0,
        "time/ref_logp": 0.2,
        "time/update": 0.6,
        "time/sync": 0.1,
    }
    if step == 3:
        record["eval_accuracy"] = 0.5
    return record


def _completion(step: int, text: str, reward: float, prompt: Any = "2+2=") -> dict[str, Any]:
    return {
        "step": step,
        "prompt": prompt,
        "completion": text,
        "rewards": {"correct": reward},
        "reward": reward,
        "advantage": reward - 0.5,
        "truncated": False,
    }


def _write_jsonl(path: Path, records: list[dict[str, Any]]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")


def make_run(
    root: Path,
    steps: int = 5,
    *,
    metrics: bool = True,
    completions: bool = True,
    summary: bool = True,
) -> Path:
    """A fake run directory shaped like what GRPOTrainer.train writes."""
    run = root / "run"
    run.mkdir()
    (run / "config.yaml").write_text("model:\n  name: tiny-random\n", encoding="utf-8")
    if metrics:
        _write_jsonl(run / "metrics.jsonl", [_full_metrics(s) for s in range(1, steps + 1)])
    if completions:
        records = []
        for step in range(1, steps + 1):
            records += [
                _completion(step, f"best-{step}", 1.0),
                _completion(step, f"worst-{step}", 0.0),
                _completion(step, f"mid-{step}-a", 0.5),
                _completion(step, f"mid-{step}-b", 0.5),
                _completion(step, f"mid-{step}-c", 0.5),
                _completion(step, f"mid-{step}-d", 0.5),
            ]
        records[1]["completion"] = EVIL  # worst at the first step
        records[-6]["prompt"] = [{"role": "user", "content": "chat <b>prompt</b>"}]
        _write_jsonl(run / "completions.jsonl", records)
    if summary:
        info = {"model": "tiny-random", "task": "arithmetic", "run_dir": str(run), "steps": steps}
        info.update(eval_before=0.25, eval_after=0.75, wall_time_s=125.0, train_time_s=100.0)
        (run / "summary.json").write_text(json.dumps(info), encoding="utf-8")
    return run


def _is_png(path: Path) -> bool:
    return path.read_bytes()[:8] == PNG_MAGIC


def test_full_report(tmp_path: Path) -> None:
    run = make_run(tmp_path)
    out = write_report(run)
    assert out == run / "report.html"
    page = out.read_text(encoding="utf-8")
    for title in ("Summary", "Training curves", "Completions", "Config", "Best", "Worst"):
        assert f">{title}<" in page
    assert "tiny-random" in page and "arithmetic" in page
    assert "25.0% → 75.0% (+50.0 points)" in page
    assert "125 s (2m 05s)" in page
    expected = {
        "reward",
        "accuracy",
        "kl",
        "entropy",
        "completion_length",
        "clip_ratio",
        "loss",
        "grad_norm",
        "learning_rate",
        "time",
    }
    assert {p.stem for p in (run / "plots").glob("*.png")} == expected
    assert all(_is_png(p) for p in (run / "plots").glob("*.png"))
    images = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    assert len(images) == len(expected)
    assert all(img.startswith("iVBORw0KGgo") for img in images)  # base64 of the PNG magic
    # self-contained: no scripts, no external resources
    assert "<script" not in page.lower().replace("&lt;script", "")
    assert "http://" not in page and "https://" not in page
    assert not list(run.glob(".*.tmp")) and not list((run / "plots").glob(".*.tmp"))


def test_best_and_worst_completions_escaped(tmp_path: Path) -> None:
    page = write_report(make_run(tmp_path)).read_text(encoding="utf-8")
    assert "Start (step 1, 6 completions)" in page and "End (step 5, 6 completions)" in page
    for text in ("best-1", "worst-5", "best-5"):
        assert text in page
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt; &amp; done" in page
    assert EVIL not in page
    assert "user: chat &lt;b&gt;prompt&lt;/b&gt;" in page
    assert "best-3" not in page  # only the first and last steps are shown


def test_missing_optional_metrics(tmp_path: Path) -> None:
    """No KL, entropy, clip ratios, evals, completions or summary: those parts are skipped."""
    run = tmp_path / "run"
    run.mkdir()
    rows = [{"step": s, "reward": 0.2 * s, "loss": 0.1, "time/generate": 1.0} for s in (1, 2, 3)]
    _write_jsonl(run / "metrics.jsonl", rows)
    with open(run / "metrics.jsonl", "a", encoding="utf-8") as handle:
        handle.write('{"step": 4, "rew')  # a half-written line of a live run
    page = write_report(run).read_text(encoding="utf-8")
    assert {p.stem for p in (run / "plots").glob("*.png")} == {"reward", "loss", "time"}
    assert "No completions.jsonl" in page
    assert "no summary.json" in page
    assert page.count("data:image/png;base64,") == 3


def test_single_step_run(tmp_path: Path) -> None:
    run = make_run(tmp_path, steps=1)
    page = write_report(run).read_text(encoding="utf-8")
    assert "Start (step 1, 6 completions)" in page
    assert "End (step" not in page
    assert (run / "plots" / "time.png").is_file() and _is_png(run / "plots" / "time.png")


def test_long_run_smoothing_and_rewrite(tmp_path: Path) -> None:
    """A 12-step run draws EMA curves; writing the report twice replaces it in place."""
    run = make_run(tmp_path, steps=12, completions=False)
    first = write_report(run).read_bytes()
    second = write_report(run, smoothing=None).read_bytes()
    assert first.startswith(b"<!DOCTYPE html>") and second.startswith(b"<!DOCTYPE html>")


def test_not_a_run_dir(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="not a groupwise run directory"):
        write_report(tmp_path)


def test_report_main_prints_path(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = make_run(tmp_path, steps=2, completions=False, summary=False)
    assert report_main(str(run)) == 0
    assert str(run / "report.html") in capsys.readouterr().out


def test_accuracy_points(tmp_path: Path) -> None:
    data = load_run(make_run(tmp_path, completions=False))
    assert accuracy_points(data) == [(0.0, 0.25), (3.0, 0.5), (5.0, 0.75)]


def test_ema_debiased_and_skips_nan() -> None:
    out = ema([1.0, math.nan, 3.0], 0.5)
    assert out[0] == pytest.approx(1.0)
    assert math.isnan(out[1])
    assert out[2] == pytest.approx((0.5 * 0.5 * 1.0 + 0.5 * 3.0) / (1 - 0.25))


def test_best_and_worst_selection() -> None:
    rewards = [0.1, 0.9, math.nan, 0.5, 0.0, 0.7, 0.3]
    records = [CompletionRecord.from_json(_completion(1, str(i), r)) for i, r in enumerate(rewards)]
    best, worst = best_and_worst(records, 2)
    assert [r.completion for r in best] == ["1", "5"]
    assert [r.completion for r in worst] == ["4", "0"]
    few_best, few_worst = best_and_worst(records[:3], 2)
    assert [r.completion for r in few_best] == ["1", "0"] and few_worst == []


def test_prompt_text() -> None:
    assert prompt_text("plain") == "plain"
    messages = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}]
    assert prompt_text(messages) == "system: be brief\nuser: hi"
    assert prompt_text(None) == ""


def _hacked_run(root: Path) -> Path:
    """A 4-step run whose repeated_winner crosses its threshold at steps 3 and 4."""
    run = make_run(root, steps=4, completions=False)
    records = [_full_metrics(s) for s in range(1, 5)]
    for record, winner in zip(records, (0.0, 0.25, 0.5, 0.75), strict=True):
        record["hacking/repeated_winner"] = winner
        record["hacking/correct/short_full_marks"] = 0.0
        record["hacking/code_suspicious_imports"] = 0.0
        record["hacking/reward_up_eval_down"] = 0.0
    records[1]["hacking/correct/short_full_marks"] = float("nan")
    _write_jsonl(run / "metrics.jsonl", records)
    return run


def test_hacking_rows_summarise_each_signal(tmp_path: Path) -> None:
    from groupwise.run.report import hacking_rows

    rows = {row[0]: row for row in hacking_rows(load_run(_hacked_run(tmp_path)))}
    assert set(rows) == {
        "repeated_winner",
        "correct/short_full_marks",
        "code_suspicious_imports",
        "reward_up_eval_down",
    }
    assert rows["repeated_winner"] == (
        "repeated_winner",
        "0.50",
        "0.750",
        "0.750 (step 4)",
        "2: 3, 4",
    )
    assert rows["correct/short_full_marks"][2:] == ("0.000", "0.000 (step 1)", "none")
    (tmp_path / "clean").mkdir()
    assert hacking_rows(load_run(make_run(tmp_path / "clean", completions=False))) == []


def test_report_has_a_hacking_section_and_plot(tmp_path: Path) -> None:
    run = _hacked_run(tmp_path)
    page = write_report(run).read_text(encoding="utf-8")
    assert ">Reward-hacking signals<" in page
    assert "<td>repeated_winner</td><td>0.50</td><td>0.750</td>" in page
    assert "<td>2: 3, 4</td>" in page
    assert (run / "plots" / "hacking.png").is_file() and _is_png(run / "plots" / "hacking.png")
    assert 'id="plot-hacking"' in page


def test_report_without_hacking_metrics_says_so(tmp_path: Path) -> None:
    run = make_run(tmp_path, completions=False)
    page = write_report(run).read_text(encoding="utf-8")
    assert "No hacking/* metrics in metrics.jsonl." in page
    assert not (run / "plots" / "hacking.png").exists()


def _eval_sample(label: str, index: int, completion: str, score: float) -> dict[str, Any]:
    prompt = [{"role": "user", "content": f"held-out prompt {index}"}]
    return {
        "label": label,
        "index": index,
        "prompt": prompt,
        "completion": completion,
        "score": score,
    }


def test_held_out_answers_before_and_after_side_by_side(tmp_path: Path) -> None:
    run = make_run(tmp_path, completions=False)
    records = [_eval_sample("step 3", i, f"middle-{i}", 0.5) for i in range(10)]
    records += [_eval_sample("after", i, f"after-{i}", 0.875) for i in range(10)]
    records += [_eval_sample("before", i, f"before-{i}", 0.125) for i in range(10)]
    records[-10]["completion"] = EVIL  # before, prompt 0
    records.append(_eval_sample("after", 1, "rewritten by a resume", 0.875))
    _write_jsonl(run / "eval_samples.jsonl", records)
    with open(run / "eval_samples.jsonl", "a", encoding="utf-8") as handle:
        handle.write('{"label": "after", "ind')  # a half-written line
    page = write_report(run).read_text(encoding="utf-8")
    assert ">Held-out answers, before and after<" in page
    assert "<th>prompt</th><th>before</th><th>after</th>" in page
    section = page[page.index('id="eval-samples"') :]
    section = section[: section.index("</section>")]
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt; &amp; done" in section
    assert EVIL not in section
    for i in range(2, 8):  # one row per prompt: its before answer, then its after answer
        row = f"user: held-out prompt {i}</pre></td><td><pre>before-{i}</pre>"
        assert row in section
        assert section.index(f"before-{i}<") < section.index(f"after-{i}<")
    assert "rewritten by a resume" in section and "after-1<" not in section
    assert "score 0.125" in section and "score 0.875" in section
    assert "held-out prompt 8" not in section and "middle-" not in section  # first 8 only


def test_held_out_answers_missing_or_one_sided(tmp_path: Path) -> None:
    run = make_run(tmp_path, completions=False)
    page = write_report(run).read_text(encoding="utf-8")
    assert "No eval_samples.jsonl in this run" in page
    _write_jsonl(run / "eval_samples.jsonl", [_eval_sample("before", 0, "only-before", 0.5)])
    page = write_report(run).read_text(encoding="utf-8")
    assert "<th>prompt</th><th>before</th><th>—</th>" in page
    assert "only-before" in page and "<td class='muted'>—</td>" in page


def test_a_torn_last_line_is_skipped_and_a_damaged_record_named(tmp_path: Path) -> None:
    from groupwise.run.records import RecordError

    run = make_run(tmp_path, steps=2)
    path = run / "completions.jsonl"
    with open(path, "a", encoding="utf-8") as handle:
        handle.write('{"step": 3, "prompt": "2+')  # a running trainer's line, half written
    data = load_run(run)
    assert {r.step for r in data.last_completions} == {2}
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    lines[1] = lines[1].replace('"advantage"', '"advantages"')
    path.write_text("".join(lines), encoding="utf-8")
    with pytest.raises(RecordError, match=r"completions\.jsonl:2: .* lacks the key 'advantage'"):
        load_run(run)
