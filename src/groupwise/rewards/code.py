"""Code rewards: run the completion's code against the problem's tests in the sandbox.

``code_tests`` gives the fraction of tests passed, ``code_pass`` 1.0 only when all pass. Both
read the columns ``tests`` (a list of test snippets, or one script split per top-level
``assert``), ``setup`` (optional code run before the solution), and for function-completion
problems (HumanEval) ``code_prefix`` and ``entry_point``: when the code does not define
``entry_point`` it is taken as the continuation of ``code_prefix``.

Every completion runs in a fresh bubblewrap sandbox (:mod:`groupwise.sandbox`), at most
``max_workers`` at a time. When no sandbox can be set up the reward fails with the sandbox's
reason, unless ``unsafe_code_execution`` (``rewards.unsafe_code_execution: true``) allows
running the code WITHOUT isolation (rlimits and timeouts only).
"""

from __future__ import annotations

import re
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from groupwise.rewards.base import RewardFunc, register_reward_factory
from groupwise.sandbox import Sandbox, SandboxLimits, SandboxUnavailableError, run_tests

_FENCE = re.compile(r"```[ \t]*([A-Za-z0-9_+-]*)[^\n]*\n(.*?)(?:```|\Z)", re.DOTALL)
_PYTHON_TAGS = ("", "python", "py", "python3", "py3")


def extract_code(completion: str, entry_point: str | None = None) -> str:
    """The Python code in a completion.

    Fenced blocks (```` ```python ````, ```` ```py ```` or untagged; an unclosed last fence
    runs to the end) win: the last block defining ``entry_point`` when it is given, else the
    last block with a ``def`` or ``class``, else the last block. Without fences the whole
    completion is the code (bare code, or a function-body continuation).
    """
    blocks = [body for tag, body in _FENCE.findall(completion) if tag.lower() in _PYTHON_TAGS]
    if not blocks:
        return completion
    if entry_point:
        defining = [b for b in blocks if _defines(b, entry_point)]
        if defining:
            return defining[-1]
    with_defs = [b for b in blocks if re.search(r"^\s*(def|class)\s", b, re.MULTILINE)]
    return (with_defs or blocks)[-1]


def _defines(code: str, entry_point: str) -> bool:
    return re.search(rf"^\s*(async\s+)?def\s+{re.escape(entry_point)}\s*\(", code, re.M) is not None


def continuation_body(text: str) -> str:
    """A function-body continuation cut at its first top-level line (HumanEval's stop rule).

    Lines up to the first non-empty line that starts in column 0 are kept: that line (a new
    ``def``, ``if __name__``, prose, a closing fence) is not part of the body.
    """
    kept = []
    for line in text.splitlines(keepends=True):
        if line.strip() and not line[0].isspace():
            break
        kept.append(line)
    return "".join(kept)


def build_program(
    completion: str, *, code_prefix: str | None = None, entry_point: str | None = None
) -> str:
    """The program to test: the extracted code, or ``code_prefix`` + body when it lacks the def."""
    code = extract_code(completion, entry_point)
    if code_prefix and entry_point and not _defines(code, entry_point):
        return code_prefix + continuation_body(code)
    return code


class _SandboxHolder:
    """Creates the sandbox on first use (probing bubblewrap), shared by the reward's calls."""

    def __init__(self, limits: SandboxLimits, unsafe_ok: bool, name: str) -> None:
        self.limits, self.unsafe_ok, self.name = limits, unsafe_ok, name
        self._sandbox: Sandbox | None = None
        self._lock = threading.Lock()

    def get(self) -> Sandbox:
        """The sandbox, created on the first call (raises if none can be set up)."""
        with self._lock:
            if self._sandbox is None:
                self._sandbox = self._create()
            return self._sandbox

    def _create(self) -> Sandbox:
        try:
            return Sandbox(self.limits)
        except SandboxUnavailableError as exc:
            if self.unsafe_ok:
                return Sandbox(self.limits, unsafe=True)
            raise SandboxUnavailableError(
                f"reward {self.name!r} cannot run model code: {exc} To run it WITHOUT "
                "isolation anyway, set rewards.unsafe_code_execution: true"
            ) from exc


def _as_list(value: Sequence[Any] | None, n: int) -> list[Any]:
    return list(value) if value is not None else [None] * n


def make_code_reward(
    name: str,
    *,
    binary: bool,
    unsafe_code_execution: bool = False,
    max_workers: int = 2,
    timeout: float = 10.0,
    memory_mb: int = 1024,
) -> RewardFunc:
    """A sandboxed test-running reward (see the module docstring).

    Per completion: ``passed / total`` (``binary``: 1.0 if ``passed == total`` else 0.0);
    None when the row has no tests. ``timeout`` is the wall-clock (and CPU) limit of one
    completion's run, ``memory_mb`` its address-space limit per process.
    """
    if max_workers < 1:
        raise ValueError(f"max_workers must be >= 1, got {max_workers}")
    limits = SandboxLimits(cpu_seconds=timeout, wall_seconds=timeout, memory_mb=memory_mb)
    holder = _SandboxHolder(limits, unsafe_code_execution, name)

    def reward(
        prompts: Sequence[Any],
        completions: Sequence[str],
        tests: Sequence[Sequence[str] | str | None] | None = None,
        setup: Sequence[str | None] | None = None,
        code_prefix: Sequence[str | None] | None = None,
        entry_point: Sequence[str | None] | None = None,
        **_: Any,
    ) -> list[float | None]:
        """Per completion: the share of the row's tests passed (binary: all passed)."""
        if tests is None:
            raise ValueError(f"reward {name!r} needs a 'tests' column (a list of test snippets)")
        n = len(completions)
        jobs = zip(
            completions, tests, _as_list(setup, n), _as_list(code_prefix, n),
            _as_list(entry_point, n), strict=True,
        )  # fmt: skip
        sandbox = holder.get()

        def score(job: tuple[str, Any, Any, Any, Any]) -> float | None:
            completion, test, setup_code, prefix, entry = job
            if not test:
                return None
            program = build_program(completion, code_prefix=prefix, entry_point=entry)
            if not program.strip():
                return 0.0
            passed, total = run_tests(program, test, sandbox=sandbox, setup=setup_code or "")
            if total == 0:
                return None
            return float(passed == total) if binary else passed / total

        with ThreadPoolExecutor(max_workers=max(1, min(max_workers, n))) as pool:
            return list(pool.map(score, jobs))

    reward.__name__ = reward.__qualname__ = name
    return reward


@register_reward_factory("code_tests")
def code_tests_reward(
    *,
    unsafe_code_execution: bool = False,
    max_workers: int = 2,
    timeout: float = 10.0,
    memory_mb: int = 1024,
) -> RewardFunc:
    """Built-in ``code_tests``: the fraction of the row's tests the completion's code passes."""
    return make_code_reward(
        "code_tests",
        binary=False,
        unsafe_code_execution=unsafe_code_execution,
        max_workers=max_workers,
        timeout=timeout,
        memory_mb=memory_mb,
    )


@register_reward_factory("code_pass")
def code_pass_reward(
    *,
    unsafe_code_execution: bool = False,
    max_workers: int = 2,
    timeout: float = 10.0,
    memory_mb: int = 1024,
) -> RewardFunc:
    """Built-in ``code_pass``: 1.0 when the completion's code passes every test, else 0.0."""
    return make_code_reward(
        "code_pass",
        binary=True,
        unsafe_code_execution=unsafe_code_execution,
        max_workers=max_workers,
        timeout=timeout,
        memory_mb=memory_mb,
    )


code_tests = code_tests_reward()
"""``code_tests`` with default settings (sandbox required, 2 workers, 10 s per completion)."""
code_pass = code_pass_reward()
"""``code_pass`` with default settings."""
