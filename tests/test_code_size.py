"""Code we want to live in: no class over ~300 lines, no function over ~60 (docstring aside),
and the trainer under ~400 lines."""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "groupwise"
MAX_FUNCTION_LINES = 60
MAX_CLASS_LINES = 300
MAX_TRAINER_LINES = 400


def _body_lines(node: ast.FunctionDef | ast.AsyncFunctionDef) -> int:
    """Lines from the first statement after the docstring to the end of the function."""
    body = node.body
    first = body[0]
    value = first.value if isinstance(first, ast.Expr) else None
    if isinstance(value, ast.Constant) and isinstance(value.value, str):  # the docstring
        if len(body) == 1:
            return 0
        first = body[1]
    return (node.end_lineno or node.lineno) - first.lineno + 1


def _sizes() -> tuple[list[str], list[str]]:
    functions, classes = [], []
    for path in sorted(SRC.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            where = f"{path.relative_to(SRC)}:{node.__class__.__name__}"
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                if _body_lines(node) > MAX_FUNCTION_LINES:
                    functions.append(f"{where} {node.name} ({_body_lines(node)} lines)")
            elif isinstance(node, ast.ClassDef):
                lines = (node.end_lineno or node.lineno) - node.lineno + 1
                if lines > MAX_CLASS_LINES:
                    classes.append(f"{where} {node.name} ({lines} lines)")
    return functions, classes


def test_no_long_functions_or_classes() -> None:
    functions, classes = _sizes()
    assert not functions, f"functions over {MAX_FUNCTION_LINES} lines: {functions}"
    assert not classes, f"classes over {MAX_CLASS_LINES} lines: {classes}"


def test_the_trainer_stays_small() -> None:
    lines = len((SRC / "train" / "trainer.py").read_text(encoding="utf-8").splitlines())
    assert lines <= MAX_TRAINER_LINES, f"trainer.py has {lines} lines"


def test_the_size_check_can_fail(tmp_path: Path) -> None:
    code = "def f():\n    '''doc'''\n" + "    x = 1\n" * (MAX_FUNCTION_LINES + 1)
    node = ast.parse(code).body[0]
    assert isinstance(node, ast.FunctionDef) and _body_lines(node) == MAX_FUNCTION_LINES + 1
