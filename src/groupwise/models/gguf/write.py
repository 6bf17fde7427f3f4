"""GGUF files of Llama-family models: written once, their tensor data rewritten in place.

:func:`write_gguf` turns a transformers Llama-family model (its config and state dict, and its
tokenizer) into a GGUF file that llama.cpp loads: the ``llama`` architecture's
hyperparameters, the tokenizer (a byte-level BPE vocabulary, its merges, special tokens and
chat template; or, for a model that came from a GGUF file, that file's own tokenizer and
``general.*`` keys: :mod:`groupwise.models.gguf.source`) and every weight in ``f32``, ``bf16``
or ``f16`` (norm vectors always ``f32``, as llama.cpp's own converter keeps them). It returns a :class:`GGUFModelFile`, which knows where
each tensor's bytes are and overwrites them from a new state dict (:meth:`GGUFModelFile.update`):
a training run refreshes its inference copy after every optimizer step without rewriting the
header, and llama.cpp memory-maps the file again when it reloads.

Facts taken from the GGUF format and llama.cpp's converter (``convert_hf_to_gguf.py``):

- HF names map to GGUF names through the ``gguf`` package's tensor-name map
  (``model.layers.3.self_attn.q_proj.weight`` -> ``blk.3.attn_q.weight``).
- HF's Llama applies rotary embeddings to the two *halves* of each head (``rotate_half``);
  llama.cpp's ``llama`` architecture rotates *adjacent pairs*. The rows of ``q_proj`` and
  ``k_proj`` (and their biases) are therefore permuted per head: output row ``2 j + s`` of a
  head takes input row ``s * d / 2 + j`` (``d`` = head dim, ``s`` in {0, 1}); for ``k_proj``
  per key-value head (:func:`rope_permute`).
- Tied embeddings: no ``output.weight``; llama.cpp then uses ``token_embd.weight``.
- Rounding: ``bf16`` and ``f16`` are torch's round-to-nearest-even of the float32 weights
  (``bf16``: the bits the ``local`` engine's bf16 rollout copy holds; ``f16``: 10 mantissa bits,
  finite up to 65504); ``f32`` is exact for float32 weights.
- The file is written under a temporary name beside its target and renamed into place.
"""

from __future__ import annotations

import json
import mmap
import os
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

GGUF_DTYPES: dict[str, torch.dtype] = {
    "bf16": torch.bfloat16,
    "f32": torch.float32,
    "f16": torch.float16,
}
"""The weight types :func:`write_gguf` writes, by name (quantized types are made from an
``f32`` file by llama.cpp: :mod:`groupwise.models.gguf.quantize`)."""

SUPPORTED_MODEL_TYPES = ("llama",)
"""transformers ``config.model_type`` values written as llama.cpp's ``llama`` architecture."""


@dataclass(frozen=True)
class TensorSlot:
    """One tensor of a GGUF file: where its bytes are and where they come from."""

    source: str
    """The state-dict key it is made from (HF naming)."""
    name: str
    """Its GGUF name (``blk.0.attn_q.weight``)."""
    shape: tuple[int, ...]
    """Its shape in torch order (the GGUF header stores the reverse)."""
    dtype: torch.dtype
    """Its element type in the file."""
    offset: int = -1
    """Absolute byte offset of its data in the file (-1 until written)."""
    heads: int = 0
    """Rotary row permutation over this many heads (:func:`rope_permute`); 0 = none."""

    @property
    def nbytes(self) -> int:
        """Bytes of its data."""
        return _numel(self.shape) * self.dtype.itemsize


@dataclass
class GGUFModelFile:
    """A written GGUF file whose tensor data can be rewritten in place (same names, shapes and
    types; the header, metadata and offsets never change)."""

    path: Path
    """The file."""
    slots: list[TensorSlot] = field(default_factory=list)
    """Its tensors, in file order, with their offsets."""

    @property
    def nbytes(self) -> int:
        """Bytes of tensor data."""
        return sum(s.nbytes for s in self.slots)

    def update(self, state_dict: Mapping[str, Tensor]) -> None:
        """Overwrite every tensor's bytes from ``state_dict`` (HF naming), converted and
        permuted exactly as :func:`write_gguf` wrote them. The file is memory-mapped and each
        tensor copied into its pages; a reader that maps the file again sees the new weights."""
        missing = [s.source for s in self.slots if s.source not in state_dict]
        if missing:
            raise KeyError(f"state dict lacks {missing[:3]} (of {len(missing)}) of {self.path}")
        with open(self.path, "r+b") as f, mmap.mmap(f.fileno(), 0) as mm:
            for slot in self.slots:
                dst = torch.frombuffer(
                    mm, dtype=slot.dtype, count=_numel(slot.shape), offset=slot.offset
                ).view(slot.shape)
                _copy_into(dst, state_dict[slot.source].detach(), slot)
                del dst  # no view may outlive the map
            mm.flush()


def _numel(shape: tuple[int, ...]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def rope_permute(weight: Tensor, heads: int) -> Tensor:
    """Rows of a q/k projection (or bias) reordered from HF's half-split rotary layout to
    llama.cpp's interleaved one: per head of dim ``d``, row ``2 j + s`` <- row ``s * d/2 + j``."""
    rest = weight.shape[1:]
    half = weight.shape[0] // heads // 2
    return weight.reshape(heads, 2, half, *rest).transpose(1, 2).reshape(weight.shape)


def _copy_into(dst: Tensor, src: Tensor, slot: TensorSlot) -> None:
    """``dst`` <- ``src`` (permuted when the slot says so), cast to ``dst``'s type."""
    if tuple(src.shape) != slot.shape:
        raise ValueError(f"{slot.source}: shape {tuple(src.shape)}, the file has {slot.shape}")
    if slot.heads:
        half = slot.shape[0] // slot.heads // 2
        rest = slot.shape[1:]
        src = src.reshape(slot.heads, 2, half, *rest).transpose(1, 2)
        dst = dst.view(slot.heads, half, 2, *rest)
    dst.copy_(src)


def _config_value(config: Any, name: str, default: Any = None) -> Any:
    value = getattr(config, name, None)
    return default if value is None else value


def _rope_theta(config: Any) -> float:
    params = getattr(config, "rope_parameters", None) or {}
    rope_type = params.get("rope_type", "default")
    if rope_type not in ("default", None):
        raise ValueError(
            f"rope_type {rope_type!r} is not written to GGUF yet; only plain rotary embeddings"
        )
    return float(params.get("rope_theta", _config_value(config, "rope_theta", 10000.0)))


def _head_dim(config: Any) -> int:
    return int(_config_value(config, "head_dim", config.hidden_size // config.num_attention_heads))


def plan_slots(
    config: Any, state_dict: Mapping[str, Tensor], dtype: torch.dtype
) -> list[TensorSlot]:
    """The GGUF tensors of a Llama-family ``state_dict``: names, shapes, types, permutations.

    Matrices take ``dtype``; vectors (norms, biases) are float32. A tied ``lm_head`` is left
    out (llama.cpp reuses the embedding).
    """
    import gguf

    if config.model_type not in SUPPORTED_MODEL_TYPES:
        raise ValueError(
            f"model_type {config.model_type!r} has no GGUF writer; supported: "
            f"{', '.join(SUPPORTED_MODEL_TYPES)}"
        )
    layers = int(config.num_hidden_layers)
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, layers)
    tied = bool(_config_value(config, "tie_word_embeddings", False))
    q_heads = int(config.num_attention_heads)
    kv_heads = int(_config_value(config, "num_key_value_heads", q_heads))
    slots = []
    for key, tensor in state_dict.items():
        if tied and key == "lm_head.weight":
            continue
        if key.endswith("rotary_emb.inv_freq"):
            continue
        name = names.get_name(key, try_suffixes=(".weight", ".bias"))
        if name is None:
            raise ValueError(f"no GGUF name for {key!r} (not a Llama-family tensor)")
        heads = 0
        if key.endswith(("self_attn.q_proj.weight", "self_attn.q_proj.bias")):
            heads = q_heads
        elif key.endswith(("self_attn.k_proj.weight", "self_attn.k_proj.bias")):
            heads = kv_heads
        kind = dtype if tensor.dim() >= 2 else torch.float32
        slots.append(TensorSlot(key, name, tuple(tensor.shape), kind, heads=heads))
    return slots


def _add_hparams(writer: Any, config: Any, dtype: torch.dtype) -> None:
    import gguf

    head_dim = _head_dim(config)
    writer.add_context_length(int(config.max_position_embeddings))
    writer.add_embedding_length(int(config.hidden_size))
    writer.add_block_count(int(config.num_hidden_layers))
    writer.add_feed_forward_length(int(config.intermediate_size))
    writer.add_head_count(int(config.num_attention_heads))
    writer.add_head_count_kv(
        int(_config_value(config, "num_key_value_heads", config.num_attention_heads))
    )
    writer.add_key_length(head_dim)
    writer.add_value_length(head_dim)
    writer.add_rope_dimension_count(head_dim)
    writer.add_rope_freq_base(_rope_theta(config))
    writer.add_layer_norm_rms_eps(float(config.rms_norm_eps))
    writer.add_vocab_size(int(config.vocab_size))
    t = gguf.LlamaFileType
    kinds = {torch.float32: t.ALL_F32, torch.bfloat16: t.MOSTLY_BF16, torch.float16: t.MOSTLY_F16}
    writer.add_file_type(kinds[dtype])


def detect_pre_tokenizer(tokenizer: Any) -> str:
    """llama.cpp's name for the tokenizer's pre-tokenization (``tokenizer.ggml.pre``), read
    from its structure: byte-level with single digits split off (SmolLM's) = ``smollm``; plain
    byte-level with GPT-2's regex = ``gpt-2``; otherwise ``default`` (pass the name yourself)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        return "default"
    pre = json.loads(backend.to_str()).get("pre_tokenizer") or {}
    parts = pre.get("pretokenizers", [pre]) if pre.get("type") == "Sequence" else [pre]
    kinds = [p.get("type") for p in parts]
    if kinds == ["Digits", "ByteLevel"] and parts[0].get("individual_digits"):
        return "smollm"
    if kinds == ["ByteLevel"] and parts[0].get("use_regex", True):
        return "gpt-2"
    return "default"


def _add_tokenizer(writer: Any, tokenizer: Any, vocab_size: int, pre: str | None) -> None:
    """Byte-level BPE vocabulary (``gpt2`` model), merges, special ids, chat template."""
    import gguf

    backend = getattr(tokenizer, "backend_tokenizer", None)
    model = json.loads(backend.to_str())["model"] if backend is not None else {}
    if model.get("type") != "BPE":
        raise ValueError("only byte-level BPE tokenizers (fast tokenizers) are written to GGUF")
    by_id = {i: t for t, i in tokenizer.get_vocab().items()}
    added = getattr(tokenizer, "added_tokens_decoder", {})
    tokens, types = [], []
    for i in range(vocab_size):
        if i not in by_id:
            tokens.append(f"[PAD{i}]")
            types.append(gguf.TokenType.UNUSED)
        elif i in added:
            tokens.append(by_id[i])
            types.append(
                gguf.TokenType.CONTROL if added[i].special else gguf.TokenType.USER_DEFINED
            )
        else:
            tokens.append(by_id[i])
            types.append(gguf.TokenType.NORMAL)
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(pre or detect_pre_tokenizer(tokenizer))
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(merges)
    for kind in ("bos", "eos", "unk", "pad"):
        token_id = getattr(tokenizer, f"{kind}_token_id", None)
        if token_id is not None:
            getattr(writer, f"add_{kind}_token_id")(int(token_id))
    probe = tokenizer("a")["input_ids"]
    bos = tokenizer.bos_token_id
    writer.add_add_bos_token(bool(probe) and bos is not None and probe[0] == bos)
    writer.add_add_eos_token(False)
    template = getattr(tokenizer, "chat_template", None)
    if isinstance(template, str):
        writer.add_chat_template(template)


def add_metadata(writer: Any, metadata: Mapping[str, Any]) -> None:
    """Extra key/values to a ``gguf.GGUFWriter``: str, bool, int, float or a list of str."""
    for key, value in metadata.items():
        if isinstance(value, str):
            writer.add_string(key, value)
        elif isinstance(value, bool):
            writer.add_bool(key, value)
        elif isinstance(value, int):
            writer.add_int64(key, value)
        elif isinstance(value, float):
            writer.add_float32(key, value)
        elif isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
            writer.add_array(key, list(value))
        else:
            raise TypeError(f"metadata {key!r}: {type(value).__name__} is not written to GGUF")


def write_gguf(
    path: str | Path,
    config: Any,
    state_dict: Mapping[str, Tensor],
    tokenizer: Any = None,
    *,
    dtype: str = "bf16",
    metadata: Mapping[str, Any] | None = None,
    pre_tokenizer: str | None = None,
    source: str | Path | None = None,
) -> GGUFModelFile:
    """Write a Llama-family model to ``path`` as GGUF; the returned file takes later weights.

    ``config``: the transformers config (``model_type`` in :data:`SUPPORTED_MODEL_TYPES`);
    ``state_dict``: its weights, HF names (float32 or bf16; LoRA already merged);
    ``tokenizer``: a fast byte-level BPE tokenizer, written as llama.cpp's ``gpt2`` model
    (None: no vocabulary, a file only for tensor tools); ``dtype``: a name of
    :data:`GGUF_DTYPES`; ``metadata``: extra keys (``general.name`` ...); ``pre_tokenizer``:
    llama.cpp's pre-tokenizer name, else :func:`detect_pre_tokenizer`; ``source``: the GGUF
    file the model was loaded from: its tokenizer (when its vocabulary has ``vocab_size``
    tokens) and its ``general.*`` keys are copied (``metadata`` wins over them). Tensors are
    written one at a time (no second copy of the model in memory), to a temporary file that is
    renamed to ``path`` at the end.
    """
    from groupwise.models.gguf.source import SourceFields

    if dtype not in GGUF_DTYPES:
        raise ValueError(f"GGUF dtype {dtype!r}; valid: {', '.join(GGUF_DTYPES)}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    slots = plan_slots(config, state_dict, GGUF_DTYPES[dtype])
    copied = SourceFields.read(source, int(config.vocab_size)) if source else None
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    try:
        written = _write_file(
            tmp,
            config,
            state_dict,
            slots,
            GGUF_DTYPES[dtype],
            tokenizer,
            metadata or {},
            pre_tokenizer,
            copied,
        )
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return GGUFModelFile(path, written)


_RAW_TYPES = {torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16"}


def _write_file(
    path: Path,
    config: Any,
    state_dict: Mapping[str, Tensor],
    slots: list[TensorSlot],
    dtype: torch.dtype,
    tokenizer: Any,
    metadata: Mapping[str, Any],
    pre_tokenizer: str | None,
    copied: Any,
) -> list[TensorSlot]:
    """The header (hyperparameters, tokenizer, metadata), then each tensor; the slots with
    their offsets."""
    import gguf

    writer = gguf.GGUFWriter(str(path), "llama")
    _add_hparams(writer, config, dtype)
    if copied is not None and copied.has_tokenizer:
        copied.add_tokenizer(writer)
    elif tokenizer is not None:
        _add_tokenizer(writer, tokenizer, int(config.vocab_size), pre_tokenizer)
    if copied is not None:
        copied.add_general(writer, skip=set(metadata))
    add_metadata(writer, metadata)
    for slot in slots:
        kind = gguf.GGMLQuantizationType[_RAW_TYPES[slot.dtype]]
        writer.add_tensor_info(
            slot.name, slot.shape, _numpy_dtype(slot.dtype), slot.nbytes, raw_dtype=kind
        )
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    written = []
    for slot in slots:
        data = torch.empty(slot.shape, dtype=slot.dtype)
        _copy_into(data, state_dict[slot.source].detach(), slot)
        raw = data.view(torch.int16) if slot.dtype == torch.bfloat16 else data
        # the writer pads the file to its alignment, then writes the bytes: that is the offset
        assert writer.fout is not None
        offset = gguf.GGUFWriter.ggml_pad(writer.fout[0].tell(), writer.data_alignment)
        writer.write_tensor_data(raw.numpy())
        written.append(
            TensorSlot(slot.source, slot.name, slot.shape, slot.dtype, offset, slot.heads)
        )
    writer.close()
    return written


def _numpy_dtype(dtype: torch.dtype) -> Any:
    import numpy as np

    return np.dtype({torch.float32: np.float32, torch.float16: np.float16}.get(dtype, np.int16))


def model_state_dict(model: torch.nn.Module) -> dict[str, Tensor]:
    """A plain model's weights by HF name, full tensors (FSDP shards gathered: a collective)."""
    from groupwise.distributed import full_tensor

    return {k: full_tensor(v) for k, v in model.state_dict().items()}


def write_model_gguf(
    path: str | Path,
    model: torch.nn.Module,
    tokenizer: Any = None,
    *,
    dtype: str = "bf16",
    metadata: Mapping[str, Any] | None = None,
    source: str | Path | None = None,
) -> GGUFModelFile:
    """:func:`write_gguf` of a transformers model (its ``config`` and state dict)."""
    config = getattr(model, "config", None)
    if config is None:
        raise ValueError("the model has no transformers config; pass config= to write_gguf")
    state = model_state_dict(model)
    return write_gguf(path, config, state, tokenizer, dtype=dtype, metadata=metadata, source=source)
