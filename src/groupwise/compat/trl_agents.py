"""TRL's agent arguments on groupwise's ``episodes`` engine (as in TRL 1.16).

A TRL agent script runs with its import changed::

    trainer = GRPOTrainer(model=..., args=GRPOConfig(max_tool_calling_iterations=2, ...),
                          train_dataset=dataset, environment_factory=MyEnv, tools=[search])

- ``tools=[fn, ...]``: plain functions (typed, Google-style docstring) offered to every
  episode, groupwise's :class:`~groupwise.envs.tools.ToolEnvironment`;
- ``environment_factory=MyEnv``: one instance per episode, ``reset(**row)`` as TRL calls it,
  its public methods the tools (:func:`groupwise.envs.from_trl`); a dict ``{name: factory}``
  picks the environment per row by its ``environment`` column, each row seeing only that
  environment's tools (after the shared ``tools``);
- an environment class defining ``get_reward()`` adds a reward named after the class (weight
  1, appended to ``reward_weights`` when those are set; logged as ``rewards/<Class>/mean``),
  ``None`` for rows of other environments; ``reward_funcs`` is then optional. Reward
  functions get ``environments=`` (the episode's instances, in completion order);
- ``GRPOConfig.max_tool_calling_iterations=N`` -> ``rollout.engine_kwargs.max_turns = N + 1``
  (TRL counts the tool rounds after the first generation); unset, the engine's default bounds
  the episode where TRL's is unlimited. Both end an episode at ``max_completion_length``
  tokens, tool results included.

The run uses ``rollout.engine=episodes`` with the environment registered in
:data:`groupwise.envs.ENVIRONMENTS` under a ``trl:`` name (what ``config.yaml`` records).
Tools are described through the chat template's ``tools=`` where it renders them, else through
groupwise's ``<tool_call>`` text protocol: TRL refuses tools on templates without tool support
(SmolLM2's); groupwise trains them.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from groupwise.config import ConfigError
from groupwise.envs import ENVIRONMENTS, Environment, ToolEnvironment, from_trl
from groupwise.rewards.base import AnyRewardFunc

REFUSED_ARGUMENTS: dict[str, str] = {
    "rollout_func": "groupwise's own multi-turn loop is rollout.engine=episodes "
    "(environment_factory=, tools=); your own agent loop against an OpenAI-compatible endpoint "
    "of the policy is rollout.engine=agent; or register an engine with @ENGINES.register",
    "reward_processing_classes": "a reward model is the reward_model reward "
    "(rewards.funcs=[reward_model], rewards.kwargs.reward_model)",
    "optimizers": "the optimizer is AdamW (learning_rate, adam_beta1/2, weight_decay) with "
    "lr_scheduler_type",
    "quantization_config": "groupwise trains bf16 or float32 weights (model_init_kwargs dtype); "
    "LoRA: peft_config",
}
"""TRL ``GRPOTrainer`` arguments groupwise does not take, and the nearest groupwise setting."""


@dataclass
class AgentSetup:
    """What TRL's agent arguments become."""

    engine_kwargs: dict[str, Any]
    """``rollout.engine_kwargs`` of the ``episodes`` engine."""
    rewards: list[AnyRewardFunc] = field(default_factory=list)
    """One reward per environment class defining ``get_reward`` (see :func:`get_reward_of`)."""


def refuse_arguments(unsupported: Mapping[str, Any]) -> None:
    """A ``TypeError`` for the first TRL argument groupwise does not take that is set, naming
    it and the nearest groupwise setting."""
    for name, value in unsupported.items():
        if value not in (None, (None, None), [], ()):
            hint = f" ({REFUSED_ARGUMENTS[name]})" if name in REFUSED_ARGUMENTS else ""
            raise TypeError(f"GRPOTrainer: argument {name!r} is not supported by groupwise{hint}")


def agent_setup(
    tools: Sequence[Callable[..., Any]] | None,
    environment_factory: Callable[[], Any] | Mapping[str, Callable[[], Any]] | None,
    max_tool_calling_iterations: int | None = None,
) -> AgentSetup | None:
    """The ``episodes`` engine's settings and the environments' rewards for TRL's ``tools``
    and ``environment_factory`` (None when neither is given: TRL then ignores
    ``max_tool_calling_iterations`` too). One instance of each environment is built here to
    check it and find its ``get_reward``, as TRL does."""
    tools = list(tools or [])
    for tool in tools:
        if not callable(tool):
            raise TypeError(f"GRPOTrainer: tools must be functions, got {tool!r}")
    if not tools and environment_factory is None:
        return None
    kwargs: dict[str, Any] = {"environment": _register(tools, environment_factory)}
    if max_tool_calling_iterations is not None:
        n = max_tool_calling_iterations
        if not isinstance(n, int) or isinstance(n, bool) or n < 0:
            raise ConfigError(
                f"GRPOConfig.max_tool_calling_iterations={n!r} must be an integer >= 0 "
                "(None = the episodes engine's rollout.engine_kwargs.max_turns)"
            )
        kwargs["max_turns"] = n + 1
    return AgentSetup(kwargs, [get_reward_of(cls) for cls in _reward_classes(environment_factory)])


def _factories(
    environment_factory: Callable[[], Any] | Mapping[str, Callable[[], Any]] | None,
) -> dict[str | None, Callable[[], Any]]:
    """``{name: factory}`` (``{None: factory}`` for a single one), checked."""
    if environment_factory is None:
        return {}
    if isinstance(environment_factory, Mapping):
        if not environment_factory:
            raise ValueError("GRPOTrainer: environment_factory is an empty dict")
        factories: dict[str | None, Callable[[], Any]] = {
            str(k): v for k, v in environment_factory.items()
        }
    else:
        factories = {None: environment_factory}
    for name, factory in factories.items():
        if not callable(factory):
            where = "" if name is None else f"[{name!r}]"
            raise TypeError(
                f"GRPOTrainer: environment_factory{where} must be a class or a no-argument "
                f"callable, got {factory!r}"
            )
    return factories


def _reward_classes(
    environment_factory: Callable[[], Any] | Mapping[str, Callable[[], Any]] | None,
) -> list[type]:
    """The environment classes that define ``get_reward`` (each once, in order), from one
    probe instance per factory; every instance must have a ``reset``."""
    classes: list[type] = []
    for name, factory in _factories(environment_factory).items():
        instance = factory()
        if not callable(getattr(instance, "reset", None)):
            where = "" if name is None else f"[{name!r}]"
            raise TypeError(
                f"GRPOTrainer: environment_factory{where} built a {type(instance).__name__} "
                "without a reset method; a TRL environment defines reset(**kwargs)"
            )
        cls = type(instance)
        if callable(getattr(instance, "get_reward", None)) and cls not in classes:
            classes.append(cls)
    return classes


def _register(
    tools: list[Callable[..., Any]],
    environment_factory: Callable[[], Any] | Mapping[str, Callable[[], Any]] | None,
) -> str:
    """Register the episodes' environment factory; its ``trl:`` name (replacing an earlier
    registration of that name: an engine keeps the factory it was built with)."""
    if environment_factory is None:
        shared = list(tools)

        def tools_only(**_: Any) -> Environment:
            return ToolEnvironment(shared)

        name, factory = "trl:tools", tools_only
    else:
        factories = _factories(environment_factory)
        labels = [getattr(f, "__name__", type(f).__name__) for f in factories.values()]
        if isinstance(environment_factory, Mapping):
            labels = [str(n) for n in factories]
        name = "trl:" + "+".join(labels)
        factory = from_trl(environment_factory, tools=tools)
    ENVIRONMENTS.add(name, factory, replace=True)
    return name


def get_reward_of(cls: type) -> AnyRewardFunc:
    """The reward of environment class ``cls``, named after it: each completion's
    ``get_reward()`` (the ``env_reward`` column, computed once per finished episode) where
    its environment is exactly a ``cls`` (TRL's rule), else None (not scored)."""

    def reward(
        prompts: Sequence[Any],
        completions: Sequence[Any],
        env_reward: Sequence[float | None],
        environments: Sequence[Any],
        **_: Any,
    ) -> list[float | None]:
        return [
            None if value is None or type(env) is not cls else float(value)
            for value, env in zip(env_reward, environments, strict=True)
        ]

    reward.__name__ = reward.__qualname__ = cls.__name__
    reward.__doc__ = f"get_reward() of the {cls.__name__} environment (TRL's environment reward)."
    return reward
