"""Configuration: typed sections, one docstring per field, the only place defaults live.

A config is built from (1) these defaults, (2) an optional YAML file, (3) ``key=value``
overrides, in that order. Keys are dotted (``algorithm.beta=0.04``); a bare field name that
exists in exactly one section also works (``beta=0.04``), so TRL's ``GRPOConfig`` names carry
over. Unknown keys and values of the wrong type fail at once with the dotted key in the message.
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import itertools
import math
import os
import textwrap
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Union

import yaml


class ConfigError(ValueError):
    """A config key or value that cannot be used; the message names the key."""


@dataclass
class ModelConfig:
    """The policy model."""

    name: str = "smollm2-135m-instruct"
    """Preset name (smollm2-135m-instruct, tiny-random), local HF model directory or .gguf file."""
    lora: bool = False
    """Train LoRA adapters instead of all weights (reference policy = adapters disabled)."""
    lora_r: int = 16
    """LoRA rank."""
    lora_alpha: int = 32
    """LoRA scaling numerator (scale = lora_alpha / lora_r)."""
    lora_dropout: float = 0.0
    """Dropout on the LoRA input (keep 0 so log-probs are deterministic)."""
    lora_target_modules: str | list[str] = "all-linear"
    """Modules to adapt: 'all-linear' or a list of module names (q_proj, v_proj, ...)."""
    lora_rollout_copy: bool = True
    """Under LoRA, decode with a merged copy of the policy (faster); false = through the adapters (one model copy less)."""
    lora_merge_in_place: bool | Literal["auto"] = "auto"
    """Under LoRA, decode with the adapters merged into the base weights themselves, restored bitwise from a file-backed snapshot after each rollout (no merged copy; CPU; the base weights in the rollout dtype); auto = on a CPU that computes in bf16, in one process, where training.param_dtype allows bf16 weights."""
    reference_on_disk: bool | Literal["auto"] = "auto"
    """Full fine-tuning: map the frozen reference from an unlinked file in the cache dir; its pages leave RSS after each reference pass (exact; CPU only); auto = on CPU."""
    attn_implementation: str = "auto"
    """Attention kernel: auto (grouped on CPU, sdpa on GPU), grouped, eager, sdpa, or any HF name."""


@dataclass
class DataConfig:
    """Where prompts come from."""

    task: str = "arithmetic"
    """Built-in task name (see `groupwise tasks`)."""
    params: dict[str, Any] = field(default_factory=dict)
    """Task-specific parameters (e.g. arithmetic: min_value, max_value, operations)."""
    train_size: int = 5000
    """Number of training prompts to generate (procedural tasks)."""
    eval_size: int = 200
    """Number of held-out prompts for evaluation."""
    seed: int = 1234
    """Seed of the task's train/held-out split (independent of training.seed)."""


@dataclass
class RolloutConfig:
    """Sampling of the groups of completions."""

    num_generations: int = 8
    """G, completions sampled per prompt (the group). Must be >= 2."""
    max_completion_length: int = 16
    """Maximum new tokens per completion; longer ones are truncated (flagged)."""
    temperature: float = 1.0
    """Sampling temperature (also divides the logits when computing log-probs, as in TRL)."""
    top_p: float = 1.0
    """Nucleus sampling: keep the smallest token set with this much probability."""
    top_k: int = 0
    """Keep only the k most likely tokens (0 = off)."""
    min_new_tokens: int = 0
    """Forbid EOS before this many new tokens (benchmarks set it to fix the length)."""
    rank_invariant_sampling: bool = True
    """Sample by inverse CDF from uniforms drawn for the global batch: N processes sample as one (always on when N > 1); the same distribution as torch.multinomial, other draws, and faster rollouts on CPU (no exponential drawn per vocabulary entry; docs/log.md)."""
    compile: bool = False
    """torch.compile the decode steps over a static KV cache (faster decoding on CPU, after a compile per batch shape; docs/log.md)."""
    packed_decode: bool = True
    """Decode Llama-family models (Llama, Mistral, Qwen2 layouts; SmolLM2) in the local engine with weights packed once per rollout, the projections that share an input fused and a KV cache written in place (groupwise.kernels.packed_decode): the same tokens as transformers' forward, faster; other models, LoRA-wrapped layers and rollout.compile decode through transformers. false = transformers' forward at every step."""
    native_kernels: bool | Literal["auto"] = "auto"
    """Decode in bf16 on CPU through groupwise's C++ kernels (groupwise.kernels.native): the packed decode step's RMSNorms, rotary embedding with the cache writes, attention and SiLU (one call each instead of chains of small torch kernels, the same roundings with float32 sums in another order: greedy answers can differ in low-confidence tails), and the sampler (draw, entropy and log-prob in one pass per row: the same distribution, float32 sums in another order). Built with torch's cpp_extension on first use (~40 s once per machine; a C++ compiler and ninja). auto = on a CPU with AVX-512 where they can be built (a failed build falls back to torch's operations with a line on stderr)."""
    engine: str = "auto"
    """Rollout engine (groupwise.rollout.ENGINES): auto (the run plan's choice for this CPU kind or device, with its reason in plan.json: local everywhere so far), local (decode in-process), episodes (multi-turn with an environment), llamacpp (llama.cpp on a GGUF copy of the policy), vllm (a vLLM server), agent (your agent against an OpenAI-compatible endpoint of the policy) or replay (recorded completions); register your own with @ENGINES.register."""
    engine_kwargs: dict[str, Any] = field(default_factory=dict)
    """Engine-specific settings; unknown keys are refused with the valid ones listed (e.g. episodes: environment, max_turns; llamacpp: dtype, threads; vllm: base_url; agent: agent; replay: completions or file)."""
    max_staleness: int = 0
    """0 = each step's rollout is generated at its start with the current weights; 1 = one-step-off: the engine, in its own process, generates step k+1's rollout with the weights before update k while step k scores and updates (the batch is one update stale, corrected by the engine-mismatch importance weights, on under auto). Other values are not supported yet."""
    engine_process: bool = False
    """Run the rollout engine in its own process (spawned; the policy's weights shared with it through shared memory) even with max_staleness=0 (then it computes exactly what the engine computes in-process); max_staleness=1 implies it."""
    engine_threads: int = 0
    """torch threads of the engine's process; 0 = the trainer's threads with max_staleness=0, half of them (at least 1) with max_staleness=1, the trainer keeping the rest."""


@dataclass
class AlgorithmConfig:
    """The GRPO objective and its variants (formulas in groupwise.core)."""

    loss_type: Literal["grpo", "dapo", "dr_grpo"] = "dapo"
    """Loss aggregation: grpo (per-sequence mean, the paper), dapo (token mean), dr_grpo."""
    scale_rewards: Literal["group", "batch", "none"] = "group"
    """Advantage scaling: std of the group, std of the batch, or none (Dr. GRPO)."""
    beta: float = 0.0
    """KL coefficient to the reference policy (0 = no reference model is kept)."""
    kl_estimator: Literal["k1", "k2", "k3"] = "k3"
    """Per-token KL estimator; k3 is DeepSeekMath's unbiased one."""
    objective: Literal["clip", "cispo", "sapo"] = "clip"
    """Per-token objective: clip (PPO clipped surrogate), cispo (MiniMax-M1: clipped, detached importance weight times logp; every token keeps its gradient), sapo (Qwen: sigmoid gate of the ratio instead of the clip)."""
    epsilon: float = 0.2
    """Lower clip range of the ratio: clip(ratio, 1 - epsilon, ...)."""
    epsilon_high: float | None = None
    """Upper clip range (DAPO clip-higher uses 0.28); None = epsilon. Under objective=cispo the importance weight is capped at 1 + epsilon_high (TRL's cispo epsilon_high=5.0 is 4.0 here)."""
    sapo_temperature_pos: float = 1.0
    """SAPO gate temperature for tokens with positive advantage (objective=sapo)."""
    sapo_temperature_neg: float = 1.05
    """SAPO gate temperature for tokens with non-positive advantage; larger than _pos damps negative updates faster (objective=sapo)."""
    importance_sampling_level: Literal["token", "sequence"] = "token"
    """Importance ratio per token (GRPO) or per sequence (GSPO)."""
    top_entropy_quantile: float = 1.0
    """Only the tokens in this top fraction by entropy (over the batch's loss tokens) get the policy-gradient loss, not the KL term (arXiv 2506.01939 recommends 0.2); 1 = every token."""
    entropy_coef: float = 0.0
    """Entropy bonus coefficient c (TRL's name): loss = policy_loss - c * H, H = sum(H_t M_t) / N the token-mean entropy of the policy over the step's N loss tokens (only top_entropy_quantile's tokens when < 1), not rescaled by loss_type; > 0 rewards exploration; 0 = off (no entropy is computed). With use_adaptive_entropy: the initial coefficient."""
    use_adaptive_entropy: bool = False
    """Adapt entropy_coef after every optimizer update (Skywork-OR1, arXiv 2505.22312): c <- min(c + entropy_coef_delta, entropy_coef_max) if that update's H <= entropy_target, else c <- max(c - entropy_coef_delta, entropy_coef_min); an update applies c only if the previous update's H <= entropy_target (none on the first). The state is checkpointed."""
    entropy_coef_min: float = 0.0
    """Lower bound of the adaptive entropy coefficient (use_adaptive_entropy)."""
    entropy_coef_max: float = 1.0
    """Upper bound of the adaptive entropy coefficient (use_adaptive_entropy)."""
    entropy_coef_delta: float = 0.005
    """Step of the adaptive entropy coefficient per optimizer update: c <- c +- delta, clamped to [entropy_coef_min, entropy_coef_max]."""
    entropy_target: float = 0.2
    """Target token-mean entropy H (nats) of use_adaptive_entropy, over the tokens the bonus acts on: c grows while H <= target and is only applied then; set it near the `entropy` metric of early steps so the bonus engages before the entropy collapses."""
    num_iterations: int = 1
    """mu, policy updates per rollout against the old policy's log-probs."""
    mask_truncated_completions: bool = False
    """Exclude completions that hit max_completion_length from the loss (DAPO)."""
    dynamic_sampling: bool = False
    """DAPO's dynamic sampling (arXiv 2503.14476, section 3.2): a group whose rewards are all equal (std 0: zero advantages, no gradient) is left out of the batch, and new prompts' groups are generated and scored, a whole generation batch at a time, until the batch holds its P groups with reward variance; the loss is taken over those P groups (advantages computed over them), the reward metrics and the logged completions cover every completion generated (a completion left out shows advantage 0). A group is kept iff max_j r_ij > min_j r_ij over its G total rewards. Costs extra generation: each further batch is another step's worth of decoding and scoring (sampling/dynamic/gen_batches per step). Single process (refused under torchrun) with rollout.max_staleness=0."""
    max_num_gen_batches: int = 4
    """Under dynamic_sampling: the most generation batches (of P prompts each, the first included) a step draws (verl's algorithm.filter_groups.max_num_gen_batches). When the limit is reached with fewer than P groups with variance, the step trains on those it has and fills the rest of the batch with the first zero-variance groups it generated, so the batch keeps its size (sampling/dynamic/filled_zero_std counts them, and a line on stderr says so)."""
    vllm_importance_sampling_correction: bool | Literal["auto"] = "auto"
    """Correct for the mismatch between the rollout engine and the trainer: the policy term of each loss token is weighted by exp(old_logp - behaviour_logp), the trainer's over the engine's log-prob of the sampled token (TRL's name); auto = when the engine reports its log-probs (inference engines); true also asks the local engine for them; false = not applied, but measured (the sampling/... metrics) when the engine reports them."""
    vllm_importance_sampling_mode: Literal[
        "token_truncate", "token_mask", "sequence_truncate", "sequence_mask"
    ] = "sequence_mask"
    """Correction weights per token or per sequence (the product of the token ratios), truncated to [clip_min, clip_max] or zero outside them (mask)."""
    vllm_importance_sampling_clip_max: float | None = 3.0
    """Upper bound C_max of the correction weights (TRL's vllm_importance_sampling_cap); None = none."""
    vllm_importance_sampling_clip_min: float | None = None
    """Lower bound C_min of the correction weights (mask modes drop the tokens or sequences below it, as IcePop); None = none."""


@dataclass
class RewardsConfig:
    """Reward functions: built-in names or 'module:function' import paths."""

    funcs: list[str] | None = None
    """Reward functions; None = the task's default rewards."""
    weights: list[float] | None = None
    """One weight per reward function (TRL's reward_weights); None = all 1."""
    kwargs: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Keyword arguments per reward name, e.g. {overlong_penalty: {cache_length: 8}}."""
    unsafe_code_execution: bool = False
    """Let code rewards run model code WITHOUT a sandbox when bubblewrap is unavailable."""
    concurrent: bool = True
    """Run the reward functions of a batch concurrently (sync ones in threads, async awaited)."""
    timeout_s: float = 300.0
    """Stop the run with an error naming a reward function whose call takes longer than this many seconds, before the step's update (the last checkpoint stays the resume point); 0 = no limit."""


@dataclass
class TrainingConfig:
    """Optimisation, logging and outputs."""

    max_steps: int = 100
    """Training steps; a step is one rollout followed by num_iterations optimizer updates."""
    per_device_train_batch_size: int = 64
    """Completions per micro-batch (forward/backward) on each rank; a multiple of num_generations."""
    gradient_accumulation_steps: int = 1
    """Micro-batches per optimizer update; completions per step = this * batch size * ranks."""
    learning_rate: float = 2e-5
    """Peak AdamW learning rate."""
    lr_scheduler_type: Literal["constant", "linear", "cosine"] = "linear"
    """Schedule after warmup."""
    warmup_steps: int = 0
    """Linear warmup, in optimizer updates."""
    weight_decay: float = 0.0
    """AdamW weight decay."""
    adam_beta1: float = 0.9
    """AdamW beta1."""
    adam_beta2: float = 0.99
    """AdamW beta2."""
    max_grad_norm: float = 1.0
    """Clip the global gradient norm to this (0 = no clipping)."""
    seed: int = 0
    """Seed for sampling, data order and model init."""
    bf16: bool | Literal["auto"] = "auto"
    """bf16 compute: autocast for the policy forward/backward and bf16 rollout weights; auto = where the device computes bf16 natively (CUDA with bf16; a CPU whose bf16 matmul a cached probe measures >= 1.5x float32's)."""
    param_dtype: Literal["auto", "float32", "bfloat16"] = "auto"
    """Weights' dtype; bfloat16 = pure bf16 training with Kahan-compensated AdamW (less memory, no rollout copy); auto = bfloat16 where bf16 compute was picked on a CPU in one process (full fine-tuning), else float32."""
    bf16_rounding: Literal["kahan_sr_v", "kahan", "stochastic"] = "kahan_sr_v"
    """Pure bf16 AdamW: kahan_sr_v (Kahan-summed weights, bf16 second moment rounded stochastically: 6 bytes/parameter), kahan (float32 second moment: 8) or stochastic (stochastically rounded weights too: 4; learned the default run worse, docs/log.md)."""
    skip_zero_advantage_groups: bool = True
    """Leave groups whose advantages are all 0 out of the backward pass (exact: only when beta=0 and no entropy bonus; single process only)."""
    strategy: Literal["ddp", "fsdp"] = "ddp"
    """Under torchrun: ddp (full replica per rank) or fsdp (FSDP2: parameters, gradients, optimizer state sharded)."""
    gradient_checkpointing: bool = False
    """Recompute decoder activations in the backward pass (less memory; no shared-prompt KV cache)."""
    fused_kernels: bool | Literal["auto"] = "auto"
    """Train through groupwise.kernels.fused: RMSNorm, SwiGLU MLP, attention softmax saving bf16 inputs (less activation memory under pure bf16); auto = on under pure bf16 weights on CPU."""
    native_kernels: bool | Literal["auto"] = "auto"
    """Train in bf16 on CPU through groupwise's C++ kernels (groupwise.kernels.native): the log-probs of the update and the reference pass (per row of the LM head's logits the log-sum-exp, the token's log-prob and the entropy in one pass, their gradient in one more, instead of float32 copies and ~6 vocabulary-wide torch kernels each way) and, with training.fused_kernels, every RMSNorm's forward and backward (2 calls instead of ~20 small kernels). The same formulas and roundings, float32 sums in another order. Built on first use as rollout.native_kernels is. auto = on a CPU with AVX-512 where they can be built, computing in bf16."""
    compile_optimizer: bool | Literal["auto"] = "auto"
    """Under pure bf16 weights, run the Kahan-compensated AdamW step as one kernel per slice that torch.compile generates, instead of ~20 elementwise passes over float32 temporaries: the same update up to float32 rounding, faster (benchmarks/b1_levers.py, variant eager-optimizer). It compiles once per process (cached on disk) and runs eagerly if compiling fails. auto = on under pure bf16 weights on CPU when a C++ compiler is on PATH (torch.compile's CPU backend needs one)."""
    max_tokens_per_microbatch: int | Literal["auto"] = "auto"
    """Tokens one forward/backward holds (each group's prompt once plus its G completions at the batch's width): the same update either way, a bound on activation memory. An integer N packs whole groups up to N tokens and runs a group longer than N in parts (the fewest, a divisor of G, down to one completion each, each part with its own pass over the prompt; somewhat slower): a hard bound. auto = whole groups packed up to 512 tokens, and a longer group whole while its activations fit in a quarter of the memory available when the run starts (estimated from the model's shape), else in the fewest parts that fit; the plan (plan.json) records that memory. 0 = no limit."""
    logprob_chunk_size: int = 1024
    """Tokens per chunk when computing log-probs from hidden states."""
    num_threads: int = 0
    """torch intra-op threads on CPU (0 = one per core)."""
    device: str = "auto"
    """'auto' (cuda if available, else cpu), 'cpu' or 'cuda[:N]'."""
    output_dir: str = "runs/default"
    """Run directory: config.yaml, metrics.jsonl, summary.json, final/."""
    logging_steps: int = 1
    """Write metrics every this many steps."""
    log_completions: bool = True
    """Write every prompt, completion, reward and advantage to completions.jsonl."""
    log_completions_steps: int = 10
    """Show sampled completions in the live view every this many steps (0 = never)."""
    num_completions_to_print: int = 2
    """How many completions the live view shows each time (the step's best, then its worst)."""
    save_final: bool = True
    """Save the trained model (or adapter) to output_dir/final, with its model card (README.md)."""
    export_gguf: list[str] = field(default_factory=list)
    """GGUF types to write into output_dir/final at the end (f32, bf16, f16, q8_0, q4_k_m; the quantized ones need llama-cpp-python), each with an Ollama Modelfile; [] = none (groupwise export does it later)."""
    save_steps: int = 50
    """Write a resumable checkpoint every this many steps and at the end (0 = never)."""
    save_total_limit: int = 2
    """Keep only the newest this many checkpoints (0 = keep all)."""
    resume: str = ""
    """'' = start fresh, 'auto' = continue from the newest checkpoint in output_dir (fresh if none), or a checkpoint path."""
    overwrite_output_dir: bool = False
    """Start fresh even if output_dir holds a run (its logs and checkpoints are deleted)."""
    max_nonfinite_updates: int = 5
    """Stop the run after this many non-finite losses/gradients in a row (0 = never stop)."""
    progress: bool = True
    """Show a progress bar on the terminal."""
    report_to: list[str] = field(default_factory=list)
    """Live trackers besides metrics.jsonl: tensorboard (output_dir/tensorboard), wandb."""
    report: bool = True
    """Write output_dir/report.html and plots/ when training ends."""


@dataclass
class EvalConfig:
    """Held-out evaluation (greedy accuracy)."""

    before: bool = True
    """Evaluate before training."""
    after: bool = True
    """Evaluate after training."""
    every_steps: int = 25
    """Also evaluate every this many steps (0 = never)."""
    max_new_tokens: int = 32
    """Maximum new tokens when generating answers for evaluation."""
    batch_size: int = 64
    """Prompts per evaluation batch."""


@dataclass
class Config:
    """A complete groupwise run."""

    model: ModelConfig = field(default_factory=ModelConfig)
    """The policy model."""
    data: DataConfig = field(default_factory=DataConfig)
    """Prompts and the task."""
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    """Sampling."""
    algorithm: AlgorithmConfig = field(default_factory=AlgorithmConfig)
    """The objective."""
    rewards: RewardsConfig = field(default_factory=RewardsConfig)
    """Reward functions."""
    training: TrainingConfig = field(default_factory=TrainingConfig)
    """Optimisation and outputs."""
    eval: EvalConfig = field(default_factory=EvalConfig)
    """Evaluation."""


SECTIONS: dict[str, type] = {f.name: f.type for f in dataclasses.fields(Config)}  # type: ignore[misc]


def _section_types() -> dict[str, type]:
    hints = typing.get_type_hints(Config)
    return {name: hints[name] for name in SECTIONS}


def _coerce(key: str, value: Any, annotation: Any) -> Any:
    """Check ``value`` against ``annotation`` (converting YAML/CLI scalars), or raise."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if annotation is Any:
        return value
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        for arg in (a for a in args if a is not type(None)):
            try:
                return _coerce(key, value, arg)
            except ConfigError:
                continue
        raise ConfigError(f"{key}: {value!r} is not {_type_name(annotation)}")
    if origin is Literal:
        if value not in args:
            valid = ", ".join(str(a) for a in args)
            raise ConfigError(f"{key}: {value!r} is not one of: {valid}")
        return value
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        return [_coerce(f"{key}[{i}]", v, args[0]) for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        return dict(value)
    if annotation is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected true or false, got {value!r}")
    if annotation is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected an integer, got {value!r}")
    if annotation is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML reads 1e-5 (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"{key}: expected a number, got {value!r}")
    if annotation is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{key}: expected a string, got {value!r}")
    raise ConfigError(f"{key}: unsupported annotation {annotation!r}")


def _type_name(annotation: Any) -> str:
    """What a value of ``annotation`` may be, in a user's words ("true, false or 'auto'")."""
    origin = typing.get_origin(annotation)
    if origin in (Union, types.UnionType):
        names = [_type_name(a) for a in typing.get_args(annotation) if a is not type(None)]
        return " or ".join(names)
    if origin is Literal:
        return ", ".join(repr(a) for a in typing.get_args(annotation))
    if annotation is bool:
        return "true, false"
    name = getattr(annotation, "__name__", str(annotation).replace("typing.", ""))
    return {"float": "a number", "int": "an integer", "str": "a string", "list": "a list"}.get(
        name, name
    )


def _build_section(name: str, cls: type, values: dict[str, Any]) -> Any:
    if not isinstance(values, dict):
        raise ConfigError(f"{name}: expected a mapping of fields, got {values!r}")
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ConfigError(
            f"unknown config key {name}.{unknown[0]}; valid keys in '{name}': "
            + ", ".join(sorted(known))
        )
    kwargs = {k: _coerce(f"{name}.{k}", v, hints[k]) for k, v in values.items()}
    return cls(**kwargs)


def config_from_dict(data: dict[str, Any]) -> Config:
    """Build and validate a ``Config`` from nested plain data (as loaded from YAML)."""
    if not isinstance(data, dict):
        raise ConfigError(f"a config must be a mapping of sections, got {type(data).__name__}")
    unknown = sorted(set(data) - set(SECTIONS))
    if unknown:
        raise ConfigError(
            f"unknown config section {unknown[0]!r}; valid sections: {', '.join(SECTIONS)}"
        )
    types_ = _section_types()
    sections = {name: _build_section(name, types_[name], data.get(name) or {}) for name in SECTIONS}
    config = Config(**sections)
    validate(config)
    return config


def config_to_dict(config: Config) -> dict[str, Any]:
    """Plain nested data of a config (what ``config.yaml`` holds)."""
    return dataclasses.asdict(config)


def _field_index() -> dict[str, list[str]]:
    """Leaf field name -> the sections that have it."""
    index: dict[str, list[str]] = {}
    for name, cls in _section_types().items():
        for f in dataclasses.fields(cls):
            index.setdefault(f.name, []).append(name)
    return index


def resolve_key(key: str) -> tuple[str, str]:
    """Map ``section.field`` or a unique bare ``field`` to (section, field)."""
    if "." in key:
        section, _, name = key.partition(".")
        if section not in SECTIONS:
            raise ConfigError(
                f"unknown config key {key!r}: no section {section!r}; valid sections: "
                + ", ".join(SECTIONS)
            )
        return section, name
    owners = _field_index().get(key, [])
    if len(owners) == 1:
        return owners[0], key
    if len(owners) > 1:
        options = ", ".join(f"{s}.{key}" for s in owners)
        raise ConfigError(f"config key {key!r} is ambiguous; use one of: {options}")
    raise ConfigError(f"unknown config key {key!r} (see `groupwise config` for the keys)")


def parse_override(text: str) -> tuple[str, str, Any]:
    """Parse ``key=value`` (value read as YAML: numbers, true/false, null, lists)."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} is not of the form key=value")
    key, _, raw = text.partition("=")
    section, name = resolve_key(key.strip())
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as exc:
        raise ConfigError(f"{section}.{name}: cannot parse value {raw!r}: {exc}") from exc
    return section, name, value


def load_config(path: str | os.PathLike[str] | None = None, overrides: list[str] = ()) -> Config:  # type: ignore[assignment]
    """Defaults, then the YAML file at ``path`` (if any), then ``key=value`` overrides."""
    data: dict[str, Any] = {}
    if path is not None:
        file = Path(path)
        if not file.exists():
            raise ConfigError(f"config file {file} does not exist")
        loaded = yaml.safe_load(file.read_text()) or {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"{file}: a config file must be a mapping of sections")
        for key, value in loaded.items():  # allow bare TRL-style names at the top level
            if key in SECTIONS:
                data.setdefault(key, {}).update(value or {})
            else:
                section, name = resolve_key(key)
                data.setdefault(section, {})[name] = value
    for text in overrides:
        section, name, value = parse_override(text)
        _set_override(data.setdefault(section, {}), section, name, value)
    return config_from_dict(data)


def _set_override(values: dict[str, Any], section: str, name: str, value: Any) -> None:
    """``values[name] = value``; a dotted ``name`` (``engine_kwargs.backend``) sets one key
    inside a mapping field, keeping the mapping's other keys (from the file or defaults)."""
    field_name, _, path = name.partition(".")
    if not path:
        values[name] = value
        return
    hints = typing.get_type_hints(_section_types()[section])
    if field_name not in hints or typing.get_origin(hints[field_name]) is not dict:
        mappings = [k for k, h in hints.items() if typing.get_origin(h) is dict]
        raise ConfigError(
            f"{section}.{name}: only a mapping field takes a dotted key ({section}: "
            f"{', '.join(mappings) or 'none'})"
        )
    current = values.get(field_name)
    if current is None:
        default = next(
            f for f in dataclasses.fields(_section_types()[section]) if f.name == field_name
        )
        current = default.default_factory() if callable(default.default_factory) else {}
    if not isinstance(current, dict):
        raise ConfigError(f"{section}.{field_name}: expected a mapping, got {current!r}")
    target = values[field_name] = dict(current)
    *parents, last = path.split(".")
    for key in parents:
        child = target.get(key)
        target[key] = dict(child) if isinstance(child, dict) else {}
        target = target[key]
    target[last] = value


def validate(config: Config) -> None:
    """Cross-field checks; each error names the key(s) to fix."""
    r, t, a = config.rollout, config.training, config.algorithm
    if r.num_generations < 2:
        raise ConfigError(
            f"rollout.num_generations must be >= 2 (a group needs at least two completions to "
            f"compare), got {r.num_generations}"
        )
    if t.per_device_train_batch_size % r.num_generations:
        raise ConfigError(
            f"training.per_device_train_batch_size ({t.per_device_train_batch_size}) must be a "
            f"multiple of rollout.num_generations ({r.num_generations}), so each micro-batch "
            "holds whole groups"
        )
    positive = {
        "rollout.max_completion_length": r.max_completion_length,
        "training.per_device_train_batch_size": t.per_device_train_batch_size,
        "training.gradient_accumulation_steps": t.gradient_accumulation_steps,
        "algorithm.num_iterations": a.num_iterations,
        "training.logging_steps": t.logging_steps,
        "training.logprob_chunk_size": t.logprob_chunk_size,
        "data.eval_size": config.data.eval_size + 1,
        "algorithm.max_num_gen_batches": a.max_num_gen_batches,
    }
    for key, value in positive.items():
        if value < 1:
            raise ConfigError(f"{key} must be >= 1, got {value}")
    non_negative = {
        "training.max_tokens_per_microbatch": t.max_tokens_per_microbatch
        if isinstance(t.max_tokens_per_microbatch, int)
        else 0,
        "training.max_steps": t.max_steps,
        "rollout.min_new_tokens": r.min_new_tokens,
        "training.save_steps": t.save_steps,
        "training.save_total_limit": t.save_total_limit,
        "training.max_nonfinite_updates": t.max_nonfinite_updates,
        "training.log_completions_steps": t.log_completions_steps,
        "training.num_completions_to_print": t.num_completions_to_print,
    }
    for key, value in non_negative.items():
        if value < 0:
            raise ConfigError(f"{key} must be >= 0, got {value}")
    _validate_ranges(config)
    _validate_combinations(config)
    _validate_rollout_process(config.rollout)


def engine_in_process(r: RolloutConfig) -> bool:
    """Whether the rollout engine runs in its own process (``rollout.engine_process``, or
    ``rollout.max_staleness`` > 0, which needs it)."""
    return r.engine_process or r.max_staleness > 0


PROCESS_UNSUPPORTED_ENGINES = ("episodes", "agent", "vllm")
"""Engines that cannot run in a process of their own yet (environments and servers)."""


def _validate_rollout_process(r: RolloutConfig) -> None:
    """``rollout.max_staleness`` 0 or 1; an engine that can run in a process of its own."""
    if r.max_staleness not in (0, 1):
        raise ConfigError(
            f"rollout.max_staleness={r.max_staleness} is not supported yet; valid: 0 "
            "(synchronous) or 1 (one-step-off generation)"
        )
    if r.engine_threads < 0:
        raise ConfigError(f"rollout.engine_threads must be >= 0, got {r.engine_threads}")
    if engine_in_process(r) and r.engine in PROCESS_UNSUPPORTED_ENGINES:
        key = "max_staleness=1" if r.max_staleness else "engine_process=true"
        raise ConfigError(
            f"rollout.{key} runs the rollout engine in its own process, which the "
            f"{r.engine} engine does not support yet; use rollout.engine=local or llamacpp, "
            "or set rollout.max_staleness=0 and rollout.engine_process=false"
        )


def _validate_ranges(config: Config) -> None:
    """Values that must lie in a range."""
    r, t, a = config.rollout, config.training, config.algorithm
    if r.temperature < 0:
        raise ConfigError(f"rollout.temperature must be >= 0, got {r.temperature}")
    if not 0 < r.top_p <= 1:
        raise ConfigError(f"rollout.top_p must be in (0, 1], got {r.top_p}")
    if a.epsilon < 0 or (a.epsilon_high is not None and a.epsilon_high < 0):
        raise ConfigError("algorithm.epsilon and algorithm.epsilon_high must be >= 0")
    if a.beta < 0:
        raise ConfigError(f"algorithm.beta must be >= 0, got {a.beta}")
    if not 0 < a.top_entropy_quantile <= 1:
        raise ConfigError(
            f"algorithm.top_entropy_quantile must be in (0, 1], got {a.top_entropy_quantile}"
        )
    if a.sapo_temperature_pos <= 0 or a.sapo_temperature_neg <= 0:
        raise ConfigError("algorithm.sapo_temperature_pos and _neg must be > 0")
    _validate_entropy_bonus(a)
    if t.learning_rate <= 0:
        raise ConfigError(f"training.learning_rate must be > 0, got {t.learning_rate}")
    _validate_correction_bounds(a)
    if not config.rewards.timeout_s >= 0:
        raise ConfigError(
            f"rewards.timeout_s must be >= 0 (0 = no limit), got {config.rewards.timeout_s}"
        )


def _validate_entropy_bonus(a: AlgorithmConfig) -> None:
    """The entropy coefficient and its adaptive bounds: finite, ordered, a step >= 0."""
    values = {
        "entropy_coef": a.entropy_coef,
        "entropy_coef_min": a.entropy_coef_min,
        "entropy_coef_max": a.entropy_coef_max,
        "entropy_coef_delta": a.entropy_coef_delta,
        "entropy_target": a.entropy_target,
    }
    for name, value in values.items():
        if not math.isfinite(value):
            raise ConfigError(f"algorithm.{name} must be a finite number, got {value}")
    if a.entropy_coef_min > a.entropy_coef_max:
        raise ConfigError(
            f"algorithm.entropy_coef_min ({a.entropy_coef_min}) must be <= "
            f"algorithm.entropy_coef_max ({a.entropy_coef_max})"
        )
    if a.entropy_coef_delta < 0:
        raise ConfigError(f"algorithm.entropy_coef_delta must be >= 0, got {a.entropy_coef_delta}")
    if a.entropy_target < 0:
        raise ConfigError(
            f"algorithm.entropy_target must be >= 0 (an entropy in nats), got {a.entropy_target}"
        )
    if a.use_adaptive_entropy and not a.entropy_coef_min <= a.entropy_coef <= a.entropy_coef_max:
        raise ConfigError(
            f"algorithm.entropy_coef ({a.entropy_coef}) is the initial adaptive coefficient and "
            f"must lie in [algorithm.entropy_coef_min, algorithm.entropy_coef_max] = "
            f"[{a.entropy_coef_min}, {a.entropy_coef_max}]"
        )


def _validate_correction_bounds(a: AlgorithmConfig) -> None:
    """``vllm_importance_sampling_clip_min < clip_max``; a truncate mode needs one of them."""
    lo, hi = a.vllm_importance_sampling_clip_min, a.vllm_importance_sampling_clip_max
    key = "algorithm.vllm_importance_sampling_clip"
    if (lo is not None and lo < 0) or (hi is not None and hi <= 0):
        raise ConfigError(f"{key}_min must be >= 0 and {key}_max > 0, got {lo} and {hi}")
    if lo is not None and hi is not None and lo >= hi:
        raise ConfigError(f"{key}_min ({lo}) must be less than {key}_max ({hi})")
    truncate = a.vllm_importance_sampling_mode.endswith("truncate")
    if (
        truncate
        and a.vllm_importance_sampling_correction is not False
        and lo is None
        and hi is None
    ):
        raise ConfigError(
            f"algorithm.vllm_importance_sampling_mode={a.vllm_importance_sampling_mode} needs "
            f"{key}_min or {key}_max (a truncation without bounds is no truncation)"
        )


def _validate_combinations(config: Config) -> None:
    """Settings that do not go together."""
    t = config.training
    if t.param_dtype == "bfloat16" and t.bf16 is False:
        raise ConfigError("training.param_dtype=bfloat16 needs training.bf16=true (or auto)")
    m = config.model
    if m.lora_merge_in_place is True and not (m.lora and m.lora_rollout_copy):
        raise ConfigError(
            "model.lora_merge_in_place=true needs model.lora=true and model.lora_rollout_copy="
            "true (it replaces the merged copy); set model.lora_merge_in_place=false"
        )
    if m.lora_merge_in_place is True and "auto" not in (t.bf16, t.param_dtype):  # else resolved
        check_merge_in_place_dtype(t.param_dtype, bool(t.bf16))
    a = config.algorithm
    if a.dynamic_sampling and config.rollout.max_staleness > 0:
        raise ConfigError(
            "algorithm.dynamic_sampling=true draws more prompts within a step, which one-step-off "
            "generation does not support yet; set rollout.max_staleness=0 or "
            "algorithm.dynamic_sampling=false"
        )
    if t.export_gguf and not t.save_final:
        raise ConfigError(
            "training.export_gguf writes into output_dir/final, which training.save_final=false "
            "does not write; set training.save_final=true or training.export_gguf=[]"
        )
    if t.strategy == "fsdp" and config.model.lora:
        raise ConfigError(
            "training.strategy=fsdp does not support model.lora=true; use training.strategy=ddp "
            "(LoRA adapters are small enough to replicate)"
        )
    w = config.rewards.weights
    if w is not None and config.rewards.funcs is not None and len(w) != len(config.rewards.funcs):
        raise ConfigError(
            f"rewards.weights has {len(w)} values but rewards.funcs has "
            f"{len(config.rewards.funcs)}; give one weight per function"
        )


# Keys a resumed run may change: they steer logging, saving, evaluation and the run's length,
# not the maths of the steps already taken. Everything else must match the checkpoint.
RESUME_SAFE_KEYS = frozenset(
    {
        "rewards.timeout_s",
        "training.max_steps",
        "training.logging_steps",
        "training.log_completions",
        "training.log_completions_steps",
        "training.num_completions_to_print",
        "training.save_final",
        "training.export_gguf",
        "training.save_steps",
        "training.save_total_limit",
        "training.resume",
        "training.overwrite_output_dir",
        "training.max_nonfinite_updates",
        "training.output_dir",
        "training.num_threads",
        "training.progress",
        "training.report_to",
        "training.report",
        "rewards.concurrent",
    }
)
RESUME_SAFE_SECTIONS = frozenset({"eval"})


def check_merge_in_place_dtype(param_dtype: str, bf16: bool) -> None:
    """``model.lora_merge_in_place`` decodes with the base weights, so they must be in the
    rollout dtype (bf16 under bf16 compute, float32 otherwise)."""
    if param_dtype != ("bfloat16" if bf16 else "float32"):
        raise ConfigError(
            "model.lora_merge_in_place=true decodes with the base weights themselves, so they "
            f"must be in the rollout dtype ({'bfloat16' if bf16 else 'float32'} here): set "
            "training.param_dtype=bfloat16 with training.bf16=true, or "
            "model.lora_merge_in_place=false"
        )


def resume_conflicts(saved: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """Keys whose value differs between a checkpoint's config and this run's, unsafe to change.

    Both arguments are ``config_to_dict`` outputs. Returns ``"key: saved -> now"`` lines; keys
    in ``RESUME_SAFE_KEYS`` or a section of ``RESUME_SAFE_SECTIONS`` may differ.
    """
    conflicts = []
    for section, fields in current.items():
        if section in RESUME_SAFE_SECTIONS:
            continue
        old_fields = saved.get(section, {})
        for name, value in fields.items():
            key = f"{section}.{name}"
            old = old_fields.get(name, value)
            if key not in RESUME_SAFE_KEYS and old != value:
                conflicts.append(f"{key}: {old!r} -> {value!r}")
    return conflicts


def field_docs(cls: type) -> dict[str, str]:
    """The docstring written under each field of a config dataclass."""
    tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    body = tree.body[0].body  # type: ignore[attr-defined]
    docs: dict[str, str] = {}
    for node, nxt in itertools.pairwise(body):
        if (
            isinstance(node, ast.AnnAssign)
            and isinstance(node.target, ast.Name)
            and isinstance(nxt, ast.Expr)
            and isinstance(nxt.value, ast.Constant)
            and isinstance(nxt.value.value, str)
        ):
            docs[node.target.id] = nxt.value.value.strip()
    return docs


def reference_markdown() -> str:
    """The config reference as Markdown tables (used by ``groupwise config`` and the README)."""
    lines: list[str] = []
    defaults = config_to_dict(Config())
    for section, cls in _section_types().items():
        lines += [f"### `{section}`", "", "| key | default | meaning |", "| --- | --- | --- |"]
        docs = field_docs(cls)
        for f in dataclasses.fields(cls):
            default = defaults[section][f.name]
            lines.append(f"| `{section}.{f.name}` | `{default!r}` | {docs.get(f.name, '')} |")
        lines.append("")
    return "\n".join(lines)
