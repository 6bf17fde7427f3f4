"""The pure-bf16 AdamW step over all of SmolLM2-135M's weights: eager slices against the
compiled kernel (``training.compile_optimizer``), side by side in one process.

Two :class:`groupwise.train.optim.CompensatedAdamW` optimizers (the default
``bf16_rounding=kahan_sr_v``), each over its own bf16 copy of the model's parameters with the
same seeded gradients, step in turn (eager, compiled, eager, ...) so a noisy machine slows both
alike; per thread count the median seconds of ``--repeats`` steps each, after one warm-up step
(the compiled one's first step includes compiling, reported apart). Also reported: how far the
two weights ``p + c`` are apart after the steps, against how far they moved.

``--baseline COMMIT`` adds a third optimizer, the compiled step as ``groupwise.train.optim`` was
at that commit (its file read with ``git show`` and loaded as a module of its own), stepping in
turn with the other two: the change a commit made to the step, side by side, and whether the two
compiled steps leave the same weights (``baseline_max_weight_difference``, 0 if bitwise equal).

    python benchmarks/optimizer_step.py [--threads 1,2] [--repeats 5] [--baseline COMMIT]
        [--result NAME]
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import ModuleType
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import add_result_argument, command_line, write_result

from groupwise.models import load_base_model
from groupwise.train.optim import CompensatedAdamW


def optimizers(
    compile_step: bool, module: ModuleType | None = None
) -> tuple[list[torch.nn.Parameter], Any]:
    """A bf16 copy of SmolLM2-135M-Instruct's parameters and the default pure-bf16 AdamW (that
    of ``module``, a baseline's optim module, when given)."""
    model, _ = load_base_model(
        "smollm2-135m-instruct", seed=0, device=torch.device("cpu"), dtype=torch.bfloat16
    )
    params = [p for p in model.parameters() if p.requires_grad]
    cls = CompensatedAdamW if module is None else module.CompensatedAdamW
    opt = cls(
        params, lr=2e-5, betas=(0.9, 0.99), bf16_second_moment=True, compile_step=compile_step
    )
    return params, opt


def baseline_module(commit: str) -> ModuleType:
    """``groupwise/train/optim.py`` as it was at ``commit``, loaded as a separate module."""
    root = Path(__file__).resolve().parent.parent
    source = subprocess.run(
        ["git", "show", f"{commit}:src/groupwise/train/optim.py"],
        cwd=root,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    path = Path(tempfile.mkdtemp()) / f"optim_at_{commit}.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location(f"optim_at_{commit}", path)
    if spec is None or spec.loader is None:
        raise RuntimeError(f"cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def weights_apart(
    a: tuple[list[torch.nn.Parameter], Any], b: tuple[list[torch.nn.Parameter], Any]
) -> float:
    """The largest difference of the compensated weights ``p + c`` of two optimizers."""
    return max(
        float(
            (
                p.detach().double()
                + a[1].state[p]["compensation"].double()
                - q.detach().double()
                - b[1].state[q]["compensation"].double()
            )
            .abs()
            .max()
        )
        for p, q in zip(a[0], b[0], strict=True)
    )


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
    parser.add_argument("--baseline", help="also the compiled step as it was at this commit")
    add_result_argument(parser, "-")
    args = parser.parse_args()
    arms = {"eager": optimizers(False), "compiled": optimizers(True)}
    if args.baseline:
        arms["baseline"] = optimizers(True, baseline_module(args.baseline))
    start = [p.detach().double() for p in arms["eager"][0]]
    first = {name: timed_step(*arm, 0) for name, arm in arms.items()}  # compiles
    rows: list[dict[str, Any]] = []
    step = 1
    for threads in (int(t) for t in args.threads.split(",")):
        torch.set_num_threads(threads)
        times: dict[str, list[float]] = {name: [] for name in arms}
        for _ in range(args.repeats):
            for name, arm in arms.items():
                times[name].append(timed_step(*arm, step))
            step += 1
        rows.append(timing_row(threads, {k: statistics.median(v) for k, v in times.items()}))
    eager_params, eager = arms["eager"]
    moved = max(
        float((p.detach().double() + eager.state[p]["compensation"].double() - s).abs().max())
        for p, s in zip(eager_params, start, strict=True)
    )
    apart = weights_apart(arms["eager"], arms["compiled"])
    print("first step: " + ", ".join(f"{k} {v:.2f} s" for k, v in first.items()))
    print(f"after {step} steps: weights apart by {apart:.3g} at most, moved {moved:.3g} at most")
    figures = {
        "parameters": sum(p.numel() for p in eager_params),
        "steps": step,
        "first_step_s": first,
        "rows": rows,
        "max_weight_difference": apart,
        "max_weight_moved": moved,
        "compiled_fell_back": not arms["compiled"][1].compile_step,
    }
    if args.baseline:
        figures["baseline"] = args.baseline
        figures["baseline_max_weight_difference"] = weights_apart(
            arms["compiled"], arms["baseline"]
        )
        print(f"compiled against {args.baseline}: {figures['baseline_max_weight_difference']:.3g}")
    write_result(args.result, figures, command=command_line())


def timing_row(threads: int, median: dict[str, float]) -> dict[str, Any]:
    """One thread count's medians, printed, with the speed-ups (eager and baseline over now)."""
    row = {
        "threads": threads,
        "eager_s": median["eager"],
        "compiled_s": median["compiled"],
        "speedup": median["eager"] / median["compiled"],
    }
    line = f"threads {threads}: eager {median['eager']:.3f} s, compiled {median['compiled']:.3f} s"
    line += f" ({row['speedup']:.2f}x)"
    if "baseline" in median:
        row["baseline_s"] = median["baseline"]
        row["speedup_vs_baseline"] = median["baseline"] / median["compiled"]
        line += f", baseline {median['baseline']:.3f} s ({row['speedup_vs_baseline']:.2f}x)"
    print(line, flush=True)
    return row


if __name__ == "__main__":
    main()
