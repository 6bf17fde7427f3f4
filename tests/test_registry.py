"""groupwise.registry: registration, lookup errors that list names, lazy loaders."""

from __future__ import annotations

import pytest

from groupwise.registry import Registry, UnknownNameError


def test_register_get_and_order() -> None:
    reg: Registry[int] = Registry("algorithm.thing")
    reg.add("b", 2)

    @reg.register("a")
    def a() -> int:
        return 1

    assert reg.get("b") == 2 and reg.get("a") is a
    assert reg.names() == ("b", "a") and "a" in reg and "z" not in reg and len(reg) == 2


def test_unknown_name_names_the_key_and_lists_valid_names() -> None:
    reg: Registry[int] = Registry("algorithm.thing")
    reg.add("x", 1)
    reg.add("y", 2)
    with pytest.raises(UnknownNameError, match=r"algorithm.thing: unknown name 'z'; valid: x, y"):
        reg.get("z")
    with pytest.raises(ValueError):  # also a ValueError, as config errors are
        reg.get("z")


def test_taken_name_needs_replace() -> None:
    reg: Registry[int] = Registry("k")
    reg.add("x", 1)
    reg.add("x", 1)  # the same object again is harmless (module re-import)
    with pytest.raises(ValueError, match="already registered"):
        reg.add("x", 2)
    reg.add("x", 2, replace=True)
    assert reg.get("x") == 2


def test_loader_runs_once_on_first_lookup() -> None:
    calls = []

    def loader() -> None:
        calls.append(1)
        reg.add("late", 3)

    reg: Registry[int] = Registry("k", loader=loader)
    assert calls == []
    assert reg.get("late") == 3 and reg.names() == ("late",)
    assert calls == [1]


def test_unregister_removes_and_returns_the_entry() -> None:
    def loader() -> None:
        reg.add("builtin", 1)

    reg: Registry[int] = Registry("k", loader=loader)
    reg.add("mine", 2)
    assert reg.unregister("mine") == 2 and "mine" not in reg
    assert reg.unregister("builtin") == 1  # loaded first: the loader does not bring it back
    assert reg.names() == ()
    with pytest.raises(UnknownNameError, match="k: unknown name 'mine'"):
        reg.unregister("mine")
    reg.add("mine", 3)  # the name is free again
    assert reg.get("mine") == 3
