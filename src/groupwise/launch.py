"""Process start-up: optional glibc malloc tuning, then the command line.

``groupwise`` and ``python -m groupwise`` start here. With ``GROUPWISE_MALLOC=tuned`` (on glibc)
the process re-executes itself once with two malloc tunables set (they are read only at
start-up, and ``mallopt`` caps the threshold at 32 MB):

- ``glibc.malloc.mmap_threshold`` (1 GiB): by default every allocation above the (dynamic,
  at most 32 MB) threshold is a fresh ``mmap`` that ``munmap`` returns on free, so each step's
  ``[tokens x vocab]`` logits chunks and ``[vocab x hidden]`` gradients page-fault all their
  memory in again (a fresh tensor is many times slower to write than a warm one:
  ``benchmarks/micro_levers.py``). From the heap they are reused warm.
- ``glibc.malloc.trim_threshold`` (4 GiB): setting the first disables glibc's dynamic
  thresholds, which would leave the trim threshold at 128 KB and hand the heap's top back to
  the kernel (and fault it in again) after every step.

Steps get faster, but the default run's peak RSS rises (freed memory stays in the heap,
fragmented by the varying shapes; figures in docs/log.md), which is why it is opt-in. Non-glibc platforms are left alone.
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

    Only when ``GROUPWISE_MALLOC=tuned`` asks for it, the C library is glibc and
    ``GLIBC_TUNABLES`` is not set yet (by the user, or by our own re-exec).
    """
    if environ.get(_MARKER) != "tuned" or "GLIBC_TUNABLES" in environ:
        return None
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return None
    return {**environ, "GLIBC_TUNABLES": TUNABLES}


def entry() -> int:
    """Console entry point: re-execute once under the malloc tunables if asked, then the CLI."""
    env = tuned_environment(dict(os.environ))
    if env is not None:
        argv = [sys.executable, *sys.orig_argv[1:]]  # the same interpreter flags and command
        sys.stdout.flush()
        sys.stderr.flush()
        os.execve(sys.executable, argv, env)  # same pid (torchrun keeps tracking it)
    from groupwise.cli import main

    return main()
