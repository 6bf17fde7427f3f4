"""The trusted program bubblewrap starts: it sets the limits, then runs the untrusted code.

``python -I -B bootstrap.py PAYLOAD_FD CONTROL_FD``. The payload, a JSON object read from the
inherited memfd ``PAYLOAD_FD``, holds the rlimits (``[name, soft, hard]`` triples), the host
uid to switch to (privileged mode; else null) and the code. The bootstrap applies the rlimits,
raises its ``oom_score_adj`` to 1000 (under memory pressure the kernel kills sandboxed code,
not the trainer), drops privileges if asked and only then compiles and executes the untrusted
code, in this same interpreter, as ``__main__`` in a fresh namespace, with ``sys.argv ==
["main.py"]``.

``CONTROL_FD`` -1 is a plain run: the code's exit status and output are the run's. Otherwise
the payload also holds a setup, run before the code, and ``CONTROL_FD`` is a socket on which,
once both ran, the bootstrap *serves calls*: a JSON line ``{"n": name, "a": args, "k":
kwargs}`` in, a JSON line ``{"r": result}`` out, or ``{"e": exception name, "m": message}``
if the call raised. Arguments and results are plain data (the sibling module ``plain_data``).
Whether a test passed is never decided here but by the judge (``judge.py``) in another
process, so nothing the untrusted code does to this interpreter can reach the verdict.

Standard library only. ``plain_data`` is the file next to this one (the sandbox copies both in,
read-only); it is imported before any untrusted code runs.
"""

import contextlib
import os
import sys
from typing import Any


def read_all(fd: int) -> bytes:
    """Everything ``fd`` holds, up to EOF."""
    chunks: list[bytes] = []
    while True:
        chunk = os.read(fd, 1 << 20)
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)


def load_codec() -> Any:
    """The sibling module ``plain_data`` (run as a program, ``python -I`` puts no directory of
    ours on ``sys.path``, so this file's own directory is added for the import, then removed)."""
    if __package__:  # imported as groupwise.sandbox.programs.bootstrap
        from . import plain_data

        return plain_data
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    try:
        import plain_data  # type: ignore[no-redef]  # the same module, found as a program
    finally:
        del sys.path[0]
    return plain_data


def setup() -> tuple[dict[str, Any], int]:
    """Read the payload, apply its limits and uid; returns (payload, control fd)."""
    import json
    import resource

    pfd, cfd = int(sys.argv[1]), int(sys.argv[2])
    cfg = json.loads(read_all(pfd))
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


def print_exception(exc: BaseException, skip: int) -> None:
    """The traceback of ``exc`` on stderr without its first ``skip`` frames (the bootstrap's)."""
    import traceback

    tb = exc.__traceback__
    for _ in range(skip):
        tb = tb.tb_next if tb is not None else None
    with contextlib.suppress(BaseException):
        traceback.print_exception(type(exc), exc, tb)


def flush() -> None:
    """Flush stdout and stderr, whatever the code did to them."""
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(BaseException):
            stream.flush()


def answer(namespace: dict[str, Any], line: bytes, codec: Any) -> bytes:
    """The answer line to one call line: the result as plain data, or the exception's name."""
    import json

    try:
        req = json.loads(line)
        func = namespace[req["n"]]
        out = {"r": codec.encode(func(*codec.decode(req["a"]), **codec.decode(req["k"])))}
        return (json.dumps(out) + "\n").encode()
    except BaseException as e:
        try:
            out = {"e": type(e).__name__, "m": str(e)[:500]}
        except BaseException:
            out = {"e": "Exception", "m": ""}
        return (json.dumps(out) + "\n").encode()


def serve(namespace: dict[str, Any], cfd: int, codec: Any) -> None:
    """Answer calls on ``cfd`` until the judge closes its end."""
    reader = os.fdopen(cfd, "rb", buffering=1 << 16, closefd=False)
    while True:
        line = reader.readline()
        if not line:
            return
        data = answer(namespace, line, codec)
        while data:
            data = data[os.write(cfd, data) :]


def main() -> None:
    """Set the limits, run the code (and the setup), then serve calls if asked to."""
    codec = load_codec() if int(sys.argv[2]) >= 0 else None
    cfg, cfd = setup()
    import builtins
    import linecache

    g = {"__name__": "__main__", "__builtins__": builtins, "__doc__": None}
    compile_, exec_, exit_ = compile, exec, os._exit

    def run(src: str, name: str) -> None:
        linecache.cache[name] = (len(src), None, src.splitlines(True), name)
        exec_(compile_(src, name, "exec"), g)

    if codec is None:
        try:
            run(cfg.pop("code"), "main.py")
        except SystemExit:
            raise
        except BaseException as e:
            print_exception(e, 2)
            flush()
            exit_(1)
        return
    for name, src in (("<setup>", cfg.pop("setup")), ("main.py", cfg.pop("code"))):
        try:
            run(src, name)
        except BaseException as e:
            print_exception(e, 2)
            flush()
            exit_(1)
    serve(g, cfd, codec)
    flush()
    exit_(0)


if __name__ == "__main__":
    main()
