"""The one manifest of what groupwise ships: the modules that register its built-in parts.

Each registry that holds built-ins names its config key here; on the first lookup of a name it
imports the modules listed under that key, in order, and their ``@register...`` decorators fill
it. Framework modules never import the built-in content themselves (so there is no import cycle
between a registry's module and the packs that register into it), and a new built-in task pack,
reward, environment or rollout engine is added by writing its module and listing it here.

A task pack (:mod:`groupwise.tasks`) registers into several registries at once: its task, its
rewards, its environment. So the rewards, the tasks and the environments share one list,
:data:`CONTENT_MODULES`: whichever of the three is looked up first imports all of it, in this
order, and each registry lists its names in the same order whatever was looked up first. The
first four are the reward modules :mod:`groupwise.rewards` imports with the package, in the
order it imports them.

Listed by module path (strings, imported on demand): nothing here is imported with the package.
"""

from __future__ import annotations

CONTENT_MODULES: tuple[str, ...] = (
    "groupwise.rewards.answer",
    "groupwise.rewards.reward_model",
    "groupwise.rewards.text",
    "groupwise.rewards.math",
    "groupwise.rewards.environment",
    "groupwise.rewards.code",
    "groupwise.tasks.arithmetic",
    "groupwise.data.files",
    "groupwise.tasks.code.benchmarks",
    "groupwise.tasks.dialogue",
    "groupwise.tasks.code.functions",
    "groupwise.tasks.reasoning_gym.rewards",
    "groupwise.rewards.tools",
    "groupwise.tasks.toolbox",
    "groupwise.tasks.calculator",
    "groupwise.tasks.guess",
    "groupwise.tasks.multiply",
    "groupwise.tasks.reasoning_gym.data",
    "groupwise.envs.openenv",
    "groupwise.envs.verifiers",
)
"""Generic rewards, the file task and the task packs, in registration order: rewards
answer_match .. tool_used, tasks arithmetic .. reasoning_gym, environments counter .. guess, then the adapters of outside environment libraries
(``openenv``, ``verifiers``: their packages are optional extras, imported only when such an environment is
built)."""

BUILTIN_MODULES: dict[str, tuple[str, ...]] = {
    "rollout.engine": (
        "groupwise.rollout.llamacpp",  # first: the episodes engine's llama.cpp backend uses it
        "groupwise.rollout.episodes",
        "groupwise.rollout.local",
        "groupwise.rollout.replay",
        "groupwise.rollout.vllm",
        "groupwise.rollout.agent",
    ),
    "rewards.funcs": CONTENT_MODULES,
    "data.task": CONTENT_MODULES,
    "rollout.engine_kwargs.environment": CONTENT_MODULES,
}
"""Registry key -> the modules whose import registers its built-in entries."""
