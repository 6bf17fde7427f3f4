"""Process start-up: glibc malloc tuning, then the command line.

``groupwise`` and ``python -m groupwise`` start here. On glibc, the process re-executes itself
once with two malloc tunables set (they are read only at start-up, and ``mallopt`` caps the
threshold at 32 MB):

- ``glibc.malloc.mmap_threshold`` (1 GiB): by default every allocation above the (dynamic,
  at most 32 MB) threshold is a fresh ``mmap`` that ``munmap`` returns on free, so each step's
  ``[tokens x vocab]`` logits chunks and ``[vocab x hidden]`` gradients page-fault all their
  memory in again (zero-filling a new 57 MB tensor measured 13-19 ms; adding into a warm one
  3 ms). From the heap they are reused warm.
- ``glibc.malloc.trim_threshold`` (4 GiB): setting the first disables glibc's dynamic
  thresholds, which would leave the trim threshold at 128 KB and hand the heap's top back to
  the kernel (and fault it in again) after every step.

Measured on B1 (benchmarks/README.md): ~12.2 vs ~14.0 s per step, same peak RSS. Set
``GROUPWISE_MALLOC=default`` to keep glibc's defaults. Non-glibc platforms are left alone.
"""

from __future__ import annotations

import os
import platform
import sys

TUNABLES = "glibc.malloc.mmap_threshold=1073741824:glibc.malloc.trim_threshold=4294967296"
"""The malloc tunables the command runs under (see the module docstring)."""

_MARKER = "GROUPWISE_MALLOC"


def tuned_environment(environ: dict[str, str]) -> dict[str, str] | None:
    """The environment to re-execute under, or None when no re-exec is needed or wanted.

    None if ``GROUPWISE_MALLOC`` is already set (``tuned`` after our re-exec, ``default`` to opt
    out), if the C library is not glibc, or if the user set ``GLIBC_TUNABLES`` themselves.
    """
    if _MARKER in environ or "GLIBC_TUNABLES" in environ:
        return None
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return None
    return {**environ, "GLIBC_TUNABLES": TUNABLES, _MARKER: "tuned"}


def entry() -> int:
    """Console entry point: re-execute once under the malloc tunables, then run the CLI."""
    env = tuned_environment(dict(os.environ))
    if env is not None:
        argv = [sys.executable, *sys.orig_argv[1:]]  # the same interpreter flags and command
        sys.stdout.flush()
        sys.stderr.flush()
        os.execve(sys.executable, argv, env)  # same pid (torchrun keeps tracking it)
    from groupwise.cli import main

    return main()
