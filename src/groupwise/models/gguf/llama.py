"""A GGUF file opened with llama-cpp-python's high-level ``Llama``, the way the checks use it.

Two settings differ from ``Llama``'s defaults:

- **No weight repacking** (``use_extra_bufts = false``): llama.cpp repacks quantized weights
  into the layout of an "extra" CPU buffer type (AMX tiles on Xeons that have them). With
  llama-cpp-python 0.3.36 on an AMX Xeon that path crashed (a segmentation fault in the first
  decode) for every quantized file tried, SmolLM2's own Q4_1 included; plain CPU buffers run
  them. ``Llama`` does not expose the setting, so the model parameters it starts from are
  adjusted while it loads.
- ``exact=True``: a float32 KV cache and no flash attention, so an ``f32`` file computes what
  torch computes up to the order of float32 sums.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

_LOCK = threading.Lock()


def open_llama(
    path: str | Path,
    *,
    lora_path: str | Path | None = None,
    n_ctx: int = 2048,
    threads: int = 0,
    exact: bool = False,
    logits_all: bool = False,
    repack: bool = False,
) -> Any:
    """``llama_cpp.Llama`` over ``path`` (with the LoRA GGUF ``lora_path`` applied, scale 1);
    ``threads`` 0 = one per core; ``repack``: allow llama.cpp's repacked weight buffers."""
    import os

    import llama_cpp
    import llama_cpp.llama as high_level

    kwargs: dict[str, Any] = {
        "model_path": str(path),
        "lora_path": str(lora_path) if lora_path else None,
        "n_ctx": n_ctx,
        "n_threads": threads or os.cpu_count() or 1,
        "logits_all": logits_all,
        "verbose": False,
    }
    if exact:
        kwargs.update(type_k=0, type_v=0, flash_attn=False)  # GGML_TYPE_F32
    low_level = high_level.llama_cpp
    default = low_level.llama_model_default_params

    def params() -> Any:
        p = default()
        p.use_extra_bufts = repack
        return p

    with _LOCK:
        low_level.llama_model_default_params = params
        try:
            return llama_cpp.Llama(**kwargs)
        finally:
            low_level.llama_model_default_params = default
