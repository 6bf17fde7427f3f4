"""GGUF files: one package for the ``llamacpp`` engine's weight sync and the exports of a run.

- :mod:`~groupwise.models.gguf.write`: a Llama-family model as GGUF (``f32``, ``bf16``,
  ``f16``), tensors rewritten in place (:class:`GGUFModelFile`).
- :mod:`~groupwise.models.gguf.source`: the tokenizer and ``general.*`` keys of the GGUF file a
  model came from, copied into the files written from it.
- :mod:`~groupwise.models.gguf.quantize`: quantized types through llama.cpp's quantizer, and the
  per-tensor types a file really holds.
- :mod:`~groupwise.models.gguf.lora`: a peft adapter as a llama.cpp LoRA GGUF.

The ``gguf`` package (and llama-cpp-python, for quantizing) is imported only where used.
"""

from groupwise.models.gguf.write import (
    GGUF_DTYPES,
    SUPPORTED_MODEL_TYPES,
    GGUFModelFile,
    TensorSlot,
    detect_pre_tokenizer,
    model_state_dict,
    plan_slots,
    rope_permute,
    write_gguf,
    write_model_gguf,
)

__all__ = [
    "GGUF_DTYPES",
    "SUPPORTED_MODEL_TYPES",
    "GGUFModelFile",
    "TensorSlot",
    "detect_pre_tokenizer",
    "model_state_dict",
    "plan_slots",
    "rope_permute",
    "write_gguf",
    "write_model_gguf",
]
