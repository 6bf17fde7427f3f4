"""The manifest (groupwise.builtins) registers the built-in packs in one fixed order.

A pack registers into several registries (the guessing game: a task and an environment), so
the rewards, tasks and environments load from one shared list; each registry then lists its
names in the same order whichever is looked up first. Each case runs in a fresh interpreter:
the order of first lookups is the thing under test.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

import groupwise.tasks
from groupwise.builtins import BUILTIN_MODULES

REWARDS = (
    "answer_match", "exact_match", "number_only", "repetition_penalty", "length_penalty",
    "math_verify", "think_answer_format", "env_reward", "env_solved", "sentiment", "on_topic",
    "reasoning_gym_score", "final_answer_match", "tool_used",
)  # fmt: skip
REWARD_FACTORIES = ("reward_model", "overlong_penalty", "code_tests", "code_pass")
TASKS = (
    "arithmetic", "file", "humaneval", "mbpp", "dialogue_prompts", "functions", "guess",
    "multiply", "reasoning_gym",
)  # fmt: skip
ENVIRONMENTS = ("counter", "python", "calculator", "guess", "openenv", "verifiers")
ENGINES = ("llamacpp", "episodes", "local", "replay", "vllm", "agent")

LOOKUPS = {
    "rewards": "from groupwise.rewards import REWARDS as R; R.names()",
    "tasks": "from groupwise.data import TASKS as R; R.names()",
    "environments": "from groupwise.envs import ENVIRONMENTS as R; R.names()",
    "engines": "from groupwise.rollout.engine import ENGINES as R; R.names()",
}
REPORT = """
import json
from groupwise.data import TASKS
from groupwise.envs import ENVIRONMENTS
from groupwise.rewards import REWARD_FACTORIES, REWARDS
from groupwise.rollout.engine import ENGINES
registries = (REWARDS, REWARD_FACTORIES, TASKS, ENVIRONMENTS, ENGINES)
print(json.dumps([list(r.names()) for r in registries]))
"""


@pytest.mark.parametrize("first", sorted(LOOKUPS))
def test_names_come_in_manifest_order_whatever_is_looked_up_first(first: str) -> None:
    code = LOOKUPS[first] + "\n" + REPORT
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    names = [tuple(n) for n in json.loads(proc.stdout)]
    assert names == [REWARDS, REWARD_FACTORIES, TASKS, ENVIRONMENTS, ENGINES]


def test_every_pack_module_is_in_the_manifest_once() -> None:
    """Every module of groupwise.tasks that registers something is listed, none twice."""
    listed = [m for modules in BUILTIN_MODULES.values() for m in modules]
    content = BUILTIN_MODULES["data.task"]
    assert len(set(content)) == len(content)
    assert BUILTIN_MODULES["rewards.funcs"] == content
    assert BUILTIN_MODULES["rollout.engine_kwargs.environment"] == content
    root = Path(groupwise.tasks.__path__[0])
    packs = {
        "groupwise.tasks." + ".".join(p.relative_to(root).with_suffix("").parts)
        for p in root.rglob("*.py")
        if "register" in p.read_text(encoding="utf-8") and p.name != "__init__.py"
    }
    assert packs <= set(listed), f"task packs not in groupwise.builtins: {packs - set(listed)}"
