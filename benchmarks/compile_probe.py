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

import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
import trl_vs_groupwise as tvg

from groupwise.data import build_task
from groupwise.models import load_base_model
from groupwise.rollout import generate, tokenize_prompts
from groupwise.train.forward import completion_logp

MODES = ("none", "mlp", "layer")


def main() -> None:
    mode = sys.argv[1] if len(sys.argv) > 1 else "none"
    if mode not in MODES:
        raise SystemExit(f"unknown mode {mode!r}; valid: {', '.join(MODES)}")
    cpu = torch.device("cpu")
    model, tok = load_base_model(
        str(tvg.resolve_model_dir()), seed=0, device=cpu, dtype=torch.bfloat16
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

    def run() -> float:
        start = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            logp, _ = completion_logp(model, rollout, compute_entropy=False)
        logp.sum().backward()
        return time.perf_counter() - start

    print(f"{mode}: first call (with compilation) {run():.1f} s", flush=True)
    times = [run() for _ in range(4)]
    print(f"{mode}: forward+backward per micro-batch {[round(t, 3) for t in times]} s")


if __name__ == "__main__":
    main()
