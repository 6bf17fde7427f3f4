"""Tests of groupwise.sandbox: hostile programs must be contained and the host left unharmed.

Every hostile program runs under small limits (see ``LIMITS``) so that the whole file stays fast
and nothing can hurt the shared machine even if containment failed.
"""

from __future__ import annotations

import errno
import hashlib
import os
import secrets
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from groupwise.sandbox import (
    ExecResult,
    Sandbox,
    SandboxLimits,
    SandboxUnavailableError,
    run_tests,
    run_tests_detailed,
)
from groupwise.sandbox import box as box_mod
from groupwise.sandbox import limits as limits_mod
from groupwise.sandbox import programs as programs_package

LIMITS = SandboxLimits(
    cpu_seconds=2,
    wall_seconds=4,
    memory_mb=256,
    max_processes=16,
    max_file_mb=16,
    max_output_bytes=100_000,
    tmpfs_mb=32,
)
PROJECT_DIR = Path(__file__).resolve().parents[2]
AVAILABLE, REASON = Sandbox.available()


@pytest.fixture(scope="module")
def sandbox() -> Sandbox:
    """A real bubblewrap sandbox with the small test limits (skips if bwrap cannot work here)."""
    if not AVAILABLE:
        pytest.skip(f"bubblewrap sandbox unavailable: {REASON}")
    return Sandbox(LIMITS)


def _tagged_processes(tag: str) -> list[int]:
    """Host pids whose command name (``/proc/PID/comm``) is ``tag``."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if Path(f"/proc/{entry}/comm").read_text().strip() == tag:
                    found.append(int(entry))
            except OSError:
                continue
    return found


def _wait_gone(tag: str, timeout: float = 5.0) -> list[int]:
    """Wait until no host process carries ``tag``; returns the survivors (empty = all gone)."""
    deadline = time.monotonic() + timeout
    while (left := _tagged_processes(tag)) and time.monotonic() < deadline:
        time.sleep(0.05)
    return left


def _host_process_count() -> int:
    """Number of processes visible in the host's /proc."""
    return sum(1 for entry in os.listdir("/proc") if entry.isdigit())


# --------------------------------------------------------------------------- basics


def test_available_and_basic_run(sandbox: Sandbox) -> None:
    assert AVAILABLE, REASON
    assert sandbox.mode in ("privileged", "userns")
    code = (
        "import os, sys\n"
        "print(os.getcwd(), os.getuid() != 0, sorted(os.environ))\n"
        "print(input()[::-1])\n"
        "sys.exit(3)\n"
    )
    result = sandbox.run_python(code, stdin="olleh\n")
    assert result.returncode == 3, result.stderr
    cwd, not_root, env = result.stdout.splitlines()[0].split(" ", 2)
    assert (cwd, not_root) == ("/tmp", "True")
    assert set(eval(env)) <= {"HOME", "LANG", "PATH", "PWD", "PYTHONDONTWRITEBYTECODE"}
    assert result.stdout.splitlines()[1] == "hello"
    assert not result.timed_out and result.killed_reason is None
    assert "Traceback" in sandbox.run_python("1/0").stderr


def test_filesystem_is_minimal(sandbox: Sandbox) -> None:
    code = (
        "import os\n"
        "print(sorted(os.listdir('/')))\n"
        "print([p for p in ('/work', '/etc/passwd', '/root/.bashrc') if os.path.exists(p)])\n"
    )
    result = sandbox.run_python(code)
    assert result.returncode == 0, result.stderr
    top, visible = result.stdout.splitlines()
    allowed = {"bin", "dev", "groupwise", "lib", "lib64", "proc", "root", "tmp", "usr"}
    assert set(eval(top)) <= allowed
    assert visible == "[]"


def test_programs_are_read_only_copies(sandbox: Sandbox) -> None:
    """The bootstrap and its codec are in the sandbox byte for byte, and stay as they are."""
    code = (
        "import hashlib, os\n"
        "for name in sorted(os.listdir('/groupwise')):\n"
        "    p = '/groupwise/' + name\n"
        "    print(name, hashlib.sha256(open(p, 'rb').read()).hexdigest())\n"
        "    for change in (lambda: open(p, 'a'), lambda: os.chmod(p, 0o666),\n"
        "                   lambda: os.unlink(p), lambda: os.rename(p, '/tmp/x'),\n"
        "                   lambda: open('/groupwise/new.py', 'w')):\n"
        "        try:\n"
        "            change()\n"
        "            print('changed', p)\n"
        "        except OSError:\n"
        "            pass\n"
    )
    result = sandbox.run_python(code)
    assert result.returncode == 0, result.stderr
    programs = Path(programs_package.__file__).parent
    expected = [
        f"{name} {hashlib.sha256((programs / name).read_bytes()).hexdigest()}"
        for name in ("bootstrap.py", "plain_data.py")
    ]
    assert result.stdout.splitlines() == expected


# --------------------------------------------------------------------------- hostile programs


def test_infinite_loop_hits_cpu_limit() -> None:
    if not AVAILABLE:
        pytest.skip(REASON)
    # a generous wall limit, so that the CPU limit wins even on a busy machine
    box = Sandbox(SandboxLimits(cpu_seconds=1, wall_seconds=8))
    result = box.run_python("while True:\n    pass\n")
    assert result.timed_out
    assert result.killed_reason == "cpu_limit"
    assert result.wall_seconds < 8


def test_sleeping_program_hits_wall_timeout() -> None:
    if not AVAILABLE:
        pytest.skip(REASON)
    quick = Sandbox(SandboxLimits(wall_seconds=1.5, cpu_seconds=1))
    result = quick.run_python("import time\nprint('start', flush=True)\ntime.sleep(60)\n")
    assert result.timed_out and result.killed_reason == "wall_timeout"
    assert result.stdout == "start\n"
    assert result.wall_seconds < 3


def test_background_daemon_does_not_survive(sandbox: Sandbox) -> None:
    tag = "gwd" + secrets.token_hex(4)
    code = (
        "import os, time\n"
        "if os.fork() == 0:\n"
        "    os.setsid()\n"
        "    if os.fork() == 0:\n"
        f"        open('/proc/self/comm', 'w').write({tag!r})\n"
        "        os.close(1); os.close(2)\n"
        "        time.sleep(60)\n"
        "    os._exit(0)\n"
        "time.sleep(0.3)\n"
    )
    result = sandbox.run_python(code)
    assert result.returncode == 0, result.stderr
    assert _wait_gone(tag) == []


def test_fork_bomb_is_contained(sandbox: Sandbox) -> None:
    tag = "gwb" + secrets.token_hex(4)
    before = _host_process_count()
    code = (
        "import os, time\n"
        f"open('/proc/self/comm', 'w').write({tag!r})\n"  # inherited by every child
        "kids = 0\n"
        "try:\n"
        "    while True:\n"
        "        if os.fork() == 0:\n"
        "            time.sleep(60)\n"
        "            os._exit(0)\n"
        "        kids += 1\n"
        "except OSError as e:\n"
        "    print('blocked after', kids, e.errno, flush=True)\n"
        "while True:\n"
        "    try:\n"
        "        os.fork()\n"
        "    except OSError:\n"
        "        pass\n"
    )
    peak = [0]
    stop = threading.Event()

    def watch() -> None:  # host-side view: how many bomb processes exist at once
        while not stop.is_set():
            peak[0] = max(peak[0], len(_tagged_processes(tag)))
            time.sleep(0.05)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        result = sandbox.run_python(code)
    finally:
        stop.set()
        watcher.join()
    first = result.stdout.splitlines()[0].split()
    assert first[:2] == ["blocked", "after"], result.stdout + result.stderr
    assert int(first[2]) < LIMITS.max_processes
    assert int(first[3]) == errno.EAGAIN  # fork refused by RLIMIT_NPROC
    assert result.timed_out
    assert 0 < peak[0] <= LIMITS.max_processes
    assert _wait_gone(tag) == []  # no leftover process
    deadline = time.monotonic() + 5  # the machine is shared: allow unrelated churn to settle
    while _host_process_count() > before + 5 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _host_process_count() <= before + 5


def test_memory_hog_gets_memory_error(sandbox: Sandbox) -> None:
    for code in (
        "x = bytearray(4 << 30)\n",
        "xs = []\nwhile True:\n    xs.append(b'x' * (8 << 20))\n",
    ):
        result = sandbox.run_python(code)
        assert result.returncode == 1
        assert "MemoryError" in result.stderr
        assert result.wall_seconds < LIMITS.wall_seconds


def test_huge_write_to_tmp_is_capped(sandbox: Sandbox) -> None:
    one_file = (
        "written = 0\n"
        "try:\n"
        "    with open('/tmp/big', 'wb') as f:\n"
        "        for _ in range(1024):\n"
        "            f.write(b'x' * (1 << 20)); f.flush(); written += 1\n"
        "except OSError as e:\n"
        "    print(written, e.errno)\n"
    )
    result = sandbox.run_python(one_file)  # 1 GB in one file: RLIMIT_FSIZE (EFBIG)
    written, errno = map(int, result.stdout.split())
    assert written <= LIMITS.max_file_mb and errno == 27
    many_files = (
        "written = 0\n"
        "try:\n"
        "    for i in range(100):\n"
        "        with open(f'/tmp/f{i}', 'wb') as f:\n"
        "            for _ in range(10):\n"
        "                f.write(b'x' * (1 << 20)); f.flush(); written += 1\n"
        "except OSError as e:\n"
        "    print(written, e.errno)\n"
    )
    result = sandbox.run_python(many_files)  # 1 GB over many files: tmpfs size (ENOSPC)
    written, errno = map(int, result.stdout.split())
    assert written <= LIMITS.tmpfs_mb and errno == 28


def test_writes_to_home_and_project_do_not_reach_host(sandbox: Sandbox) -> None:
    name = f"groupwise_sandbox_{secrets.token_hex(4)}"
    targets = [Path.home() / name, PROJECT_DIR / name, Path("/work") / name, Path("/") / name]
    code = "import sys\nfor p in sys.argv[1:] or %r:\n" % [str(t) for t in targets]
    code += "    try:\n        open(p, 'w').write('pwned'); print('wrote', p)\n"
    code += "    except OSError as e:\n        print('failed', p, e.errno)\n"
    result = sandbox.run_python(code)
    assert result.returncode == 0, result.stderr
    assert "wrote" not in result.stdout
    assert result.stdout.count("failed") == len(targets)
    for target in targets:
        assert not target.exists(), target


def test_parent_environment_is_not_visible(
    sandbox: Sandbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GROUPWISE_SECRET", "xyz")
    code = (
        "import os, glob\n"
        "print(os.environ.get('GROUPWISE_SECRET'))\n"
        "leaks = []\n"
        "for f in glob.glob('/proc/*/environ'):\n"
        "    try:\n"
        "        leaks += [f] if b'GROUPWISE_SECRET' in open(f, 'rb').read() else []\n"
        "    except OSError:\n"
        "        pass\n"
        "print(leaks)\n"
    )
    result = sandbox.run_python(code)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "None\n[]\n"


def test_no_network_to_host_loopback(sandbox: Sandbox) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as server:
        server.bind(("127.0.0.1", 0))
        server.listen(8)
        server.setblocking(False)
        port = server.getsockname()[1]
        code = (
            "import socket\n"
            "try:\n"
            f"    socket.create_connection(('127.0.0.1', {port}), timeout=1)\n"
            "    print('connected')\n"
            "except OSError as e:\n"
            "    print('refused', type(e).__name__)\n"
        )
        result = sandbox.run_python(code)
        assert result.stdout.startswith("refused"), result.stdout + result.stderr
        with pytest.raises(BlockingIOError):
            server.accept()  # nothing reached the host's listener


def test_stdout_flood_is_truncated_quickly(sandbox: Sandbox) -> None:
    code = (
        "import sys\nchunk = 'x' * (1 << 20)\nfor _ in range(100):\n    sys.stdout.write(chunk)\n"
    )
    result = sandbox.run_python(code)  # 100 MB
    assert result.output_truncated and result.killed_reason == "output_limit"
    assert len(result.stdout) == LIMITS.max_output_bytes
    assert result.wall_seconds < 2
    result = sandbox.run_python(code.replace("stdout", "stderr"))
    assert result.output_truncated and len(result.stderr) == LIMITS.max_output_bytes


def test_extra_read_only_paths(tmp_path: Path) -> None:
    if not AVAILABLE:
        pytest.skip(REASON)
    (tmp_path / "helper_mod.py").write_text("VALUE = 42\n")
    tmp_path.chmod(0o755)  # the sandbox user is not the owner: it needs "other" permissions
    box = Sandbox(LIMITS, extra_ro_paths=[str(tmp_path)])
    code = (
        "import sys\n"
        f"sys.path.insert(0, {str(tmp_path)!r})\n"
        "import helper_mod\n"
        "print(helper_mod.VALUE)\n"
        f"open({str(tmp_path / 'new.txt')!r}, 'w')\n"
    )
    result = box.run_python(code)
    assert result.stdout == "42\n", result.stderr
    assert "Read-only file system" in result.stderr
    assert not (tmp_path / "new.txt").exists()


# --------------------------------------------------------------------------- run_tests

SOLUTION = "def add(a, b):\n    return a + b\n"
TESTS = ["assert add(1, 2) == 3", "assert add(-1, 1) == 0", "assert add('a', 'b') == 'ab'"]


def test_run_tests_correct_and_wrong(sandbox: Sandbox) -> None:
    assert run_tests(SOLUTION, TESTS, sandbox=sandbox) == (3, 3)
    wrong = "def add(a, b):\n    return a * b\n"
    assert run_tests(wrong, TESTS, sandbox=sandbox) == (0, 3)
    partly = "def add(a, b):\n    return a + b if a != 1 else 0\n"
    assert run_tests(partly, TESTS, sandbox=sandbox) == (2, 3)
    report = run_tests_detailed(partly, TESTS, sandbox=sandbox)
    assert report.results == [False, True, True]
    assert report.failures == ["test 0: AssertionError:"]  # the judge's reason, not the code's


def test_run_tests_string_setup_and_per_test_isolation(sandbox: Sandbox) -> None:
    script = (
        "import math\nassert add(1, 1) == 2\nx = 3\nassert add(x, 1) == 5\nassert add(0, 0) == 0\n"
    )
    assert run_tests(SOLUTION, script, sandbox=sandbox) == (2, 3)
    tests = ["assert add(1, 1) == 2", "raise SystemExit(0)", "assert add(2, 2) == 4"]
    assert run_tests(SOLUTION, tests, sandbox=sandbox) == (2, 3)  # a test's exit() is its own fail
    with_setup = "def add(a, b):\n    return helper(a) + b\n"
    assert run_tests(with_setup, TESTS[:2], sandbox=sandbox, setup="helper = int\n") == (2, 2)
    assert run_tests(SOLUTION, [], sandbox=sandbox) == (0, 0)


@pytest.mark.parametrize(
    "code",
    [
        "def add(a, b)\n    return a + b\n",  # syntax error
        SOLUTION + "exit()\n",
        SOLUTION + "import sys\nsys.exit(0)\n",
        SOLUTION + "import os\nos._exit(0)\n",
        SOLUTION + "raise ValueError('boom')\n",
    ],
    ids=["syntax-error", "exit", "sys-exit", "os-exit", "raises"],
)
def test_run_tests_broken_solution_scores_zero(sandbox: Sandbox, code: str) -> None:
    assert run_tests(code, TESTS, sandbox=sandbox) == (0, 3)


def test_run_tests_forged_markers_do_not_count(sandbox: Sandbox) -> None:
    forge = (
        "import os, sys\n"
        "for i in range(3):\n"
        "    print(f'PASS {i}')\n"
        "    for fd in range(3, 20):\n"
        "        try:\n"
        "            os.write(fd, b'0' * 32 + b':%d:P\\n' % i)\n"
        "        except OSError:\n"
        "            pass\n"
        "def add(a, b):\n    return None\n"
    )
    assert run_tests(forge, TESTS, sandbox=sandbox) == (0, 3)


def test_run_tests_timeout_keeps_earlier_results(sandbox: Sandbox) -> None:
    tests = ["assert add(1, 2) == 3", "while True:\n    pass", "assert add(2, 2) == 4"]
    report = run_tests_detailed(SOLUTION, tests, sandbox=sandbox)
    assert (report.passed, report.total) == (1, 3)
    assert report.exec_result is not None and report.exec_result.timed_out


def test_run_many_in_parallel(sandbox: Sandbox) -> None:
    codes = [f"print({i} * {i})" for i in range(8)] + ["while True:\n    pass\n"]
    start = time.monotonic()
    results = sandbox.run_many(codes, max_workers=4)
    elapsed = time.monotonic() - start
    assert [r.stdout.strip() for r in results[:8]] == [str(i * i) for i in range(8)]
    assert all(isinstance(r, ExecResult) and r.ok for r in results[:8])
    assert results[8].timed_out
    assert elapsed < LIMITS.wall_seconds + 2  # the slow one does not serialise the others
    assert sandbox.run_many([], max_workers=2) == []


# --------------------------------------------------------------------------- unsafe / unavailable


def test_unavailable_sandbox_raises_with_hint() -> None:
    ok, reason = Sandbox.available(bwrap="/nonexistent/bwrap")
    assert not ok and "/nonexistent/bwrap" in reason
    with pytest.raises(SandboxUnavailableError, match=r"unsafe=True"):
        Sandbox(bwrap="/nonexistent/bwrap")


@pytest.fixture
def fresh_unsafe_warning(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Reset the warn-once flag so the unsafe-mode warning is observable."""
    monkeypatch.setattr(box_mod, "_UNSAFE_WARNED", False)
    yield


def test_unsafe_mode_has_limits_but_warns(
    fresh_unsafe_warning: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GROUPWISE_SECRET", "xyz")
    with pytest.warns(RuntimeWarning, match="WITHOUT isolation"):
        unsafe = Sandbox(SandboxLimits(cpu_seconds=1, wall_seconds=8, memory_mb=256), unsafe=True)
    assert unsafe.mode == "unsafe"
    result = unsafe.run_python("import os\nprint(os.environ.get('GROUPWISE_SECRET'))")
    assert result.stdout == "None\n"
    assert unsafe.run_python("while True:\n    pass\n").killed_reason == "cpu_limit"
    assert "MemoryError" in unsafe.run_python("x = bytearray(1 << 30)").stderr
    assert run_tests(SOLUTION, TESTS, sandbox=unsafe) == (3, 3)
    assert run_tests(SOLUTION + "exit()\n", TESTS, sandbox=unsafe) == (0, 3)


def test_limits_are_validated() -> None:
    with pytest.raises(ValueError, match="memory_mb"):
        SandboxLimits(memory_mb=0)


# ---------------------------------------------------------------------------- forging a verdict
# Each program gets add() wrong (or not at all) and tries to pass anyway; the tests run in the
# trusted judge process, so every attempt must score 0 of 3.
FORGERIES = {
    "walk-the-stack-and-write-markers": (
        "import os, sys\n"
        "def add(a, b):\n"
        "    f = sys._getframe()\n"
        "    while f is not None:\n"
        "        for v in list(f.f_locals.values()) + list(f.f_globals.values()):\n"
        "            if isinstance(v, (bytes, str)) and len(v) == 32:\n"
        "                for fd in range(64):\n"
        "                    for i in range(3):\n"
        "                        try:\n"
        "                            os.write(fd, (v if isinstance(v, bytes) else v.encode())"
        " + b':%d:P\\n' % i)\n"
        "                        except OSError:\n"
        "                            pass\n"
        "        f = f.f_back\n"
        "    for fd in range(64):\n"
        "        try:\n"
        "            os.write(fd, b'0:P\\n1:P\\n2:P\\n')\n"
        "        except OSError:\n"
        "            pass\n"
        "    return None\n"
    ),
    "gc-and-patch-the-harness": (
        "import gc, builtins\n"
        "for o in gc.get_objects():\n"
        "    if isinstance(o, dict) and 'tests' in o:\n"
        "        o['tests'] = ['pass'] * 3\n"
        "builtins.AssertionError = type('Fine', (Exception,), {})\n"
        "def add(a, b):\n    return 7\n"
    ),
    "always-equal-object": (
        "class Yes:\n    def __eq__(self, other):\n        return True\n"
        "def add(a, b):\n    return Yes()\n"
    ),
    "int-subclass-that-agrees": (
        "class Int(int):\n    def __eq__(self, other):\n        return True\n"
        "    __hash__ = int.__hash__\n"
        "def add(a, b):\n    return Int(0)\n"
    ),
    "exit-before-the-tests": "import os\ndef add(a, b):\n    os._exit(0)\n",
    "sys-exit-at-import": "import sys\ndef add(a, b):\n    return 0\nsys.exit(0)\n",
    "sys-exit-between-tests": (
        "import sys\ncalls = []\n"
        "def add(a, b):\n    calls.append(1)\n    if len(calls) > 1:\n        sys.exit(0)\n"
        "    return 7\n"
    ),
    "os-exit-between-tests": (
        "import os\ncalls = []\n"
        "def add(a, b):\n    calls.append(1)\n    if len(calls) > 1:\n        os._exit(0)\n"
        "    return 7\n"
    ),
    "printed-markers": (
        "for i in range(3):\n    print(f'{i}:P')\n    print('PASS', i, flush=True)\n"
        "def add(a, b):\n    print('0:P\\n1:P\\n2:P')\n    return None\n"
    ),
    "forge-answers-ahead-on-every-fd": (
        "import os, json\n"
        "for fd in range(3, 64):\n"
        "    try:\n"
        "        os.write(fd, b'{\"r\": true}\\n' * 10)\n"
        "    except OSError:\n"
        "        pass\n"
        "def add(a, b):\n    return -1\n"
    ),
    "kill-everything": (
        "import os, signal\n"
        "def add(a, b):\n"
        "    for pid in (0, -1, 1, os.getppid()):\n"
        "        try:\n"
        "            os.kill(pid, signal.SIGKILL)\n"
        "        except OSError:\n"
        "            pass\n"
        "    return None\n"
    ),
    "deeply-nested-answer": "def add(a, b):\n    x = []\n    for _ in range(100000):\n        x = [x]\n    return x\n",
}


@pytest.mark.parametrize("code", list(FORGERIES.values()), ids=list(FORGERIES))
def test_a_failing_program_cannot_forge_a_pass(sandbox: Sandbox, code: str) -> None:
    report = run_tests_detailed(code, TESTS, sandbox=sandbox)
    assert (report.passed, report.total) == (0, 3), report.failures


def test_the_judge_sees_plain_values_and_exceptions(sandbox: Sandbox) -> None:
    """Tuples, sets, dicts, bytes and floats cross as themselves; a test may expect the
    solution's exception by its builtin type."""
    code = (
        "def f(x):\n"
        "    if x is None:\n"
        "        raise ValueError('no x')\n"
        "    return (x, {x}, {'k': [x, 1.5]}, b'\\x00', float('inf'))\n"
    )
    tests = [
        "assert f(2) == (2, {2}, {'k': [2, 1.5]}, b'\\x00', float('inf'))",
        "assert type(f(2)) is tuple and type(f(2)[1]) is set",
        "try:\n    f(None)\n    raise AssertionError('no error')\nexcept ValueError as e:\n"
        "    assert str(e) == 'no x'",
        "assert f(3) == (2, {2}, {'k': [2, 1.5]}, b'\\x00', float('inf'))",
    ]
    report = run_tests_detailed(code, tests, sandbox=sandbox)
    assert report.results == [True, True, True, False], report.failures


# ---------------------------------------------------------------------------- limits that hold
def _run_bpf(program: bytes, arch: int, nr: int) -> int:
    """Interpret the few classic-BPF instructions seccomp_filter emits (ld abs, jeq, jge, ret)."""
    import struct

    ins = [struct.unpack("<HBBI", program[i : i + 8]) for i in range(0, len(program), 8)]
    data = {0: nr, 4: arch}
    acc, pc = 0, 0
    while True:
        code, jt, jf, k = ins[pc]
        if code == 0x20:
            acc, pc = data[k], pc + 1
        elif code in (0x15, 0x35):
            hit = acc == k if code == 0x15 else acc >= k
            pc = pc + 1 + (jt if hit else jf)
        else:
            assert code == 0x06
            return k


@pytest.mark.parametrize("machine", ["x86_64", "aarch64"])
def test_seccomp_filter_denies_exactly_its_syscalls(machine: str) -> None:
    program = limits_mod.seccomp_filter(machine)
    assert program is not None
    arch = limits_mod.AUDIT_ARCH[machine]
    denied = set(limits_mod.DENIED_SYSCALLS[machine])
    eperm = 0x00050000 | errno.EPERM
    for nr in range(0, 460):
        want = eperm if nr in denied else 0x7FFF0000
        assert _run_bpf(program, arch, nr) == want, nr
    if machine == "x86_64":  # the x32 ABI's numbers are refused outright
        assert _run_bpf(program, arch, 0x40000000 + 39) == eperm
    assert _run_bpf(program, 0x40000003, 319) == 0x7FFF0000  # another ABI: not ours to judge
    assert limits_mod.seccomp_filter("sparc") is None


def test_memfd_and_keyrings_are_refused(sandbox: Sandbox) -> None:
    code = (
        "import ctypes, os\n"
        "libc = ctypes.CDLL(None, use_errno=True)\n"
        "try:\n    os.memfd_create('x')\n    print('memfd ok')\n"
        "except OSError as e:\n    print('memfd', e.errno)\n"
        "r = libc.syscall(248, b'user', b'gw', b'secret', 6, -4)\n"  # add_key (x86-64)
        "print('add_key', r, ctypes.get_errno())\n"
    )
    if os.uname().machine != "x86_64":
        pytest.skip("the add_key number above is x86-64's")
    result = sandbox.run_python(code)
    assert result.stdout.split("\n")[:2] == [f"memfd {errno.EPERM}", f"add_key -1 {errno.EPERM}"]


def test_memory_bound_holds_across_processes_and_tmpfs(sandbox: Sandbox) -> None:
    """Four processes holding 100 MB each, under memory_mb=256: the run's memory cgroup lets
    at most two of them hold it (RLIMIT_AS alone, per process, would let all four)."""
    from groupwise.sandbox import cgroup as memory_cgroup

    group = memory_cgroup.create(1 << 20) if sandbox.mode == "privileged" else None
    if group is None:
        pytest.skip("no writable memory cgroup here: the bound is per process (RLIMIT_AS)")
    group.remove()
    code = (
        "import os, signal, time\n"
        "kids = []\n"
        "for i in range(4):\n"
        "    pid = os.fork()\n"
        "    if pid == 0:\n"
        "        b = bytearray(100 << 20)\n"
        "        for j in range(0, len(b), 4096):\n"
        "            b[j] = 1\n"
        "        time.sleep(60)\n"
        "    kids.append(pid)\n"
        "time.sleep(2.5)\n"
        "alive = [k for k in kids if os.waitpid(k, os.WNOHANG) == (0, 0)]\n"
        "print('alive', len(alive), flush=True)\n"
        "for k in kids:\n"
        "    os.kill(k, signal.SIGKILL)\n"
    )
    result = sandbox.run_python(code)
    alive = int(result.stdout.split()[-1])
    assert alive <= 2 and result.killed_reason == "memory_limit", result
