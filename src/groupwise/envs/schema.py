"""Tools described to the model: a Python function and the JSON schema made from its signature.

The schema comes from the function's name, the first paragraph of its docstring, the
``Args:`` lines of a Google-style docstring and its type hints (``str``, ``int``, ``float``,
``bool``, lists, dicts; ``Optional[X]`` as ``X``). :func:`example_arguments` makes plausible
argument values from a schema, for the worked call of the text protocol.
"""

from __future__ import annotations

import inspect
import re
import types
import typing
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

_JSON_TYPES = {str: "string", int: "integer", float: "number", bool: "boolean"}
_EXAMPLE_VALUES: dict[str, Any] = {
    "string": "text",
    "integer": 3,
    "number": 2.5,
    "boolean": True,
    "array": [],
    "object": {},
}
"""A placeholder value per JSON-schema type (:func:`example_value`)."""
_EXAMPLE_IN_TEXT = re.compile(r"(?:e\.g\.|for example)[,:]?\s*[\"']([^\"']+)[\"']", re.IGNORECASE)
"""A quoted example in an argument's description: ``e.g. "123 * 45"``."""


@dataclass
class Tool:
    """A callable with the JSON schema that describes it to the model."""

    name: str
    description: str
    parameters: dict[str, Any]
    func: Callable[..., Any]

    @classmethod
    def from_function(cls, func: Callable[..., Any], name: str | None = None) -> Tool:
        """Schema from ``func``'s name, docstring and type hints (see the module docstring)."""
        doc = inspect.getdoc(func) or ""
        summary, arg_docs = _parse_docstring(doc)
        try:
            hints = typing.get_type_hints(func)
        except Exception:
            hints = {}
        properties: dict[str, Any] = {}
        required: list[str] = []
        for pname, param in inspect.signature(func).parameters.items():
            if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
                continue
            prop = _json_type(hints.get(pname, param.annotation))
            if pname in arg_docs:
                prop["description"] = arg_docs[pname]
            properties[pname] = prop
            if param.default is param.empty:
                required.append(pname)
        parameters = {"type": "object", "properties": properties, "required": required}
        return cls(name or func.__name__, summary, parameters, func)

    def schema(self) -> dict[str, Any]:
        """The OpenAI-style function schema (``tools=[...]`` of ``apply_chat_template``)."""
        return {
            "type": "function",
            "function": {
                "name": self.name,
                "description": self.description,
                "parameters": self.parameters,
            },
        }


def example_value(prop: dict[str, Any]) -> Any:
    """A plausible value for one argument of JSON schema ``prop``: the first of its ``enum``, its
    ``default``, the first of its ``examples``, a quoted example in its description
    (``e.g. "123 * 45"``), else a placeholder by ``type`` (string ``"text"``, integer ``3``,
    number ``2.5``, boolean ``true``, array ``[]``, object ``{}``; ``"text"`` for an untyped
    argument)."""
    if prop.get("enum"):
        return prop["enum"][0]
    if "default" in prop:
        return prop["default"]
    if prop.get("examples"):
        return prop["examples"][0]
    kind = prop.get("type")
    if isinstance(kind, list):  # ["string", "null"]: the first non-null type
        kind = next((k for k in kind if k != "null"), None)
    if kind in (None, "string"):
        found = _EXAMPLE_IN_TEXT.search(str(prop.get("description", "")))
        if found:
            return found.group(1)
    return _EXAMPLE_VALUES.get(str(kind), "text")


def example_arguments(parameters: dict[str, Any]) -> dict[str, Any]:
    """Plausible arguments for a tool's ``parameters`` schema: a value (:func:`example_value`)
    for every required argument (for every argument when none is required)."""
    properties: dict[str, Any] = parameters.get("properties") or {}
    names = parameters.get("required") or list(properties)
    return {name: example_value(properties.get(name) or {}) for name in names}


def as_tool(obj: Tool | Callable[..., Any]) -> Tool:
    """``obj`` if it is a Tool, else the tool made from the function."""
    return obj if isinstance(obj, Tool) else Tool.from_function(obj)


def _parse_docstring(doc: str) -> tuple[str, dict[str, str]]:
    """The first paragraph and the ``Args:`` descriptions of a Google-style docstring."""
    summary = doc.split("\n\n", 1)[0].strip()
    args: dict[str, str] = {}
    lines = doc.splitlines()
    starts = [i for i, line in enumerate(lines) if line.strip() == "Args:"]
    for line in lines[starts[0] + 1 :] if starts else []:
        if not line.strip() or re.match(r"^\S.*:\s*$", line):  # blank or the next section
            break
        m = re.match(r"\s*(\w+)\s*(?:\([^)]*\))?\s*:\s*(.*)", line)
        if m:
            args[m.group(1)] = m.group(2).strip()
    return summary, args


def _json_type(hint: Any) -> dict[str, Any]:
    origin = typing.get_origin(hint)
    if hint in _JSON_TYPES:
        return {"type": _JSON_TYPES[hint]}
    if origin in (list, Sequence, tuple):
        return {"type": "array"}
    if origin is dict or hint is dict:
        return {"type": "object"}
    if origin in (typing.Union, types.UnionType):
        options = [a for a in typing.get_args(hint) if a is not type(None)]
        return _json_type(options[0]) if len(options) == 1 else {}
    return {}
