"""The procedural ``functions`` task: references, generated tests, split, params, the reward."""

from __future__ import annotations

import ast
import warnings
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

import groupwise.tasks.code.functions as functions_module
from groupwise.config import DataConfig, load_config
from groupwise.data import build_task
from groupwise.rewards import resolve_reward
from groupwise.sandbox import Sandbox
from groupwise.tasks.code.functions import (
    FAMILIES,
    MUTANTS,
    Problem,
    all_problems,
    functions_task,
    make_tests,
)

AVAILABLE, REASON = Sandbox.available()
TOTAL = len(all_problems())
ROOT = Path(__file__).resolve().parents[2]

# Hand-computed (constants, argument, expected) per family, worked out on paper.
HAND: dict[str, list[tuple[dict[str, Any], Any, Any]]] = {
    "affine": [({"a": 3, "b": 2}, 4, 14), ({"a": 9, "b": 1}, -2, -17)],
    "divisible": [
        ({"a": 4, "b": 6}, 12, True),
        ({"a": 4, "b": 6}, 10, False),
        ({"a": 4, "b": 6}, 18, True),
        ({"a": 3, "b": 7}, -14, True),
    ],
    "clamp": [({"lo": 2, "hi": 7}, 0, 2), ({"lo": 2, "hi": 7}, 9, 7), ({"lo": 2, "hi": 7}, 5, 5)],
    "square_plus": [({"op": "plus", "b": 3}, -4, 19), ({"op": "minus", "b": 10}, 3, -1)],
    "count_digit": [({"d": 1}, 1101, 3), ({"d": 0}, 0, 1), ({"d": 7}, 123, 0)],
    "sum_multiples": [({"k": 3}, 10, 18), ({"k": 5}, 4, 0), ({"k": 2}, 0, 0)],
    "sum_greater": [({"k": 5}, [1, 5, 6, 10], 16), ({"k": 0}, [], 0)],
    "scale_list": [({"k": 3}, [1, -2, 0], [3, -6, 0]), ({"k": 2}, [], [])],
    "add_to_each": [({"k": 4}, [1, -4], [5, 0])],
    "sum_between": [({"lo": 2, "hi": 7}, [1, 2, 5, 7, 8], 14), ({"lo": 0, "hi": 5}, [], 0)],
    "count_greater": [({"k": 5}, [1, 5, 6, 10], 2), ({"k": 0}, [-1, 0], 0)],
    "count_divisible": [({"k": 3}, [3, 4, 9, 0, -6], 4), ({"k": 5}, [1, 2], 0)],
    "scale_evens": [({"k": 3}, [1, -2, 0, 4], [1, -6, 0, 12]), ({"k": 2}, [], [])],
    "replace_negatives": [({"k": 4}, [1, -4, 0, -1], [1, 4, 0, 4])],
    "keep_below": [({"k": 5}, [7, 4, 5, 1, -3], [4, 1, -3]), ({"k": 0}, [1, 2], [])],
    "sum_remainder": [
        ({"m": 2, "r": 0}, [1, 2, 3, 4, -6], 0),
        ({"m": 2, "r": 1}, [1, 2, 3, -5], -1),
        ({"m": 3, "r": 1}, [1, 4, 5, -2, 7], 10),
    ],
    "sum_first": [({"k": 2}, [5, 6, 7], 11), ({"k": 4}, [1, 2], 3)],
    "max_plus": [({"k": 3}, [-5, 2, 1], 5), ({"k": 1}, [-8], -7)],
    "remove_letter": [({"c": "a"}, "banana split", "bnn split")],
    "count_letter": [({"c": "o"}, "good moon", 4), ({"c": "z"}, "good", 0)],
    "count_long_words": [({"k": 4}, "a quick brown fox jumps", 3), ({"k": 2}, "an ox", 0)],
    "replace_letter": [({"a": "e", "b": "*"}, "tree house", "tr** hous*")],
    "repeat_text": [
        ({"k": 3, "sep": ", "}, "hi", "hi, hi, hi"),
        ({"k": 2, "sep": "-"}, "a b", "a b-a b"),
    ],
    "upper_first": [({"k": 3}, "hello world", "HELlo world"), ({"k": 8}, "hi", "HI")],
    "ends_with": [({"c": "s"}, "blue cats", True), ({"c": "s"}, "cat", False)],
    "count_ending": [({"c": "s"}, "blue cats and dogs", 2), ({"c": "s"}, "cat", 0)],
}

# An independent, hand-written correct solution per family (formatted with the constants).
SOLUTIONS: dict[str, str] = {
    "affine": "def scale_and_add(n):\n    return {a} * n + {b}\n",
    "divisible": "def is_divisible(n):\n    return not (n % {a} and n % {b})\n",
    "clamp": "def clamp(n):\n    if n < {lo}:\n        return {lo}\n    if n > {hi}:\n        return {hi}\n    return n\n",
    "square_plus": "def square_plus(n):\n    return n ** 2 + {sign}{b}\n",
    "count_digit": "def count_digit(n):\n    return sum(1 for ch in str(n) if ch == '{d}')\n",
    "sum_multiples": "def sum_multiples(n):\n    return sum(range({k}, n + 1, {k}))\n",
    "sum_greater": "def sum_greater(nums):\n    return sum([x for x in nums if not x <= {k}])\n",
    "scale_list": "def scale_list(nums):\n    return [{k} * x for x in nums]\n",
    "add_to_each": "def add_to_each(nums):\n    return list(map(lambda x: x + {k}, nums))\n",
    "sum_between": "def sum_between(nums):\n    t = 0\n    for x in nums:\n        if {lo} <= x and x <= {hi}:\n            t += x\n    return t\n",
    "count_greater": "def count_greater(nums):\n    return len([x for x in nums if x > {k}])\n",
    "count_divisible": "def count_divisible(nums):\n    return len([x for x in nums if x % {k} == 0])\n",
    "scale_evens": "def scale_evens(nums):\n    return [x if x % 2 else {k} * x for x in nums]\n",
    "replace_negatives": "def replace_negatives(nums):\n    return list(map(lambda x: max(x, 0) if x >= 0 else {k}, nums))\n",
    "keep_below": "def keep_below(nums):\n    return list(filter(lambda x: x < {k}, nums))\n",
    "sum_remainder": "def sum_remainder(nums):\n    return sum(x for x in nums if x % {m} == {r})\n",
    "sum_first": "def sum_first(nums):\n    return sum(nums[0:{k}])\n",
    "max_plus": "def max_plus(nums):\n    return sorted(nums)[-1] + {k}\n",
    "remove_letter": "def remove_letter(text):\n    return ''.join(ch for ch in text if ch != {c!r})\n",
    "count_letter": "def count_letter(text):\n    return sum(ch == {c!r} for ch in text)\n",
    "count_long_words": "def count_long_words(text):\n    return len([w for w in text.split(' ') if len(w) > {k}])\n",
    "replace_letter": "def replace_letter(text):\n    return ''.join({b!r} if ch == {a!r} else ch for ch in text)\n",
    "repeat_text": "def repeat_text(text):\n    return ((text + {sep!r}) * {k})[:-len({sep!r})]\n",
    "upper_first": "def upper_first(text):\n    return ''.join(ch.upper() if i < {k} else ch for i, ch in enumerate(text))\n",
    "ends_with": "def ends_with(text):\n    return text[-1:] == {c!r}\n",
    "count_ending": "def count_ending(text):\n    return sum(w[-1] == {c!r} for w in text.split(' '))\n",
}


def solution(problem: Problem) -> str:
    """The hand-written solution of ``problem``."""
    values = problem.constants
    values["sign"] = "" if values.get("op") == "plus" else "-"
    return SOLUTIONS[problem.family.name].format(**values)


def other_solutions(problem: Problem) -> list[str]:
    """The right family's solution for each of its other constants: each must fail."""
    return [
        solution(Problem(problem.family, v))
        for v in problem.family.constants
        if v != problem.values
    ]


def wrong_solution(problem: Problem) -> str:
    """The right family's solution with the next constants of the family: must fail."""
    constants = problem.family.constants
    other = constants[(constants.index(problem.values) + 1) % len(constants)]
    return solution(Problem(problem.family, other))


def run_in_process(code: str, tests: list[str]) -> list[bool]:
    """Our own trusted code and tests, without the sandbox: which tests pass."""
    namespace: dict[str, Any] = {}
    exec(code, namespace)
    results = []
    for test in tests:
        try:
            exec(test, dict(namespace))
            results.append(True)
        except AssertionError:
            results.append(False)
    return results


def call_arguments(tests: list[str]) -> list[Any]:
    """The literal arguments of ``assert f(x) == expected``."""
    calls = [ast.parse(test).body[0].test.left for test in tests]  # type: ignore[attr-defined]
    return [ast.literal_eval(call.args[0]) for call in calls]


def expected_values(tests: list[str]) -> list[Any]:
    """The literal right-hand sides of ``assert f(x) == expected``."""
    values = []
    for test in tests:
        node = ast.parse(test).body[0]
        assert isinstance(node, ast.Assert) and isinstance(node.test, ast.Compare)
        values.append(ast.literal_eval(node.test.comparators[0]))
    return values


def test_every_family_has_hand_cases_and_a_solution() -> None:
    assert set(HAND) == set(FAMILIES) == set(SOLUTIONS)
    assert len(all_problems()) >= 300
    # the counts the docstrings (and `groupwise tasks`) give
    assert f"({len(FAMILIES)} families, {TOTAL} problems)" in (functions_task.__doc__ or "")
    assert f"That is {TOTAL} problems." in (functions_module.__doc__ or "")
    assert len({p.task_id for p in all_problems()}) == len(all_problems())


@pytest.mark.parametrize(
    ("family", "constants", "arg", "expected"),
    [(name, c, a, e) for name, cases in HAND.items() for c, a, e in cases],
)
def test_reference_against_hand_cases(
    family: str, constants: dict[str, Any], arg: Any, expected: Any
) -> None:
    got = FAMILIES[family].reference(arg, **constants)
    assert got == expected and type(got) is type(expected)


def test_generated_tests_agree_with_independent_solutions() -> None:
    """All problems: the hand-written solution passes every test, a neighbour's fails one."""
    for problem in all_problems():
        tests = make_tests(problem, seed=7, count=6)
        assert len(tests) == 6 and len(set(tests)) == 6
        assert all(run_in_process(solution(problem), tests)), problem.task_id
        for other in other_solutions(problem):
            assert not all(run_in_process(other, tests)), (problem.task_id, other)
        for mutant in MUTANTS.get(problem.family.name, ()):
            wrong = [mutant(arg, **problem.constants) for arg in call_arguments(tests)]
            assert None in wrong or wrong != expected_values(tests), problem.task_id
        values = expected_values(tests)
        distinct = {repr(v) for v in values}
        assert len(distinct) >= (2 if isinstance(values[0], bool) else 3), problem.task_id


def _reward(name: str) -> Any:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # unsafe mode warns when used
        return resolve_reward(name, context={"unsafe_code_execution": not AVAILABLE})


def _fenced(code: str) -> str:
    return f"Here it is:\n```python\n{code}```\nIt works."


def test_code_tests_reward_on_task_rows() -> None:
    """The real reward (sandboxed when available) on one row per family."""
    task = build_task("functions", train_size=1000, eval_size=100, seed=3, params={})
    by_family: dict[str, dict[str, Any]] = {}
    for row in task.train + task.eval:
        by_family.setdefault(row["task_id"].split("/")[1], row)
    assert set(by_family) == set(FAMILIES)
    rows = list(by_family.values())
    problems = {p.task_id: p for p in all_problems()}
    right = [_fenced(solution(problems[r["task_id"]])) for r in rows]
    wrong = [_fenced(wrong_solution(problems[r["task_id"]])) for r in rows]
    columns = {k: [r[k] for r in rows] * 2 for k in ("tests", "setup", "entry_point")}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        scores = _reward("code_tests")([r["prompt"] for r in rows] * 2, right + wrong, **columns)
        passed = _reward("code_pass")([r["prompt"] for r in rows] * 2, right + wrong, **columns)
    n = len(rows)
    assert scores[:n] == [1.0] * n and passed[:n] == [1.0] * n
    assert all(s is not None and s < 1.0 for s in scores[n:]) and passed[n:] == [0.0] * n


def _shown_case_only(row: dict[str, Any]) -> str:
    """Special-cases the one test shown in the prompt, else returns that same answer."""
    call, expected = row["tests"][0].removeprefix("assert ").split(" == ", 1)
    arg = call[len(row["entry_point"]) + 1 : -1]
    return (
        f"def {row['entry_point']}(x):\n    if x == {arg}:\n        return {expected}\n"
        f"    return {expected}\n"
    )


def test_the_reward_resists_cheap_tricks() -> None:
    """Hard-coding the shown test, printing, exiting early or quoting the tests do not pass."""
    task = build_task("functions", train_size=1, eval_size=24, seed=11, params={})
    rows = task.eval
    tricks = {
        "print": [_fenced(f"print('All tests passed')\ndef {r['entry_point']}(x):\n    print(True)\n") for r in rows],
        "exit": [_fenced(f"import sys\nsys.exit(0)\ndef {r['entry_point']}(x):\n    return x\n") for r in rows],
        "no-code": ["I passed all the tests: " + " ".join(r["tests"]) for r in rows],
        "shown": [_fenced(_shown_case_only(r)) for r in rows],
    }  # fmt: skip
    prompts = [r["prompt"] for r in rows]
    columns = {k: [r[k] for r in rows] for k in ("tests", "setup", "entry_point")}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        code_tests, code_pass = _reward("code_tests"), _reward("code_pass")
        for name, completions in tricks.items():
            assert code_pass(prompts, completions, **columns) == [0.0] * len(rows), name
            partial = code_tests(prompts, completions, **columns)
            if name != "shown":
                assert partial == [0.0] * len(rows), name
        # the shown answer is right where the hidden tests expect the same value: at most 4 of 6
        # (5 of 6 for True/False answers), and far fewer on average
        assert all(s is not None and s <= 5 / 6 for s in partial), partial
        assert sum(s or 0.0 for s in partial) / len(rows) < 0.4, partial


def test_rows_prompt_and_columns() -> None:
    task = build_task("functions", train_size=50, eval_size=120, seed=5, params={"demos": 0})
    for row in task.train + task.eval:
        assert set(row) == {"prompt", "tests", "setup", "task_id", "entry_point"}
        (message,) = row["prompt"]
        text = message["content"]
        assert message["role"] == "user" and row["setup"] == ""
        assert f"`{row['entry_point']}(" in text and row["tests"][0] in text
        assert not any(t in text for t in row["tests"][1:])  # the hidden tests stay hidden
        assert "def " not in text  # no reference code
    default = build_task("functions", train_size=5, eval_size=5, seed=5, params={})
    (demo, reply, question) = default.eval[0]["prompt"]  # one worked exchange by default
    assert (demo["role"], reply["role"], question["role"]) == ("user", "assistant", "user")
    assert (
        "def count_negative(" in reply["content"]
        and default.eval[0]["tests"][0] in question["content"]
    )
    two = build_task("functions", train_size=5, eval_size=5, seed=5, params={"demos": 2})
    roles = [m["role"] for m in two.eval[0]["prompt"]]
    assert roles == ["user", "assistant", "user", "assistant", "user"]
    shown = build_task(
        "functions", train_size=5, eval_size=5, seed=5,
        params={"show_tests": 2, "num_tests": 4, "system_prompt": "Be brief."},
    )  # fmt: skip
    row = shown.eval[0]
    assert row["prompt"][0] == {"role": "system", "content": "Be brief."}
    assert len(row["tests"]) == 4 and all(
        t in row["prompt"][-1]["content"] for t in row["tests"][:2]
    )


def test_seeded_and_deterministic() -> None:
    def build(seed: int) -> Any:
        return build_task("functions", train_size=1000, eval_size=150, seed=seed, params={})

    a, b, c = build(1), build(1), build(2)
    assert a.train == b.train and a.eval == b.eval
    ids_a = [r["task_id"] for r in a.eval]
    ids_c = [r["task_id"] for r in c.eval]
    assert set(ids_a) != set(ids_c)
    common = set(ids_a) & set(ids_c)
    tests_a = {r["task_id"]: r["tests"] for r in a.eval}
    assert any(tests_a[r["task_id"]] != r["tests"] for r in c.eval if r["task_id"] in common)


def test_split_is_disjoint_and_held_out_is_large() -> None:
    task = build_task("functions", train_size=5000, eval_size=200, seed=1234, params={})
    train = {r["task_id"] for r in task.train}
    held = {r["task_id"] for r in task.eval}
    assert len(held) == len(task.eval) == 200 and len(train) == len(task.train)
    assert not train & held
    assert train | held == {p.task_id for p in all_problems()}
    assert len(Counter(t.split("/")[1] for t in held)) >= 15  # most families are held out too
    d = DataConfig()  # the defaults: data.eval_size held out
    default = build_task(
        "functions", train_size=d.train_size, eval_size=d.eval_size, seed=d.seed, params={}
    )
    assert len(default.eval) == d.eval_size >= 100 and default.train
    example = load_config(str(ROOT / "examples" / "code.yaml")).data
    assert example.task == "functions" and example.eval_size >= 100
    small = build_task("functions", train_size=7, eval_size=100, seed=1234, params={})
    assert len(small.train) == 7 and len(small.eval) == 100
    subset = build_task(
        "functions", train_size=100, eval_size=10, seed=0, params={"families": ["affine", "clamp"]}
    )
    assert {r["task_id"].split("/")[1] for r in subset.train + subset.eval} == {"affine", "clamp"}


@pytest.mark.parametrize(
    ("params", "eval_size", "message"),
    [
        ({"families": ["affine", "nope"]}, 10, r"data.params.families: unknown family 'nope'"),
        ({"families": "affine"}, 10, r"data.params.families must be a non-empty list"),
        ({"families": []}, 10, r"data.params.families must be a non-empty list"),
        ({"num_tests": 1}, 10, r"data.params.num_tests must be >= 2"),
        ({"show_tests": 6}, 10, r"data.params.show_tests must be in \[0, num_tests\)"),
        ({"show_tests": -1}, 10, r"data.params.show_tests"),
        ({"demos": 3}, 10, r"data.params.demos must be in \[0, 2\]"),
        ({}, TOTAL, rf"data.eval_size: {TOTAL} held-out problems leave none of the {TOTAL}"),
        (
            {"families": ["sum_first"]},
            8,
            r"data.eval_size: 8 held-out problems leave none of the 8",
        ),
        ({}, -1, r"data.eval_size must be >= 0"),
        ({"colour": "red"}, 10, r"data.params: bad parameters for task 'functions'"),
    ],
)
def test_bad_params_name_the_key(params: dict[str, Any], eval_size: int, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        build_task("functions", train_size=10, eval_size=eval_size, seed=0, params=params)
