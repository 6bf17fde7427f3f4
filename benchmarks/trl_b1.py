"""TRL's GRPOTrainer on workload B1 (or B1-LoRA), timing every optimizer step.

Runs inside the TRL virtual environment (benchmarks/trl_env.sh), never the groupwise one; the
driver benchmarks/trl_vs_groupwise.py starts it as a subprocess. Workload B1: SmolLM2-135M-Instruct
(a local HF directory, no hub access), 2-digit addition prompts in groupwise's arithmetic format,
4 prompts x 8 completions = 32 completions per optimizer step, exactly 48 new tokens each (EOS
suppressed with min_new_tokens), beta = 0.04 (reference model), mu = 1, lr 1e-5 constant;
--precision bf16 (the default) is TRL's bf16=True (bf16 autocast on CPU), --precision fp32 is
bf16=False. --lora trains r=16, alpha=32 adapters on all linear layers instead.

Weights: --weights-dtype fp32 (the default) leaves ``model_init_kwargs`` unset, and TRL 1.16 then
loads the policy and the reference model in float32 (its ``create_model_from_path`` defaults
``dtype`` to float32, unlike transformers' own ``from_pretrained``): fp32 master weights.
--weights-dtype bf16 is ``GRPOConfig(model_init_kwargs={"dtype": torch.bfloat16})``: TRL loads
the policy *and* the reference model (built from the same ``model_init_kwargs``) in bfloat16 and
trains those bf16 weights directly: AdamW keeps its moments in the parameters' dtype and rounds
each update to nearest, with no fp32 master copy (with --lora only the frozen base is bf16: PEFT's
default ``autocast_adapter_dtype=True`` keeps the adapters in float32). The result JSON records
the requested dtype, the dtypes the trainer's models actually hold and those of the optimizer's
state after training.

Batch semantics (TRL 1.x): per_device_train_batch_size counts completions, and with
gradient_accumulation_steps=1 the generation batch is per_device_train_batch_size * processes *
steps_per_generation = 32 * 1 * 1, so one optimizer step generates and trains on one batch of
4 prompts x 8 completions, with no accumulation across steps.

Each step's time is taken by a TrainerCallback from on_step_begin to on_step_end (generation,
rewards, reference and policy forward/backward, optimizer step); Trainer's own logging after
on_step_end is outside it, as groupwise's metrics writing is outside its step_time.

Phases of each step, timed by wrapping three of the trainer's methods on the instance (a
perf_counter pair per call, nothing else changes):
- generate: ``GRPOTrainer._generate`` (prompt tokenization, ``model.generate``, decoding text);
- ref_logp: ``_get_per_token_logps_and_entropies`` calls made with gradients off (the reference
  model's, or the adapters-disabled policy's, log-probs; with mu = 1 and one generation batch per
  step TRL computes no old-policy log-probs);
- prepare: ``_prepare_inputs`` (generate, rewards, advantages, ref_logp);
- update: the step minus prepare (the policy forward and backward, clipping, the optimizer and
  scheduler steps, zero_grad).
Each step also records the prompts' token counts (for the driver's FLOP floor), and prints
``step N: S s`` as it ends (a driver that stops this process early reads how far it got).
--completion-length L replaces B1's 48 new tokens (benchmarks/scaling_trl.py).
Usage: .venv-trl/bin/python benchmarks/trl_b1.py --model-dir DIR --steps 5 [--lora]
    [--precision bf16|fp32] [--weights-dtype fp32|bf16] [--no-gradient-checkpointing]
    [--completion-length 48] --out F.json
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import argparse
import itertools
import json
import random
import re
import sys
import tempfile
import time
from importlib.metadata import version
from pathlib import Path
from typing import Any

import torch
from datasets import Dataset
from transformers import TrainerCallback

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness  # standard library only: importable in TRL's environment

# The prompt text of groupwise.tasks.arithmetic (this file cannot import groupwise: it runs in
# TRL's environment); the harness holds it beside the rest of the workload.
TEMPLATE = harness.B1_PROMPT
_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?")


def addition_dataset(seed: int, size: int) -> Dataset:
    """Conversational prompts "What is a + b? ..." with a, b in 10..99, shuffled, and answers."""
    pairs = list(itertools.product(range(10, 100), range(10, 100)))
    random.Random(seed).shuffle(pairs)
    pairs = pairs[:size]
    return Dataset.from_dict(
        {
            "prompt": [[{"role": "user", "content": TEMPLATE.format(a=a, b=b)}] for a, b in pairs],
            "answer": [str(a + b) for a, b in pairs],
        }
    )


def _text(completion: Any) -> str:
    """Completion text, whether TRL passes a string or a list of chat messages."""
    if isinstance(completion, str):
        return completion
    return "".join(str(message.get("content", "")) for message in completion)


def sum_correct(completions: list[Any], answer: list[str], **_: Any) -> list[float]:
    """1.0 when the last number in the completion equals the sum, else 0.0."""
    rewards = []
    for completion, expected in zip(completions, answer, strict=True):
        found = _NUMBER.findall(_text(completion))
        got = found[-1].replace(",", "") if found else None
        try:
            rewards.append(float(got is not None and float(got) == float(expected)))
        except ValueError:
            rewards.append(0.0)
    return rewards


class StepTimer(TrainerCallback):
    """Wall time of each optimizer step (on_step_begin -> on_step_end), its phases (filled in by
    :func:`time_phases`' wrappers) and every log record."""

    def __init__(self) -> None:
        self.step_times: list[float] = []
        self.phases: list[dict[str, float]] = []
        self.logs: list[dict[str, Any]] = []
        self.current: dict[str, float] = {}
        self._start: float | None = None

    def add(self, name: str, value: float) -> None:
        """Add ``value`` to the current step's ``name``."""
        self.current[name] = self.current.get(name, 0.0) + value

    def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.current = {}
        self._start = time.perf_counter()

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self._start is not None:
            total = time.perf_counter() - self._start
            self.step_times.append(total)
            # progress for a driver that may stop this process before the result JSON is written
            print(f"step {len(self.step_times)}: {total:.3f} s", flush=True)
            phases = {k: self.current.get(k, 0.0) for k in ("generate", "ref_logp", "prepare")}
            phases["update"] = total - phases["prepare"]
            phases["other"] = phases["prepare"] - phases["generate"] - phases["ref_logp"]
            phases["prompt_rows"] = self.current.get("prompt_rows", 0.0)
            phases["prompt_tokens"] = self.current.get("prompt_tokens", 0.0)
            self.phases.append(phases)
            self._start = None

    def on_log(
        self,
        args: Any,
        state: Any,
        control: Any,
        logs: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        if logs:
            record = {k: v for k, v in logs.items() if isinstance(v, (int, float, str))}
            self.logs.append({"step": state.global_step, **record})


def time_phases(trainer: Any, timer: StepTimer) -> None:
    """Wrap the trainer's ``_generate``, ``_prepare_inputs`` and no-grad
    ``_get_per_token_logps_and_entropies`` on the instance, adding their seconds to ``timer``."""
    generate = trainer._generate
    prepare = trainer._prepare_inputs
    logps = trainer._get_per_token_logps_and_entropies

    def timed_generate(*args: Any, **kwargs: Any) -> Any:
        start = time.perf_counter()
        out = generate(*args, **kwargs)
        timer.add("generate", time.perf_counter() - start)
        prompt_ids = out[0]  # one list of token ids per row
        timer.add("prompt_rows", float(len(prompt_ids)))
        timer.add("prompt_tokens", float(sum(len(ids) for ids in prompt_ids)))
        return out

    def timed_prepare(*args: Any, **kwargs: Any) -> Any:
        start = time.perf_counter()
        out = prepare(*args, **kwargs)
        timer.add("prepare", time.perf_counter() - start)
        return out

    def timed_logps(*args: Any, **kwargs: Any) -> Any:
        if torch.is_grad_enabled():  # the policy's forward in compute_loss
            return logps(*args, **kwargs)
        start = time.perf_counter()
        out = logps(*args, **kwargs)
        timer.add("ref_logp", time.perf_counter() - start)
        return out

    trainer._generate = timed_generate
    trainer._prepare_inputs = timed_prepare
    trainer._get_per_token_logps_and_entropies = timed_logps


def param_dtypes(trainer: Any) -> dict[str, list[str]]:
    """The dtypes the trainer's models hold: the policy's trainable and frozen parameters and the
    reference model's (empty where there is none, e.g. with LoRA, whose reference is the policy
    with its adapters disabled)."""

    def dtypes(params: Any) -> list[str]:
        return sorted({str(p.dtype).removeprefix("torch.") for p in params})

    policy = list(trainer.model.parameters())
    ref = getattr(trainer, "ref_model", None)
    return {
        "policy_trainable": dtypes(p for p in policy if p.requires_grad),
        "policy_frozen": dtypes(p for p in policy if not p.requires_grad),
        "reference": dtypes(ref.parameters()) if ref is not None else [],
    }


def optimizer_state_dtypes(trainer: Any) -> list[str]:
    """The dtypes of the optimizer's per-parameter state tensors (AdamW's moments; the scalar
    step counts left out), read after training; empty when there is no optimizer state."""
    optimizer = getattr(trainer, "optimizer", None)
    state = getattr(optimizer, "state", None) or {}
    return sorted(
        {
            str(value.dtype).removeprefix("torch.")
            for per_param in state.values()
            for value in per_param.values()
            if isinstance(value, torch.Tensor) and value.dim() > 0
        }
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", required=True, help="local HF model directory")
    parser.add_argument("--steps", type=int, default=5, help="optimizer steps to run")
    parser.add_argument(
        "--lora",
        action="store_true",
        help=f"LoRA r={harness.LORA_R}, alpha={harness.LORA_ALPHA}, all-linear",
    )
    parser.add_argument("--out", required=True, help="JSON file for the per-step times")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--precision",
        choices=("bf16", "fp32"),
        default="bf16",
        help="bf16: GRPOConfig(bf16=True), bf16 autocast (over fp32 weights unless --weights-dtype "
        "bf16); fp32: bf16=False",
    )
    parser.add_argument(
        "--weights-dtype",
        choices=("fp32", "bf16"),
        default="fp32",
        help="fp32: model_init_kwargs unset (TRL loads float32); "
        'bf16: model_init_kwargs={"dtype": torch.bfloat16}, bf16 weights trained directly',
    )
    parser.add_argument(
        "--no-gradient-checkpointing",
        action="store_true",
        help="turn off gradient checkpointing (TRL's GRPOConfig turns it on by default)",
    )
    parser.add_argument(
        "--completion-length",
        type=int,
        default=harness.LENGTH,
        help=f"exactly this many new tokens per completion (default {harness.LENGTH}, B1's)",
    )
    args = parser.parse_args()

    from trl import GRPOConfig, GRPOTrainer

    prompts, group, length = harness.PROMPTS, harness.GROUP, args.completion_length
    run_dir = tempfile.mkdtemp(prefix="trl-b1-")
    config = GRPOConfig(
        output_dir=run_dir,
        use_cpu=True,
        bf16=args.precision == "bf16",
        per_device_train_batch_size=prompts * group,  # completions, not prompts
        gradient_accumulation_steps=1,
        num_generations=group,
        max_completion_length=length,
        generation_kwargs={"min_new_tokens": length},
        beta=0.04,
        num_iterations=1,
        learning_rate=1e-5,
        lr_scheduler_type="constant",
        max_steps=args.steps,
        logging_steps=1,
        save_strategy="no",
        eval_strategy="no",
        report_to="none",
        log_completions=False,
        disable_tqdm=True,
        seed=args.seed,
        gradient_checkpointing=not args.no_gradient_checkpointing,
        model_init_kwargs={"dtype": torch.bfloat16} if args.weights_dtype == "bf16" else None,
    )
    peft_config = None
    if args.lora:
        from peft import LoraConfig

        peft_config = LoraConfig(
            r=harness.LORA_R,
            lora_alpha=harness.LORA_ALPHA,
            lora_dropout=0.0,
            target_modules="all-linear",
            task_type="CAUSAL_LM",
        )
    timer = StepTimer()
    trainer = GRPOTrainer(
        model=args.model_dir,
        reward_funcs=sum_correct,
        args=config,
        train_dataset=addition_dataset(args.seed, size=max(1000, args.steps * prompts)),
        peft_config=peft_config,
        callbacks=[timer],
    )
    time_phases(trainer, timer)
    dtypes = param_dtypes(trainer)
    start = time.perf_counter()
    trainer.train()
    train_s = time.perf_counter() - start
    result = {
        "trainer": "trl",
        "workload": "B1-LoRA" if args.lora else "B1",
        "steps": args.steps,
        "completion_length": length,
        # bf16 weights compute in bf16 whether or not autocast is on
        "precision": "bf16" if config.bf16 or args.weights_dtype == "bf16" else "fp32",
        "bf16_autocast": bool(config.bf16),
        "weights_dtype": args.weights_dtype,
        "param_dtypes": dtypes,
        "optimizer_state_dtypes": optimizer_state_dtypes(trainer),
        "step_times": timer.step_times,
        "phases": timer.phases,
        "train_s": train_s,
        "logs": timer.logs,
        "torch_threads": torch.get_num_threads(),
        "gradient_checkpointing": config.gradient_checkpointing,
        "generation_batch_size": config.generation_batch_size,
        "steps_per_generation": config.steps_per_generation,
        "versions": {
            name: version(name)
            for name in ("trl", "transformers", "peft", "torch", "accelerate", "datasets")
        },
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
