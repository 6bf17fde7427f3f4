"""Helpers of the adapters for outside environment libraries (optional extras).

:func:`require` imports an optional package or raises an ``ImportError`` that names the
``groupwise[...]`` extra to install; :func:`import_object` resolves a ``"module:attribute"``
import path (how a config names a class or function of user code).
"""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import Any


def require(module: str, extra: str, purpose: str) -> ModuleType:
    """``import module``, or an ImportError naming the extra that installs it.

    ``purpose`` says what needs it (e.g. ``"the openenv environment"``).
    """
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise ImportError(
            f"{purpose} needs the {module!r} package: pip install 'groupwise[{extra}]' "
            f"({type(exc).__name__}: {exc})"
        ) from exc


def import_object(spec: Any, key: str) -> Any:
    """``spec`` itself unless it is a ``"module:attribute"`` string, then that attribute.

    ``key`` names the setting in errors (e.g. ``env_kwargs.env``).
    """
    if not isinstance(spec, str):
        return spec
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise ValueError(f"{key}: expected an import path 'module:attribute', got {spec!r}")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ValueError(f"{key}: cannot import module {module_name!r}: {exc}") from exc
    obj = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ValueError(f"{key}: {module_name!r} has no attribute {attr!r}")
        obj = getattr(obj, part)
    return obj
