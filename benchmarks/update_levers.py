"""Policy forward+backward time (the update phase) for each lever, side by side in one process.

Levers: bf16 autocast vs float32; attention kernel (sdpa, eager, grouped); shared prompt prefix
(one prefill per group, chunked LM head) vs the straightforward path (prompt + completion per row,
full float32 log-softmax); with the grouped kernel, prompts and completions as one flattened
sequence (one pass) vs a prompt pass whose KV cache the completion pass reads (two passes).
Variants alternate over several repeats; medians are printed.
``--fp32-only``: every variant in float32 (the levers on a CPU without native bf16).
``--pure-bf16``: weights in bf16 without autocast and the fused kernels installed (the training
default on a CPU with native bf16); the float32 row is then left out.
``--native`` (with ``--pure-bf16``): only the one-pass grouped path, with and without groupwise's
C++ training kernels (``training.native_kernels``: the log-prob rows and the RMSNorms).
Usage: python benchmarks/update_levers.py [--prompts 8] [--group 8] [--length 16] [--repeats 3]
    [--fp32-only | --pure-bf16 [--native]] [--result NAME]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

from groupwise.core.logprobs import TORCH_ROWS, LogpRows
from groupwise.kernels import native, register_grouped_attention
from groupwise.kernels.fused import NATIVE_FLAG, install_fused_kernels
from groupwise.models import load_base_model
from groupwise.rollout import PromptBatch, _finish, tokenize_prompts
from groupwise.train.forward import autocast_context, completion_logp

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness


def make_rollout(tokenizer: object, prompts: int, group: int, length: int) -> object:
    """Real chat prompts with random completions of exactly ``length`` tokens."""
    texts = [
        [
            {
                "role": "user",
                "content": f"What is {10 + i} + {20 + 3 * i}? Reply with only the number.",
            }
        ]
        for i in range(prompts)
    ]
    batch: PromptBatch = tokenize_prompts(tokenizer, texts, torch.device("cpu"))
    tokens = torch.randint(100, 40000, (prompts * group, length))
    return _finish(batch, tokens, torch.tensor([2]), 2, group)


PATHS = {
    "one": "shared prefix, one pass + chunked head",
    "two": "shared prefix, two passes + chunked head",
    "full": "full rows + full log-softmax",
    "one-native": "shared prefix, one pass + chunked head, C++ kernels",
}
"""The forward paths, by variant key (``train.forward.completion_logp``)."""


def timed(
    model: torch.nn.Module, rollout: object, amp: bool, path: str, rows: LogpRows = TORCH_ROWS
) -> float:
    """Seconds for one forward + backward of the policy log-probs."""
    model.zero_grad(set_to_none=True)
    start = time.perf_counter()
    with autocast_context(torch.device("cpu"), torch.bfloat16 if amp else None):
        logp, _ = completion_logp(
            model,
            rollout,  # type: ignore[arg-type]
            shared_prefix=path != "full",
            one_pass=path == "one",
            compute_entropy=False,
            rows=rows,
        )
    logp.sum().backward()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--group", type=int, default=8)
    parser.add_argument("--length", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    modes = parser.add_mutually_exclusive_group()
    modes.add_argument("--fp32-only", action="store_true", help="every variant in float32")
    modes.add_argument("--pure-bf16", action="store_true", help="bf16 weights, fused kernels")
    parser.add_argument("--native", action="store_true", help="with and without the C++ kernels")
    harness.add_result_argument(parser, "update_levers")
    args = parser.parse_args()
    torch.set_num_threads(2)
    grouped = register_grouped_attention()
    dtype = torch.bfloat16 if args.pure_bf16 else torch.float32
    model, tokenizer = load_base_model(
        "smollm2-135m-instruct", seed=0, device=torch.device("cpu"), dtype=dtype
    )
    if args.pure_bf16:
        install_fused_kernels(model)
    model.train()
    rollout = make_rollout(tokenizer, args.prompts, args.group, args.length)
    low = "bf16-weights" if args.pure_bf16 else "bf16-autocast"
    variants = [
        ("fp32", "sdpa", "two"),
        (low, "sdpa", "two"),
        (low, "eager", "two"),
        (low, grouped, "two"),
        (low, grouped, "one"),
        (low, "eager", "full"),
    ]
    if args.fp32_only:
        variants = [("fp32", attn, path) for _, attn, path in variants[1:]]
    if args.pure_bf16:
        variants = variants[1:]
    if args.native:
        if not args.pure_bf16 or native.logp_rows() is None:
            raise SystemExit("--native needs --pure-bf16 and the C++ kernels built here")
        variants = [(low, grouped, "one"), (low, grouped, "one-native")]
    results: dict[tuple[str, str, str], list[float]] = {v: [] for v in variants}
    timed(model, rollout, low == "bf16-autocast" and not args.fp32_only, "one")  # warm-up
    for _ in range(args.repeats):
        for precision, attn, path in variants:
            model.set_attn_implementation(attn)
            amp = precision == "bf16-autocast"
            on = path.endswith("-native")
            for module in model.modules():
                if hasattr(module, NATIVE_FLAG):
                    setattr(module, NATIVE_FLAG, on)
            pair = native.logp_rows() if on else None
            rows = LogpRows(*pair) if pair is not None else TORCH_ROWS
            seconds = timed(model, rollout, amp, path.removesuffix("-native"), rows)
            results[(precision, attn, path)].append(seconds)
    base = statistics.median(results[variants[0]])
    rows = args.prompts * args.group
    print(f"SmolLM2-135M forward+backward, {rows} completions x {args.length} tokens")
    print("| precision | attention | path | seconds | speed-up vs first row |")
    print("| --- | --- | --- | --- | --- |")
    table = []
    for (precision, attn, key), values in results.items():
        sec = statistics.median(values)
        print(f"| {precision} | {attn} | {PATHS[key]} | {sec:.2f} | {base / sec:.2f}x |")
        table.append(
            {
                "completions": rows,
                "length": args.length,
                "precision": precision,
                "attention": attn,
                "path": PATHS[key],
                "s": sec,
                "speedup": base / sec,
            }
        )
    harness.write_result(args.result, {"completions": rows, "length": args.length, "rows": table})


if __name__ == "__main__":
    main()
