"""The ``calculator`` tool and environment: exact arithmetic the policy calls by text.

:func:`calculator` evaluates an arithmetic expression by walking its ``ast`` (never ``eval``):
integer and decimal numbers, ``+ - * / // % **``, unary ``+``/``-`` and parentheses. Anything
else (names, calls, attributes, strings, comparisons...) is refused with an ``error: ...``
result, as are huge powers, huge numbers and long expressions. A few spellings a small model
writes are accepted: ``×``/``x`` between numbers, ``÷``, ``^`` for a power, thousands commas
(``1,234``) and a trailing ``=``.

The ``calculator`` environment (``rollout.engine=episodes``,
``rollout.engine_kwargs={environment: calculator}``) is a
:class:`~groupwise.envs.tools.ToolEnvironment` with that one tool. ``env_kwargs``:
``describe`` (default true: the engine describes the tool in a system message with the
generic text protocol; false: the prompt describes it itself, as the ``multiply`` task's
prompt does), ``timeout``, ``max_chars``.
"""

from __future__ import annotations

import ast
import math
import operator
import re
from collections.abc import Callable
from typing import Any

from groupwise.envs.base import ENVIRONMENTS
from groupwise.envs.tools import Tool, ToolEnvironment

MAX_EXPRESSION_CHARS = 200
MAX_EXPONENT = 64
MAX_ABS_VALUE = 10**30

_BINARY: dict[type, Callable[[Any, Any], Any]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
    ast.Pow: operator.pow,
}
_UNARY: dict[type, Callable[[Any], Any]] = {ast.UAdd: operator.pos, ast.USub: operator.neg}


class CalculatorError(ValueError):
    """An expression the calculator refuses or cannot evaluate."""


def _normalise(expression: str) -> str:
    text = expression.strip().rstrip("=").strip()
    text = text.replace("×", "*").replace("÷", "/").replace("^", "**")
    text = re.sub(r"(?<=\d)\s*[xX]\s*(?=[\d(])", "*", text)
    return re.sub(r"(?<=\d),(?=\d{3}(?!\d))", "", text)


def evaluate(expression: str) -> int | float:
    """The value of an arithmetic ``expression``; :class:`CalculatorError` when refused."""
    if not isinstance(expression, str):
        raise CalculatorError("the expression must be a string")
    if len(expression) > MAX_EXPRESSION_CHARS:
        raise CalculatorError(f"expression longer than {MAX_EXPRESSION_CHARS} characters")
    text = _normalise(expression)
    if not text:
        raise CalculatorError("empty expression")
    try:
        tree = ast.parse(text, mode="eval")
    except SyntaxError as exc:
        raise CalculatorError(f"not an arithmetic expression: {expression!r}") from exc
    return _value(tree.body)


def _value(node: ast.AST) -> int | float:
    if isinstance(node, ast.Constant):
        if isinstance(node.value, bool) or not isinstance(node.value, int | float):
            raise CalculatorError(f"only numbers are allowed, not {node.value!r}")
        return _checked(node.value)
    if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
        return _checked(_UNARY[type(node.op)](_value(node.operand)))
    if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
        left, right = _value(node.left), _value(node.right)
        if isinstance(node.op, ast.Pow) and abs(right) > MAX_EXPONENT:
            raise CalculatorError(f"exponent larger than {MAX_EXPONENT}")
        try:
            return _checked(_BINARY[type(node.op)](left, right))
        except ZeroDivisionError as exc:
            raise CalculatorError("division by zero") from exc
        except OverflowError as exc:
            raise CalculatorError("result too large") from exc
    raise CalculatorError(f"unsupported syntax: {type(node).__name__}")


def _checked(value: Any) -> int | float:
    if isinstance(value, complex):
        raise CalculatorError("complex result")
    if isinstance(value, float) and not math.isfinite(value):
        raise CalculatorError("result is not a finite number")
    if abs(value) > MAX_ABS_VALUE:
        raise CalculatorError("result too large")
    return value


def format_number(value: int | float) -> str:
    """``value`` as the calculator writes it: integers exactly, other values to 12 digits."""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, float):
        return f"{value:.12g}"
    return str(value)


def calculator(expression: str) -> str:
    """Evaluate an arithmetic expression exactly and return the result.

    Args:
        expression: The arithmetic to compute, e.g. "123 * 45"; numbers, + - * / // % ** and
            parentheses only.
    """
    try:
        return format_number(evaluate(expression))
    except CalculatorError as exc:
        return f"error: {exc}"


CALCULATOR = Tool.from_function(calculator)


class CalculatorEnvironment(ToolEnvironment):
    """A :class:`ToolEnvironment` with the ``calculator`` tool (see the module docstring)."""

    def __init__(self, *, describe: bool = True, **options: Any) -> None:
        super().__init__([CALCULATOR], **options)
        if not describe:  # the prompt describes the tool: nothing for the engine to add
            self.tools = []


@ENVIRONMENTS.register("calculator")
def calculator_environment(**options: Any) -> CalculatorEnvironment:
    """The ``calculator`` environment (``options``: describe, timeout, max_chars)."""
    return CalculatorEnvironment(**options)
