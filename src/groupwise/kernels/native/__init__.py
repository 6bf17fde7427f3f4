"""Fused C++ kernels for decoding and training in bf16 on CPU, compiled here at first use.

One module from three sources (``simd.h`` holds what they share; ``module.cpp`` binds them):

``decode.cpp`` holds five kernels of the decode step (``rollout.native_kernels``), four that each replace a chain of small torch operations of
:class:`groupwise.kernels.packed_decode.PackedDecoder` with one pass over the data, rounding
every intermediate as torch rounds it; the results equal torch's up to the order of float32
sums (bitwise on the bf16 inputs of tests/kernels/test_native.py; over a whole decode the
differences reach greedy choices between near-equal tokens: 23 of 200 greedy completions of
the default run's untrained model changed somewhere, mostly after the answer):

- ``rms_norm(x, weight, eps)``: ``weight * (x32 * rsqrt(mean(x32^2) + eps)).to(x.dtype)``
  (8 torch kernels);
- ``rope_cache(qkv, cos, signed_sin, keys, values, slot, heads, kv_heads)``: the rotary
  embedding of the query and key heads, the keys and values written into the cache at
  ``slot``; returns the rotated queries ``[R, H, D]`` (about 8);
- ``attention(q, keys, values, mask, n, scale)``: single-query grouped attention over the
  first ``n`` cache slots, ``softmax((q K^T) scale + mask) V`` (about 7, and the copy of the
  sliced cache the batched matmul makes);
- ``silu_mul(gate_up)``: ``silu(gate) * up`` (3);
- ``sample(logits, temperature, uniform)``: the inverse-CDF draw of
  :func:`groupwise.rollout.sampling.sample_token` without top-k/top-p, with the entropy and the
  drawn token's log-prob, in one pass per row (about 10 vocabulary-wide torch kernels); its
  float32 sums run in another order, so a draw within rounding of a token's boundary may land
  on the neighbour (the same distribution; tested against the torch sampler and exact
  probabilities).

``logprobs.cpp`` and ``layers.cpp`` hold four training kernels (``training.native_kernels``),
with the formulas and roundings of the torch functions they replace (float32 sums in another
order; tests/kernels/test_native_logprobs.py, test_native_layers.py):

- ``token_logp_rows(raw, targets, temperature, with_entropy)`` and ``token_logp_grad_rows``:
  the per-row work of :func:`groupwise.core.chunked_token_logp` on a chunk's logits (through
  :func:`logp_rows`), forward and backward, one pass each per row instead of float32 copies
  and about 6 vocabulary-wide kernels;
- ``rms_norm_forward(x, weight, eps)`` and ``rms_norm_backward(dy, x, weight, rstd)``:
  :class:`groupwise.kernels.fused.RMSNormFunction` in two calls instead of about 20 small
  kernels; the weight gradient is summed over rows in a fixed order, whatever the threads.

The vector code needs AVX-512 (F and BW): where torch's CPU capability is lower the module is
not built (``available`` is False) and decoding and training use torch's operations, as they
do for float32 weights. The build (torch's ``cpp_extension``: a C++ compiler, and ninja, which
the ``ninja`` package groupwise depends on provides) takes about 40 s once per machine and
source; it is cached under ``TORCH_EXTENSIONS_DIR`` (default ``~/.cache/torch_extensions``). A
failed build prints one line on stderr and falls back.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import sys
from collections.abc import Callable
from functools import cache
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

RowsForward = Callable[[Tensor, Tensor, float, bool], tuple[Tensor, Tensor, Tensor | None]]
"""``(raw [r, V], targets [r], temperature, compute_entropy) -> (logp, lse, entropy)``."""
RowsBackward = Callable[[Tensor, Tensor, Tensor, Tensor, float], None]
"""``(raw [r, V] overwritten with dL / d raw, lse [r], targets [r], grad_logp [r], T)``."""

SOURCE_DIR = Path(__file__).parent
SOURCES = tuple(
    SOURCE_DIR / name for name in ("decode.cpp", "layers.cpp", "logprobs.cpp", "module.cpp")
)
"""The translation units of the module (``simd.h`` holds what they share)."""
_FLAGS = {
    "AVX512": ["-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512dq", "-mfma", "-mavx2"],
}
"""Compiler flags per torch CPU capability (``torch.backends.cpu.get_cpu_capability()``)."""


def capability() -> str:
    """torch's CPU capability on this machine (``AVX512``, ``AVX2``, ``DEFAULT``, ...)."""
    return str(torch.backends.cpu.get_cpu_capability())


def buildable() -> str | None:
    """None where the kernels can be built here, else why not (one phrase)."""
    if capability() not in _FLAGS:
        return f"the CPU capability is {capability()}, the kernels need AVX512"
    if shutil.which("c++") is None and shutil.which("g++") is None:
        return "no C++ compiler on PATH"
    if _ninja_dir() is None:
        return "no ninja (pip install ninja)"
    return None


def _ninja_dir() -> str | None:
    """The directory of a ninja executable: PATH's, else the ``ninja`` package's (a dependency,
    whose script is on PATH only inside an activated environment)."""
    found = shutil.which("ninja")
    if found is not None:
        return str(Path(found).parent)
    try:
        import ninja
    except ImportError:
        return None
    bin_dir = getattr(ninja, "BIN_DIR", None)
    return str(bin_dir) if bin_dir and (Path(bin_dir) / "ninja").exists() else None


@cache
def load() -> Any | None:
    """The compiled module, built on first call (cached on disk); None where it cannot be."""
    reason = buildable()
    if reason is not None:
        return None
    from torch.utils.cpp_extension import load as build

    ninja_dir = _ninja_dir()
    path = os.environ.get("PATH", "")
    if ninja_dir is not None and ninja_dir not in path.split(os.pathsep):
        os.environ["PATH"] = ninja_dir + os.pathsep + path  # torch runs `ninja` from PATH

    name = f"groupwise_native_{capability().lower()}_{source_digest()}"
    if not _built(name):
        print("groupwise: building the native kernels (once, about a minute)", file=sys.stderr)
    try:
        return build(
            name=name,
            sources=[str(s) for s in SOURCES],
            extra_cflags=["-O3", *_FLAGS[capability()]],
        )
    except Exception as error:  # a compiler or linker failure: decode with torch ops
        first = str(error).strip().splitlines()[0] if str(error).strip() else repr(error)
        print(
            f"groupwise: native kernels not built ({first}); using torch ops",
            file=sys.stderr,
        )
        return None


def source_digest() -> str:
    """12 hex digits of the sources and the shared header: a changed source builds anew."""
    digest = hashlib.sha256()
    for path in (*SOURCES, SOURCE_DIR / "simd.h"):
        digest.update(path.read_bytes())
    return digest.hexdigest()[:12]


def _built(name: str) -> bool:
    """Whether torch's extension cache already holds module ``name`` (a guess: a message only)."""
    try:
        from torch.utils.cpp_extension import _get_build_directory

        return any(Path(_get_build_directory(name, verbose=False)).glob(f"{name}*.so"))
    except Exception:  # a private helper of torch's; without it, say nothing
        return True


@cache
def logp_rows() -> tuple[RowsForward, RowsBackward] | None:
    """The per-row work of :func:`groupwise.core.chunked_token_logp` in two kernels
    (``token_logp_rows``, ``token_logp_grad_rows``) as its ``(forward, backward)`` pair (a
    ``groupwise.core.logprobs.LogpRows`` once wrapped), or None where they are not built."""
    ops = load()
    if ops is None:
        return None

    def forward(
        raw: Tensor, targets: Tensor, temperature: float, compute_entropy: bool
    ) -> tuple[Tensor, Tensor, Tensor | None]:
        logp, lse, entropy = ops.token_logp_rows(
            raw.contiguous(), targets.contiguous(), temperature, compute_entropy
        )
        return logp, lse, (entropy if compute_entropy else None)

    def backward(
        raw: Tensor, lse: Tensor, targets: Tensor, grad_logp: Tensor, temperature: float
    ) -> None:
        if not raw.is_contiguous():
            raise ValueError("token_logp_grad_rows overwrites raw in place: it must be contiguous")
        ops.token_logp_grad_rows(
            raw, lse.contiguous(), targets.contiguous(), grad_logp.contiguous(), temperature
        )

    return forward, backward


def available() -> bool:
    """Whether the kernels are built (building them now if needed)."""
    return load() is not None


__all__ = ["SOURCES", "available", "buildable", "capability", "load", "logp_rows", "source_digest"]
