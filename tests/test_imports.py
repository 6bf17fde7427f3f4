"""The import graph of groupwise: no cycles between its parts, and the layering rules.

Read statically with ``ast`` (every ``import`` counts, also those inside functions and under
``TYPE_CHECKING``: a lazy import hides a cycle from the interpreter, not from the design).
A *part* is a subpackage (``groupwise.rewards``) or a top-level module (``groupwise.train.trainer``);
the package's own ``__init__`` (which re-exports the public API) is left out.
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "groupwise"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    """Every groupwise module (or module attribute) ``path`` imports."""
    module = _module_name(path)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: from .x import y
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                source = ".".join([*base, *([node.module] if node.module else [])])
            else:
                source = node.module or ""
            found.add(source)
            found.update(f"{source}.{alias.name}" for alias in node.names)
    return {name for name in found if name.split(".")[0] == "groupwise"}


def _graph() -> dict[str, set[str]]:
    """module -> the groupwise modules it imports, for every module under src/groupwise."""
    return {_module_name(p): _imports(p) for p in sorted(SRC.rglob("*.py"))}


def _part(module: str) -> str | None:
    """``groupwise.rewards.base`` -> ``rewards``; None for the package itself."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else None


def _cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one node (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for other in sorted(edges.get(node, ())):
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return found


def _part_graph() -> dict[str, set[str]]:
    """part -> the other parts it imports."""
    parts: dict[str, set[str]] = defaultdict(set)
    for module, imported in _graph().items():
        source = _part(module)
        if source is None:
            continue
        parts[source]  # every part is a node, also one that imports no other part
        for name in imported:
            target = _part(name)
            if target is not None and target != source:
                parts[source].add(target)
    return parts


def test_no_cycles_through_subpackages() -> None:
    """No subpackage (core, data, rewards, rollout, kernels...) takes part in an import cycle,
    also not one through top-level modules (rewards -> models -> ... -> rewards)."""
    parts = _part_graph()
    subpackages = {p.name for p in SRC.iterdir() if (p / "__init__.py").is_file()}
    assert {"core", "data", "rewards"} <= subpackages <= set(parts)
    cycles = [c for c in _cycles(parts) if subpackages & set(c)]
    assert cycles == [], f"import cycles through groupwise subpackages: {cycles}"


def test_rewards_never_import_data() -> None:
    graph = _graph()
    bad = {
        module: sorted(n for n in imported if n.startswith("groupwise.data"))
        for module, imported in graph.items()
        if module.startswith("groupwise.rewards")
    }
    assert {m: names for m, names in bad.items() if names} == {}


def test_core_imports_only_core_and_the_registry() -> None:
    allowed = ("groupwise.core", "groupwise.registry")
    bad = {
        module: sorted(n for n in imported if not n.startswith(allowed))
        for module, imported in _graph().items()
        if module.startswith("groupwise.core")
    }
    assert {m: names for m, names in bad.items() if names} == {}


def test_a_cycle_is_caught() -> None:
    """The checker itself: a planted cycle (the one rewards <-> data used to be) is found."""
    assert _cycles({"rewards": {"data"}, "data": {"rewards"}, "cli": {"data"}}) == [
        ["data", "rewards"]
    ]
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": set()}) == []
