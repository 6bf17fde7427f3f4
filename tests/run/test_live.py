"""The live terminal view: headline numbers, sampled completions, plain and rich output."""

from __future__ import annotations

import io
import math

import pytest

from groupwise.run.live import LiveView, headline, pick_samples
from groupwise.run.records import CompletionRecord, Prompt


def _record(prompt: Prompt, completion: str, reward: float, advantage: float) -> CompletionRecord:
    return CompletionRecord(1, prompt, completion, {}, reward, advantage, truncated=False)


def _records() -> list[CompletionRecord]:
    return [
        _record("What is 2+2?", "4", 1.0, 0.87),
        _record("What is 2+2?", "five [bold]", 0.0, -0.87),
        _record("What is 3+3?", "6 maybe", 0.5, 0.0),
    ]


METRICS = {
    "reward": 0.5,
    "rewards/correct/mean": 0.25,
    "kl": 0.0123,
    "completions/mean_length": 12.5,
    "frac_reward_zero_std": 0.75,
    "step_time": 3.25,
}


def test_headline_formats_each_number_and_marks_missing_ones() -> None:
    pairs = dict(headline(METRICS, eval_accuracy=0.855))
    assert pairs == {
        "reward": "0.500",
        "correct": "0.250",
        "held-out acc": "85.5%",
        "kl": "0.0123",
        "len": "12.5",
        "zero-std groups": "0.75",
        "step time": "3.2s",
    }
    missing = dict(headline({"reward": math.nan}, eval_accuracy=None))
    assert missing["reward"] == "-" and missing["held-out acc"] == "-" and missing["kl"] == "-"


def test_pick_samples_alternates_best_and_worst() -> None:
    records = _records()
    assert [r.completion for r in pick_samples(records, 2)] == ["4", "five [bold]"]
    assert [r.completion for r in pick_samples(records, 3)] == ["4", "five [bold]", "6 maybe"]
    assert len(pick_samples(records, 10)) == 3
    assert pick_samples(records, 0) == [] and pick_samples([], 2) == []


def test_plain_view_prints_a_line_per_step_and_completions_when_due() -> None:
    out = io.StringIO()
    view = LiveView(3, stream=out, log_completions_steps=2, num_completions=2)
    view.set_eval_accuracy(0.4)
    for step in (1, 2, 3):
        view.update(step, METRICS, _records())
    view.close()
    text = out.getvalue()
    lines = [line for line in text.splitlines() if line.startswith("step ")]
    assert [line.split()[1] for line in lines] == ["1/3", "2/3", "3/3"]
    assert "reward 0.500" in lines[0] and "held-out acc 40.0%" in lines[0]
    assert "kl 0.0123" in lines[0] and "eta" in lines[0]
    # completions at step 1 and step 2 (every 2 steps), not at step 3
    assert text.count("completion: 4") == 2
    assert text.count("completion: five [bold]") == 2
    assert text.rstrip().splitlines()[-1].startswith("step 3/3")


def test_rich_view_renders_metrics_and_completions_literally() -> None:
    out = io.StringIO()
    view = LiveView(
        2, stream=out, log_completions_steps=1, num_completions=2, force_terminal=True, width=120
    )
    view.update(1, METRICS, _records())
    view.update(2, METRICS, _records())
    view.close()
    text = out.getvalue()
    assert "GRPO" in text and "2/2" in text
    for needle in ("reward", "0.500", "held-out acc", "0.0123", "12.5", "3.2s", "What is 2+2?"):
        assert needle in text, needle
    assert "five [bold]" in text  # completion text is not parsed as rich markup
    assert "advantage -0.87" in text


@pytest.mark.parametrize("force_terminal", [True, False])
def test_disabled_view_writes_nothing(force_terminal: bool) -> None:
    out = io.StringIO()
    view = LiveView(2, enabled=False, stream=out, force_terminal=force_terminal)
    view.update(1, METRICS, _records())
    view.close()
    assert out.getvalue() == ""


def test_conversational_prompts_show_the_last_user_turn() -> None:
    out = io.StringIO()
    view = LiveView(1, stream=out, log_completions_steps=1, num_completions=1)
    prompt = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi there"}]
    view.update(1, METRICS, [_record(prompt, "Hello", 1.0, 0.0)])
    assert "prompt: Hi there" in out.getvalue()
    assert "Be brief" not in out.getvalue()


HACKED = {**METRICS, "hacking/repeated_winner": 0.75, "hacking/answer/short_full_marks": 0.0}


def test_hacking_line_names_the_signals_at_their_threshold() -> None:
    from groupwise.run.live import hacking_line

    assert hacking_line(METRICS) is None
    assert hacking_line({**METRICS, "hacking/repeated_winner": 0.0}) is None
    line = hacking_line(HACKED)
    assert line is not None and line.startswith("possible reward hacking: ")
    assert "repeated_winner 0.75 (warn at 0.50)" in line
    assert "short_full_marks" not in line


def test_plain_view_warns_only_on_the_flagged_step() -> None:
    out = io.StringIO()
    view = LiveView(2, stream=out, log_completions_steps=0)
    view.update(1, HACKED)
    view.update(2, {**HACKED, "hacking/repeated_winner": 0.25})
    lines = out.getvalue().splitlines()
    assert lines[0].startswith("step 1/2")
    assert lines[1].strip().startswith("possible reward hacking: repeated_winner 0.75")
    assert lines[2].startswith("step 2/2") and len(lines) == 3


def test_rich_view_shows_the_hacking_warning() -> None:
    out = io.StringIO()
    view = LiveView(1, stream=out, log_completions_steps=0, force_terminal=True, width=200)
    view.update(1, HACKED)
    view.close()
    assert "possible reward hacking: repeated_winner 0.75" in out.getvalue()
    quiet = io.StringIO()
    view = LiveView(1, stream=quiet, log_completions_steps=0, force_terminal=True, width=200)
    view.update(1, METRICS)
    view.close()
    assert "reward hacking" not in quiet.getvalue()


def test_an_episode_shows_as_turns_with_roles() -> None:
    record = _record("2+2?", "2+2 4", 1.0, 0.0)
    record.turns = [
        {"role": "assistant", "content": "<tool_call>2+2</tool_call>"},
        {"role": "environment", "content": "4"},
        {"role": "assistant", "content": "The answer is 4."},
    ]
    assert record.transcript().splitlines() == [
        "[assistant] <tool_call>2+2</tool_call>",
        "[environment] 4",
        "[assistant] The answer is 4.",
    ]
    assert _record("2+2?", "plain", 1.0, 0.0).transcript() == "plain"
    out = io.StringIO()
    view = LiveView(1, stream=out, log_completions_steps=1, num_completions=1)
    view.update(1, METRICS, [record])
    assert "completion: [assistant] <tool_call>2+2</tool_call>" in out.getvalue()
