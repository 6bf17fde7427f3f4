"""What a sandboxed run may use: :class:`SandboxLimits`, the rlimits the bootstrap applies and
the seccomp filter bwrap installs.

The rlimits (:func:`rlimits`) are set by the bootstrap (``programs/bootstrap.py``) inside the
sandbox, before any untrusted code runs: ``RLIMIT_CPU``, ``RLIMIT_AS``, ``RLIMIT_FSIZE``,
``RLIMIT_CORE=0`` and ``RLIMIT_NPROC`` (counted per real uid and never enforced for uid 0, which
is why the untrusted code never runs as host root; see :mod:`groupwise.sandbox.launcher`).

The seccomp filter (:func:`seccomp_filter`, bwrap ``--seccomp``) refuses with ``EPERM``
``memfd_create``/``memfd_secret`` (memory no rlimit counts) and the kernel keyring calls
(``add_key``, ``request_key``, ``keyctl``: keyrings are not separated by namespaces, so one run
could leave a key for a later run under a reused uid).
"""

from __future__ import annotations

import errno
import math
import os
import struct
from dataclasses import asdict, dataclass


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


def rlimits(limits: SandboxLimits, *, isolated: bool) -> list[tuple[str, int, int]]:
    """The (name, soft, hard) rlimits the bootstrap applies before running untrusted code.

    ``isolated``: the code runs as a sandbox user of its own (bubblewrap), whose process count
    is ``max_processes``; unisolated (unsafe mode) it shares our uid, so ``RLIMIT_NPROC`` is our
    current task count plus ``max_processes`` (and none at all for root, where it is not
    enforced anyway).
    """
    cpu = max(1, math.ceil(limits.cpu_seconds))
    mem = limits.memory_mb << 20
    fsize = limits.max_file_mb << 20
    out = [
        ("RLIMIT_CPU", cpu, cpu + 1),
        ("RLIMIT_AS", mem, mem),
        ("RLIMIT_FSIZE", fsize, fsize),
        ("RLIMIT_CORE", 0, 0),
    ]
    if isolated:
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


# seccomp: syscalls that no test needs and that reach past the sandbox's limits. memfd_create
# and memfd_secret make memory that RLIMIT_AS does not count (an anonymous file, bounded only
# per file by RLIMIT_FSIZE); the key syscalls reach the kernel keyrings, which namespaces do
# not separate (a key stored by one run could be read by a later run under the same uid).
AUDIT_ARCH = {"x86_64": 0xC000003E, "aarch64": 0xC00000B7}
"""``AUDIT_ARCH_*`` of each machine with a table in :data:`DENIED_SYSCALLS`."""
DENIED_SYSCALLS = {
    # memfd_create, memfd_secret, add_key, request_key, keyctl
    "x86_64": (319, 447, 248, 249, 250),
    "aarch64": (279, 447, 217, 218, 219),
}
"""Syscall numbers :func:`seccomp_filter` refuses, per machine (``os.uname().machine``)."""
_X32_SYSCALL_BIT = 0x40000000


def seccomp_filter(machine: str | None = None) -> bytes | None:
    """A classic-BPF seccomp program (``struct sock_filter[]``) for bwrap's ``--seccomp``:
    the denied syscalls fail with ``EPERM`` (on x86-64 the x32 ABI too), everything else is
    allowed. None on an architecture without a table here."""
    machine = machine or os.uname().machine
    if machine not in DENIED_SYSCALLS:
        return None
    ld_abs, jeq, jge, ret = 0x20, 0x15, 0x35, 0x06
    allow, deny = 0x7FFF0000, 0x00050000 | errno.EPERM  # SECCOMP_RET_ALLOW, RET_ERRNO
    denied = DENIED_SYSCALLS[machine]
    n = len(denied)
    prog = [
        (ld_abs, 0, 0, 4),  # seccomp_data.arch
        (jeq, 1, 0, AUDIT_ARCH[machine]),
        (ret, 0, 0, allow),  # another ABI (e.g. 32-bit): nothing of ours to deny there
        (ld_abs, 0, 0, 0),  # seccomp_data.nr
        (jge, n + 1, 0, _X32_SYSCALL_BIT if machine == "x86_64" else 0xFFFFFFFF),
    ]
    prog += [(jeq, n - i, 0, nr) for i, nr in enumerate(denied)]  # -> deny
    prog += [(ret, 0, 0, allow), (ret, 0, 0, deny)]
    return b"".join(struct.pack("<HBBI", *ins) for ins in prog)
