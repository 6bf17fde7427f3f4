"""The pure-bf16 AdamW step over all of SmolLM2-135M's weights: eager slices against the
compiled kernel (``training.compile_optimizer``), side by side in one process.

Two :class:`groupwise.train.optim.CompensatedAdamW` optimizers (the default
``bf16_rounding=kahan_sr_v``), each over its own bf16 copy of the model's parameters with the
same seeded gradients, step in turn (eager, compiled, eager, ...) so a noisy machine slows both
alike; per thread count the median seconds of ``--repeats`` steps each, after one warm-up step
(the compiled one's first step includes compiling, reported apart). Also reported: how far the
two weights ``p + c`` are apart after the steps, against how far they moved.

    python benchmarks/optimizer_step.py [--threads 1,2] [--repeats 5] [--result NAME]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import add_result_argument, command_line, write_result

from groupwise.models import load_base_model
from groupwise.train.optim import CompensatedAdamW


def optimizers(compile_step: bool) -> tuple[list[torch.nn.Parameter], CompensatedAdamW]:
    """A bf16 copy of SmolLM2-135M-Instruct's parameters and the default pure-bf16 AdamW."""
    model, _ = load_base_model(
        "smollm2-135m-instruct", seed=0, device=torch.device("cpu"), dtype=torch.bfloat16
    )
    params = [p for p in model.parameters() if p.requires_grad]
    opt = CompensatedAdamW(
        params, lr=2e-5, betas=(0.9, 0.99), bf16_second_moment=True, compile_step=compile_step
    )
    return params, opt


def set_grads(params: list[torch.nn.Parameter], step: int) -> None:
    """Seeded gradients of the size SmolLM2's are in the default run (~1e-3)."""
    gen = torch.Generator().manual_seed(step)
    for p in params:
        p.grad = (1e-3 * torch.randn(p.shape, generator=gen)).to(torch.bfloat16)


def timed_step(params: list[torch.nn.Parameter], opt: CompensatedAdamW, step: int) -> float:
    set_grads(params, step)
    start = time.perf_counter()
    opt.step()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", default="1,2", help="comma-separated thread counts")
    parser.add_argument("--repeats", type=int, default=5, help="timed steps per optimizer")
    add_result_argument(parser, "-")
    args = parser.parse_args()
    eager_params, eager = optimizers(False)
    compiled_params, compiled = optimizers(True)
    start = [p.detach().double() for p in eager_params]
    first = {"eager": timed_step(eager_params, eager, 0)}
    first["compiled"] = timed_step(compiled_params, compiled, 0)  # compiles
    rows: list[dict[str, Any]] = []
    step = 1
    for threads in (int(t) for t in args.threads.split(",")):
        torch.set_num_threads(threads)
        times: dict[str, list[float]] = {"eager": [], "compiled": []}
        for _ in range(args.repeats):
            times["eager"].append(timed_step(eager_params, eager, step))
            times["compiled"].append(timed_step(compiled_params, compiled, step))
            step += 1
        eager_s, compiled_s = (statistics.median(times[k]) for k in ("eager", "compiled"))
        rows.append(
            {
                "threads": threads,
                "eager_s": eager_s,
                "compiled_s": compiled_s,
                "speedup": eager_s / compiled_s,
            }
        )
        print(
            f"threads {threads}: eager {eager_s:.3f} s, compiled {compiled_s:.3f} s "
            f"({eager_s / compiled_s:.2f}x)",
            flush=True,
        )
    moved = max(
        float((p.detach().double() + eager.state[p]["compensation"].double() - s).abs().max())
        for p, s in zip(eager_params, start, strict=True)
    )
    apart = max(
        float(
            (
                p.detach().double()
                + eager.state[p]["compensation"].double()
                - q.detach().double()
                - compiled.state[q]["compensation"].double()
            )
            .abs()
            .max()
        )
        for p, q in zip(eager_params, compiled_params, strict=True)
    )
    print(f"first step: eager {first['eager']:.2f} s, compiled {first['compiled']:.2f} s")
    print(f"after {step} steps: weights apart by {apart:.3g} at most, moved {moved:.3g} at most")
    figures = {
        "parameters": sum(p.numel() for p in eager_params),
        "steps": step,
        "first_step_s": first,
        "rows": rows,
        "max_weight_difference": apart,
        "max_weight_moved": moved,
        "compiled_fell_back": not compiled.compile_step,
    }
    write_result(args.result, figures, command=command_line())


if __name__ == "__main__":
    main()
