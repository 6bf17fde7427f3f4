"""Generation throughput (new tokens/s): groupwise's rollout path vs plain Hugging Face generate.

Same batch on both sides: the first --prompts prompts groupwise's trainer would draw (default
task and seeds of groupwise.config), chat template applied and left-padded by
``groupwise.rollout.tokenize_prompts``, --num-generations completions each, exactly --length new
tokens per completion (EOS forbidden until then: ``min_new_tokens`` on both sides), sampled with
groupwise's rollout defaults (temperature, top_p, top_k from ``RolloutConfig``).

- groupwise: the model loaded as the trainer loads it (``load_base_model`` with the default
  attention, grouped-query attention on CPU, then ``make_rollout_model`` in bf16) and
  ``groupwise.rollout.generate`` called as ``GRPOTrainer._generate`` calls it on one process: one
  prefill per prompt, its KV cache repeated G times, dynamic cache, rows dropped when finished,
  the per-token entropy metric included.
- Hugging Face: a fresh ``AutoModelForCausalLM`` loaded in float32 from the same cached directory
  with SDPA attention, then ``.to(torch.bfloat16)``; ``model.generate(do_sample=True,
  num_return_sequences=G)`` (HF expands the prompts to P x G rows before its prefill), top_k set
  explicitly (HF's own default would be 50). A one-token check before timing verifies that HF's
  sampling scores are not truncated when top_k = 0 and top_p = 1.

One untimed call of each variant (--warmup), then --repeats timed calls, alternating the order
every repeat so the machine's drift hits both alike. Reported: median seconds per call, new
tokens/s (P x G x L / seconds) and the ratio.

Usage (from the repository root, with the groupwise venv):
  .venv/bin/python benchmarks/generation_throughput.py [--model smollm2-135m-instruct]
      [--prompts 4] [--num-generations 8] [--length 48] [--repeats 3] [--warmup 1]
      [--out runs/bench-generation/results.json]
Smoke check: ... --model tiny-random --length 8 --repeats 1
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from groupwise.config import load_config
from groupwise.data import build_task
from groupwise.data.sampler import PromptSampler
from groupwise.models import (
    load_base_model,
    make_rollout_model,
    resolve_model_path,
    tiny_random_model,
)
from groupwise.rollout import PromptBatch, generate, tokenize_prompts
from groupwise.rollout.records import eos_token_ids

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness

ROOT = harness.ROOT
VARIANTS = ("groupwise", "hf")


def groupwise_model(name: str, seed: int) -> tuple[nn.Module, Any, list[int]]:
    """The trainer's bf16 rollout copy, its tokenizer and EOS ids (GRPOTrainer._build_models)."""
    base, tokenizer = load_base_model(name, seed=seed, device=torch.device("cpu"))
    rollout = make_rollout_model(base, torch.bfloat16)
    eos = eos_token_ids(tokenizer, base)
    del base
    return rollout, tokenizer, eos


def hf_model(name: str, seed: int) -> nn.Module:
    """A fresh float32 model from the same directory, SDPA attention, cast to bf16."""
    path = resolve_model_path(name)
    model: nn.Module
    if path is None:  # tiny-random: the same seeded weights as groupwise's preset
        model, _ = tiny_random_model(seed)
        model.set_attn_implementation("sdpa")  # type: ignore[operator]
    else:
        from transformers import AutoModelForCausalLM

        model = AutoModelForCausalLM.from_pretrained(
            str(path), dtype=torch.float32, attn_implementation="sdpa"
        )
    return model.to(torch.bfloat16).eval()


def run_groupwise(
    model: nn.Module,
    prompts: PromptBatch,
    *,
    group: int,
    length: int,
    eos: list[int],
    pad: int,
    sampling: dict[str, Any],
    seed: int,
) -> torch.Tensor:
    """Completion lengths [P G] of one call of groupwise's rollout (as GRPOTrainer._generate)."""
    rollout = generate(
        model,
        prompts,
        group_size=group,
        max_completion_length=length,
        eos_token_ids=eos,
        pad_token_id=pad,
        generator=torch.Generator().manual_seed(seed),
        min_new_tokens=length,
        **sampling,
    )
    return rollout.completion_lengths


def hf_kwargs(
    group: int, length: int, eos: list[int], pad: int, sampling: dict[str, Any]
) -> dict[str, Any]:
    """``model.generate`` arguments for the same sampling and exactly ``length`` new tokens."""
    return {
        "do_sample": True,
        "temperature": sampling["temperature"],
        "top_p": sampling["top_p"],
        "top_k": sampling["top_k"],
        "max_new_tokens": length,
        "min_new_tokens": length,
        "num_return_sequences": group,
        "eos_token_id": eos,
        "pad_token_id": pad,
    }


@torch.no_grad()
def run_hf(
    model: nn.Module, prompts: PromptBatch, kwargs: dict[str, Any], seed: int, eos: list[int]
) -> torch.Tensor:
    """Completion lengths [P G] of one ``model.generate`` call (new tokens up to the first EOS)."""
    torch.manual_seed(seed)
    out = model.generate(  # type: ignore[operator]
        input_ids=prompts.input_ids, attention_mask=prompts.attention_mask, **kwargs
    )
    new = out[:, prompts.input_ids.shape[1] :]  # [P G, <= L]
    is_eos = torch.isin(new, torch.tensor(eos))
    first = torch.where(is_eos.any(dim=1), is_eos.int().argmax(dim=1) + 1, new.shape[1])
    return first


@torch.no_grad()
def check_hf_sampling(
    model: nn.Module, prompts: PromptBatch, kwargs: dict[str, Any], eos: list[int]
) -> None:
    """With top_k = 0 and top_p = 1, HF must keep every token but EOS (no hidden top-k 50)."""
    if kwargs["top_k"] != 0 or kwargs["top_p"] < 1.0:
        return
    one = {**kwargs, "max_new_tokens": 1, "min_new_tokens": 1, "num_return_sequences": 1}
    out = model.generate(  # type: ignore[operator]
        input_ids=prompts.input_ids[:1],
        attention_mask=prompts.attention_mask[:1],
        output_scores=True,
        return_dict_in_generate=True,
        **one,
    )
    scores = out.scores[0][0]  # [V] after HF's logits processors
    finite = int(torch.isfinite(scores).sum())
    expected = scores.numel() - len(set(eos))
    if finite != expected:
        raise RuntimeError(
            f"HF sampling keeps {finite} of {scores.numel()} tokens, expected {expected}: "
            "a logits processor (top-k/top-p) is active that groupwise's rollout does not apply"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m-instruct", help="preset or directory")
    parser.add_argument("--prompts", type=int, default=4)
    parser.add_argument("--num-generations", type=int, default=8)
    parser.add_argument("--length", type=int, default=48, help="exact new tokens per completion")
    parser.add_argument("--repeats", type=int, default=3, help="timed calls per variant")
    parser.add_argument("--warmup", type=int, default=1, help="untimed calls per variant first")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0 = default)")
    parser.add_argument(
        "--out", type=Path, default=ROOT / "runs" / "bench-generation" / "results.json"
    )
    harness.add_result_argument(parser, "generation_throughput")
    args = parser.parse_args()
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()

    config = load_config(None, [])
    r, d = config.rollout, config.data
    sampling = {"temperature": r.temperature, "top_p": r.top_p, "top_k": r.top_k}
    task = build_task(
        d.task, train_size=d.train_size, eval_size=d.eval_size, seed=d.seed, params=d.params
    )
    rows = PromptSampler(task.train, seed=config.training.seed).next_batch(args.prompts)

    gw_model, tokenizer, eos = groupwise_model(args.model, args.seed)
    base = hf_model(args.model, args.seed)
    prompts = tokenize_prompts(tokenizer, [row["prompt"] for row in rows], torch.device("cpu"))
    pad = tokenizer.pad_token_id
    g, length = args.num_generations, args.length
    kwargs = hf_kwargs(g, length, eos, pad, sampling)
    check_hf_sampling(base, prompts, kwargs, eos)

    def call(variant: str, seed: int) -> float:
        start = time.perf_counter()
        if variant == "groupwise":
            lengths = run_groupwise(
                gw_model,
                prompts,
                group=g,
                length=length,
                eos=eos,
                pad=pad,
                sampling=sampling,
                seed=seed,
            )
        else:
            lengths = run_hf(base, prompts, kwargs, seed, eos)
        seconds = time.perf_counter() - start
        if lengths.numel() != args.prompts * g or bool((lengths != length).any()):
            raise RuntimeError(f"{variant}: completions not all {length} tokens: {lengths}")
        return seconds

    print(
        f"model {args.model}: {args.prompts} prompts x {g} completions x {length} new tokens, "
        f"prompt width {prompts.input_ids.shape[1]}, sampling {sampling}, "
        f"{torch.get_num_threads()} threads",
        flush=True,
    )
    for i in range(args.warmup):
        for variant in VARIANTS:
            call(variant, args.seed + 1000 + i)
    times: dict[str, list[float]] = {v: [] for v in VARIANTS}
    for i in range(args.repeats):
        order = VARIANTS if i % 2 == 0 else VARIANTS[::-1]
        for variant in order:
            times[variant].append(call(variant, args.seed + i))
            print(f"repeat {i} {variant}: {times[variant][-1]:.2f} s", flush=True)

    tokens = args.prompts * g * length
    medians = {v: statistics.median(t) for v, t in times.items()}
    lines = [
        "| path | median s | new tokens/s | speed-up vs HF generate |",
        "| --- | --- | --- | --- |",
        f"| groupwise rollout (bf16, grouped attention, one prefill per prompt) "
        f"| {medians['groupwise']:.2f} | {tokens / medians['groupwise']:.0f} "
        f"| {medians['hf'] / medians['groupwise']:.2f}x |",
        f"| HF generate (bf16, sdpa, num_return_sequences={g}) | {medians['hf']:.2f} "
        f"| {tokens / medians['hf']:.0f} | 1.00x |",
    ]
    text = "\n".join(lines)
    print()
    print(text)
    record = {
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "sampling": sampling,
        "prompt_width": int(prompts.input_ids.shape[1]),
        "new_tokens_per_call": tokens,
        "threads": torch.get_num_threads(),
        "platform": platform.platform(),
        "git": harness.git_state(),
        "versions": {"torch": torch.__version__, "transformers": _transformers_version()},
        "times_s": times,
        "median_s": medians,
        "tokens_per_s": {v: tokens / s for v, s in medians.items()},
        "speedup_groupwise_over_hf": medians["hf"] / medians["groupwise"],
        "table": text,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=1))
    print(f"\nraw results: {args.out}")
    harness.write_result(
        args.result,
        {
            "model": args.model,
            "batch": f"{args.prompts} x {g} x {length}",
            "rows": [
                {"path": v, "median_s": medians[v], "tokens_per_s": tokens / medians[v]}
                for v in VARIANTS
            ],
            "speedup": medians["hf"] / medians["groupwise"],
        },
    )


def _transformers_version() -> str:
    import transformers

    return str(transformers.__version__)


if __name__ == "__main__":
    main()
