"""A peft LoRA adapter as a llama.cpp LoRA GGUF (``llama-cli -m base.gguf --lora adapter.gguf``).

llama.cpp's adapter layout (its ``convert_lora_to_gguf.py`` and ``llama-adapter.cpp``): the
file is ``general.type = adapter`` with ``adapter.type = lora`` and ``adapter.lora.alpha``;
each adapted weight ``W`` of the base (GGUF name ``blk.N.attn_q.weight``) gets two tensors,
``blk.N.attn_q.weight.lora_a`` = peft's ``lora_A`` ``[r, in]`` and ``....lora_b`` = ``lora_B``
``[out, r]``, and llama.cpp computes ``W x + (alpha / r) * B (A x)`` (``r`` read from the
tensors' shapes). The rows of ``W`` for q and k are permuted for llama.cpp's rotary layout
(:func:`groupwise.models.gguf.write.rope_permute`); the rows of ``B A`` are the rows of ``B``,
so ``lora_b`` of q and k is permuted the same way and ``lora_a`` is not.

peft's rank-stabilised LoRA (``use_rslora``) scales by ``alpha / sqrt(r)``; it is written as
``alpha * sqrt(r)`` so that llama.cpp's ``alpha / r`` gives the same scale.
"""

from __future__ import annotations

import json
import math
import os
import secrets
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from groupwise.models.gguf.write import SUPPORTED_MODEL_TYPES, add_metadata, rope_permute

_PREFIX = "base_model.model."


def adapter_pairs(adapter: Mapping[str, Tensor]) -> dict[str, tuple[Tensor, Tensor]]:
    """peft adapter weights -> ``{base weight name (HF): (A [r, in], B [out, r])}``."""
    pairs: dict[str, dict[str, Tensor]] = {}
    for key, tensor in adapter.items():
        name = key.removeprefix(_PREFIX)
        for part in ("lora_A", "lora_B"):
            marker = f".{part}."
            if marker in name:
                base = name.split(marker)[0] + ".weight"
                pairs.setdefault(base, {})[part] = tensor
                break
        else:
            raise ValueError(
                f"adapter tensor {key!r} is not a LoRA A/B matrix (embedding adapters and "
                "trained norms are not written to a llama.cpp adapter)"
            )
    incomplete = [k for k, v in pairs.items() if len(v) != 2]
    if incomplete:
        raise ValueError(f"adapter lacks lora_A or lora_B for {incomplete[:3]}")
    return {k: (v["lora_A"], v["lora_B"]) for k, v in pairs.items()}


def effective_alpha(adapter_config: Mapping[str, Any]) -> float:
    """``adapter.lora.alpha`` for llama.cpp (which scales by alpha / r) from peft's config."""
    if adapter_config.get("rank_pattern") or adapter_config.get("alpha_pattern"):
        raise ValueError("adapters with per-module ranks or alphas are not written to GGUF")
    alpha, r = float(adapter_config["lora_alpha"]), int(adapter_config["r"])
    return alpha * math.sqrt(r) if adapter_config.get("use_rslora") else alpha


def write_lora_gguf(
    path: str | Path,
    config: Any,
    adapter_dir: str | Path,
    *,
    metadata: Mapping[str, Any] | None = None,
) -> Path:
    """Write the peft adapter in ``adapter_dir`` (``adapter_config.json``,
    ``adapter_model.safetensors``) for the base model ``config`` as a llama.cpp LoRA GGUF at
    ``path`` (float32 tensors; temporary file, then rename)."""
    import gguf
    from safetensors.torch import load_file

    if config.model_type not in SUPPORTED_MODEL_TYPES:
        raise ValueError(
            f"model_type {config.model_type!r} has no GGUF writer; supported: "
            f"{', '.join(SUPPORTED_MODEL_TYPES)}"
        )
    adapter_dir, path = Path(adapter_dir), Path(path)
    settings = json.loads((adapter_dir / "adapter_config.json").read_text(encoding="utf-8"))
    pairs = adapter_pairs(load_file(str(adapter_dir / "adapter_model.safetensors")))
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, int(config.num_hidden_layers))
    q_heads = int(config.num_attention_heads)
    kv_heads = int(getattr(config, "num_key_value_heads", None) or q_heads)
    tensors: list[tuple[str, Tensor]] = []
    for base, (a, b) in pairs.items():
        name = names.get_name(base, try_suffixes=(".weight",))
        if name is None:
            raise ValueError(f"no GGUF name for the adapted weight {base!r}")
        if base.endswith("self_attn.q_proj.weight"):
            b = rope_permute(b, q_heads)
        elif base.endswith("self_attn.k_proj.weight"):
            b = rope_permute(b, kv_heads)
        tensors += [(f"{name}.lora_a", a), (f"{name}.lora_b", b)]
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    try:
        writer = gguf.GGUFWriter(str(tmp), "llama")
        writer.add_type(gguf.GGUFType.ADAPTER)
        writer.add_string(gguf.Keys.Adapter.TYPE, "lora")
        writer.add_float32(gguf.Keys.Adapter.LORA_ALPHA, effective_alpha(settings))
        add_metadata(writer, metadata or {})
        for name, tensor in tensors:
            writer.add_tensor(name, tensor.detach().to(torch.float32).contiguous().numpy())
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path
