"""Quantized GGUF files through llama.cpp's own quantizer, and what each tensor really got.

:func:`quantize_gguf` runs ``llama_model_quantize`` (llama-cpp-python's binding of llama.cpp's
``llama-quantize``) on an ``f32`` file. llama.cpp picks each tensor's type from the requested
file type and falls back where a type does not fit: k-quants pack rows in blocks of 256, so a
row of 576 (SmolLM2-135M's hidden size) cannot take ``Q4_K``/``Q6_K`` and gets a 32-block type
instead (llama.cpp's fallback table, e.g. ``Q5_0``/``Q8_0``); norm vectors stay ``F32``.
:func:`tensor_types` reads the result back, so a report states the types a file holds, not the
ones asked for.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import sys
import tempfile
from collections import Counter
from collections.abc import Iterator
from pathlib import Path


class LlamaCppMissingError(ImportError):
    """llama-cpp-python is needed (quantized GGUF types) but not installed."""


def quantize_gguf(source: str | Path, target: str | Path, ftype: int, threads: int = 0) -> Path:
    """Quantize the GGUF ``source`` (f32/f16/bf16) into ``target`` as llama.cpp's file type
    ``ftype`` (``LLAMA_FTYPE_MOSTLY_Q8_0`` = 7, ``..._Q4_K_M`` = 15 ...); the metadata and
    tokenizer are copied by llama.cpp. Written under a temporary name and renamed.
    ``threads``: 0 = one per core."""
    try:
        import llama_cpp
    except ImportError as exc:
        raise LlamaCppMissingError(
            "quantized GGUF types need llama-cpp-python: pip install 'groupwise[llamacpp]' "
            "(or export f32, bf16 or f16, which need no llama.cpp)"
        ) from exc
    target = Path(target)
    tmp = target.with_name(f".{target.name}.{secrets.token_hex(4)}.tmp")
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = ftype
    params.nthread = threads
    try:
        with _stderr_kept() as log:
            code = llama_cpp.llama_model_quantize(
                str(source).encode(), str(tmp).encode(), llama_cpp.ctypes.byref(params)
            )
        if code != 0:
            tail = "".join(log[-10:])
            raise RuntimeError(
                f"llama.cpp could not quantize {source} (file type {ftype}: {code}); "
                f"its log ends:\n{tail}"
            )
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return target


@contextlib.contextmanager
def _stderr_kept() -> Iterator[list[str]]:
    """llama.cpp's quantizer log (a line per tensor, on stderr) kept out of the terminal; the
    yielded list holds its lines once the block ends."""
    lines: list[str] = []
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile("w+") as log:
        os.dup2(log.fileno(), 2)
        try:  # llama-cpp-python's log callback writes to sys.stderr, the C side to fd 2
            with contextlib.redirect_stderr(log):
                yield lines
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            log.seek(0)
            lines.extend(log.readlines())


def tensor_types(path: str | Path) -> dict[str, int]:
    """How many tensors of each GGML type the GGUF file holds (``{"Q8_0": 168, "F32": 61}``),
    most frequent first, read from its header with the ``gguf`` package."""
    import gguf

    counts = Counter(t.tensor_type.name for t in gguf.GGUFReader(str(path)).tensors)
    return dict(counts.most_common())


def tensor_type_map(path: str | Path) -> dict[str, str]:
    """Each tensor's GGML type by name."""
    import gguf

    return {t.name: t.tensor_type.name for t in gguf.GGUFReader(str(path)).tensors}
