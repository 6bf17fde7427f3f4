"""One sandboxed execution: hand the job to the bootstrap, collect the output, kill, classify.

:func:`execute` gives the bootstrap (``programs/bootstrap.py``) its job in an inherited memfd
(code, setup, rlimits, uid), starts it through a :class:`~groupwise.sandbox.launcher.Launcher`
in a session of its own (inside a memory cgroup where one can be made,
:mod:`groupwise.sandbox.cgroup`), reads at most ``max_output_bytes`` of stdout and of stderr
until EOF or the wall-clock deadline, and then kills the whole process group with
``os.killpg``. No ``preexec_fn`` anywhere: it is documented as unsafe when the parent has
threads (the trainer has many, and :meth:`~groupwise.sandbox.Sandbox.run_many` uses a thread
pool), and it would also limit bwrap itself.

With a ``serve`` callback the sandboxed code serves calls on a socket pair (the judge
protocol, :mod:`groupwise.sandbox.judging`); ``serve`` gets our end while the output is being
collected.
"""

from __future__ import annotations

import contextlib
import json
import os
import selectors
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

from groupwise.sandbox import cgroup as memory_cgroup
from groupwise.sandbox.launcher import (
    COPIED_PROGRAMS,
    UID_POOL,
    Launcher,
    Mode,
    program_source,
    sandbox_env,
)
from groupwise.sandbox.limits import SandboxLimits, rlimits, seccomp_filter

_T = TypeVar("_T")
_EXIT_GRACE = 0.5  # seconds a solution's server has to exit once the judge is done


@dataclass
class ExecResult:
    """Outcome of one sandboxed execution."""

    returncode: int
    """Exit status (bwrap reports death by signal N as 128+N; a kill by the parent is -9)."""
    stdout: str
    """Captured standard output (UTF-8, undecodable bytes replaced), at most the output cap."""
    stderr: str
    """Captured standard error, same rules as ``stdout``."""
    timed_out: bool = False
    """True if the wall-clock timeout or the CPU-time limit ended the run."""
    output_truncated: bool = False
    """True if stdout or stderr exceeded ``max_output_bytes`` (the run was then killed)."""
    killed_reason: str | None = None
    """Why the run was stopped: ``wall_timeout``, ``cpu_limit``, ``output_limit``, ``signal N``."""
    wall_seconds: float = 0.0
    """Wall-clock duration of the run, including sandbox setup and teardown."""

    @property
    def ok(self) -> bool:
        """True if the code exited with status 0 and nothing was killed or truncated."""
        return self.returncode == 0 and self.killed_reason is None and not self.output_truncated


def _data_fd(data: bytes) -> int:
    """A close-on-exec fd positioned at 0 whose content is ``data`` (a memfd if available)."""
    if hasattr(os, "memfd_create"):
        fd = os.memfd_create("groupwise-sandbox", os.MFD_CLOEXEC)
    else:  # pragma: no cover - non-Linux (unsafe mode only)
        with tempfile.TemporaryFile() as f:
            fd = os.dup(f.fileno())
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]
    os.lseek(fd, 0, os.SEEK_SET)
    return fd


def kill_group(proc: subprocess.Popen[bytes]) -> None:
    """SIGKILL the process group of ``proc`` (it is not reaped yet, so the pgid is still ours)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)


def _wait_exited(pid: int, deadline: float) -> bool:
    """Wait (without reaping) until ``pid`` has exited or ``deadline``; True if it exited."""
    delay = 0.0005
    while True:
        try:
            if os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None:
                return True
        except ChildProcessError:
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(min(delay, max(0.0, deadline - time.monotonic())))
        delay = min(delay * 2, 0.01)


def _collect(
    proc: subprocess.Popen[bytes], limits: SandboxLimits, deadline: float
) -> tuple[dict[str, bytes], str | None]:
    """Read stdout/stderr until EOF, a cap, or the deadline, then kill the group.

    Returns the captured bytes per stream and the kill reason (None if the run ended by itself).
    """
    assert proc.stdout is not None and proc.stderr is not None
    streams = {"stdout": proc.stdout.fileno(), "stderr": proc.stderr.fileno()}
    bufs = {name: bytearray() for name in streams}
    reason: str | None = None
    cap = limits.max_output_bytes
    with selectors.DefaultSelector() as sel:
        for name, fd in streams.items():
            os.set_blocking(fd, False)
            sel.register(fd, selectors.EVENT_READ, name)
        while sel.get_map() and reason is None:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                reason = "wall_timeout"
                break
            for key, _ in sel.select(remaining):
                try:
                    chunk = os.read(key.fd, 1 << 16)
                except (BlockingIOError, InterruptedError):
                    continue
                if not chunk:
                    sel.unregister(key.fd)
                    continue
                buf = bufs[key.data]
                if len(buf) + len(chunk) > cap:
                    buf += chunk[: cap - len(buf)]
                    reason = "output_limit"
                    break
                buf += chunk
    if reason is None and not _wait_exited(proc.pid, deadline):
        reason = "wall_timeout"
    kill_group(proc)
    return {k: bytes(v) for k, v in bufs.items()}, reason


def _classify(returncode: int, reason: str | None, mode: Mode) -> str | None:
    """Kill reason from our own verdict or, failing that, from the exit status."""
    if reason is not None:
        return reason
    sig = -returncode if returncode < 0 else 0
    if mode != "unsafe" and returncode > 128:  # bwrap reports a fatal signal N as 128+N
        sig = returncode - 128
    if sig == signal.SIGXCPU:
        return "cpu_limit"
    if sig:
        return f"signal {sig}"
    return None


def execute(
    launcher: Launcher,
    limits: SandboxLimits,
    job: dict[str, Any],
    stdin: str | None,
    serve: Callable[[socket.socket, float], _T] | None = None,
) -> tuple[ExecResult, _T | None]:
    """Run one job (``code``, and ``setup`` with ``serve``; see ``programs/bootstrap.py``).

    With ``serve``, the sandbox answers calls on a socket and ``serve(our_end, deadline)``
    talks to it while the output is collected; its return value comes back beside the
    execution record.
    """
    uid = UID_POOL.acquire() if launcher.needs_pool_uid else None
    job = {
        **job,
        "rlimits": rlimits(limits, isolated=launcher.mode != "unsafe"),
        "uid": uid if launcher.mode == "privileged" else None,
    }
    fds = _RunFds(launcher, job, stdin)
    group = memory_cgroup.create(limits.memory_mb << 20) if launcher.mode == "privileged" else None
    ours, theirs = socket.socketpair() if serve is not None else (None, None)
    workdir = tempfile.mkdtemp(prefix="groupwise-unsafe-") if launcher.mode == "unsafe" else None
    control_fd = theirs.fileno() if theirs else -1
    start = time.monotonic()
    try:
        argv = launcher.argv(limits, fds.payload, control_fd, fds.seccomp, fds.programs)
        proc = subprocess.Popen(
            argv if group is None else group.wrap(argv),
            stdin=fds.stdin,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            pass_fds=[fd for fd in (*fds.passed, control_fd) if fd >= 0],
            start_new_session=True,
            cwd=workdir,
            env=sandbox_env(launcher.python, workdir) if workdir else {},
            **_run_as(uid if launcher.mode == "userns" else None),
        )
    except BaseException:
        _cleanup(fds.owned, theirs, ours, workdir, uid)
        if group is not None:
            group.remove()
        raise
    _cleanup(fds.owned, theirs, None, None, None)
    try:
        data, reason, served = _collect_serving(
            proc, limits, start + limits.wall_seconds, ours, serve
        )
    finally:
        returncode = _reap(proc)
        _cleanup([], None, ours, workdir, uid)
    if group is not None:
        if reason is None and group.oom_killed():
            reason = "memory_limit"
        group.remove()
    return _result(returncode, data, reason, launcher.mode, start), served


class _RunFds:
    """The fds one run reads: the payload, the seccomp program and the programs to copy in
    (bubblewrap only), stdin; all close-on-exec memfds we own until the child has started."""

    def __init__(self, launcher: Launcher, job: dict[str, Any], stdin: str | None) -> None:
        self.payload = _data_fd(json.dumps(job).encode())
        self.owned = [self.payload]
        self.seccomp = -1
        self.programs: dict[str, int] = {}
        if launcher.mode != "unsafe":
            bpf = seccomp_filter()
            if bpf is not None:
                self.seccomp = _data_fd(bpf)
                self.owned.append(self.seccomp)
            self.programs = {name: _data_fd(program_source(name)) for name in COPIED_PROGRAMS}
            self.owned += self.programs.values()
        self.stdin: int = subprocess.DEVNULL
        if stdin is not None:
            self.stdin = _data_fd(stdin.encode("utf-8", "replace"))
            self.owned.append(self.stdin)

    @property
    def passed(self) -> list[int]:
        """The fds the child inherits by number (stdin is dup'ed to 0 by Popen instead)."""
        return [self.payload, self.seccomp, *self.programs.values()]


def _reap(proc: subprocess.Popen[bytes]) -> int:
    """Kill what is left of the run, wait for it and close its pipes; the exit status."""
    if proc.returncode is None:
        kill_group(proc)
    returncode = proc.wait()
    for pipe in (proc.stdout, proc.stderr):
        if pipe is not None:
            pipe.close()
    return returncode


def _result(
    returncode: int, data: dict[str, bytes], reason: str | None, mode: Mode, start: float
) -> ExecResult:
    """The execution record of a finished run."""
    killed = _classify(returncode, reason, mode)
    return ExecResult(
        returncode=returncode,
        stdout=data["stdout"].decode("utf-8", "replace"),
        stderr=data["stderr"].decode("utf-8", "replace"),
        timed_out=killed in ("wall_timeout", "cpu_limit"),
        output_truncated=reason == "output_limit",
        killed_reason=killed,
        wall_seconds=time.monotonic() - start,
    )


def _collect_serving(
    proc: subprocess.Popen[bytes],
    limits: SandboxLimits,
    deadline: float,
    ours: socket.socket | None,
    serve: Callable[[socket.socket, float], _T] | None,
) -> tuple[dict[str, bytes], str | None, _T | None]:
    """:func:`_collect` the output; with ``serve``, meanwhile let it talk to the sandbox."""
    if serve is None or ours is None:
        return (*_collect(proc, limits, deadline), None)
    with ThreadPoolExecutor(max_workers=1) as pool:
        collecting = pool.submit(_collect, proc, limits, deadline)
        try:
            served = serve(ours, deadline)
        finally:
            ours.close()  # the server sees EOF and exits; what it does now counts for nothing
            _wait_exited(proc.pid, min(deadline, time.monotonic() + _EXIT_GRACE))
            kill_group(proc)
        data, reason = collecting.result()
    return data, reason, served


def _run_as(uid: int | None) -> dict[str, Any]:
    """Popen arguments that start bwrap as host ``uid`` (done in C, no ``preexec_fn``)."""
    if uid is None:
        return {}
    return {"user": uid, "group": uid, "extra_groups": []}


def _cleanup(
    fds: list[int],
    child_sock: socket.socket | None,
    parent_sock: socket.socket | None,
    workdir: str | None,
    uid: int | None,
) -> None:
    """Release the per-run resources of :func:`execute`."""
    for fd in fds:
        with contextlib.suppress(OSError):
            os.close(fd)
    for sock in (child_sock, parent_sock):
        if sock is not None:
            sock.close()
    if workdir is not None:
        shutil.rmtree(workdir, ignore_errors=True)
    if uid is not None:
        UID_POOL.release(uid)
