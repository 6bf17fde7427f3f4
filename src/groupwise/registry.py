"""One registration mechanism for everything groupwise looks up by name.

Losses and their aggregations, advantage scalings, KL estimators, rewards, tasks, rollout
engines and environments are each a :class:`Registry`: a name -> object table filled by a
decorator where the object is defined, so adding one touches one place::

    from groupwise.core import AGGREGATIONS

    @AGGREGATIONS.register("my_mean")
    def my_mean(masked, mask, norm):  # norm: groupwise.core.Normalisers
        return masked.sum() / norm.num_sequences

A lookup of an unknown name raises :class:`UnknownNameError` (a ``ValueError`` and a
``KeyError``) that names the config key to fix and lists the valid names. Registries that hold
built-in entries (``builtin=True``) import the modules :mod:`groupwise.builtins` lists under
their key on first lookup; a ``loader`` function may be given instead.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

T = TypeVar("T")


class UnknownNameError(ValueError, KeyError):
    """A name that is not registered; the message lists the valid ones."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


class Registry(Generic[T]):
    """Named entries of one kind, e.g. ``Registry[AggregationFn]("algorithm.loss_type")``.

    ``key`` is the config key (or argument) that selects an entry: errors name it.
    ``builtin``: the entries groupwise ships are registered by the modules
    :data:`groupwise.builtins.BUILTIN_MODULES` lists under ``key``, imported on first lookup.
    """

    def __init__(
        self, key: str, loader: Callable[[], None] | None = None, *, builtin: bool = False
    ) -> None:
        self.key = key
        self._entries: dict[str, T] = {}
        if builtin:
            loader = self._import_builtins
        self._loader = loader
        self._loaded = loader is None

    def _import_builtins(self) -> None:
        """Import the modules the manifest lists for this registry's key."""
        from groupwise.builtins import BUILTIN_MODULES

        for module in BUILTIN_MODULES[self.key]:
            importlib.import_module(module)

    def register(self, name: str, *, replace: bool = False) -> Callable[[T], T]:
        """Decorator adding ``name``; registering a taken name needs ``replace=True``."""

        def add(entry: T) -> T:
            self.add(name, entry, replace=replace)
            return entry

        return add

    def add(self, name: str, entry: T, *, replace: bool = False) -> None:
        """Add ``entry`` under ``name`` (the non-decorator form)."""
        if not name or not isinstance(name, str):
            raise ValueError(f"{self.key}: a registered name must be a non-empty string")
        if name in self._entries and not replace and self._entries[name] is not entry:
            raise ValueError(
                f"{self.key}: {name!r} is already registered; pass replace=True to override it"
            )
        self._entries[name] = entry

    def get(self, name: str) -> T:
        """The entry registered as ``name``; an unknown name lists the valid ones."""
        self._load()
        if name not in self._entries:
            raise UnknownNameError(
                f"{self.key}: unknown name {name!r}; valid: {', '.join(self.names())}"
            )
        return self._entries[name]

    def unregister(self, name: str) -> T:
        """Remove ``name`` and return its entry (e.g. to undo a registration in a test)."""
        entry = self.get(name)  # loads first, so a lazily loaded entry cannot come back
        del self._entries[name]
        return entry

    def names(self) -> tuple[str, ...]:
        """Registered names, in registration order."""
        self._load()
        return tuple(self._entries)

    def __contains__(self, name: object) -> bool:
        self._load()
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self.names())

    def _load(self) -> None:
        if not self._loaded and self._loader is not None:
            self._loaded = True  # set first: the loader's imports register into this registry
            self._loader()

    def __repr__(self) -> str:
        return f"Registry({self.key!r}, {list(self._entries)})"
