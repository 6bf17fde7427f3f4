"""The trusted judge of :func:`groupwise.sandbox.run_tests`: tests run here, not next to the code.

The verdict is computed outside the untrusted process. The solution runs in the sandbox as a
*server*: it executes the setup and the code, then answers calls ``name(*args, **kwargs)`` that
arrive on a socket, one JSON line each, with a JSON line holding the result as plain data
(the sibling module ``plain_data``) or the name of the exception it raised (``bootstrap.py``).
This judge is a separate, trusted process (``python -I -S -B judge.py``, outside the sandbox,
standard library only): it runs the setup and each test in its own namespace, where every
top-level name of the solution is a :class:`RemoteFunction` that forwards its call. A test
passes when its code runs here without an exception, with the builtins' own ``==`` on values
this process built. The judge writes ``"<i>:P"`` or ``"<i>:F:<why>"`` per test to its stdout,
which only the trainer reads.

So a program that fails the tests has nothing to forge: the judge's frames, memory, stdout and
the tests themselves are in another process it cannot see (another pid namespace and uid); its
answers are data, never objects whose ``__eq__`` could lie; exiting early, killing itself,
printing, patching builtins or ``assert`` in its own interpreter only fail the calls that come
after. What it can still do is compute: answering the calls correctly is the only way to pass.

Known limits: only plain data crosses, so tests that need the solution's classes, generators or
other objects, or that check how a function mutated its arguments, fail (they would need the
tests to run next to the code, which is what made the old verdict forgeable).
"""

import ast
import builtins
import json
import os
import socket
import sys
import time
from typing import Any

if __package__:  # imported as groupwise.sandbox.programs.judge
    from .plain_data import decode, encode
else:  # run as a program: python -I puts no directory of ours on sys.path; the codec is beside
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from plain_data import decode, encode  # type: ignore[no-redef]  # the same functions

    del sys.path[0]

MAX_LINE = 1 << 20
"""Longest answer accepted from the solution, in bytes."""


class RemoteError(Exception):
    """The solution's process failed to answer a call (raised, died, timed out, or lied)."""


class Channel:
    """The judge's end of the socket to the solution's server."""

    def __init__(self, sock: socket.socket, deadline: float) -> None:
        self.sock = sock
        self.deadline = deadline
        self.buffer = b""
        self.broken: str | None = None

    def call(self, name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        """``name(*args, **kwargs)`` in the solution's process; its result as plain data."""
        if self.broken is not None:
            raise RemoteError(self.broken)
        request = {"n": name, "a": encode(list(args)), "k": encode(dict(kwargs))}
        try:
            self.sock.sendall(json.dumps(request).encode() + b"\n")
            answer = json.loads(self._read_line())
        except RemoteError:
            raise
        except Exception as exc:  # a closed socket, garbage, nesting: no answer
            self.broken = f"no usable answer from the solution: {type(exc).__name__}"
            raise RemoteError(self.broken) from None
        if type(answer) is not dict:
            raise RemoteError("malformed answer")
        if "r" in answer:
            try:
                return decode(answer["r"])
            except Exception:
                raise RemoteError("the answer is not plain data") from None
        raise _remote_exception(answer.get("e"), answer.get("m"))

    def _read_line(self) -> bytes:
        while b"\n" not in self.buffer:
            remaining = self.deadline - time.monotonic()
            if remaining <= 0:
                self.broken = "the solution timed out"
                raise RemoteError(self.broken)
            self.sock.settimeout(remaining)
            try:
                chunk = self.sock.recv(1 << 16)
            except TimeoutError:
                continue
            if not chunk:
                self.broken = "the solution's process ended"
                raise RemoteError(self.broken)
            self.buffer += chunk
            if len(self.buffer) > MAX_LINE:
                self.broken = "the answer is too long"
                raise RemoteError(self.broken)
        line, self.buffer = self.buffer.split(b"\n", 1)
        return line


def _remote_exception(name: Any, message: Any) -> Exception:
    """The exception the solution reported: a builtin ``Exception`` type by name (so tests may
    expect ``ValueError``), anything else as :class:`RemoteError`."""
    text = str(message)[:500] if message is not None else ""
    cls = getattr(builtins, name, None) if type(name) is str else None
    if isinstance(cls, type) and issubclass(cls, Exception):
        try:
            return cls(text)
        except Exception:
            pass
    return RemoteError(f"{name}: {text}")


class RemoteFunction:
    """A top-level name of the solution, callable in the judge."""

    def __init__(self, name: str, channel: Channel) -> None:
        self.__name__ = name
        self.channel = channel

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.channel.call(self.__name__, args, kwargs)

    def __repr__(self) -> str:
        return f"<solution function {self.__name__}>"


def solution_names(code: str) -> list[str]:
    """Names the solution binds at top level (functions, classes, assignments)."""
    try:
        body = ast.parse(code).body
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return []
    names: list[str] = []
    for node in body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            names.append(node.name)
        elif isinstance(node, ast.Assign | ast.AnnAssign):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names += [t.id for t in targets if isinstance(t, ast.Name)]
    return list(dict.fromkeys(names))


def judge(channel: Channel, job: dict[str, Any], report: Any) -> None:
    """Run ``job``'s setup, then each test, with the solution's names forwarded to it;
    ``report(i, None)`` after a test that passed, ``report(i, why)`` after one that failed."""
    namespace: dict[str, Any] = {"__name__": "__judge__", "__builtins__": builtins}
    try:
        exec(compile(job["setup"], "<setup>", "exec"), namespace)
    except BaseException as exc:
        for i in range(len(job["tests"])):
            report(i, f"the setup raised {_why(exc)}")
        return
    for name in solution_names(job["code"]):
        namespace[name] = RemoteFunction(name, channel)
    for i, test in enumerate(job["tests"]):
        try:
            exec(compile(test, f"<test {i}>", "exec"), namespace)
            report(i, None)
        except BaseException as exc:
            report(i, _why(exc))


def _why(exc: BaseException) -> str:
    """One line: the exception's type and message."""
    try:
        text = f"{type(exc).__name__}: {exc}"
    except Exception:
        text = type(exc).__name__
    return " ".join(text.split())[:300]


def main() -> None:
    """``python -I -S -B judge.py FD SECONDS``: the job as JSON on stdin, verdicts on stdout."""
    sock = socket.socket(fileno=int(sys.argv[1]))
    deadline = time.monotonic() + float(sys.argv[2])
    job = json.loads(sys.stdin.read())
    out = sys.stdout.fileno()

    def report(i: int, why: str | None) -> None:
        line = f"{i}:P" if why is None else f"{i}:F:{why}"
        os.write(out, line.encode("utf-8", "replace") + b"\n")

    judge(Channel(sock, deadline), job, report)


if __name__ == "__main__":
    main()
