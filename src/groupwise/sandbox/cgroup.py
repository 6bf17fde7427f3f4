"""A memory cgroup per sandboxed run, where the machine lets us make one.

``RLIMIT_AS`` bounds each process's address space, so a run of several processes could hold
``max_processes * memory_mb``, and pages of a tmpfs (``/tmp``, ``/dev/shm``) count against no
rlimit at all. A memory cgroup bounds all of them together: every page a process of the run
faults in, anonymous or shared-memory, is charged to the run's cgroup, and past its limit the
kernel reclaims or kills inside the cgroup only.

Where: cgroup v2 with the memory controller (``/sys/fs/cgroup/cgroup.controllers``), or the
v1 memory hierarchy (``/sys/fs/cgroup/memory``), writable by us (root, or a delegated
subtree). Elsewhere (no cgroups, not root, a container without delegation) :func:`create`
returns None and the run keeps its rlimits, the seccomp filter and the tmpfs caps.

A run joins its cgroup before anything of it starts: the command is wrapped in
``sh -c 'echo $$ > cgroup.procs && exec "$@"'``, so bwrap and everything below it are born
inside (no ``preexec_fn``, which is unsafe in the threaded trainer).
"""

from __future__ import annotations

import contextlib
import itertools
import os
import threading
import time
from pathlib import Path

ROOT_V2 = Path("/sys/fs/cgroup")
ROOT_V1 = Path("/sys/fs/cgroup/memory")
_COUNTER = itertools.count()
_LOCK = threading.Lock()
_PARENT: dict[str, Path | None] = {}


class RunCgroup:
    """One run's memory cgroup (``limit_bytes``), removed by :meth:`remove`."""

    def __init__(self, path: Path, version: int) -> None:
        self.path = path
        self.version = version

    def wrap(self, argv: list[str]) -> list[str]:
        """``argv`` started inside this cgroup."""
        procs = str(self.path / "cgroup.procs")
        return ["/bin/sh", "-c", 'echo $$ > "$0" && exec "$@"', procs, *argv]

    def oom_killed(self) -> bool:
        """Whether the kernel killed a process of the run for memory."""
        name = "memory.events" if self.version == 2 else "memory.oom_control"
        with contextlib.suppress(OSError, ValueError):
            for line in (self.path / name).read_text().splitlines():
                key, _, value = line.partition(" ")
                if key == "oom_kill" and int(value) > 0:
                    return True
        return False

    def remove(self) -> None:
        """Delete the cgroup once its processes are gone (a few short retries)."""
        for _ in range(50):
            try:
                self.path.rmdir()
                return
            except FileNotFoundError:
                return
            except OSError:
                time.sleep(0.01)


def _parent(version: int) -> Path | None:
    """``groupwise-sandbox`` under the hierarchy, made once per process (None if we cannot)."""
    key = f"v{version}"
    with _LOCK:
        if key in _PARENT:
            return _PARENT[key]
        path: Path | None = None
        with contextlib.suppress(OSError):
            if version == 2:
                if "memory" in (ROOT_V2 / "cgroup.controllers").read_text().split():
                    base = ROOT_V2 / "groupwise-sandbox"
                    base.mkdir(exist_ok=True)
                    (ROOT_V2 / "cgroup.subtree_control").write_text("+memory")
                    (base / "cgroup.subtree_control").write_text("+memory")
                    path = base
            elif (ROOT_V1 / "memory.limit_in_bytes").exists():
                base = ROOT_V1 / "groupwise-sandbox"
                base.mkdir(exist_ok=True)
                path = base
        _PARENT[key] = path
        return path


def create(limit_bytes: int) -> RunCgroup | None:
    """A fresh cgroup limited to ``limit_bytes`` of memory (no swap), or None if impossible."""
    if os.geteuid() != 0:
        return None
    for version in (2, 1):
        parent = _parent(version)
        if parent is None:
            continue
        path = parent / f"run-{os.getpid()}-{next(_COUNTER)}"
        try:
            path.mkdir()
            if version == 2:
                (path / "memory.max").write_text(str(limit_bytes))
                with contextlib.suppress(OSError):
                    (path / "memory.swap.max").write_text("0")
            else:
                (path / "memory.limit_in_bytes").write_text(str(limit_bytes))
                with contextlib.suppress(OSError):
                    (path / "memory.memsw.limit_in_bytes").write_text(str(limit_bytes))
        except OSError:
            with contextlib.suppress(OSError):
                path.rmdir()
            continue
        return RunCgroup(path, version)
    return None
