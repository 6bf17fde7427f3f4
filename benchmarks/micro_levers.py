"""Micro-benchmarks behind three levers of the trainer, each variant side by side in one process.

- optimizer: one AdamW step over 135M bf16 parameters, Kahan-compensated
  (``CompensatedAdamW``) vs stochastic rounding (``StochasticRoundingAdamW``);
- sampling: one decode step's draw + entropy for 32 x 49152 logits, with the entropy from a
  second softmax and log-softmax (before) or from the draw's probabilities (``entr``, now);
- page faults: writing a freshly allocated 57 MB bf16 tensor (what glibc's default mmap
  threshold makes every step do for tensors above 32 MB: each page faults in on first write)
  vs writing a warm one.

Usage (from the repository root, with the groupwise venv):
  .venv/bin/python benchmarks/micro_levers.py [--repeats 3] [--result NAME]
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

import torch

from groupwise.core.logprobs import entropy_from_logits
from groupwise.rollout import sample_with_entropy
from groupwise.train.optim import CompensatedAdamW, StochasticRoundingAdamW

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness


def timed(fn: Callable[[], object], calls: int) -> float:
    """Seconds per call (after one warm-up call)."""
    return harness.seconds_per_call(fn, calls, warmup=1)


def optimizer_step(kind: str) -> Callable[[], object]:
    params = [
        torch.nn.Parameter(torch.randn(13_500_000, dtype=torch.bfloat16) * 0.02) for _ in range(10)
    ]  # 135M, the size of SmolLM2-135M
    for p in params:
        p.grad = torch.randn_like(p) * 1e-3
    opt: torch.optim.Optimizer = (
        CompensatedAdamW(params, lr=1e-5)
        if kind == "kahan"
        else StochasticRoundingAdamW(params, lr=1e-5)
    )
    return opt.step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    harness.add_result_argument(parser, "micro_levers")
    args = parser.parse_args()
    logits = torch.randn(32, 49152).bfloat16()  # [R, V]
    uniform = torch.rand(32)

    def before() -> None:
        sample_with_entropy(logits, temperature=1.0, uniform=uniform, entropy=False)
        entropy_from_logits(logits.float())

    def now() -> None:
        sample_with_entropy(logits, temperature=1.0, uniform=uniform)

    warm = torch.zeros(28_311_552, dtype=torch.bfloat16)  # [49152 x 576]
    other = torch.ones_like(warm)
    timings = harness.Timings()
    for r in range(args.repeats):
        for kind in ("kahan", "stochastic"):
            step = optimizer_step(kind)
            timings.add(f"optimizer_{kind}_s", timed(step, 2))
            print(
                f"round {r} optimizer {kind}: {timings.samples[f'optimizer_{kind}_s'][-1]:.3f} s per step",
                flush=True,
            )
            del step
        timings.add("sampling_before_ms", timed(before, 50) * 1e3)
        timings.add("sampling_now_ms", timed(now, 50) * 1e3)
        fresh = lambda: torch.empty(28_311_552, dtype=torch.bfloat16).fill_(1.0)  # noqa: E731
        timings.add("fill_fresh_ms", timed(fresh, 10) * 1e3)
        timings.add("fill_warm_ms", timed(lambda: warm.fill_(1.0), 10) * 1e3)
        timings.add("add_warm_ms", timed(lambda: warm.add_(other), 10) * 1e3)
        for name in (
            "sampling_before_ms",
            "sampling_now_ms",
            "fill_fresh_ms",
            "fill_warm_ms",
            "add_warm_ms",
        ):
            print(f"round {r} {name}: {timings.samples[name][-1]:.2f}")
    harness.write_result(args.result, {"median": timings.medians(), "samples": timings.samples})


if __name__ == "__main__":
    main()
