"""The GGUF types a policy is exported as: one registry, so adding a type touches one place.

A type is either written directly by :func:`groupwise.models.gguf.write_gguf` (``f32``,
``bf16``, ``f16``: ``written`` names its weight dtype) or made by llama.cpp's quantizer from an
``f32`` file (``llama_ftype``: llama.cpp's ``LLAMA_FTYPE_*`` number)::

    from groupwise.export.formats import GGUF_TYPES, GGUFType

    GGUF_TYPES.add("q5_k_m", GGUFType("q5_k_m", "5-bit k-quants, medium", llama_ftype=17))
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from groupwise.config import ConfigError
from groupwise.registry import Registry


@dataclass(frozen=True)
class GGUFType:
    """One export type."""

    name: str
    """The name users give (``q4_k_m``) and the file name's tag."""
    description: str
    """One line for the help text."""
    written: str = "f32"
    """The dtype the writer writes (for a quantized type: of the file llama.cpp quantizes)."""
    llama_ftype: int | None = None
    """llama.cpp's file type to quantize to; None: written directly, no llama.cpp needed."""

    @property
    def quantized(self) -> bool:
        """Whether llama.cpp's quantizer makes it (needs llama-cpp-python)."""
        return self.llama_ftype is not None


GGUF_TYPES: Registry[GGUFType] = Registry("training.export_gguf")
"""Export types by name, in registration order."""

for _type in (
    GGUFType("f32", "float32: exact for float32 weights", written="f32"),
    GGUFType("bf16", "bfloat16: round-to-nearest-even of the weights", written="bf16"),
    GGUFType("f16", "float16: round-to-nearest-even of the weights", written="f16"),
    GGUFType("q8_0", "8-bit blocks of 32 (llama.cpp's quantizer)", llama_ftype=7),
    GGUFType(
        "q4_k_m", "4-bit k-quants, medium (llama.cpp's; falls back per tensor)", llama_ftype=15
    ),
):
    GGUF_TYPES.add(_type.name, _type)


def gguf_types(names: Sequence[str], key: str = "training.export_gguf") -> list[GGUFType]:
    """The types named (duplicates dropped, order kept); an unknown name raises a
    :class:`~groupwise.config.ConfigError` naming ``key`` and the valid names."""
    unknown = [n for n in names if n not in GGUF_TYPES]
    if unknown:
        raise ConfigError(
            f"{key}: unknown GGUF type {unknown[0]!r}; valid: {', '.join(GGUF_TYPES.names())}"
        )
    return [GGUF_TYPES.get(n) for n in dict.fromkeys(names)]
