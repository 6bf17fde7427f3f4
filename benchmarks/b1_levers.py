"""groupwise's levers on workload B1, one at a time: median seconds per step, phases, peak RSS.

B1 as in benchmarks/harness.py (SmolLM2-135M-Instruct, 4 prompts x 8 completions, exactly 48 new
tokens, beta 0.04, mu 1, lr 1e-5, full fine-tuning; or B1-LoRA). Each variant is groupwise's CLI
on that workload with a few overrides on top, run as its own subprocess (peak RSS is the
child's process tree, harness.run_measured); variants alternate within each round so drift hits all alike. The
first --warmup steps of each run are dropped; medians are over the remaining steps of all rounds.

Variants (cumulative, each adds one lever to the one above):
- fp32-masters-one-batch: float32 master weights under bf16 autocast, a bf16 rollout copy, the
  32 completions in one micro-batch;
- micro-batches: the same in micro-batches of one group (8 completions, 4 accumulated);
- pure-bf16: bf16 weights with Kahan-compensated AdamW, the policy decodes itself (the
  trl_vs_groupwise default);
- gradient-checkpointing: recompute decoder activations in the backward pass (instead of
  no-lora-rollout-copy, which applies to B1-LoRA only: decode through the unmerged adapters
  instead of a merged bf16 copy of the model);
- transformers-decode (beside pure-bf16, not on top of the others): ``rollout.packed_decode=false``,
  each decode step through transformers' forward instead of the packed decode step;
- microbatch-1024, microbatch-2048 (beside pure-bf16): up to 1,024 or 2,048 tokens of whole
  groups per forward/backward (``training.max_tokens_per_microbatch``, default 512);
- whole-groups (beside pure-bf16): one whole group per forward/backward however long it is
  (8 completions per micro-batch, 4 accumulated, no token budget), as before a group longer
  than ``training.max_tokens_per_microbatch`` ran in parts;
- split-512 (beside pure-bf16): ``training.max_tokens_per_microbatch=512``, a hard bound: with
  ``--length`` 256 or more each group runs in parts (the default ``auto`` keeps a group whole
  while its activations fit the plan's memory);
- torch-decode (beside pure-bf16): ``rollout.native_kernels=false``, the packed decode step's
  RMSNorms, rotary embedding, attention and SiLU through torch's operations instead of
  groupwise's C++ kernels (the default on a CPU with AVX-512 where they build);
- torch-training (beside pure-bf16): ``training.native_kernels=false``, the log-probs of the
  update and the reference pass and the update's RMSNorms through torch's operations instead
  of groupwise's C++ kernels (the default on a CPU with AVX-512 where they build);
- llamacpp (beside pure-bf16, not on top of the others): ``rollout.engine=llamacpp``, llama.cpp
  decoding a bf16 GGUF copy of the policy, rewritten after every update (needs
  ``scripts/setup.sh --llamacpp``).

Usage (from the repository root, with the groupwise venv):
  .venv/bin/python benchmarks/b1_levers.py [--workload B1] [--steps 4] [--warmup 1] [--rounds 1] \
      [--length L]  # exactly L new tokens per completion instead of B1's 48
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness

VARIANTS: dict[str, tuple[str, ...]] = {
    "fp32-masters-one-batch": (
        "training.param_dtype=float32",
        "training.per_device_train_batch_size=32",
        "training.gradient_accumulation_steps=1",
    ),
    "micro-batches": (
        "training.param_dtype=float32",
        "training.per_device_train_batch_size=8",
        "training.gradient_accumulation_steps=4",
    ),
    "pure-bf16": ("training.param_dtype=bfloat16",),
    "no-lora-rollout-copy": (  # B1-LoRA only: decode through the unmerged adapters
        "training.param_dtype=bfloat16",
        "model.lora_rollout_copy=false",
    ),
    "gradient-checkpointing": (
        "training.param_dtype=bfloat16",
        "training.gradient_checkpointing=true",
    ),
    "transformers-decode": (  # not cumulative: pure-bf16 without the packed decode step
        "training.param_dtype=bfloat16",
        "rollout.packed_decode=false",
    ),
    "eager-optimizer": (  # not cumulative: pure-bf16 with the AdamW step run eagerly
        "training.param_dtype=bfloat16",
        "training.compile_optimizer=false",
    ),
    "microbatch-1024": (  # not cumulative: pure-bf16 with up to 1,024 tokens per micro-batch
        "training.param_dtype=bfloat16",
        "training.max_tokens_per_microbatch=1024",
    ),
    "microbatch-2048": (
        "training.param_dtype=bfloat16",
        "training.max_tokens_per_microbatch=2048",
    ),
    "whole-groups": (  # not cumulative: pure-bf16 with one whole group per micro-batch
        "training.param_dtype=bfloat16",
        "training.per_device_train_batch_size=8",
        "training.gradient_accumulation_steps=4",
        "training.max_tokens_per_microbatch=0",
    ),
    "split-512": (  # not cumulative: pure-bf16 with a hard bound of 512 tokens per forward
        "training.param_dtype=bfloat16",
        "training.max_tokens_per_microbatch=512",
    ),
    "torch-decode": (  # not cumulative: pure-bf16 decoding through torch's operations only
        "training.param_dtype=bfloat16",
        "rollout.native_kernels=false",
    ),
    "torch-training": (  # not cumulative: pure-bf16 training through torch's operations only
        "training.param_dtype=bfloat16",
        "training.native_kernels=false",
    ),
    "llamacpp": (  # not cumulative: pure-bf16 with llama.cpp generating on a bf16 GGUF copy
        "training.param_dtype=bfloat16",
        "rollout.engine=llamacpp",
    ),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workload", default="B1", choices=harness.WORKLOADS)
    parser.add_argument("--steps", type=int, default=4, help="steps per run (warm-up included)")
    parser.add_argument("--warmup", type=int, default=1, help="steps dropped from each run")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated")
    parser.add_argument(
        "--length", type=int, default=0, help="new tokens per completion (0: B1's own)"
    )
    parser.add_argument(
        "--out", type=Path, default=harness.ROOT / "runs" / "bench-levers" / "r.json"
    )
    harness.add_result_argument(parser, "b1_levers")
    args = parser.parse_args()
    names = [v for v in args.variants.split(",") if v]
    unknown = [v for v in names if v not in VARIANTS]
    if unknown:
        parser.error(f"unknown variant {unknown[0]!r}; valid: {', '.join(VARIANTS)}")
    model_dir = harness.resolve_model_dir()
    work = args.out.parent / "work"
    runs: dict[str, list[harness.Run]] = {n: [] for n in names}
    length: tuple[str, ...] = ()
    if args.length:
        length = (f"rollout.max_completion_length={args.length}",)
        length += (f"rollout.min_new_tokens={args.length}",)
    for round_ in range(args.rounds):
        order = names if round_ % 2 == 0 else names[::-1]
        for name in order:
            run = harness.run_groupwise(
                args.workload,
                name,
                VARIANTS[name] + length,
                steps=args.steps,
                round_=round_,
                out_dir=work / f"{name}-r{round_}",
                model_dir=model_dir,
                env=dict(os.environ),
            )
            runs[name].append(run)
            times = ", ".join(f"{t:.1f}" for t in run.step_times)
            print(f"{name} round {round_}: steps [{times}] s, peak RSS "
                  f"{run.peak_rss_gb:.2f} GB", flush=True)  # fmt: skip
    tokens = args.length or harness.LENGTH
    print(f"\n{args.workload} at {tokens} new tokens, {args.steps} steps per run, "
          f"first {args.warmup} dropped\n")  # fmt: skip
    print("| variant | median s/step | generate | ref_logp | update | peak RSS GB |")
    print("| --- | --- | --- | --- | --- | --- |")
    summary: dict[str, Any] = {}
    for name in names:
        median, _ = harness.median_after_warmup(runs[name], args.warmup)
        phases = harness.phase_split(runs[name], args.warmup)
        rss = max(r.peak_rss_gb for r in runs[name])
        summary[name] = {"median_s": median, "phases": phases, "peak_rss_gb": rss}
        print(
            f"| {name} | {median:.2f} | {phases['generate']:.2f} | {phases['ref_logp']:.2f} | "
            f"{phases['update']:.2f} | {rss:.2f} |"
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    detail = {n: [vars(r) for r in rs] for n, rs in runs.items()}
    args.out.write_text(json.dumps({"summary": summary, "runs": detail}, indent=1))
    rows = [
        {
            "variant": n,
            "median_s": v["median_s"],
            **(v["phases"] or {}),
            "peak_rss_gb": v["peak_rss_gb"],
        }
        for n, v in summary.items()
    ]
    harness.write_result(
        args.result, {"workload": args.workload, "completion_tokens": tokens, "rows": rows}
    )


if __name__ == "__main__":
    main()
