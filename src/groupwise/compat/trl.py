"""TRL's interface on groupwise: ``GRPOConfig`` and ``GRPOTrainer(model=..., args=...)``.

A script written for TRL runs with its import changed::

    from groupwise import GRPOTrainer
    from groupwise.compat.trl import GRPOConfig

    args = GRPOConfig(output_dir="runs/x", learning_rate=1e-5, num_generations=8, max_steps=50)
    trainer = GRPOTrainer(model="smollm2-135m-instruct", reward_funcs=reward_len, args=args,
                          train_dataset=dataset)
    trainer.train()

:class:`GRPOConfig` has TRL's field names with TRL's defaults (as documentation of what TRL
would do), but it maps onto the nested :class:`groupwise.config.Config`, which stays the one
source of groupwise's defaults: only the fields you *set* override it (``to_config()`` shows
what a run uses). A TRL field groupwise does not implement raises :class:`ConfigError` naming it
when set to anything but its default; an unknown keyword raises ``TypeError`` naming it. A few
groupwise-only fields (:data:`GROUPWISE_ONLY`, e.g. ``dynamic_sampling``) are accepted too.

Datasets (``datasets.Dataset``, a list of dicts, or a groupwise task name) become a
:class:`groupwise.data.Task`; a ``peft.LoraConfig`` sets ``model.lora*``; user reward
functions are called as TRL calls them (:func:`groupwise.rewards.base.trl_reward`). TRL's
agent arguments (``tools=``, ``environment_factory=``, ``max_tool_calling_iterations``) run on
the ``episodes`` engine (:mod:`groupwise.compat.trl_agents`); TRL arguments groupwise does not
take fail naming the nearest groupwise setting.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from groupwise.compat.trl_agents import AgentSetup, agent_setup, refuse_arguments
from groupwise.config import Config, ConfigError, config_from_dict, config_to_dict
from groupwise.data import Row, Task
from groupwise.data.tasks import task_from_config
from groupwise.rewards.base import AnyRewardFunc, trl_reward

_C = TypeVar("_C", bound=type)

DIRECT: dict[str, str] = {
    "output_dir": "training.output_dir",
    "overwrite_output_dir": "training.overwrite_output_dir",
    "per_device_train_batch_size": "training.per_device_train_batch_size",
    "gradient_accumulation_steps": "training.gradient_accumulation_steps",
    "learning_rate": "training.learning_rate",
    "lr_scheduler_type": "training.lr_scheduler_type",
    "warmup_steps": "training.warmup_steps",
    "weight_decay": "training.weight_decay",
    "adam_beta1": "training.adam_beta1",
    "adam_beta2": "training.adam_beta2",
    "max_grad_norm": "training.max_grad_norm",
    "seed": "training.seed",
    "gradient_checkpointing": "training.gradient_checkpointing",
    "logging_steps": "training.logging_steps",
    "save_steps": "training.save_steps",
    "log_completions": "training.log_completions",
    "per_device_eval_batch_size": "eval.batch_size",
    "num_generations": "rollout.num_generations",
    "max_completion_length": "rollout.max_completion_length",
    "temperature": "rollout.temperature",
    "top_p": "rollout.top_p",
    "top_k": "rollout.top_k",
    "beta": "algorithm.beta",
    "num_iterations": "algorithm.num_iterations",
    "epsilon": "algorithm.epsilon",
    "importance_sampling_level": "algorithm.importance_sampling_level",
    "mask_truncated_completions": "algorithm.mask_truncated_completions",
    "top_entropy_quantile": "algorithm.top_entropy_quantile",
    "entropy_coef": "algorithm.entropy_coef",
    "use_adaptive_entropy": "algorithm.use_adaptive_entropy",
    "entropy_coef_min": "algorithm.entropy_coef_min",
    "entropy_coef_max": "algorithm.entropy_coef_max",
    "entropy_coef_delta": "algorithm.entropy_coef_delta",
    "entropy_target": "algorithm.entropy_target",
    "sapo_temperature_pos": "algorithm.sapo_temperature_pos",
    "sapo_temperature_neg": "algorithm.sapo_temperature_neg",
    "vllm_importance_sampling_correction": "algorithm.vllm_importance_sampling_correction",
    "vllm_importance_sampling_mode": "algorithm.vllm_importance_sampling_mode",
    "reward_weights": "rewards.weights",
}
"""TRL field -> the groupwise key it sets unchanged (None values are skipped)."""

GROUPWISE_ONLY: dict[str, str] = {
    "dynamic_sampling": "algorithm.dynamic_sampling",
    "max_num_gen_batches": "algorithm.max_num_gen_batches",
}
"""Fields TRL's GRPOConfig does not have, accepted as extra keyword arguments -> the groupwise
key each sets unchanged (None values are skipped)."""

UNSUPPORTED: dict[str, str] = {
    "fp16": "groupwise computes in bf16 or float32 (bf16=...)",
    "use_vllm": "groupwise decodes with its own rollout engines (rollout.engine)",
    "vllm_mode": "groupwise decodes with its own rollout engines (rollout.engine)",
    "generation_batch_size": "one generation batch per step: per_device_train_batch_size x "
    "gradient_accumulation_steps completions",
    "steps_per_generation": "one generation per step (use num_iterations for reuse)",
    "num_generations_eval": "evaluation is greedy, one completion per prompt",
    "min_p": "sampling supports temperature, top_p and top_k",
    "repetition_penalty": "sampling supports temperature, top_p and top_k",
    "generation_kwargs": "sampling supports temperature, top_p and top_k",
    "chat_template_kwargs": "prompts are rendered with the model's chat template as is",
    "max_prompt_length": "groupwise does not truncate prompts",
    "delta": "two-sided clipping is not implemented (objective: clip, cispo, sapo)",
    "multi_objective_aggregation": "rewards are summed, then scaled (sum_then_normalize)",
    "sync_ref_model": "the reference policy stays the initial one",
    "remove_unused_columns": "every dataset column reaches the reward functions",
    "shuffle_dataset": "the training rows are always shuffled (seeded)",
    "disable_dropout": "not implemented",
    "cast_lm_head_to_fp32": "not implemented",
    "optim": "the optimizer is AdamW",
    "adam_epsilon": "AdamW's epsilon is fixed at 1e-8",
    "lr_scheduler_kwargs": "lr_scheduler_type takes no arguments",
    "run_name": "trackers name runs after output_dir",
    "push_to_hub": "the trained model is saved to output_dir/final",
    "use_liger_kernel": "see training.fused_kernels",
    "torch_compile": "see rollout.compile",
    "off_policy_mask_threshold": "not implemented",
    "use_bias_correction_kl": "not implemented",
}
"""TRL fields groupwise does not implement, and why (setting one to a non-default value fails)."""


def _records_set_fields(cls: _C) -> _C:
    """Make ``cls(...)`` remember which fields the caller set (and reject unknown keywords
    with a ``TypeError`` naming them and the nearest field)."""
    init = vars(cls)["__init__"]
    names = [f.name for f in dataclasses.fields(cls)]

    @functools.wraps(init)
    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        for key in kwargs:
            if key not in names:
                near = difflib.get_close_matches(key, names, n=1)
                hint = f"; did you mean {near[0]!r}?" if near else ""
                raise TypeError(f"GRPOConfig got an unknown keyword argument {key!r}{hint}")
        init(self, *args, **kwargs)
        object.__setattr__(self, "_set", set(names[: len(args)]) | set(kwargs))

    setattr(cls, "__init__", __init__)  # noqa: B010
    return cls


@_records_set_fields
@dataclass
class GRPOConfig:
    """TRL's ``GRPOConfig`` fields (TRL's defaults) mapped onto groupwise's nested ``Config``.

    Only the fields set (as arguments, or assigned later) override groupwise's defaults; see
    :meth:`to_config`. Fields in :data:`UNSUPPORTED` fail when set to a non-default value.
    """

    output_dir: str = "trainer_output"
    """Run directory (training.output_dir)."""
    overwrite_output_dir: bool = False
    """Start fresh even if output_dir holds a run (training.overwrite_output_dir)."""
    max_steps: int = -1
    """Training steps (training.max_steps); -1 = from num_train_epochs when that is set."""
    num_train_epochs: float = 3.0
    """Passes over train_dataset; sets training.max_steps when set and max_steps is not."""
    per_device_train_batch_size: int = 8
    """Completions per micro-batch per device, a multiple of num_generations (as in TRL)."""
    gradient_accumulation_steps: int = 1
    """Micro-batches per optimizer update."""
    learning_rate: float = 1e-6
    """Peak AdamW learning rate."""
    lr_scheduler_type: str = "linear"
    """Schedule after warmup: constant, linear or cosine."""
    warmup_steps: int = 0
    """Linear warmup, in optimizer updates."""
    warmup_ratio: float = 0.0
    """Warmup as a fraction of all optimizer updates (max_steps x num_iterations)."""
    weight_decay: float = 0.0
    """AdamW weight decay."""
    adam_beta1: float = 0.9
    """AdamW beta1."""
    adam_beta2: float = 0.999
    """AdamW beta2."""
    max_grad_norm: float = 1.0
    """Clip the global gradient norm to this."""
    seed: int = 42
    """Seed for sampling, data order and model init (training.seed)."""
    bf16: bool | None = None
    """bf16 compute (training.bf16); None = groupwise decides per device (auto)."""
    gradient_checkpointing: bool = True
    """Recompute activations in the backward pass (training.gradient_checkpointing)."""
    logging_steps: int = 10
    """Write metrics every this many steps."""
    save_strategy: str = "steps"
    """steps (every save_steps) or no (no checkpoints: training.save_steps=0)."""
    save_steps: int = 500
    """Checkpoint every this many steps."""
    save_total_limit: int | None = None
    """Keep only the newest this many checkpoints; None = all."""
    resume_from_checkpoint: str | bool | None = None
    """True = newest checkpoint in output_dir, a path = that checkpoint (training.resume)."""
    report_to: str | list[str] = "none"
    """Trackers besides metrics.jsonl: none, tensorboard, wandb, or a list."""
    disable_tqdm: bool = False
    """Hide the progress bar (training.progress=false)."""
    use_cpu: bool = False
    """Train on the CPU even when a GPU is present (training.device=cpu)."""
    log_completions: bool = False
    """Write every completion to completions.jsonl (training.log_completions)."""
    num_completions_to_print: int | None = None
    """Completions the live view shows each time."""
    eval_strategy: str = "no"
    """no (no evaluation) or steps (every eval_steps, else logging_steps)."""
    eval_steps: int | None = None
    """Evaluate every this many steps under eval_strategy=steps."""
    per_device_eval_batch_size: int = 8
    """Prompts per evaluation batch (eval.batch_size)."""
    num_generations: int = 8
    """G, completions per prompt."""
    max_completion_length: int = 256
    """Maximum new tokens per completion."""
    temperature: float = 1.0
    """Sampling temperature."""
    top_p: float = 1.0
    """Nucleus sampling mass."""
    top_k: int = 0
    """Top-k sampling (0 = off)."""
    beta: float = 0.0
    """KL coefficient to the reference policy."""
    num_iterations: int = 1
    """mu, updates per generation."""
    epsilon: float = 0.2
    """Lower clip range."""
    epsilon_high: float | None = None
    """Upper clip range; under loss_type=cispo the importance-weight cap (TRL's 5.0 is
    groupwise's algorithm.epsilon_high=4.0: converted)."""
    importance_sampling_level: str = "token"
    """token (GRPO) or sequence (GSPO) importance ratios."""
    scale_rewards: str | bool = "group"
    """group/True, batch, or none/False."""
    loss_type: str = "dapo"
    """grpo, dapo, dr_grpo, cispo (objective=cispo, dapo aggregation) or sapo (objective=sapo,
    grpo aggregation); bnpo and luspo are not implemented."""
    mask_truncated_completions: bool = False
    """Leave completions cut off at max_completion_length out of the loss."""
    top_entropy_quantile: float = 1.0
    """Policy-gradient loss only on this top fraction of tokens by entropy."""
    entropy_coef: float = 0.0
    """Entropy bonus: loss = policy loss - entropy_coef * token-mean entropy (not rescaled by
    loss_type); with use_adaptive_entropy the initial coefficient."""
    use_adaptive_entropy: bool = False
    """Adapt entropy_coef after every optimizer update towards entropy_target (Skywork-OR1)."""
    entropy_coef_min: float = 0.0
    """Lower bound of the adaptive entropy coefficient."""
    entropy_coef_max: float = 1.0
    """Upper bound of the adaptive entropy coefficient."""
    entropy_coef_delta: float = 0.005
    """Step of the adaptive entropy coefficient per optimizer update."""
    entropy_target: float = 0.2
    """Token-mean entropy (nats) at or below which the adaptive bonus grows and applies."""
    sapo_temperature_pos: float = 1.0
    """SAPO gate temperature, positive advantages."""
    sapo_temperature_neg: float = 1.05
    """SAPO gate temperature, non-positive advantages."""
    vllm_importance_sampling_correction: bool = True
    """Weight the loss by the trainer's over the rollout engine's probability of each sampled
    token; groupwise's default (auto) corrects when the engine reports its log-probs, true also
    asks the local engine for them."""
    vllm_importance_sampling_mode: str = "sequence_mask"
    """token_truncate, token_mask, sequence_truncate or sequence_mask."""
    vllm_importance_sampling_clip_max: float | None = 3.0
    """Upper bound of the correction weights (None = none)."""
    vllm_importance_sampling_clip_min: float | None = None
    """Lower bound of the correction weights (None = none)."""
    vllm_importance_sampling_cap: float | None = None
    """TRL's older name of vllm_importance_sampling_clip_max (used when not None)."""
    reward_weights: list[float] | None = None
    """One weight per reward function (rewards.weights); an environment's get_reward adds
    weight 1 after them."""
    max_tool_calling_iterations: int | None = None
    """Tool rounds after the first generation, with tools= or environment_factory=:
    rollout.engine_kwargs.max_turns = N + 1 (an episode still calling tools then ends
    truncated); None = the episodes engine's max_turns (TRL: no limit but the length)."""
    dynamic_sampling: bool = False
    """groupwise only (no TRL field; verl's algorithm.filter_groups.enable): DAPO's dynamic
    sampling, groups with equal rewards replaced by new prompts' (algorithm.dynamic_sampling)."""
    max_num_gen_batches: int = 4
    """groupwise only (verl's name): the most generation batches a step draws under
    dynamic_sampling (algorithm.max_num_gen_batches)."""
    fp16: bool = False
    """Not supported (see UNSUPPORTED)."""
    use_vllm: bool = False
    """Not supported."""
    vllm_mode: str = "server"
    """Not supported."""
    generation_batch_size: int | None = None
    """Not supported."""
    steps_per_generation: int | None = None
    """Not supported."""
    num_generations_eval: int | None = None
    """Not supported."""
    min_p: float | None = None
    """Not supported."""
    repetition_penalty: float = 1.0
    """Not supported."""
    generation_kwargs: dict[str, Any] | None = None
    """Not supported."""
    chat_template_kwargs: dict[str, Any] | None = None
    """Not supported."""
    max_prompt_length: int | None = None
    """Not supported (prompts are never truncated)."""
    delta: float | None = None
    """Not supported."""
    multi_objective_aggregation: str = "sum_then_normalize"
    """Only the default is supported."""
    sync_ref_model: bool = False
    """Not supported."""
    remove_unused_columns: bool = False
    """Only the default is supported (every column reaches the rewards)."""
    shuffle_dataset: bool = True
    """Only the default is supported."""
    model_init_kwargs: dict[str, Any] | None = None
    """How the model is loaded: ``dtype`` (or ``torch_dtype``) sets training.param_dtype
    (torch.bfloat16 or "bfloat16": pure bf16 weights; torch.float32 or "float32"; "auto"),
    ``attn_implementation`` sets model.attn_implementation; other keys are refused."""
    disable_dropout: bool = False
    """Not supported."""
    cast_lm_head_to_fp32: bool = False
    """Not supported."""
    optim: str = "adamw_torch"
    """Only AdamW."""
    adam_epsilon: float = 1e-8
    """Only 1e-8."""
    lr_scheduler_kwargs: dict[str, Any] | None = None
    """Not supported."""
    run_name: str | None = None
    """Not supported."""
    push_to_hub: bool = False
    """Not supported."""
    use_liger_kernel: bool = False
    """Not supported."""
    torch_compile: bool = False
    """Not supported."""
    off_policy_mask_threshold: float | None = None
    """Not supported."""
    use_bias_correction_kl: bool = False
    """Not supported."""

    def __setattr__(self, name: str, value: Any) -> None:
        object.__setattr__(self, name, value)
        fields_set = self.__dict__.get("_set")
        if fields_set is not None:
            fields_set.add(name)

    @property
    def fields_set(self) -> frozenset[str]:
        """The fields given as arguments or assigned since (they override groupwise)."""
        return frozenset(self.__dict__.get("_set", ()))

    def overrides(self, train_rows: int | None = None) -> dict[str, Any]:
        """``{"section.key": value}`` for the fields set (``train_rows`` turns
        num_train_epochs into steps)."""
        self._check_unsupported()
        values = {n: getattr(self, n) for n in self.fields_set}
        mapped = {**DIRECT, **GROUPWISE_ONLY}
        out = {mapped[n]: v for n, v in values.items() if n in mapped and v is not None}
        out.update(_special_overrides(values))
        if "max_steps" in values and values["max_steps"] >= 0:
            out["training.max_steps"] = values["max_steps"]
        return out

    def to_config(self, base: Config | None = None, *, train_rows: int | None = None) -> Config:
        """groupwise's ``Config``: ``base`` (default: groupwise's defaults) with the fields set
        applied; validated (errors name the groupwise key)."""
        data = config_to_dict(base or Config())
        for key, value in self.overrides().items():
            section, _, name = key.partition(".")
            data[section][name] = value
        _derive_steps(self, data, train_rows)
        return config_from_dict(data)

    def _check_unsupported(self) -> None:
        defaults = GRPOConfig()
        for name in sorted(self.fields_set & set(UNSUPPORTED)):
            value = getattr(self, name)
            if value != getattr(defaults, name):
                raise ConfigError(
                    f"GRPOConfig.{name}={value!r} is not supported by groupwise "
                    f"({UNSUPPORTED[name]}); leave it at {getattr(defaults, name)!r}"
                )


def _special_overrides(values: dict[str, Any]) -> dict[str, Any]:
    """The fields that do not map one to one (see each field's docstring)."""
    out: dict[str, Any] = {}
    if "scale_rewards" in values:
        scale = values["scale_rewards"]
        out["algorithm.scale_rewards"] = {True: "group", False: "none"}.get(scale, scale)
    if "loss_type" in values:
        out.update(_loss_type(values["loss_type"], values.get("epsilon_high")))
    elif values.get("epsilon_high") is not None:
        out["algorithm.epsilon_high"] = values["epsilon_high"]
    for bound in ("clip_min", "clip_max"):  # None is a value here (no bound)
        if f"vllm_importance_sampling_{bound}" in values:
            key = f"algorithm.vllm_importance_sampling_{bound}"
            out[key] = values[f"vllm_importance_sampling_{bound}"]
    if values.get("vllm_importance_sampling_cap") is not None:
        out["algorithm.vllm_importance_sampling_clip_max"] = values["vllm_importance_sampling_cap"]
    if values.get("save_total_limit", 0) is None:
        out["training.save_total_limit"] = 0
    elif "save_total_limit" in values:
        out["training.save_total_limit"] = values["save_total_limit"]
    out.update(_run_options(values))
    out.update(_model_init(values.get("model_init_kwargs") or {}))
    return out


PARAM_DTYPES: dict[str, str] = {
    "bfloat16": "bfloat16",
    "bf16": "bfloat16",
    "float32": "float32",
    "fp32": "float32",
    "float": "float32",
    "auto": "auto",
}
"""``model_init_kwargs["dtype"]`` (a torch dtype's name or a string) -> training.param_dtype."""


def _model_init(kwargs: dict[str, Any]) -> dict[str, Any]:
    """``model_init_kwargs``: the weights' dtype and the attention kernel (TRL passes them to
    ``from_pretrained``; groupwise loads its model itself)."""
    out: dict[str, Any] = {}
    for key, value in kwargs.items():
        if key in ("dtype", "torch_dtype"):
            name = str(value).removeprefix("torch.")
            if name not in PARAM_DTYPES:
                raise ConfigError(
                    f"GRPOConfig.model_init_kwargs[{key!r}]={value!r} is not supported by "
                    "groupwise; use torch.bfloat16, torch.float32 or 'auto' "
                    "(training.param_dtype)"
                )
            out["training.param_dtype"] = PARAM_DTYPES[name]
        elif key == "attn_implementation":
            out["model.attn_implementation"] = str(value)
        else:
            raise ConfigError(
                f"GRPOConfig.model_init_kwargs[{key!r}] is not supported by groupwise (it "
                "loads the model itself); supported keys: dtype, torch_dtype, "
                "attn_implementation"
            )
    return out


def _loss_type(loss_type: str, epsilon_high: float | None) -> dict[str, Any]:
    objectives = {"cispo": ("cispo", "dapo"), "sapo": ("sapo", "grpo")}
    if loss_type in ("bnpo", "luspo"):
        raise ConfigError(
            f"GRPOConfig.loss_type={loss_type!r} is not supported by groupwise; use grpo, dapo, "
            "dr_grpo, cispo or sapo"
        )
    objective, aggregation = objectives.get(loss_type, ("clip", loss_type))
    out: dict[str, Any] = {"algorithm.loss_type": aggregation, "algorithm.objective": objective}
    if epsilon_high is not None:  # TRL's cispo cap is the weight itself, groupwise's 1 + eps
        out["algorithm.epsilon_high"] = epsilon_high - 1 if objective == "cispo" else epsilon_high
    return out


def _run_options(values: dict[str, Any]) -> dict[str, Any]:
    """Saving, evaluation, trackers, resume, device and progress bar."""
    out: dict[str, Any] = {}
    strategy = values.get("save_strategy", "steps")
    if strategy not in ("steps", "no"):
        raise ConfigError(
            f"GRPOConfig.save_strategy={strategy!r} is not supported; use steps or no"
        )
    if strategy == "no":
        out["training.save_steps"] = 0
    evaluation = values.get("eval_strategy")
    if evaluation not in (None, "no", "steps"):
        raise ConfigError(
            f"GRPOConfig.eval_strategy={evaluation!r} is not supported; use no or steps"
        )
    if evaluation == "no":
        out.update({"eval.before": False, "eval.after": False, "eval.every_steps": 0})
    elif evaluation == "steps":
        every = values.get("eval_steps") or values.get("logging_steps") or 10
        out["eval.every_steps"] = int(every)
    if "report_to" in values:
        report = values["report_to"]
        if report == "all":
            raise ConfigError("GRPOConfig.report_to='all' is not supported; name the trackers")
        out["training.report_to"] = [] if report in (None, "none") else _as_list(report)
    if "resume_from_checkpoint" in values:
        resume = values["resume_from_checkpoint"]
        out["training.resume"] = "auto" if resume is True else str(resume or "")
    if values.get("use_cpu"):
        out["training.device"] = "cpu"
    if "disable_tqdm" in values:
        out["training.progress"] = not values["disable_tqdm"]
    if values.get("bf16") is not None:
        out["training.bf16"] = values["bf16"]
    if values.get("num_completions_to_print") is not None:
        out["training.num_completions_to_print"] = values["num_completions_to_print"]
    return out


def _as_list(value: str | list[str]) -> list[str]:
    return [value] if isinstance(value, str) else list(value)


def _derive_steps(args: GRPOConfig, data: dict[str, Any], train_rows: int | None) -> None:
    """max_steps from num_train_epochs (when only that is set), warmup_steps from warmup_ratio."""
    t = data["training"]
    wants_epochs = "num_train_epochs" in args.fields_set and args.max_steps < 0
    if wants_epochs:
        if train_rows is None:
            raise ConfigError("GRPOConfig.num_train_epochs needs train_dataset; or set max_steps")
        from groupwise.distributed import world_size

        completions = t["per_device_train_batch_size"] * t["gradient_accumulation_steps"]
        prompts = max(1, completions // data["rollout"]["num_generations"]) * world_size()
        t["max_steps"] = max(1, math.ceil(args.num_train_epochs * train_rows / prompts))
    if "warmup_ratio" in args.fields_set and args.warmup_ratio > 0:
        updates = t["max_steps"] * data["algorithm"]["num_iterations"]
        t["warmup_steps"] = math.ceil(args.warmup_ratio * updates)


# ---------------------------------------------------------------------- GRPOTrainer(model=...)
@dataclass
class TRLSetup:
    """What a TRL-style ``GRPOTrainer(...)`` call becomes: groupwise's three arguments."""

    config: Config
    reward_funcs: Any
    task: Task | None
    base_model: tuple[Any, Any] | None = None
    """A built ``(model, tokenizer)`` to train in place (TRL's ``model=<PreTrainedModel>``)."""


def trl_arguments(
    config: Any, reward_funcs: Any, task: Task | None, trl: dict[str, Any]
) -> TRLSetup:
    """``GRPOTrainer``'s arguments as groupwise's (config, reward_funcs, task and a built model
    if any): as given when ``config`` is a ``Config``, else TRL's call translated by
    :func:`translate_trl_call` (``config`` is then TRL's first positional argument, the model)."""
    if isinstance(config, Config):
        if trl:
            raise TypeError(
                f"GRPOTrainer: {sorted(trl)[0]!r} is an argument of TRL's call, "
                "GRPOTrainer(model=..., args=GRPOConfig(...)); a Config takes reward_funcs, "
                "task and callbacks"
            )
        return TRLSetup(config, reward_funcs, task)
    return translate_trl_call(trl.pop("model", config), reward_funcs, task=task, **trl)


def translate_trl_call(
    model: Any,
    reward_funcs: Any,
    *,
    args: GRPOConfig | None = None,
    train_dataset: Any = None,
    eval_dataset: Any = None,
    peft_config: Any = None,
    processing_class: Any = None,
    task: Task | None = None,
    tools: Sequence[Callable[..., Any]] | None = None,
    environment_factory: Any = None,
    **unsupported: Any,
) -> TRLSetup:
    """Translate TRL's ``GRPOTrainer`` arguments (see the module docstring; ``tools`` and
    ``environment_factory``: :mod:`groupwise.compat.trl_agents`)."""
    refuse_arguments(unsupported)
    args = args if args is not None else GRPOConfig()
    base = Config()
    if isinstance(train_dataset, str):
        base.data.task = train_dataset
    if task is None:
        if train_dataset is None:
            raise TypeError(
                "GRPOTrainer: train_dataset (or task) is required with model=..."
                + _OWN_DATA * (environment_factory is not None)
            )
        task = to_task(train_dataset, eval_dataset, base)
    agent = agent_setup(tools, environment_factory, args.max_tool_calling_iterations)
    data = config_to_dict(args.to_config(base, train_rows=len(task.train)))
    funcs = agent_rewards(reward_funcs, agent, data)
    built = built_model(model, processing_class)
    if built is not None:
        data["model"]["name"] = getattr(built[0], "name_or_path", "") or "in-memory model"
    elif model is not None:
        data["model"]["name"] = str(model)
    data["model"].update(lora_settings(peft_config))
    return TRLSetup(config_from_dict(data), funcs, task, built)


_OWN_DATA = (
    " (TRL's environment-owned data, train_dataset=None, is not supported: the G episodes of "
    "a group must start from the same prompt; pass rows whose columns reset() reads, e.g. a "
    "seed)"
)


def agent_rewards(
    reward_funcs: Any, agent: AgentSetup | None, data: dict[str, Any]
) -> list[AnyRewardFunc | str]:
    """The run's rewards: TRL's ``reward_funcs`` (see :func:`trl_rewards`), then the
    environments' ``get_reward`` ones (weight 1 after ``rewards.weights`` when set), with
    ``agent``'s episodes engine set in ``data`` (the config as a dict)."""
    if agent is None:
        return trl_rewards(reward_funcs)
    data["rollout"]["engine"] = "episodes"
    data["rollout"]["engine_kwargs"] = dict(agent.engine_kwargs)
    if reward_funcs is None and not agent.rewards:
        raise TypeError(
            "GRPOTrainer: no reward source; pass reward_funcs, or an environment_factory whose "
            "environment defines get_reward()"
        )
    funcs = [] if reward_funcs is None else trl_rewards(reward_funcs)
    weights = data["rewards"]["weights"]
    if weights is not None:
        data["rewards"]["weights"] = [*weights, *([1.0] * len(agent.rewards))]
    return [*funcs, *agent.rewards]


def trl_rewards(reward_funcs: Any) -> list[AnyRewardFunc | str]:
    """TRL's ``reward_funcs`` (one or a list): callables are called as TRL calls them; a
    string is a groupwise reward name or import path (not a hub model id)."""
    if reward_funcs is None:
        raise TypeError("GRPOTrainer: reward_funcs is required with model=...")
    funcs = (
        [reward_funcs] if callable(reward_funcs) or isinstance(reward_funcs, str) else reward_funcs
    )
    return [f if isinstance(f, str) else trl_reward(f) for f in funcs]


def to_rows(dataset: Any, label: str) -> list[Row]:
    """A ``datasets.Dataset`` or a sequence of dicts as rows, each with a ``prompt``."""
    tabular = hasattr(dataset, "column_names") or isinstance(dataset, Sequence)
    if isinstance(dataset, (dict, str)) or not tabular:
        raise TypeError(
            f"GRPOTrainer: {label} must be a datasets.Dataset, a list of dicts or a task name, "
            f"got {type(dataset).__name__}"
        )
    rows = [dict(row) for row in dataset]
    for i, row in enumerate(rows):
        if "prompt" not in row:
            raise ValueError(f"{label}: row {i} has no 'prompt' column (columns: {list(row)})")
    return rows


def to_task(train: Any, eval_data: Any, config: Config) -> Task:
    """A groupwise ``Task`` from TRL's datasets; a task name builds that task from
    ``config.data`` (its held-out rows, rewards and correctness kept unless ``eval_data``)."""
    if isinstance(train, Task):
        return train
    if isinstance(train, str):
        built = task_from_config(config)
        if eval_data is not None:
            built.eval = to_rows(eval_data, "eval_dataset")
        return built
    eval_rows = [] if eval_data is None else to_rows(eval_data, "eval_dataset")
    return Task(name="dataset", train=to_rows(train, "train_dataset"), eval=eval_rows)


def lora_settings(peft_config: Any) -> dict[str, Any]:
    """``model.lora*`` keys from a ``peft.LoraConfig`` (None: no change); options groupwise's
    LoRA does not have fail, naming them."""
    if peft_config is None:
        return {}
    defaults = {"bias": "none", "use_rslora": False, "use_dora": False, "modules_to_save": None}
    defaults.update(layers_to_transform=None, fan_in_fan_out=False, init_lora_weights=True)
    for name, default in defaults.items():
        value = getattr(peft_config, name, default)
        if value != default:
            raise ConfigError(f"peft_config.{name}={value!r} is not supported; leave {default!r}")
    targets = peft_config.target_modules
    if targets is None:
        targets = "all-linear"
    elif not isinstance(targets, str):
        targets = sorted(targets)
    return {
        "lora": True,
        "lora_r": int(peft_config.r),
        "lora_alpha": int(peft_config.lora_alpha),
        "lora_dropout": float(peft_config.lora_dropout),
        "lora_target_modules": targets,
    }


def built_model(model: Any, processing_class: Any = None) -> tuple[Any, Any] | None:
    """TRL's ``model`` when it is a built ``PreTrainedModel``: ``(model, tokenizer)``, the
    tokenizer being ``processing_class`` or the one at the model's ``name_or_path``; None for a
    preset name or a path (loaded by name)."""
    if model is None or isinstance(model, (str, Path)):
        return None
    if not hasattr(model, "save_pretrained") or not hasattr(model, "config"):
        raise TypeError(
            f"GRPOTrainer: model must be a preset name, a local path or a PreTrainedModel, "
            f"got {type(model).__name__}"
        )
    return model, processing_class or _tokenizer_of(model)


def _tokenizer_of(model: Any) -> Any:
    from transformers import AutoTokenizer

    source = getattr(model, "name_or_path", "")
    if not source or not Path(source).exists():
        raise TypeError("GRPOTrainer: with a built model, pass processing_class=<its tokenizer>")
    return AutoTokenizer.from_pretrained(source)
