""":func:`run_tests`: the solution serves calls in the sandbox, the trusted judge runs the tests.

The verdict is not computed next to the untrusted code. In the sandbox the bootstrap
(``programs/bootstrap.py``) runs the setup and the solution, then only *serves calls* on a
socket: a JSON line ``name(*args, **kwargs)`` in, its result as plain data
(:mod:`groupwise.sandbox.programs.plain_data`) or the name of its exception out. The tests run
in a separate trusted judge process (:mod:`groupwise.sandbox.programs.judge`, ``python -I -S
-B``, outside the sandbox's namespaces, run from the package's own ``programs/`` directory,
which no sandbox can see), which holds the only result channel: its stdout, read here, one
``<i>:P`` or ``<i>:F:<why>`` line per test. Nothing the solution does from inside (walking
frames, ``gc``, ``/proc/self/mem``, inherited fds, exiting, killing, patching builtins,
printing markers, returning objects whose ``__eq__`` lies) reaches the judge.
"""

from __future__ import annotations

import ast
import contextlib
import json
import os
import selectors
import socket
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from groupwise.sandbox.box import Sandbox
from groupwise.sandbox.launcher import PROGRAMS
from groupwise.sandbox.runner import ExecResult, kill_group

_JUDGE_GRACE = 1.0  # seconds the judge may take past the run's deadline to report


@dataclass
class TestReport:
    """Per-test outcome of :func:`run_tests_detailed`."""

    __test__ = False  # not a pytest test class

    passed: int
    """Number of tests whose assertion ran without raising."""
    total: int
    """Number of tests."""
    results: list[bool] = field(default_factory=list)
    """Pass/fail for every test, in order."""
    exec_result: ExecResult | None = None
    """The underlying execution (stdout/stderr of the solution, kill reason...)."""
    failures: list[str] = field(default_factory=list)
    """Why each failed test failed, as the judge saw it (``"test 1: AssertionError: ..."``)."""


def run_judge(
    python: str, sock: socket.socket, deadline: float, job: dict[str, Any]
) -> tuple[dict[int, str | None], bool]:
    """Run the trusted judge (its own process, ``python -I -S -B judge.py``) against the
    solution's server behind ``sock``; returns {test: None if passed else why} and whether it
    timed out."""
    seconds = max(deadline - time.monotonic(), 0.0)
    judge_py = str(PROGRAMS / "judge.py")
    argv = [python, "-I", "-S", "-B", judge_py, str(sock.fileno()), repr(seconds)]
    judge = subprocess.Popen(
        argv,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        pass_fds=[sock.fileno()],
        start_new_session=True,
    )
    sock.close()  # the judge holds the only other end: when it is done the server sees EOF
    assert judge.stdin is not None and judge.stdout is not None
    verdicts: dict[int, str | None] = {}
    timed_out = False
    try:
        with contextlib.suppress(BrokenPipeError):
            judge.stdin.write(json.dumps(job).encode())
            judge.stdin.close()
        out, timed_out = _read_until(judge.stdout, deadline + _JUDGE_GRACE)
        for line in out.split(b"\n"):
            index, _, rest = line.partition(b":")
            if index.isdigit() and rest[:1] in (b"P", b"F"):
                reason = rest[2:].decode("utf-8", "replace") or "failed"
                verdicts[int(index)] = None if rest[:1] == b"P" else reason
    finally:
        kill_group(judge)
        judge.wait()
        judge.stdout.close()
    return verdicts, timed_out


def _read_until(stream: Any, deadline: float) -> tuple[bytes, bool]:
    """What ``stream`` yields until EOF or ``deadline``, and whether the deadline came first."""
    fd = stream.fileno()
    os.set_blocking(fd, False)
    chunks: list[bytes] = []
    with selectors.DefaultSelector() as sel:
        sel.register(fd, selectors.EVENT_READ)
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return b"".join(chunks), True
            if not sel.select(remaining):
                continue
            try:
                chunk = os.read(fd, 1 << 16)
            except (BlockingIOError, InterruptedError):
                continue
            if not chunk:
                return b"".join(chunks), False
            chunks.append(chunk)


def split_tests(tests: str) -> list[str]:
    """Split a test script into tests: one per top-level ``assert``.

    Non-assert statements (imports, helpers, assignments) are glued to the next assert (or the
    last one); a script with no assert, or one that does not parse, is a single test.
    """
    try:
        body = ast.parse(tests).body
    except (SyntaxError, ValueError):
        return [tests]
    lines = tests.splitlines(keepends=True)
    chunks: list[str] = []
    pending = 0  # first line (0-based) not yet assigned to a test
    for node in body:
        end = node.end_lineno or 0
        if isinstance(node, ast.Assert) and end > pending:  # asserts sharing a line: one test
            chunks.append("".join(lines[pending:end]))
            pending = end
    if not chunks:
        return [tests]
    if pending < len(lines):
        chunks[-1] += "".join(lines[pending:])
    return chunks


def run_tests_detailed(
    code: str, tests: Sequence[str] | str, *, sandbox: Sandbox, setup: str = ""
) -> TestReport:
    """Like :func:`run_tests`, but returns per-test results and the execution record."""
    test_list = split_tests(tests) if isinstance(tests, str) else list(tests)
    if not test_list:
        return TestReport(0, 0)
    job = {"code": code, "setup": setup, "tests": test_list}
    python = sandbox.python

    def judge(sock: socket.socket, deadline: float) -> tuple[dict[int, str | None], bool]:
        return run_judge(python, sock, deadline, job)

    result, (verdicts, judge_timed_out) = sandbox.run_server(code, judge, setup=setup)
    if judge_timed_out and result.killed_reason is None:
        result = replace(result, timed_out=True, killed_reason="wall_timeout")
    results = [i in verdicts and verdicts[i] is None for i in range(len(test_list))]
    failures = [verdicts.get(i) or "no verdict (timed out)" for i in range(len(test_list))]
    reasons = [
        f"test {i}: {f}" for i, (f, ok) in enumerate(zip(failures, results, strict=True)) if not ok
    ]
    return TestReport(sum(results), len(test_list), results, result, reasons)


def run_tests(
    code: str, tests: Sequence[str] | str, *, sandbox: Sandbox, setup: str = ""
) -> tuple[int, int]:
    """Run ``setup``, then ``code`` in ONE sandboxed process, then each test in the trusted
    judge; returns (passed, total).

    Each test (e.g. ``"assert add(1, 2) == 3"``) runs on its own in the judge, where every
    top-level name of the solution forwards its calls to the sandbox.  A string ``tests`` is
    split into one test per top-level ``assert``.  If setup or the solution raises (including
    ``SyntaxError`` and ``exit()``) or the process dies (``os._exit``, a limit), the tests that
    did not pass count as failed.  Verdicts travel on the judge's stdout, out of the sandbox's
    reach.
    """
    report = run_tests_detailed(code, tests, sandbox=sandbox, setup=setup)
    return report.passed, report.total
