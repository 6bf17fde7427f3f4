"""Probe: does ``torch.compile`` speed up one B1 micro-batch's policy forward + backward on CPU?

One group of the default task (8 completions x exactly 48 new tokens) on SmolLM2-135M with bf16
weights, through groupwise's training forward (shared prompt prefix, chunked LM head), then
``logp.sum().backward()``. Modes: ``none`` (eager), ``mlp`` (each decoder layer's MLP and its two
RMSNorms compiled with ``module.compile()``), ``layer`` (each whole decoder layer compiled).
Prints the first call (which includes compilation) and 4 timed calls. Run each mode in its own
process, one after the other, on an otherwise idle machine.

Usage (from the repository root, with the groupwise venv):
  .venv/bin/python benchmarks/compile_probe.py none|mlp|layer
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness

from groupwise.data import build_task
from groupwise.models import load_base_model
from groupwise.rollout import generate, tokenize_prompts
from groupwise.train.forward import completion_logp

MODES = ("none", "mlp", "layer")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("mode", nargs="?", default="none", choices=MODES)
    harness.add_result_argument(parser, "-")
    args = parser.parse_args()
    mode = args.mode
    cpu = torch.device("cpu")
    model, tok = load_base_model(
        str(harness.resolve_model_dir()), seed=0, device=cpu, dtype=torch.bfloat16
    )
    task = build_task("arithmetic", train_size=64, eval_size=8, seed=0, params={})
    prompts = tokenize_prompts(tok, [task.train[0]["prompt"]], cpu)
    model.eval()
    rollout = generate(
        model,
        prompts,
        group_size=8,
        max_completion_length=48,
        min_new_tokens=48,
        eos_token_ids=[tok.eos_token_id],
        pad_token_id=tok.pad_token_id,
        generator=torch.Generator().manual_seed(0),
    )
    layers = model.model.layers  # type: ignore[union-attr]
    for layer in layers:
        if mode == "mlp":
            for part in (layer.mlp, layer.input_layernorm, layer.post_attention_layernorm):
                part.compile()
        elif mode == "layer":
            layer.compile()
    model.train()

    def run() -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            logp, _ = completion_logp(model, rollout, compute_entropy=False)
        logp.sum().backward()

    timings = harness.Timings()
    timings.call("first", run)
    print(f"{mode}: first call (with compilation) {timings.median('first'):.1f} s", flush=True)
    for _ in range(4):
        timings.call("step", run)
    times = timings.samples["step"]
    print(f"{mode}: forward+backward per micro-batch {[round(t, 3) for t in times]} s")
    harness.write_result(
        args.result,
        {
            "mode": mode,
            "first_call_s": timings.median("first"),
            "median_s": statistics.median(times),
        },
    )


if __name__ == "__main__":
    main()
