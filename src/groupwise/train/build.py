"""Building the parts a run trains with: policy, rollout weights and engine, reference,
data-parallel wrapper, optimizer and schedule (see ``groupwise.models`` for the choices)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from groupwise.config import Config, ConfigError, engine_in_process
from groupwise.core.logprobs import TORCH_ROWS, LogpRows
from groupwise.data import Task
from groupwise.distributed import wrap_policy
from groupwise.kernels import native
from groupwise.kernels.fused import install_fused_kernels
from groupwise.models import (
    LoraSettings,
    ReferencePolicy,
    apply_lora,
    cache_dir,
    enable_gradient_checkpointing,
    load_base_model,
    prepare_base_model,
)
from groupwise.models.plan import RunPlan
from groupwise.rewards.base import (
    AnyRewardFunc,
    RewardRunner,
    check_task_functions,
    resolve_reward,
    rewards_from_config,
)
from groupwise.rollout import (
    ENGINES,
    EngineContext,
    Rollout,
    RolloutEngine,
    build_engine,
    used_width,
)
from groupwise.rollout.process import EngineProcess, EngineSpec
from groupwise.rollout.records import eos_token_ids
from groupwise.rollout.weights import RolloutWeights, build_rollout_weights
from groupwise.run.checkpoint import Counters
from groupwise.train.batch import DEFAULT_BUDGET, StepBatch, TokenBudget, token_budget
from groupwise.train.forward import autocast_context, completion_logp
from groupwise.train.optim import build_optimizer, build_scheduler

REFERENCE_TOKENS = 4096
"""Completion tokens per forward of the reference pass (no activations kept, so spans larger than a micro-batch run faster)."""
REFERENCE_CHUNK = 256
"""At most this many rows of reference logits at a time (a span's are not all held at once)."""


class LogpModule(nn.Module):
    """The policy's per-token log-probs as a module, the unit DDP/FSDP wrap.

    The forward reaches into the model (body, then the output-embedding weight), so the
    data-parallel wrapper must sit around *this* call for its hooks to run.
    """

    def __init__(self, policy: nn.Module, rows: LogpRows = TORCH_ROWS) -> None:
        super().__init__()
        self.policy = policy
        self.rows = rows

    def forward(
        self,
        rollout: Rollout,
        temperature: float,
        chunk_size: int,
        prefix_cache: bool,
        entropy: bool = False,
    ) -> tuple[Tensor, Tensor | None]:
        """``completion_logp`` of the policy; entropies (differentiable) only if ``entropy``."""
        return completion_logp(
            self.policy,
            rollout,
            temperature=temperature,
            chunk_size=chunk_size,
            compute_entropy=entropy,
            prefix_cache=prefix_cache,
            entropy_grad=entropy,
            rows=self.rows,
        )


@dataclass
class TrainingParts:
    """The models and optimizer of a run, and the two log-prob passes over them."""

    config: Config
    device: torch.device
    amp_dtype: torch.dtype | None
    policy: nn.Module
    tokenizer: Any
    weights: RolloutWeights
    engine: RolloutEngine
    reference: ReferencePolicy | None
    train_module: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    engine_name: str = "local"
    """The rollout engine's name (``rollout.engine`` as the run plan resolved it)."""
    token_budget: TokenBudget = DEFAULT_BUDGET
    """Tokens per forward/backward (``training.max_tokens_per_microbatch`` with the plan's
    ``activation_memory``)."""
    logp_rows: LogpRows = TORCH_ROWS
    """The per-row log-prob work of both passes (``training.native_kernels``)."""

    @property
    def temperature(self) -> float:
        """The sampling temperature the log-probs are computed at (>= 1e-6)."""
        return max(self.config.rollout.temperature, 1e-6)

    def policy_logp(self, rollout: Rollout, entropy: bool = False) -> tuple[Tensor, Tensor | None]:
        """Log-probs of the policy through its data-parallel wrapper, ``[b, lc]``, and with
        ``entropy`` its per-token entropies ``[b, lc]`` with their gradient (else None)."""
        t = self.config.training
        args = (rollout, self.temperature, t.logprob_chunk_size, not t.gradient_checkpointing)
        out: tuple[Tensor, Tensor | None] = (
            self.train_module(*args, True) if entropy else self.train_module(*args)
        )
        return out

    def reference_logp(self, batch: StepBatch) -> list[Tensor | None]:
        """ref_logp per micro-batch. The reference keeps no activations, so it runs spans of up
        to ``REFERENCE_TOKENS`` completion tokens (bigger matmuls) instead of micro-batches."""
        assert self.reference is not None
        model, ctx = self.reference.context()
        rollout, g = batch.rollout, batch.rollout.group_size
        num_groups = rollout.prompts.input_ids.shape[0]
        per_span = max(1, REFERENCE_TOKENS // (g * rollout.completion_ids.shape[1]))
        spans = [(s, min(s + per_span, num_groups)) for s in range(0, num_groups, per_span)]
        full = torch.zeros(rollout.completion_ids.shape, device=self.device)  # [B, Lc]
        chunk = min(REFERENCE_CHUNK, self.config.training.logprob_chunk_size)
        with ctx, torch.no_grad():
            for start, stop in spans:
                with autocast_context(self.device, self.amp_dtype):
                    logp, _ = completion_logp(
                        model,
                        batch.sub(start, stop),
                        temperature=self.temperature,
                        chunk_size=chunk,
                        compute_entropy=False,
                        rows=self.logp_rows,
                    )
                full[start * g : stop * g, : logp.shape[1]] = logp  # [b, lc]
        self.reference.release()
        out: list[Tensor | None] = []
        for start, stop in batch.micro:  # each micro-batch's rows and width (as select_groups)
            width = used_width(rollout.completion_mask[start * g : stop * g])
            out.append(full[start * g : stop * g, :width])
        return out


def logp_rows(plan: RunPlan) -> LogpRows:
    """The log-probs' per-row work: the C++ kernels where the plan says and they are built."""
    pair = native.logp_rows() if plan.training_native_kernels else None
    return LogpRows(*pair) if pair is not None else TORCH_ROWS


def build_parts(
    config: Config,
    plan: RunPlan,
    device: torch.device,
    base_model: tuple[nn.Module, Any] | None = None,
) -> TrainingParts:
    """Load the policy and build everything around it, in the order the weights need, as the
    run's ``plan`` says (its ``auto`` settings resolved: :func:`groupwise.models.plan.run_plan`).

    ``base_model``: an already built ``(model, tokenizer)`` to train instead of loading
    ``model.name`` (TRL's ``GRPOTrainer(model=<PreTrainedModel>)``); it is trained in place.
    """
    m, t, a = config.model, config.training, config.algorithm
    dtype = getattr(torch, plan.param_dtype)
    base, tokenizer = _base_model(config, plan, dtype, device, base_model)
    if plan.fused_kernels:
        # before any copy: copies keep the routing
        install_fused_kernels(base, native_kernels=plan.training_native_kernels)
    low = plan.rollout_dtype
    lora = LoraSettings(m.lora_r, m.lora_alpha, m.lora_dropout, m.lora_target_modules)

    def make_policy(model: nn.Module) -> nn.Module:
        if t.gradient_checkpointing:
            enable_gradient_checkpointing(model)
        return apply_lora(model, lora, dtype == torch.bfloat16) if m.lora else model

    policy, weights = build_rollout_weights(
        base,
        make_policy,
        strategy=plan.rollout_weights,
        rollout_dtype=low,
        snapshot_dir=cache_dir() / "mapped",
    )
    on_disk = cache_dir() / "mapped" if plan.reference_on_disk else None
    reference = ReferencePolicy(policy, low, on_disk) if a.beta > 0 else None
    eos_ids = eos_token_ids(tokenizer, policy)
    # under fsdp this shards the policy's parameters in place: the optimizer comes after
    rows = logp_rows(plan)
    train_module = wrap_policy(LogpModule(policy, rows), t.strategy, device)
    optimizer, scheduler = _optimizer(config, policy, plan.compile_optimizer)
    r = config.rollout
    context = EngineContext(
        policy,
        weights,
        tokenizer,
        eos_ids,
        r.compile,
        r.engine_kwargs,
        r.packed_decode,
        plan.native_kernels,
    )
    in_process = engine_in_process(r)
    return TrainingParts(
        config=config,
        device=device,
        amp_dtype=torch.bfloat16 if plan.bf16 else None,
        policy=policy,
        tokenizer=tokenizer,
        weights=weights,
        engine=_process_engine(config, plan, context)
        if in_process
        else build_engine(plan.rollout_engine, context),
        reference=reference,
        train_module=train_module,
        optimizer=optimizer,
        scheduler=scheduler,
        engine_name=plan.rollout_engine,
        token_budget=token_budget(
            t.max_tokens_per_microbatch, base.config, low.itemsize, plan.activation_memory
        ),
        logp_rows=rows,
    )


def engine_threads(config: Config, available: int) -> tuple[int, int]:
    """``(engine, trainer)`` torch threads when the engine runs in its own process, out of the
    trainer's ``available``: ``rollout.engine_threads`` when set, else all of them with
    ``max_staleness=0`` (the two never compute at once) and half (at least 1) with
    ``max_staleness=1``; the trainer keeps the rest (at least 1) when the two overlap."""
    r = config.rollout
    engine = r.engine_threads or (available if r.max_staleness == 0 else max(1, available // 2))
    trainer = available if r.max_staleness == 0 else max(1, available - engine)
    return engine, trainer


def _process_engine(config: Config, plan: RunPlan, ctx: EngineContext) -> EngineProcess:
    """The configured engine in a spawned process, on the rollout copy moved to shared memory
    (:mod:`groupwise.rollout.process`); the trainer's threads cut to its share."""
    r = config.rollout
    key = "rollout.max_staleness=1" if r.max_staleness else "rollout.engine_process=true"
    if plan.world_size > 1 or plan.device != "cpu":
        raise ConfigError(
            f"{key} (the rollout engine in its own process) is single-process and CPU-only for "
            f"now (this run: {plan.world_size} processes on {plan.device}); set "
            "rollout.max_staleness=0 and rollout.engine_process=false"
        )
    assert plan.rollout_weights == "copy"  # decide_rollout_weights: a copy to share
    engine, trainer = engine_threads(config, torch.get_num_threads())
    spec = EngineSpec(
        plan.rollout_engine,
        ctx.tokenizer,
        list(ctx.eos_token_ids),
        engine,
        r.compile,
        dict(r.engine_kwargs),
        r.packed_decode,
        plan.native_kernels,
        module=getattr(ENGINES.get(plan.rollout_engine), "__module__", None),
    )
    process = EngineProcess(spec, ctx.weights)
    torch.set_num_threads(trainer)
    print(
        f"rollout: the {plan.rollout_engine} engine in its own process (pid {process.pid}, {engine} "
        f"threads; the trainer {trainer}), max_staleness={r.max_staleness}",
        flush=True,
    )
    return process


def _base_model(
    config: Config,
    plan: RunPlan,
    dtype: torch.dtype,
    device: torch.device,
    built: tuple[nn.Module, Any] | None,
) -> tuple[nn.Module, Any]:
    """The built ``(model, tokenizer)`` made ready, else ``model.name`` loaded."""
    attn = plan.attn_implementation
    if built is not None:
        return prepare_base_model(*built, device=device, attn_implementation=attn, dtype=dtype)
    seed = config.training.seed
    name = config.model.name
    return load_base_model(name, seed=seed, device=device, attn_implementation=attn, dtype=dtype)


def _optimizer(
    config: Config, policy: nn.Module, compile_step: bool = False
) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
    """AdamW (compensated or stochastically rounded under pure bf16) and its schedule."""
    t = config.training
    optimizer = build_optimizer(
        policy.parameters(),
        lr=t.learning_rate,
        betas=(t.adam_beta1, t.adam_beta2),
        weight_decay=t.weight_decay,
        bf16_rounding=t.bf16_rounding,
        seed=t.seed,
        compile_step=compile_step,
    )
    total_updates = t.max_steps * config.algorithm.num_iterations
    scheduler = build_scheduler(optimizer, t.lr_scheduler_type, t.warmup_steps, total_updates)
    return optimizer, scheduler


def build_rewards(
    config: Config,
    task: Task,
    counters: Counters,
    reward_funcs: Sequence[AnyRewardFunc | str] | None,
) -> RewardRunner:
    """The run's reward functions (given ones, else the config's or the task's defaults),
    checked against the task's columns before anything is built; ``trainer_state.global_step``
    is bound to ``counters``."""
    r = config.rewards
    if reward_funcs:
        funcs = [resolve_reward(s) for s in reward_funcs]
    else:
        funcs = rewards_from_config(
            r,
            max_completion_length=config.rollout.max_completion_length,
            defaults=task.reward_funcs,
        )
    runner = RewardRunner(funcs, r.weights, concurrent=r.concurrent, timeout=r.timeout_s)
    adds_columns = config.rollout.engine not in ("local", "auto")  # auto: local
    check_task_functions(runner.funcs, task, engine_adds_columns=adds_columns)
    runner.state.bind(counters, config.training.max_steps)
    return runner
