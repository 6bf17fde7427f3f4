"""Policy forward+backward time (the update phase) for each lever, side by side in one process.

Levers: bf16 autocast vs float32; attention kernel (sdpa, eager, grouped); shared prompt prefix
(one prefill per group, chunked LM head) vs the straightforward path (prompt + completion per row,
full float32 log-softmax). Variants alternate over several repeats; medians are printed.
``--fp32-only``: every variant in float32 (the levers on a CPU without native bf16).
Usage: python benchmarks/update_levers.py [--prompts 8] [--group 8] [--length 16] [--repeats 3]
    [--fp32-only] [--result NAME]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

from groupwise.kernels import register_grouped_attention
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


def timed(model: torch.nn.Module, rollout: object, amp: bool, shared: bool) -> float:
    """Seconds for one forward + backward of the policy log-probs."""
    model.zero_grad(set_to_none=True)
    start = time.perf_counter()
    with autocast_context(torch.device("cpu"), torch.bfloat16 if amp else None):
        logp, _ = completion_logp(model, rollout, shared_prefix=shared, compute_entropy=False)  # type: ignore[arg-type]
    logp.sum().backward()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--group", type=int, default=8)
    parser.add_argument("--length", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--fp32-only", action="store_true", help="every variant in float32")
    harness.add_result_argument(parser, "update_levers")
    args = parser.parse_args()
    torch.set_num_threads(2)
    grouped = register_grouped_attention()
    model, tokenizer = load_base_model("smollm2-135m-instruct", seed=0, device=torch.device("cpu"))
    model.train()
    rollout = make_rollout(tokenizer, args.prompts, args.group, args.length)
    variants = [
        ("fp32", "sdpa", True),
        ("bf16-autocast", "sdpa", True),
        ("bf16-autocast", "eager", True),
        ("bf16-autocast", grouped, True),
        ("bf16-autocast", "eager", False),
    ]
    if args.fp32_only:
        variants = [("fp32", attn, shared) for _, attn, shared in variants[1:]]
    results: dict[tuple[str, str, bool], list[float]] = {v: [] for v in variants}
    timed(model, rollout, not args.fp32_only, True)  # warm-up
    for _ in range(args.repeats):
        for precision, attn, shared in variants:
            model.set_attn_implementation(attn)
            results[(precision, attn, shared)].append(
                timed(model, rollout, precision != "fp32", shared)
            )
    base = statistics.median(results[variants[0]])
    rows = args.prompts * args.group
    print(f"SmolLM2-135M forward+backward, {rows} completions x {args.length} tokens")
    print("| precision | attention | path | seconds | speed-up vs first row |")
    print("| --- | --- | --- | --- | --- |")
    table = []
    for (precision, attn, shared), values in results.items():
        sec = statistics.median(values)
        path = "shared prefix + chunked head" if shared else "full rows + full log-softmax"
        print(f"| {precision} | {attn} | {path} | {sec:.2f} | {base / sec:.2f}x |")
        table.append(
            {
                "precision": precision,
                "attention": attn,
                "path": path,
                "s": sec,
                "speedup": base / sec,
            }
        )
    harness.write_result(args.result, {"completions": rows, "length": args.length, "rows": table})


if __name__ == "__main__":
    main()
