from __future__ import annotations

import asyncio
import subprocess
import sys
import threading
import time
from typing import Any

import pytest
import torch

from groupwise.rewards import (
    RewardError,
    RewardRunner,
    answer_match,
    exact_match,
    format_reward,
    last_number,
    resolve_reward,
)
from groupwise.rewards.answer import number_only


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("68", 68.0),
        ("The answer is 68.", 68.0),
        ("23 + 45 = 68", 68.0),
        ("-12", -12.0),
        ("1,234 apples", 1234.0),
        ("about 3.5", 3.5),
        ("no digits here", None),
        ("", None),
    ],
)
def test_last_number(text: str, expected: float | None) -> None:
    assert last_number(text) == expected


def test_answer_match_right_wrong_and_malformed() -> None:
    completions = ["68", "The sum is 68.", "67", "sixty-eight", "68 or 69", ""]
    got = answer_match([""] * 6, completions, answer=["68"] * 6)
    assert got == [1.0, 1.0, 0.0, 0.0, 0.0, 0.0]


def test_exact_and_number_only() -> None:
    assert exact_match([""] * 3, [" 68 ", "68.", "x"], answer=["68"] * 3) == [1.0, 0.0, 0.0]
    assert number_only([""] * 4, ["68", " -3 ", "68.", "is 68"]) == [1.0, 1.0, 0.0, 0.0]


def test_format_reward_tags() -> None:
    reward = format_reward(r"<think>.*?</think>\s*<answer>.*?</answer>", name="tags")
    completions = [
        "<think>2+2</think> <answer>4</answer>",
        "<answer>4</answer>",
        "<think>x</think><answer>4</answer> trailing",
        "<think>\nmulti\nline</think>\n<answer>4</answer>",
    ]
    assert reward([""] * 4, completions) == [1.0, 0.0, 0.0, 1.0]
    assert reward.__name__ == "tags"


def test_runner_weights_none_and_stats() -> None:
    def half(prompts: list[Any], completions: list[str], **_: Any) -> list[float | None]:
        return [0.5 if c else None for c in completions]

    runner = RewardRunner([answer_match, half], weights=[2.0, 1.0])
    result = runner(["p"] * 3, ["68", "1", ""], answer=["68", "68", "68"])
    assert torch.allclose(result.total, torch.tensor([2.5, 0.5, 0.0]))
    assert torch.isnan(result.per_func["half"][2])
    assert runner.names == ["answer_match", "half"]


def test_runner_names_the_raising_function_and_sample() -> None:
    def fragile(prompts: list[Any], completions: list[str], **_: Any) -> list[float]:
        return [1.0 / len(c) for c in completions]

    runner = RewardRunner([fragile])
    with pytest.raises(RewardError) as info:
        runner(["p0", "p1", "p2"], ["ab", "", "c"])
    message = str(info.value)
    assert "'fragile'" in message and "ZeroDivisionError" in message
    assert "sample 1" in message and "'p1'" in message


def test_runner_wrong_length_and_type() -> None:
    def short(prompts: list[Any], completions: list[str], **_: Any) -> list[float]:
        return [1.0]

    def words(prompts: list[Any], completions: list[str], **_: Any) -> list[Any]:
        return ["good" for _ in completions]

    def nan(prompts: list[Any], completions: list[str], **_: Any) -> list[float]:
        return [float("nan") for _ in completions]

    with pytest.raises(RewardError, match="'short' returned 1 values for 2 completions"):
        RewardRunner([short])(["a", "b"], ["x", "y"])
    with pytest.raises(RewardError, match="'words' returned 'good' for completion 0"):
        RewardRunner([words])(["a"], ["x"])
    with pytest.raises(RewardError, match="'nan' returned nan"):
        RewardRunner([nan])(["a"], ["x"])


def test_runner_rejects_wrong_signature() -> None:
    def positional_only(texts: list[str]) -> list[float]:
        return [0.0 for _ in texts]

    with pytest.raises(RewardError, match="'positional_only' must accept keyword argument"):
        RewardRunner([positional_only])


def test_resolve_reward() -> None:
    assert resolve_reward("answer_match") is answer_match
    assert resolve_reward("groupwise.rewards.answer:exact_match") is exact_match
    with pytest.raises(ValueError, match=r"rewards.funcs: unknown reward 'nope'; valid: .*"):
        resolve_reward("nope")
    with pytest.raises(ValueError, match=r"valid: .*answer_match.*or an import path"):
        resolve_reward("nope")
    with pytest.raises(ValueError, match="cannot import module"):
        resolve_reward("no_such_module_xyz:f")


def test_answer_match_can_require_a_finished_completion() -> None:
    """The hole seen in a real run: the answer, then chatter that the length limit cut off before
    another number. 0 by default; scored with require_finished=False; finished answers as before."""
    completions = ["44 + 45 equals 89, which is the sum of", "44 + 45 = 89.", "44 + 45 = 88."]
    truncated = [True, False, False]
    answer = ["89"] * 3
    assert answer_match([""] * 3, completions, answer, truncated=truncated) == [0.0, 1.0, 0.0]
    loose = answer_match([""] * 3, completions, answer, truncated=truncated, require_finished=False)
    assert loose == [1.0, 1.0, 0.0]
    # without the trainer's truncated flags (evaluation) nothing counts as cut off
    assert answer_match([""] * 3, completions, answer) == [1.0, 1.0, 0.0]


def test_builtin_rewards_are_registered_where_defined_and_documented() -> None:
    """Each built-in joins a registry with a decorator in its own module, a module the manifest
    lists under ``rewards.funcs``; the package docstring lists them all."""
    import groupwise.rewards as rewards_package
    from groupwise.builtins import BUILTIN_MODULES
    from groupwise.rewards import BUILTIN_REWARDS, REWARD_FACTORIES, REWARDS

    documented = rewards_package.__doc__.split("Built-ins:")[1].replace("\n", " ").strip(" .")
    assert sorted(BUILTIN_REWARDS) == sorted(n.strip() for n in documented.split(","))
    assert set(REWARD_FACTORIES.names()) >= {"code_tests", "code_pass", "overlong_penalty"}
    assert REWARDS.get("number_only") is number_only
    for name in BUILTIN_REWARDS:
        entry = REWARDS.get(name) if name in REWARDS else REWARD_FACTORIES.get(name)
        assert entry.__module__ in BUILTIN_MODULES["rewards.funcs"], name


# ---------------------------------------------------------------------------- hung rewards
def _hanging(name: str, release: threading.Event, *, is_async: bool = False) -> Any:
    """A reward named ``name`` that does not return until ``release`` is set."""

    def hang(prompts: list[Any], completions: list[str], **_: Any) -> list[float]:
        release.wait(60)
        return [0.0 for _ in completions]

    async def hang_async(prompts: list[Any], completions: list[str], **_: Any) -> list[float]:
        if name == "blocks_loop":  # never awaits: blocks the event loop itself
            release.wait(60)
        while not release.is_set():
            await asyncio.sleep(0.01)
        return [0.0 for _ in completions]

    func = hang_async if is_async else hang
    func.__name__ = name
    return func


def _ones(prompts: list[Any], completions: list[str], **_: Any) -> list[float]:
    return [1.0 for _ in completions]


@pytest.mark.parametrize(
    ("hung", "others"),
    [
        ({"name": "slow"}, []),  # alone: called one after another
        ({"name": "slow"}, [_ones]),  # concurrently, in threads
        ({"name": "slow_async", "is_async": True}, [_ones]),  # awaited in the event loop
        ({"name": "blocks_loop", "is_async": True}, [_ones]),  # an async one that blocks it
    ],
    ids=["sync-alone", "sync-concurrent", "async", "async-blocking"],
)
def test_a_hung_reward_raises_promptly_naming_it(hung: dict[str, Any], others: list[Any]) -> None:
    release = threading.Event()
    name = hung["name"]
    runner = RewardRunner([_hanging(release=release, **hung), *others], timeout=0.5)
    start = time.monotonic()
    try:
        with pytest.raises(RewardError) as info:
            runner(["p", "q"], ["a", "b"])
        elapsed = time.monotonic() - start
    finally:
        release.set()  # let the abandoned thread finish
    message = str(info.value)
    assert f"reward function '{name}' did not return within 0.5 s (rewards.timeout_s)" in message
    assert "on a batch of 2 completions" in message and "(0 = no limit)" in message
    assert 0.5 <= elapsed < 5, elapsed
    # the runner still works on the next batch
    release.clear()
    fast = RewardRunner([_ones, _ones], timeout=5)
    assert fast(["p"], ["a"]).total.tolist() == [2.0]


def test_timeout_zero_waits_and_results_are_unchanged() -> None:
    def slowish(prompts: list[Any], completions: list[str], **_: Any) -> list[float]:
        time.sleep(0.3)
        return [0.5 for _ in completions]

    for timeout in (0.0, 30.0):
        for concurrent in (True, False):
            runner = RewardRunner([slowish, _ones], timeout=timeout, concurrent=concurrent)
            assert runner(["p"] * 2, ["a", "b"]).total.tolist() == [1.5, 1.5]
    with pytest.raises(
        ValueError, match=r"rewards.timeout_s must be >= 0 \(0 = no limit\), got -1"
    ):
        RewardRunner([_ones], timeout=-1)


def test_probing_samples_of_a_failed_batch_stops_at_a_hung_call() -> None:
    """A function that raises on the batch is called on single samples to name the culprit;
    a single-sample call that hangs ends the search instead of hanging the run."""
    release = threading.Event()

    def odd(prompts: list[Any], completions: list[str], **_: Any) -> list[float]:
        if len(completions) > 1:
            raise ValueError("batch too large")
        release.wait(60)
        return [0.0]

    start = time.monotonic()
    try:
        with pytest.raises(RewardError) as info:
            RewardRunner([odd], timeout=0.5)(["p", "q"], ["a", "b"])
    finally:
        release.set()
    assert time.monotonic() - start < 5
    assert "'odd' raised ValueError: batch too large" in str(info.value)
    assert "sample 0 alone did not return in time" in str(info.value)


HUNG_REWARD_THEN_EXIT = """
import threading
from groupwise.rewards.base import RewardError, RewardRunner

def stuck(prompts, completions, **kwargs):
    threading.Event().wait()  # forever

try:
    RewardRunner([stuck], timeout=0.2)(["p"], ["c"])
except RewardError as exc:
    print("raised:", exc)
"""


def test_a_hung_reward_does_not_keep_the_process_from_exiting() -> None:
    """The abandoned thread is a daemon: the interpreter exits without joining it."""
    done = subprocess.run(
        [sys.executable, "-c", HUNG_REWARD_THEN_EXIT],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert "raised: reward function 'stuck' did not return within 0.2 s" in done.stdout


# ---------------------------------------------------------------- signatures checked up front
def test_signatures_are_checked_against_what_they_will_be_given() -> None:
    from groupwise.rewards.base import EXPECTED_SIGNATURE, check_signature

    def two_args(a: Any, b: Any) -> list[float]:
        return []

    def needs_label(prompts: Any, completions: Any, label: Any, **_: Any) -> list[float]:
        return []

    def no_kwargs(prompts: Any, completions: Any) -> list[float]:
        return []

    def uses_answer(prompts: Any, completions: Any, answer: Any, **_: Any) -> list[float]:
        return []

    with pytest.raises(RewardError, match="'two_args' must accept keyword argument 'prompts'"):
        check_signature(two_args)
    passed = {"answer", "completion_ids", "truncated"}
    with pytest.raises(RewardError, match=r"'needs_label' requires 'label'.*columns: answer"):
        check_signature(needs_label, passed)
    with pytest.raises(RewardError, match="'no_kwargs' does not accept keyword 'answer'"):
        check_signature(no_kwargs, passed)
    with pytest.raises(RewardError, match="correctness function 'needs_label'") as info:
        check_signature(needs_label, {"answer"}, kind="correctness function")
    assert EXPECTED_SIGNATURE in str(info.value)
    check_signature(uses_answer, passed)
    check_signature(lambda completions, **kw: [], passed)  # TRL's style
    check_signature(needs_label)  # columns unknown: only prompts/completions checked


def test_task_functions_fail_before_training() -> None:
    from groupwise.data import Task
    from groupwise.rewards.base import check_task_functions

    def needs_label(prompts: Any, completions: Any, label: Any, **_: Any) -> list[float]:
        return []

    def correct(prompts: Any, completions: Any, answer: Any) -> list[float]:
        return []

    rows = [{"prompt": "p", "answer": "1"}]
    task = Task(name="t", train=rows, eval=rows, correctness=correct)
    check_task_functions([answer_match], task)
    with pytest.raises(RewardError, match="reward function 'needs_label' requires 'label'"):
        check_task_functions([needs_label], task)
    check_task_functions([needs_label], task, engine_adds_columns=True)
    task.eval = [{"prompt": "p", "answer": "1", "extra": 2}]
    with pytest.raises(
        RewardError, match="correctness function 'correct' does not accept keyword 'extra'"
    ):
        check_task_functions([answer_match], task)


def test_trl_style_rewards_get_messages_and_trainer_state() -> None:
    from groupwise.rewards.base import trl_reward

    calls: list[dict[str, Any]] = []

    def trl_fn(completions: list[Any], trainer_state: Any, **kw: Any) -> list[float]:
        calls.append({"completions": completions, "step": trainer_state.global_step, **kw})
        return [0.0 for _ in completions]

    def plain(prompts: list[Any], completions: list[str]) -> list[float]:
        assert completions == ["a", "b"]  # groupwise style: text, and no trainer_state
        return [1.0 for _ in completions]

    chat = [{"role": "user", "content": "hi"}]
    runner = RewardRunner([trl_reward(trl_fn), plain])
    assert runner.names == ["trl_fn", "plain"]
    runner([chat, "plain prompt"], ["a", "b"])
    assert calls[0]["completions"] == [[{"role": "assistant", "content": "a"}], "b"]
    assert calls[0]["prompts"] == [chat, "plain prompt"] and calls[0]["step"] == 0


def test_trl_style_rewards_get_an_engines_conversation_as_their_completions() -> None:
    """The reserved column of an engine's messages: a TRL-style function on a conversational
    prompt gets them as the completion (its final answer at ``[-1]``); no function gets the
    column itself, not even through ``**kwargs``."""
    from groupwise.rewards.base import COMPLETION_MESSAGES, trl_reward

    got: dict[str, Any] = {}

    def final_answer(completions: list[Any], **kw: Any) -> list[float]:
        got["trl"], got["trl_kw"] = completions, kw
        return [
            float(c[-1]["content"] == "42") if isinstance(c, list) else 0.0 for c in completions
        ]

    def plain(prompts: list[Any], completions: list[str], **kw: Any) -> list[float]:
        got["plain"], got["plain_kw"] = completions, kw
        return [0.0 for _ in completions]

    chat = [{"role": "user", "content": "code?"}]
    episode = [
        {"role": "assistant", "content": "", "tool_calls": [{"type": "function"}]},
        {"role": "tool", "name": "lookup", "content": "42"},
        {"role": "assistant", "content": "42"},
    ]
    runner = RewardRunner([trl_reward(final_answer), plain])
    texts = ["call tool 42 42", "42", "raw"]
    result = runner([chat, chat, "standard"], texts, **{COMPLETION_MESSAGES: [episode, [], None]})
    assert got["trl"] == [episode, [{"role": "assistant", "content": "42"}], "raw"]
    assert result.per_func["final_answer"].tolist() == [1.0, 1.0, 0.0]
    assert got["plain"] == texts  # groupwise-style functions keep the decoded text
    assert COMPLETION_MESSAGES not in got["plain_kw"] and COMPLETION_MESSAGES not in got["trl_kw"]


async def _async_trl(completions: list[Any], **_: Any) -> list[float]:
    return [float(len(c[0]["content"])) for c in completions]


def test_trl_style_async_and_failure_reports() -> None:
    from groupwise.rewards.base import is_async_reward, trl_reward

    wrapped = trl_reward(_async_trl)
    assert is_async_reward(wrapped) and trl_reward(wrapped) is wrapped
    chat = [{"role": "user", "content": "hi"}]
    assert RewardRunner([wrapped])([chat], ["abc"]).total.tolist() == [3.0]

    def picky(completions: list[Any], **_: Any) -> list[float]:
        return [1.0 / len(c[0]["content"]) for c in completions]

    with pytest.raises(RewardError, match="on sample 1"):
        RewardRunner([trl_reward(picky)])([chat, chat], ["ab", ""])
