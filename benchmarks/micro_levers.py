"""Micro-benchmarks behind three of issue 4's levers, each variant side by side in one process.

- optimizer: one AdamW step over 135M bf16 parameters, Kahan-compensated
  (``CompensatedAdamW``) vs stochastic rounding (``StochasticRoundingAdamW``);
- sampling: one decode step's draw + entropy for 32 x 49152 logits, with the entropy from a
  second softmax and log-softmax (before) or from the draw's probabilities (``entr``, now);
- page faults: writing a freshly allocated 57 MB bf16 tensor (what glibc's default mmap
  threshold makes every step do for tensors above 32 MB: each page faults in on first write)
  vs writing a warm one.

Usage (from the repository root, with the groupwise venv):
  .venv/bin/python benchmarks/micro_levers.py [--repeats 3]
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import torch

from groupwise.core.logprobs import entropy_from_logits
from groupwise.rollout import sample_with_entropy
from groupwise.train.optim import CompensatedAdamW, StochasticRoundingAdamW


def timed(fn: Callable[[], object], calls: int) -> float:
    """Seconds per call (after one warm-up call)."""
    fn()
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    return (time.perf_counter() - start) / calls


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
    for r in range(args.repeats):
        for kind in ("kahan", "stochastic"):
            step = optimizer_step(kind)
            print(f"round {r} optimizer {kind}: {timed(step, 2):.3f} s per step", flush=True)
            del step
        print(f"round {r} sampling before: {timed(before, 50) * 1e3:.2f} ms per token")
        print(f"round {r} sampling now:    {timed(now, 50) * 1e3:.2f} ms per token")
        fresh = timed(lambda: torch.empty(28_311_552, dtype=torch.bfloat16).fill_(1.0), 10)
        print(f"round {r} fill a fresh 57 MB tensor: {fresh * 1e3:.1f} ms")
        print(
            f"round {r} fill a warm 57 MB tensor:  {timed(lambda: warm.fill_(1.0), 10) * 1e3:.1f} ms"
        )
        print(
            f"round {r} add into a warm one:       {timed(lambda: warm.add_(other), 10) * 1e3:.1f} ms"
        )


if __name__ == "__main__":
    main()
