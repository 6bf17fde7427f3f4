"""Per-execution overhead of groupwise.sandbox, and throughput with parallel workers.

Prints the median wall time of running ``pass`` in the sandbox versus a plain
``python -c pass`` subprocess (same interpreter, runs alternated so that machine noise hits
both alike) and their ratio; the unsafe mode (same bootstrap and rlimits, no bubblewrap) is
shown as a breakdown.  Then it runs a batch of small programs through ``Sandbox.run_many``
with several worker counts and prints executions per second.

Usage: python benchmarks/sandbox_overhead.py [--runs 30] [--jobs 40] [--workers 1,2,4]
    [--result NAME]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path

from groupwise.sandbox import Sandbox, run_tests

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness

SOLUTION = "def add(a, b):\n    return a + b\n"
TESTS = [f"assert add({i}, {i + 1}) == {2 * i + 1}" for i in range(10)]


def _time_ms(fn: Callable[[], object]) -> float:
    """Wall time of one call of ``fn`` in milliseconds."""
    start = time.perf_counter()
    fn()
    return (time.perf_counter() - start) * 1000


def overhead(sandbox: Sandbox, unsafe: Sandbox, runs: int) -> dict[str, float]:
    """Print median wall ms of plain, unsafe-mode and sandboxed ``pass``, alternating."""
    python = sandbox.python
    plain = lambda: subprocess.run([python, "-c", "pass"], check=True)  # noqa: E731
    boxed = lambda: sandbox.run_python("pass")  # noqa: E731
    bare = lambda: unsafe.run_python("pass")  # noqa: E731
    tested = lambda: run_tests(SOLUTION, TESTS, sandbox=sandbox)  # noqa: E731
    for fn in (plain, boxed, bare, tested):  # warm-up (page cache, probe)
        fn()
    assert tested() == (len(TESTS), len(TESTS))
    samples: dict[str, list[float]] = {"plain": [], "unsafe": [], "sandbox": [], "tests": []}
    for _ in range(runs):
        samples["plain"].append(_time_ms(plain))
        samples["sandbox"].append(_time_ms(boxed))
        samples["unsafe"].append(_time_ms(bare))
        samples["tests"].append(_time_ms(tested))
    med = {k: statistics.median(v) for k, v in samples.items()}
    print(f"sandbox mode: {sandbox.mode} ({sandbox.description})")
    print(f"median wall ms over {runs} alternating runs:")
    print(f"  plain subprocess `python -c pass`: {med['plain']:7.1f} ms")
    print(f"  unsafe mode (bootstrap, no bwrap): {med['unsafe']:7.1f} ms")
    print(f"  sandboxed `pass`:                  {med['sandbox']:7.1f} ms")
    print(f"  ratio sandbox / plain:             {med['sandbox'] / med['plain']:7.2f} x")
    print(f"  overhead sandbox - plain:          {med['sandbox'] - med['plain']:7.1f} ms")
    print(f"  run_tests, {len(TESTS)} asserts:             {med['tests']:7.1f} ms")
    print(f"  ratio run_tests / plain:           {med['tests'] / med['plain']:7.2f} x")
    return med


def throughput(sandbox: Sandbox, jobs: int, workers: list[int]) -> dict[str, float]:
    """Print executions per second of ``jobs`` small programs for each worker count."""
    codes = [f"print(sum(range({1000 + i})))" for i in range(jobs)]
    print(f"throughput of run_many over {jobs} small programs:")
    rates = {}
    for n in workers:
        start = time.perf_counter()
        results = sandbox.run_many(codes, max_workers=n)
        elapsed = time.perf_counter() - start
        assert all(r.ok for r in results), [r for r in results if not r.ok][:1]
        print(
            f"  {n:2d} workers: {jobs / elapsed:7.1f} exec/s ({elapsed * 1000 / jobs:6.1f} ms each)"
        )
        rates[str(n)] = jobs / elapsed
    return rates


def main() -> None:
    """Parse arguments and run both measurements."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=30, help="runs per variant (alternated)")
    parser.add_argument("--jobs", type=int, default=40, help="programs for the throughput test")
    parser.add_argument("--workers", default="1,2,4", help="comma-separated worker counts")
    harness.add_result_argument(parser, "sandbox_overhead")
    args = parser.parse_args()
    sandbox = Sandbox()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        unsafe = Sandbox(unsafe=True)
    median_ms = overhead(sandbox, unsafe, args.runs)
    rates = throughput(sandbox, args.jobs, [int(w) for w in args.workers.split(",")])
    harness.write_result(args.result, {"median_ms": median_ms, "exec_per_s": rates})


if __name__ == "__main__":
    main()
