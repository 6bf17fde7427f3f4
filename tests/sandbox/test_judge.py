"""groupwise.sandbox.programs.judge in process: the channel against a scripted server, names, verdicts."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Callable

import pytest

from groupwise.sandbox.programs.judge import Channel, RemoteError, judge, solution_names


def _serve(answer: Callable[[dict[str, object]], bytes]) -> socket.socket:
    """Our end of a socket whose other end answers each request line with ``answer(req)``."""
    ours, theirs = socket.socketpair()

    def loop() -> None:
        reader = theirs.makefile("rb")
        for line in reader:
            try:
                theirs.sendall(answer(json.loads(line)))
            except OSError:
                break
        theirs.close()

    threading.Thread(target=loop, daemon=True).start()
    return ours


def test_answers_decode_and_exceptions_map_to_builtins() -> None:
    def answer(req: dict[str, object]) -> bytes:
        if req["n"] == "ok":
            return b'{"r": {"t": [1, {"s": [2]}]}}\n'
        if req["n"] == "bad":
            return b'{"e": "KeyError", "m": "k"}\n'
        return b'{"e": "SomethingElse", "m": "x"}\n'

    channel = Channel(_serve(answer), time.monotonic() + 5)
    assert channel.call("ok", (), {}) == (1, {2})
    with pytest.raises(KeyError):
        channel.call("bad", (), {})
    with pytest.raises(RemoteError, match="SomethingElse"):
        channel.call("other", (), {})


@pytest.mark.parametrize(
    "reply", [b"not json\n", b'{"r": {"evil": 1}}\n', b"[1, 2]\n", b"x" * (1 << 21)]
)
def test_garbage_fails_the_call(reply: bytes) -> None:
    channel = Channel(_serve(lambda req: reply), time.monotonic() + 5)
    with pytest.raises(RemoteError):
        channel.call("f", (1,), {})


def test_silence_times_out_and_breaks_the_channel() -> None:
    ours, _theirs = socket.socketpair()
    channel = Channel(ours, time.monotonic() + 0.2)
    with pytest.raises(RemoteError, match="timed out"):
        channel.call("f", (), {})
    with pytest.raises(RemoteError):  # later calls fail at once
        channel.call("f", (), {})


def test_solution_names_and_verdicts() -> None:
    code = "import os\ndef add(a, b):\n    return a + b\nclass C: pass\nsub = lambda a, b: a - b\n"
    assert solution_names(code) == ["add", "C", "sub"]
    assert solution_names("def broken(") == []

    def answer(req: dict[str, object]) -> bytes:
        a, b = req["a"]  # type: ignore[misc]
        return (json.dumps({"r": a + b if req["n"] == "add" else a - b}) + "\n").encode()

    verdicts: dict[int, str | None] = {}
    job = {
        "code": code,
        "setup": "import math\n",
        "tests": ["assert add(1, 2) == 3", "assert sub(5, 2) == 4", "assert math.pi > 3"],
    }
    judge(Channel(_serve(answer), time.monotonic() + 5), job, verdicts.__setitem__)
    assert verdicts[0] is None and verdicts[2] is None
    assert verdicts[1] is not None and verdicts[1].startswith("AssertionError")
