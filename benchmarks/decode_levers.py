"""Decode-step time of the rollout model for each attention kernel x KV-cache choice.

The last row is the packed decode step (``groupwise.kernels.packed_decode``, the default of
``rollout.packed_decode``): weights packed once, QKV and gate/up fused, its own KV cache written
in place, grouped attention.

Measured side by side in one process, alternating, so machine noise hits every variant alike.
Usage: python benchmarks/decode_levers.py [--rows 64] [--steps 16] [--repeats 3] [--result NAME]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, DynamicCache

from groupwise.kernels import PreallocatedCache, register_grouped_attention
from groupwise.kernels.kv_cache import num_cache_layers
from groupwise.kernels.packed_decode import PackedDecoder
from groupwise.models import resolve_model_path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness


def decode_ms(model: torch.nn.Module, cache_kind: str, rows: int, prompt: int, steps: int) -> float:
    """Median milliseconds per decoded token for ``rows`` sequences after a shared prefill."""
    ids = torch.randint(100, 1000, (rows // 8, prompt))
    cache = (
        DynamicCache(config=model.config)
        if cache_kind == "dynamic"
        else PreallocatedCache(num_cache_layers(model.config), prompt + steps + 1)
    )
    times = []
    with torch.no_grad():
        model(input_ids=ids, past_key_values=cache, use_cache=True, logits_to_keep=1)
        cache.batch_repeat_interleave(8)
        nxt = torch.randint(100, 1000, (rows, 1))
        for i in range(steps):
            attn = torch.ones(rows, prompt + i + 1, dtype=torch.long)
            pos = torch.full((rows, 1), prompt + i)
            start = time.perf_counter()
            model(input_ids=nxt, attention_mask=attn, position_ids=pos, past_key_values=cache)
            times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def packed_ms(model: torch.nn.Module, rows: int, prompt: int, steps: int) -> float:
    """:func:`decode_ms` for the packed decode step (packing, once per rollout, not timed)."""
    ids = torch.randint(100, 1000, (rows // 8, prompt))
    mask = torch.ones_like(ids)
    times = []
    with torch.no_grad():
        cache = DynamicCache(config=model.config)
        model(input_ids=ids, past_key_values=cache, use_cache=True, logits_to_keep=1)
        decoder = PackedDecoder(model, cache, mask, 8, steps)
        nxt = torch.randint(100, 1000, (rows,))
        for i in range(steps):
            pos = torch.full((rows,), prompt + i)
            start = time.perf_counter()
            decoder.step(nxt, pos, i)
            times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=64)
    parser.add_argument("--prompt", type=int, default=47)
    parser.add_argument("--steps", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    harness.add_result_argument(parser, "decode_levers")
    args = parser.parse_args()
    torch.set_num_threads(2)
    grouped = register_grouped_attention()
    path = str(resolve_model_path("smollm2-135m-instruct"))
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.bfloat16).eval()
    variants = [(a, c) for a in ("sdpa", "eager", grouped) for c in ("dynamic", "preallocated")]
    variants.append(("packed step (grouped)", "in place"))
    results: dict[tuple[str, str], list[float]] = {v: [] for v in variants}
    for _ in range(args.repeats):
        for attn, cache in variants:
            if cache == "in place":
                ms = packed_ms(model, args.rows, args.prompt, args.steps)
            else:
                model.set_attn_implementation(attn)
                ms = decode_ms(model, cache, args.rows, args.prompt, args.steps)
            results[(attn, cache)].append(ms)
    base = statistics.median(results[("sdpa", "dynamic")])
    print(f"bf16 SmolLM2-135M, {args.rows} rows, prompt {args.prompt}, {args.steps} tokens")
    print("| attention | KV cache | ms / decode step | speed-up vs sdpa+dynamic |")
    print("| --- | --- | --- | --- |")
    rows = []
    for (attn, cache), values in results.items():
        ms = statistics.median(values)
        print(f"| {attn} | {cache} | {ms:.1f} | {base / ms:.2f}x |")
        rows.append({"attention": attn, "cache": cache, "ms": ms, "speedup": base / ms})
    harness.write_result(args.result, {"rows_decoded": args.rows, "rows": rows})


if __name__ == "__main__":
    main()
