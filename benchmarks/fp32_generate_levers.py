"""The rollout phase in float32: which levers speed it up on a CPU without native bf16.

One default-run rollout (8 prompts x 8 completions, exactly 16 new tokens, SmolLM2-135M-Instruct
float32, ``groupwise.rollout.generate``) per variant, alternating variants over ``--repeats``
rounds so machine noise hits each alike; the median wall seconds per rollout are reported with
the machine's measured float32 matmul rate and the FLOP floor of the rollout
(``2 * matmul params * tokens``, prompts prefilled once per group).

Variants:
- ``multinomial``: the single-process default (``torch.multinomial``);
- ``inverse-cdf``: ``rollout.rank_invariant_sampling=true`` (one uniform per row and step);
- ``compiled``: ``rollout.compile=true`` (torch.compile over a static KV cache; compile time
  is reported separately and excluded from the median);
- ``int8``: the Linear layers of the rollout copy quantized to int8 by torch's dynamic
  quantization (fbgemm/x86 kernels; the LM head stays float32). This changes the sampling
  policy, so a trainer would need the truncated importance-sampling correction: the
  mismatch between the int8 and float32 policies is printed (mean |logp diff| on the
  sampled tokens).

On an AVX512 CPU, emulate an AVX2-only one with
``ONEDNN_MAX_CPU_ISA=AVX2 ATEN_CPU_CAPABILITY=avx2 MKL_ENABLE_INSTRUCTIONS=AVX2``.
Usage: python benchmarks/fp32_generate_levers.py [--repeats 3] [--variants a,b,...]
"""

from __future__ import annotations

import argparse
import copy
import os
import sys
import time
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness

from groupwise.data import build_task
from groupwise.models import load_base_model, resolve_model_path
from groupwise.rollout import Rollout, generate, tokenize_prompts
from groupwise.rollout.records import eos_token_ids

VARIANTS = ("multinomial", "inverse-cdf", "compiled", "int8")
PROMPTS, G, LENGTH = 8, 8, 16


def int8_copy(model: torch.nn.Module) -> torch.nn.Module:
    """A copy whose decoder Linear layers run torch's dynamic int8 kernels (not the LM head)."""
    from torch.ao.quantization import quantize_dynamic

    quantized = copy.deepcopy(model)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        quantized.model = quantize_dynamic(  # type: ignore[assignment]
            quantized.model, {torch.nn.Linear}, dtype=torch.qint8
        )
    return quantized


def rollout(
    model: torch.nn.Module, variant: str, batch: object, eos: list[int], pad: int
) -> Rollout:
    gen = torch.Generator().manual_seed(0)
    return generate(
        model,
        batch,  # type: ignore[arg-type]
        group_size=G,
        max_completion_length=LENGTH,
        eos_token_ids=eos,
        pad_token_id=pad,
        generator=gen,
        min_new_tokens=LENGTH,
        total_rows=PROMPTS * G if variant == "inverse-cdf" else None,
        compile_decode=variant == "compiled",
    )


def sampled_logp(model: torch.nn.Module, batch: object, r: Rollout) -> torch.Tensor:
    """log pi(token) of every sampled completion token under ``model``: [B, Lc]."""
    from groupwise.train.forward import completion_logp

    with torch.no_grad():
        logp, _ = completion_logp(model, r, temperature=1.0, chunk_size=1024)
    return logp


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--variants", default=",".join(VARIANTS))
    harness.add_result_argument(parser, "fp32_generate_levers")
    args = parser.parse_args()
    variants = args.variants.split(",")
    torch.set_num_threads(os.cpu_count() or 1)
    model, tokenizer = load_base_model("smollm2-135m-instruct", seed=0, device=torch.device("cpu"))
    model = model.float().eval()
    task = build_task("arithmetic", train_size=PROMPTS, eval_size=1, seed=0, params={})
    batch = tokenize_prompts(tokenizer, [r["prompt"] for r in task.train], torch.device("cpu"))
    eos, pad = eos_token_ids(tokenizer, model), tokenizer.pad_token_id
    models = {v: (int8_copy(model) if v == "int8" else model) for v in variants}
    compile_s = 0.0
    if "compiled" in variants:  # first call compiles
        start = time.perf_counter()
        rollout(model, "compiled", batch, eos, pad)
        compile_s = time.perf_counter() - start
    timings = harness.Timings()
    last: dict[str, Rollout] = {}
    for _ in range(args.repeats):
        for v in variants:
            with timings.time(v):
                last[v] = rollout(models[v], v, batch, eos, pad)
    rate = harness.matmul_gflops("fp32", (64, 576, 1536), seconds=0.3)
    tokens = int(batch.attention_mask.sum()) + PROMPTS * G * LENGTH
    model_dir = resolve_model_path("smollm2-135m-instruct")
    assert model_dir is not None
    floor = 2 * harness.load_matmul_params(model_dir).total * tokens / (rate * 1e9)
    isa = " ".join(f"{k}={os.environ[k]}" for k in harness.ISA_ENV if k in os.environ) or "none"
    print(f"CPU: {harness.cpu_line()}; torch capability {torch.backends.cpu.get_cpu_capability()}")
    print(f"ISA limits: {isa}; float32 matmul [64,576]x[576,1536]: {rate:.0f} GFLOP/s")
    print(f"rollout: {PROMPTS} prompts x {G} completions x {LENGTH} tokens, {tokens} tokens")
    print(f"FLOP floor at that rate: {floor:.2f} s (compile: {compile_s:.0f} s, excluded)")
    medians = timings.medians()
    base = medians[variants[0]]
    print("| variant | s / rollout | vs first | floor / measured |")
    print("| --- | --- | --- | --- |")
    for v in variants:
        s = medians[v]
        print(f"| {v} | {s:.2f} | {base / s:.2f}x | {floor / s:.0%} |")
    if "int8" in variants:
        r = last["int8"]
        mask = r.completion_mask.bool()
        diff = sampled_logp(model, batch, r) - sampled_logp(models["int8"], batch, r)
        ratio = diff[mask].exp()
        print(
            f"int8 vs float32 policy on int8's samples: mean |logp diff| "
            f"{diff[mask].abs().mean():.4f}, ratio pi_fp32/pi_int8 in "
            f"[{ratio.min():.3f}, {ratio.max():.3f}], mean {ratio.mean():.4f}"
        )
    rows = [
        {
            "variant": v,
            "s": medians[v],
            "vs_first": base / medians[v],
            "floor_share": floor / medians[v],
        }
        for v in variants
    ]
    harness.write_result(
        args.result,
        {
            "fp32_gflops": rate,
            "tokens": tokens,
            "floor_s": floor,
            "compile_s": compile_s,
            "rows": rows,
        },
    )


if __name__ == "__main__":
    main()
