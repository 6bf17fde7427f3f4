"""A KV cache with preallocated buffers (no ``torch.cat`` per decoded token)."""

from __future__ import annotations

import inspect
from typing import Any

from torch import Tensor, nn
from transformers.cache_utils import Cache, DynamicLayer


class PreallocatedLayer(DynamicLayer):
    """One layer's keys/values in ``[B, H_kv, capacity, D]`` buffers; ``keys`` is a view.

    ``update`` writes the new states in place and returns views of the filled part, where
    transformers' ``DynamicLayer`` concatenates (copying the whole cache) at every token.
    """

    def __init__(self, capacity: int) -> None:
        super().__init__()
        self.capacity = capacity
        self._kbuf: Tensor | None = None
        self._vbuf: Tensor | None = None

    def _allocate(self, keys: Tensor, values: Tensor, extra: int) -> None:
        """New buffers holding ``keys``/``values`` with room for at least ``extra`` more."""
        n = keys.shape[-2]
        cap = max(self.capacity, n + extra)
        kshape = (*keys.shape[:-2], cap, keys.shape[-1])
        vshape = (*values.shape[:-2], cap, values.shape[-1])
        self._kbuf = keys.new_empty(kshape)
        self._vbuf = values.new_empty(vshape)
        self._kbuf[..., :n, :] = keys
        self._vbuf[..., :n, :] = values
        self.keys, self.values = self._kbuf[..., :n, :], self._vbuf[..., :n, :]

    def _kv(self) -> tuple[Tensor, Tensor]:
        assert self.keys is not None and self.values is not None
        return self.keys, self.values

    def update(
        self, key_states: Tensor, value_states: Tensor, *args: Any, **kwargs: Any
    ) -> tuple[Tensor, Tensor]:
        """Append the new states in place; return views of all states so far."""
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
            self._allocate(key_states, value_states, 0)
            return self._kv()
        assert self._kbuf is not None and self._vbuf is not None
        keys, values = self._kv()
        n, add = keys.shape[-2], key_states.shape[-2]
        if n + add > self._kbuf.shape[-2] or key_states.shape[0] != self._kbuf.shape[0]:
            self._allocate(keys, values, add)
            assert self._kbuf is not None and self._vbuf is not None
        self._kbuf[..., n : n + add, :] = key_states
        self._vbuf[..., n : n + add, :] = value_states
        self.keys, self.values = self._kbuf[..., : n + add, :], self._vbuf[..., : n + add, :]
        return self._kv()

    def batch_repeat_interleave(self, repeats: int) -> None:
        """Repeat each row ``repeats`` times (one prefill, G completions)."""
        if self.get_seq_length() > 0:
            keys, values = self._kv()
            self._allocate(
                keys.repeat_interleave(repeats, dim=0), values.repeat_interleave(repeats, dim=0), 0
            )

    def batch_select_indices(self, indices: Tensor) -> None:
        """Keep only the rows ``indices`` (drop finished completions)."""
        if self.get_seq_length() > 0:
            keys, values = self._kv()
            self._allocate(keys[indices], values[indices], 0)


class PreallocatedCache(Cache):
    """A cache of ``PreallocatedLayer`` s sized for ``capacity`` positions."""

    def __init__(self, num_layers: int, capacity: int) -> None:
        super().__init__(layers=[PreallocatedLayer(capacity) for _ in range(num_layers)])


def num_cache_layers(config: Any) -> int:
    """Number of decoder layers of a transformers config."""
    text = config.get_text_config(decoder=True) if hasattr(config, "get_text_config") else config
    return int(text.num_hidden_layers)


__all__ = ["PreallocatedCache", "PreallocatedLayer", "num_cache_layers"]


def cache_kwargs(model: nn.Module, cache: Any) -> dict[str, Any]:
    """``{name: cache}`` for ``model(...)``: the keyword its forward takes a KV cache by.

    transformers 5.2x renamed ``past_key_values`` to ``cache`` (the old name warns, and goes in
    5.40); earlier 5.x releases and remote-code models know only the old name. A PEFT wrapper
    forwards keywords to the model it wraps, so that model's signature decides.
    """
    return {_cache_keyword(type(_unwrapped(model))): cache}


def _unwrapped(model: nn.Module) -> nn.Module:
    """The transformers model under PEFT's wrappers (``get_base_model``), else ``model``."""
    get_base = getattr(model, "get_base_model", None)
    return get_base() if callable(get_base) else model


_KEYWORDS: dict[type, str] = {}
"""Model class -> its cache keyword, read once per class."""


def _cache_keyword(cls: type) -> str:
    """``cache`` when ``cls.forward`` names that parameter, else ``past_key_values``."""
    if cls not in _KEYWORDS:
        try:
            params = inspect.signature(cls.forward).parameters  # type: ignore[attr-defined]
            _KEYWORDS[cls] = "cache" if "cache" in params else "past_key_values"
        except (TypeError, ValueError):  # a forward with no introspectable signature
            _KEYWORDS[cls] = "past_key_values"
    return _KEYWORDS[cls]
