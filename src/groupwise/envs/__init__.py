"""Environments and tools for multi-turn episodes (the ``episodes`` rollout engine).

- :mod:`~groupwise.envs.base`: the :class:`Environment` interface (``reset(row)``,
  ``step(policy_message)``, optional ``reward()``), the ``ENVIRONMENTS`` registry, the TRL
  ``environment_factory`` adapter :func:`from_trl` (a class, or a dict routed per row by
  :class:`RoutedEnvironment`) and the ``env_reward`` reward function.
- :mod:`~groupwise.envs.tools`: Python functions as tools (JSON schema), the ``<tool_call>``
  protocol, :class:`ToolEnvironment` and the sandboxed ``python`` tool;
  :mod:`~groupwise.envs.formats`: the tool-call formats (``hermes``, ``llama3``, ``mistral``,
  the tokenizer's response parser).
- :mod:`~groupwise.envs.openenv` and :mod:`~groupwise.envs.verifiers`: adapters for OpenEnv
  and verifiers environments (the ``openenv`` and ``verifiers`` environments; optional extras,
  imported only when used).
- :mod:`~groupwise.tasks.toolbox`: ``counter`` (scripted) and ``python`` (tool) environments.
"""

from groupwise.envs.base import (
    ENVIRONMENTS,
    BaseEnvironment,
    Environment,
    EnvironmentFactory,
    EnvStep,
    as_env_step,
    end_reward,
    env_columns,
)
from groupwise.envs.tools import (
    RoutedEnvironment,
    Tool,
    ToolCall,
    ToolEnvironment,
    TRLEnvironment,
    from_trl,
    parse_tool_calls,
    python,
    run_tool_call,
    tool_frequencies,
    tools_instructions,
)
from groupwise.rewards.environment import env_reward

__all__ = [
    "ENVIRONMENTS",
    "BaseEnvironment",
    "EnvStep",
    "Environment",
    "EnvironmentFactory",
    "RoutedEnvironment",
    "TRLEnvironment",
    "Tool",
    "ToolCall",
    "ToolEnvironment",
    "as_env_step",
    "end_reward",
    "env_columns",
    "env_reward",
    "from_trl",
    "parse_tool_calls",
    "python",
    "run_tool_call",
    "tool_frequencies",
    "tools_instructions",
]
