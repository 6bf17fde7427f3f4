"""The one manifest of what groupwise ships: the modules that register its built-in parts.

Each registry that holds built-ins names its config key here; on the first lookup of a name it
imports the modules listed under that key, in order, and their ``@register...`` decorators fill
it. Framework modules never import the built-in content themselves (so there is no import cycle
between a registry's module and the packs that register into it), and a new built-in task pack,
reward, environment or rollout engine is added by writing its module and listing it here.

Listed by module path (strings, imported on demand): nothing here is imported with the package.
"""

from __future__ import annotations

BUILTIN_MODULES: dict[str, tuple[str, ...]] = {
    "rollout.engine": (
        "groupwise.rollout.episodes",
        "groupwise.rollout.local",
        "groupwise.rollout.replay",
    ),
    "rewards.funcs": (
        "groupwise.rewards.answer",
        "groupwise.rewards.code",
        "groupwise.rewards.dialogue",
        "groupwise.rewards.environment",
        "groupwise.rewards.math",
        "groupwise.tasks.reasoning_gym.rewards",
        "groupwise.rewards.tools",
    ),
    "data.task": (
        "groupwise.tasks.arithmetic",
        "groupwise.tasks.code.benchmarks",
        "groupwise.tasks.dialogue.data",
        "groupwise.data.files",
        "groupwise.tasks.code.functions",
        "groupwise.tasks.guess.data",
        "groupwise.tasks.multiply",
        "groupwise.tasks.reasoning_gym.data",
    ),
    "rollout.engine_kwargs.environment": (
        "groupwise.tasks.toolbox",
        "groupwise.tasks.calculator.env",
        "groupwise.tasks.guess.env",
    ),
}
"""Registry key -> the modules whose import registers its built-in entries."""
