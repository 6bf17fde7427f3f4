"""Plain data across the sandbox boundary: the only values a sandboxed solution can hand back.

A value is *plain* when it is built from ``None``, ``bool``, ``int``, ``float``, ``complex``,
``str``, ``bytes``, ``list``, ``tuple``, ``set``, ``frozenset`` and ``dict``, by exact type
(a subclass of ``list`` with its own ``__eq__`` is not plain). :func:`encode` turns one into
JSON-ready data, tagging what JSON cannot say (``{"t": [...]}`` a tuple, ``{"s": ...}`` a set,
``{"fs": ...}`` a frozenset, ``{"d": [[k, v], ...]}`` a dict, ``{"b": base64}`` bytes,
``{"c": [re, im]}`` a complex, ``{"f": "nan"}`` a non-finite float); :func:`decode` builds
fresh builtins from it and rejects anything else. So whatever the untrusted side sends, the
trusted side compares values it constructed itself, with the builtins' own ``==``.

Standard library only: both sides of the boundary import this file as it is, as the sibling
module of the program they run, ``bootstrap.py`` inside the sandbox and ``judge.py`` in the
trusted judge process (``python -I -S``).
"""

import base64
import math
from typing import Any

MAX_DEPTH = 64
"""Nesting deeper than this is refused (both ways)."""


class NotPlainData(TypeError):
    """A value that cannot cross the boundary."""


def encode(value: Any, depth: int = 0) -> Any:
    """JSON-ready data for a plain ``value`` (raises :class:`NotPlainData` otherwise)."""
    if depth > MAX_DEPTH:
        raise NotPlainData("nested too deeply")
    kind = type(value)
    if value is None or kind is bool or kind is int or kind is str:
        return value
    if kind is float:
        return value if math.isfinite(value) else {"f": repr(value)}
    if kind is list:
        return [encode(v, depth + 1) for v in value]
    if kind is tuple:
        return {"t": [encode(v, depth + 1) for v in value]}
    if kind is set or kind is frozenset:
        tag = "s" if kind is set else "fs"
        return {tag: [encode(v, depth + 1) for v in value]}
    if kind is dict:
        return {"d": [[encode(k, depth + 1), encode(v, depth + 1)] for k, v in value.items()]}
    if kind is bytes:
        return {"b": base64.b64encode(value).decode("ascii")}
    if kind is complex:
        return {"c": [encode(value.real, depth + 1), encode(value.imag, depth + 1)]}
    raise NotPlainData(f"not plain data: {kind.__name__}")


def decode(data: Any, depth: int = 0) -> Any:
    """Fresh builtins for what :func:`encode` produced (raises :class:`NotPlainData`)."""
    if depth > MAX_DEPTH:
        raise NotPlainData("nested too deeply")
    kind = type(data)
    if data is None or kind is bool or kind is int or kind is str:
        return data
    if kind is float:
        return float(data)
    if kind is list:
        return [decode(v, depth + 1) for v in data]
    if kind is not dict or len(data) != 1:
        raise NotPlainData(f"not plain data: {kind.__name__}")
    ((tag, body),) = data.items()
    if tag == "f" and body in ("nan", "inf", "-inf"):
        return float(body)
    if tag == "b" and type(body) is str:
        return base64.b64decode(body.encode("ascii"), validate=True)
    if type(body) is not list:
        raise NotPlainData(f"bad tagged value {tag!r}")
    items = [decode(v, depth + 1) for v in body]
    if tag == "t":
        return tuple(items)
    if tag == "s":
        return set(items)
    if tag == "fs":
        return frozenset(items)
    if tag == "c" and len(items) == 2 and all(type(x) in (int, float) for x in items):
        return complex(items[0], items[1])
    if tag == "d" and all(type(kv) is list and len(kv) == 2 for kv in items):
        return {k: v for k, v in items}
    raise NotPlainData(f"bad tagged value {tag!r}")
