"""groupwise.sandbox.programs are standalone programs: standard library and siblings only, and
they run as the files they are, outside the package (copied alone into a directory).

Also: the sandbox package imports nothing of groupwise outside itself.
"""

from __future__ import annotations

import ast
import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from groupwise.sandbox import programs as programs_package
from groupwise.sandbox.launcher import COPIED_PROGRAMS, default_python

PROGRAMS = Path(programs_package.__file__).parent
SANDBOX = PROGRAMS.parent
SIBLINGS = {p.stem for p in PROGRAMS.glob("*.py") if p.stem != "__init__"}


def _imports(source: str) -> set[str]:
    """Top-level names of the modules ``source`` imports (``.x`` for a relative import of x)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level == 0:
                found.add((node.module or "").split(".")[0])
            elif node.module is not None:
                found.add("." * node.level + node.module)
            else:  # from . import x
                found.update("." * node.level + alias.name for alias in node.names)
    return found


def _foreign(source: str) -> set[str]:
    """What ``source`` imports besides the standard library and the sibling programs."""
    allowed = set(sys.stdlib_module_names) | {"__future__"} | SIBLINGS
    allowed |= {f".{name}" for name in SIBLINGS}
    return _imports(source) - allowed


def test_the_import_check_can_fail() -> None:
    planted = "import numpy\nfrom groupwise.sandbox import limits\nfrom ..launcher import x\n"
    assert _foreign(planted) == {"numpy", "groupwise", "..launcher"}
    assert _foreign("import json\nfrom . import plain_data\nimport plain_data\n") == set()


@pytest.mark.parametrize("path", sorted(PROGRAMS.glob("*.py")), ids=lambda p: p.name)
def test_programs_import_only_the_standard_library_and_siblings(path: Path) -> None:
    assert _foreign(path.read_text(encoding="utf-8")) == set()


def test_the_sandbox_gets_every_program_the_bootstrap_needs() -> None:
    """The siblings the bootstrap imports, transitively, are all copied into the sandbox."""
    needed, todo = set(), ["bootstrap"]
    while todo:
        name = todo.pop()
        needed.add(name)
        source = (PROGRAMS / f"{name}.py").read_text(encoding="utf-8")
        todo += [m.lstrip(".") for m in _imports(source) if m.lstrip(".") in SIBLINGS - needed]
    assert {f"{name}.py" for name in needed} <= set(COPIED_PROGRAMS)


def test_the_sandbox_package_imports_nothing_else_of_groupwise() -> None:
    outside = {
        f"{path.relative_to(SANDBOX)}: {node.module}"
        for path in SANDBOX.rglob("*.py")
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8")))
        if isinstance(node, ast.ImportFrom)
        and node.level == 0
        and (node.module or "").startswith("groupwise")
        and not (node.module or "").startswith("groupwise.sandbox")
    }
    outside |= {
        f"{path.relative_to(SANDBOX)}: {alias.name}"
        for path in SANDBOX.rglob("*.py")
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8")))
        if isinstance(node, ast.Import)
        for alias in node.names
        if alias.name.startswith("groupwise") and not alias.name.startswith("groupwise.sandbox")
    }
    assert outside == set()


def _payload(code: str, setup: str) -> int:
    """A memfd holding the bootstrap's job: no rlimits, no uid change."""
    fd = os.memfd_create("payload")
    os.write(fd, json.dumps({"code": code, "setup": setup, "rlimits": [], "uid": None}).encode())
    os.lseek(fd, 0, os.SEEK_SET)
    return fd


def test_the_programs_run_as_they_are_outside_the_package(tmp_path: Path) -> None:
    """bootstrap.py serves, judge.py judges: the files copied alone into a directory, run by
    the base interpreter with ``-I -S`` (no site-packages, no groupwise), talking directly."""
    for name in SIBLINGS:
        shutil.copyfile(PROGRAMS / f"{name}.py", tmp_path / f"{name}.py")
    python = default_python()
    code = "def add(a, b):\n    return a + b if a != 1 else 0\n"
    job = {"code": code, "setup": "", "tests": ["assert add(2, 3) == 5", "assert add(1, 1) == 2"]}
    judge_end, server_end = socket.socketpair()
    payload = _payload(code, "")
    bootstrap = str(tmp_path / "bootstrap.py")
    server = subprocess.Popen(
        [python, "-I", "-S", "-B", bootstrap, str(payload), str(server_end.fileno())],
        pass_fds=[payload, server_end.fileno()],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=tmp_path,
    )
    os.close(payload)
    server_end.close()
    judge = subprocess.run(
        [python, "-I", "-S", "-B", str(tmp_path / "judge.py"), str(judge_end.fileno()), "20"],
        input=json.dumps(job).encode(),
        pass_fds=[judge_end.fileno()],
        capture_output=True,
        timeout=60,
        check=False,
    )
    judge_end.close()
    out, err = server.communicate(timeout=60)
    assert judge.returncode == 0, judge.stderr.decode()
    assert judge.stdout.decode().splitlines() == ["0:P", "1:F:AssertionError:"]
    assert server.returncode == 0 and (out, err) == (b"", b"")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(f"{n}.py" for n in SIBLINGS)
