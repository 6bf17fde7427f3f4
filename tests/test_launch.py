"""Start-up: asked to, the command re-executes itself once under glibc's malloc tunables."""

from __future__ import annotations

import os
import platform
import subprocess
import sys

import pytest

from groupwise.launch import TUNABLES, tuned_environment

GLIBC = platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"


@pytest.mark.skipif(not GLIBC, reason="the tunables are glibc's")
def test_tuned_environment_sets_the_tunables_once_when_asked() -> None:
    env = tuned_environment({"PATH": "/bin", "GROUPWISE_MALLOC": "tuned"})
    assert env == {"PATH": "/bin", "GLIBC_TUNABLES": TUNABLES, "GROUPWISE_MALLOC": "tuned"}
    assert tuned_environment(env) is None  # after the re-exec: no loop
    assert tuned_environment({"PATH": "/bin"}) is None  # off by default
    assert tuned_environment({"GROUPWISE_MALLOC": "default"}) is None
    own = {"GROUPWISE_MALLOC": "tuned", "GLIBC_TUNABLES": "glibc.malloc.arena_max=1"}
    assert tuned_environment(own) is None  # the user's own tunables win


@pytest.mark.skipif(not GLIBC, reason="the tunables are glibc's")
def test_entry_reexecutes_with_the_tunables_and_runs_the_command() -> None:
    code = (
        "import os, sys; sys.argv = ['groupwise', 'tasks'];"
        "print('tunables:', os.environ.get('GLIBC_TUNABLES'), flush=True);"
        "from groupwise.launch import entry; raise SystemExit(entry())"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("GROUPWISE_MALLOC", "GLIBC_TUNABLES")}
    env["GROUPWISE_MALLOC"] = "tuned"
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0] == "tunables: None"  # the first process
    assert lines[1] == f"tunables: {TUNABLES}"  # the re-executed one, which ran the command
    assert any(line.startswith("arithmetic:") for line in lines[2:])
