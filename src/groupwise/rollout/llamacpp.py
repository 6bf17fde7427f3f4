"""The ``llamacpp`` engine: decoding with llama.cpp on CPU, sampling with groupwise's sampler.

``rollout.engine=llamacpp`` (needs ``llama-cpp-python``: ``scripts/setup.sh --llamacpp`` or the
``groupwise[llamacpp]`` extra). The policy's weights are written once to a GGUF file
(:mod:`groupwise.models.gguf`, ``bf16`` when the run decodes in bf16, ``f32`` otherwise) and
overwritten in place after every optimizer step (:meth:`LlamaCppEngine.sync_weights`), after
which llama.cpp maps the file again (a fraction of a second).

Decoding goes through llama-cpp-python's C API, token ids in and out (nothing is re-tokenized):

- each prompt is prefilled once into the sequence of its group's first row, and that sequence's
  cache is shared with the group's other G - 1 rows (``llama_memory_seq_cp`` on a unified KV
  cache: the prompt's cells take the other sequence ids, no copy);
- then one ``llama_decode`` per step over every live row, one token each;
- each row's logits (``llama_get_logits_ith``) come back to torch and are sampled by
  :func:`groupwise.rollout.sampling.sample_with_entropy`, with the run's generator and, given
  ``total_rows``, the same per-row inverse-CDF draws as the ``local`` engine, so a seed
  reproduces a rollout and N processes sample what one would.

The rollout records, from the same logits, the entropy of the sampling distribution and
``behaviour_logp``: ``log_softmax(logits / T)`` of each sampled token over the full vocabulary
(at T = 0, greedy evaluation, ``log_softmax(logits)``). llama.cpp's logits differ from the
trainer's by the rounding of its kernels (and, for a bf16 file, of its bf16 weights and f16 KV
cache); mismatch correction reads these log-probs.

``rollout.engine_kwargs``: ``dtype`` (``auto`` | ``bf16`` | ``f32``), ``path`` (where the GGUF
file goes; default a temporary directory removed with the engine), ``threads`` (default
``torch.get_num_threads()``).
"""

from __future__ import annotations

import ctypes
import shutil
import tempfile
import weakref
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from groupwise.models import is_peft
from groupwise.models.gguf import GGUFModelFile, model_state_dict, write_gguf
from groupwise.rollout.engine import ENGINES, EngineContext, RolloutEngine, RolloutRequest
from groupwise.rollout.records import PromptBatch, Rollout, used_width
from groupwise.rollout.sampling import sample_with_entropy
from groupwise.rollout.weights import RolloutWeights

MAX_SEQUENCES = 256
"""llama.cpp's limit on sequences in one context (``LLAMA_MAX_SEQ``): larger batches decode in
chunks of whole groups."""


def _llama() -> Any:
    """The ``llama_cpp`` module, with a message naming the set-up step when it is missing."""
    try:
        import llama_cpp
    except ImportError as exc:
        raise ImportError(
            "rollout.engine=llamacpp needs llama-cpp-python: run scripts/setup.sh --llamacpp "
            "(or pip install 'groupwise[llamacpp]'; it compiles llama.cpp, a few minutes)"
        ) from exc
    return llama_cpp


_LOG_CALLBACK: Any = None


def _quiet(lib: Any) -> None:
    """llama.cpp logs every load to stderr; keep only its errors (level 3)."""
    global _LOG_CALLBACK
    if _LOG_CALLBACK is None:

        def forward(level: int, text: bytes, _: Any) -> None:
            if level == 3:
                print(text.decode("utf-8", "replace"), end="", flush=True)

        _LOG_CALLBACK = lib.llama_log_callback(forward)
        lib.llama_log_set(_LOG_CALLBACK, ctypes.c_void_p(0))
        lib.llama_backend_init()


class LlamaRuntime:
    """A GGUF model loaded by llama.cpp (memory-mapped) and one context sized for a batch.

    ``exact``: a float32 KV cache and no flash attention (llama.cpp's CPU flash attention
    rounds to f16): with an ``f32`` file the logits then match torch's float32 ones to ~1e-6;
    otherwise an f16 cache and flash attention where llama.cpp picks it (faster).
    """

    def __init__(self, path: Path, threads: int, *, exact: bool = False) -> None:
        self.lib = _llama()
        _quiet(self.lib)
        self.path = path
        self.threads = threads
        self.exact = exact
        self.model: Any = None
        self.ctx: Any = None
        self.batch: Any = None
        self.shape = (0, 0, 0)  # n_ctx, n_seq, n_batch of the current context
        self.load()

    def load(self) -> None:
        """(Re)load the model from the file; the context is rebuilt on the next use."""
        self.close()
        params = self.lib.llama_model_default_params()
        params.n_gpu_layers = 0
        params.load_mode = self.lib.LLAMA_LOAD_MODE_MMAP
        model = self.lib.llama_model_load_from_file(str(self.path).encode(), params)
        if not model:
            raise RuntimeError(f"llama.cpp could not load {self.path}")
        self.model = model
        vocab = self.lib.llama_model_get_vocab(model)
        self.n_vocab = int(self.lib.llama_vocab_n_tokens(vocab))

    def context(self, n_ctx: int, n_seq: int, n_batch: int) -> Any:
        """A context with room for ``n_ctx`` cells, ``n_seq`` sequences and ``n_batch`` tokens
        per decode, its memory cleared (the current one when it is large enough)."""
        have = self.shape
        if self.ctx is None or n_ctx > have[0] or n_seq > have[1] or n_batch > have[2]:
            self._free_context()
            shape = (max(n_ctx, have[0]), max(n_seq, have[1]), max(n_batch, have[2]))
            params = self.lib.llama_context_default_params()
            params.n_ctx, params.n_seq_max, params.n_batch = shape
            params.n_ubatch = min(shape[2], 512)
            params.n_threads = params.n_threads_batch = self.threads
            params.kv_unified = True  # a prompt's cells are shared by its group's sequences
            params.no_perf = True
            if self.exact:  # float32 cache; CPU flash attention rounds Q, K, V to f16
                params.type_k = params.type_v = 0  # GGML_TYPE_F32
                params.flash_attn_type = 0  # LLAMA_FLASH_ATTN_TYPE_DISABLED
            ctx = self.lib.llama_init_from_model(self.model, params)
            if not ctx:
                raise RuntimeError(f"llama.cpp could not create a context of {shape}")
            self.ctx, self.shape = ctx, shape
            self.batch = self.lib.llama_batch_init(shape[2], 0, 1)
        self.lib.llama_memory_clear(self.lib.llama_get_memory(self.ctx), False)
        return self.ctx

    def decode(
        self,
        tokens: Sequence[int],
        pos: Sequence[int],
        seqs: Sequence[int],
        outputs: Sequence[bool],
    ) -> None:
        """One ``llama_decode`` of these tokens (positions, sequence ids, which give logits)."""
        b = self.batch
        for i, (t, p, s, o) in enumerate(zip(tokens, pos, seqs, outputs, strict=True)):
            b.token[i], b.pos[i], b.n_seq_id[i], b.logits[i] = t, p, 1, o
            b.seq_id[i][0] = s
        b.n_tokens = len(tokens)
        code = self.lib.llama_decode(self.ctx, b)
        if code != 0:
            raise RuntimeError(f"llama_decode returned {code} for {len(tokens)} tokens")

    def logits(self, indices: Sequence[int]) -> Tensor:
        """``[len(indices), V]`` float32: the last decode's logits of these batch positions."""
        import numpy as np

        rows = []
        for i in indices:
            ptr = self.lib.llama_get_logits_ith(self.ctx, i)
            rows.append(np.ctypeslib.as_array(ptr, shape=(self.n_vocab,)))
        return torch.from_numpy(np.stack(rows))  # np.stack copies out of llama.cpp's buffer

    def prefill_groups(self, prompts: Sequence[Sequence[int]], g: int) -> Tensor:
        """Each prompt once (one ``llama_decode``) into sequence ``i * g`` of its group,
        shared with the group's other ``g - 1`` sequences; the prompts' last logits, one row
        per sequence ``[len(prompts) * g, V]``."""
        tokens: list[int] = []
        pos: list[int] = []
        seqs: list[int] = []
        last: list[int] = []
        for i, p in enumerate(prompts):
            tokens += p
            pos += range(len(p))
            seqs += [i * g] * len(p)
            last.append(len(tokens) - 1)
        outputs = [False] * len(tokens)
        for i in last:
            outputs[i] = True
        self.decode(tokens, pos, seqs, outputs)
        logits = self.logits(last)  # [P, V]
        for i in range(len(prompts)):
            for j in range(1, g):
                self.share(i * g, i * g + j)
        return logits.repeat_interleave(g, dim=0)

    def share(self, src: int, dst: int) -> None:
        """Sequence ``dst`` sees all of sequence ``src``'s cells."""
        self.lib.llama_memory_seq_cp(self.lib.llama_get_memory(self.ctx), src, dst, -1, -1)

    def drop(self, seq: int) -> None:
        """Free sequence ``seq``'s cells (the ones it shares stay for the others)."""
        self.lib.llama_memory_seq_rm(self.lib.llama_get_memory(self.ctx), seq, -1, -1)

    def _free_context(self) -> None:
        if self.batch is not None:
            self.lib.llama_batch_free(self.batch)
            self.batch = None
        if self.ctx is not None:
            self.lib.llama_free(self.ctx)
            self.ctx, self.shape = None, (0, 0, 0)

    def close(self) -> None:
        """Free the context and the model."""
        self._free_context()
        if self.model is not None:
            self.lib.llama_model_free(self.model)
            self.model = None


class GGUFPolicy:
    """The policy's GGUF copy and the llama.cpp runtime that maps it, kept in step with the
    policy: the file is written once (``dtype``: ``auto`` = ``bf16`` when the rollout weights
    are bf16, else ``f32``), then :meth:`sync` overwrites its tensors in place and reloads the
    model. ``owner`` names the setting that asked for it in error messages."""

    def __init__(
        self,
        weights: RolloutWeights,
        tokenizer: Any,
        *,
        dtype: str = "auto",
        path: str | Path | None = None,
        threads: int | None = None,
        owner: str = "rollout.engine=llamacpp",
    ) -> None:
        _llama()  # fail early, naming the set-up step
        self.weights = weights
        self.tokenizer = tokenizer
        self.owner = owner
        self.dtype = _file_dtype(weights.model) if dtype == "auto" else dtype
        if path is None:
            tmp = tempfile.mkdtemp(prefix="groupwise-llamacpp-")
            weakref.finalize(self, shutil.rmtree, tmp, True)
            path = Path(tmp) / "policy.gguf"
        self.path = Path(path)
        self.file: GGUFModelFile | None = None
        self.threads = threads or torch.get_num_threads()
        self.runtime: LlamaRuntime | None = None

    def sync(self) -> LlamaRuntime:
        """Bring the GGUF file up to the policy (written, or rewritten in place) and (re)load
        it; the runtime."""
        self.weights.sync()
        with self.weights.active():
            model = self.weights.model
            if is_peft(model):
                raise ValueError(
                    f"{self.owner} needs merged weights under LoRA: set "
                    "model.lora_rollout_copy=true (the default)"
                )
            state = model_state_dict(model)
            if self.file is None:
                config = getattr(model, "config", None)
                self.file = write_gguf(self.path, config, state, self.tokenizer, dtype=self.dtype)
            else:
                self.file.update(state)
        if self.runtime is None:
            self.runtime = LlamaRuntime(self.path, self.threads, exact=self.dtype == "f32")
            weakref.finalize(self, self.runtime.close)
        else:
            self.runtime.load()
        return self.runtime


class LlamaCppEngine:
    """Decodes with llama.cpp from a GGUF copy of the policy kept in step with it."""

    def __init__(
        self,
        weights: RolloutWeights,
        tokenizer: Any,
        eos_token_ids: Sequence[int],
        *,
        dtype: str = "auto",
        path: str | Path | None = None,
        threads: int | None = None,
    ) -> None:
        self.weights = weights
        self.tokenizer = tokenizer
        self.eos_token_ids = list(eos_token_ids)
        self.pad_token_id = int(tokenizer.pad_token_id)
        self.gguf = GGUFPolicy(weights, tokenizer, dtype=dtype, path=path, threads=threads)
        self.dtype, self.path, self.threads = self.gguf.dtype, self.gguf.path, self.gguf.threads
        self.sync_weights()

    @property
    def runtime(self) -> LlamaRuntime | None:
        """The llama.cpp runtime on the GGUF file."""
        return self.gguf.runtime

    def sync_weights(self) -> None:
        """Bring the GGUF file up to the policy (rewritten in place) and reload it."""
        self.gguf.sync()

    @contextmanager
    def serving(self) -> Iterator[None]:
        """Nothing to prepare: :meth:`sync_weights` already wrote and loaded the weights."""
        yield

    def generate(self, prompts: PromptBatch, request: RolloutRequest) -> Rollout:
        """See :meth:`RolloutEngine.generate`: whole groups, at most :data:`MAX_SEQUENCES`
        rows per llama.cpp context."""
        assert self.runtime is not None
        g, sampling = request.group_size, request.sampling
        rows = prompts.input_ids.shape[0] * g
        uniforms = None
        if request.total_rows is not None and sampling.temperature > 0:
            shape = (sampling.max_tokens, request.total_rows)  # as the local engine draws
            uniforms = torch.rand(
                shape, generator=request.generator, device=request_device(request)
            )
            uniforms = uniforms[:, request.row_offset : request.row_offset + rows].cpu()
        ids = [
            r[m.bool()].tolist()
            for r, m in zip(prompts.input_ids, prompts.attention_mask, strict=True)
        ]
        per_chunk = max(MAX_SEQUENCES // g, 1)
        parts = []
        for start in range(0, len(ids), per_chunk):
            chunk = ids[start : start + per_chunk]
            u = None if uniforms is None else uniforms[:, start * g : (start + len(chunk)) * g]
            parts.append(self._decode(chunk, g, request, u))
        tokens, entropy, logp = (torch.cat(x) for x in zip(*parts, strict=True))
        device = prompts.input_ids.device
        return _finish(
            prompts, tokens, entropy, logp, self.eos_token_ids, self.pad_token_id, g, device
        )

    def _decode(
        self, prompts: list[list[int]], g: int, request: RolloutRequest, uniforms: Tensor | None
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Tokens, entropies and behaviour log-probs ``[B, L]`` of ``g`` rows per prompt."""
        assert self.runtime is not None
        rt, s = self.runtime, request.sampling
        rows, steps = len(prompts) * g, s.max_tokens
        prompt_tokens = sum(len(p) for p in prompts)
        rt.context(prompt_tokens + rows * steps + 1, rows, max(prompt_tokens, rows))
        logits = rt.prefill_groups(prompts, g)  # [B, V]
        eos = torch.tensor(self.eos_token_ids)
        tokens = torch.full((rows, steps), self.pad_token_id, dtype=torch.long)
        entropy = torch.zeros(rows, steps)
        logp = torch.zeros(rows, steps)
        next_pos = torch.tensor([len(p) for p in prompts]).repeat_interleave(g)
        active = torch.arange(rows)
        for step in range(steps):
            u = None if uniforms is None else uniforms[step, active]
            nxt, h, lp = self._sample(logits, step, s, request.generator, eos, u)
            tokens[active, step], logp[active, step] = nxt, lp
            if h is not None:
                entropy[active, step] = h
            live = ~torch.isin(nxt, eos)
            for row in active[~live].tolist():
                rt.drop(row)
            active, nxt = active[live], nxt[live]
            if active.numel() == 0 or step == steps - 1:
                break
            n = active.numel()
            rt.decode(nxt.tolist(), (next_pos[active] + step).tolist(), active.tolist(), [True] * n)
            logits = rt.logits(range(n))
        return tokens, entropy, logp

    @staticmethod
    def _sample(
        logits: Tensor,
        step: int,
        s: Any,
        generator: torch.Generator | None,
        eos: Tensor,
        uniform: Tensor | None,
    ) -> tuple[Tensor, Tensor | None, Tensor]:
        """One token per row, its entropy and behaviour log-prob (before the EOS ban)."""
        scale = s.temperature if s.temperature > 0 else 1.0
        logsm = torch.log_softmax(logits / scale, dim=-1)  # [R, V]
        if step < s.min_new_tokens:
            logits = logits.clone()
            logits[:, eos] = float("-inf")
        nxt, h = sample_with_entropy(
            logits,
            temperature=s.temperature,
            top_p=s.top_p,
            top_k=s.top_k,
            generator=generator,
            uniform=uniform,
        )
        return nxt, h, logsm.gather(-1, nxt[:, None]).squeeze(-1)


def request_device(request: RolloutRequest) -> torch.device:
    """Where the request's generator draws (the local engine draws on the run's device)."""
    gen = request.generator
    return gen.device if gen is not None else torch.device("cpu")


def _file_dtype(model: nn.Module) -> str:
    """``bf16`` when the rollout weights are bf16 (the run decodes in bf16), else ``f32``."""
    for p in model.parameters():
        if p.is_floating_point():
            return "bf16" if p.dtype == torch.bfloat16 else "f32"
    return "f32"


def _finish(
    prompts: PromptBatch,
    tokens: Tensor,
    entropy: Tensor,
    logp: Tensor,
    eos_token_ids: Sequence[int],
    pad_token_id: int,
    group_size: int,
    device: torch.device,
) -> Rollout:
    """The rollout of sampled ``tokens`` ``[B, L]``: cut after the first EOS (kept), padding
    after it, the per-token records zeroed there."""
    is_eos = torch.isin(tokens, torch.tensor(list(eos_token_ids)))
    has_eos = is_eos.any(dim=1)
    first = torch.where(has_eos, is_eos.int().argmax(dim=1), tokens.shape[1])  # [B]
    mask = (torch.arange(tokens.shape[1])[None, :] <= first[:, None]).long()  # [B, L]
    width = used_width(mask)
    keep = mask[:, :width]
    return Rollout(
        prompts=prompts,
        completion_ids=tokens.masked_fill(mask == 0, pad_token_id)[:, :width].to(device),
        completion_mask=keep.to(device),
        truncated=(~has_eos).to(device),
        group_size=group_size,
        entropy=(entropy[:, :width] * keep).to(device),
        behaviour_logp=(logp[:, :width] * keep).to(device),
    )


@ENGINES.register("llamacpp")
def build_llamacpp_engine(ctx: EngineContext) -> RolloutEngine:
    """llama.cpp on CPU; ``rollout.engine_kwargs``: ``dtype``, ``path``, ``threads``."""
    options = dict(ctx.options or {})
    unknown = set(options) - {"dtype", "path", "threads"}
    if unknown:
        raise ValueError(
            f"rollout.engine_kwargs {sorted(unknown)} unknown to the llamacpp engine; "
            "valid: dtype (auto|bf16|f32), path, threads"
        )
    return LlamaCppEngine(ctx.weights, ctx.tokenizer, ctx.eos_token_ids, **options)
