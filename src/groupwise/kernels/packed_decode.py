"""One decode step of a Llama-family model in a few large kernels, on prepacked weights.

Decoding a small model on CPU, HF's per-layer modules spend as long outside the weight matmuls
as in them (a ``torch.cat`` of the whole KV cache per layer and token, ~40 small ops per
layer), and every bf16 matmul reorders its weight into oneDNN's blocked layout before it
multiplies. This decoder runs the same arithmetic with:

- the weights packed once per rollout (``torch.ops.mkldnn._reorder_linear_weight``) and the
  projections that read the same input fused: ``[Wq; Wk; Wv]`` and ``[Wg; Wu]`` (four matmuls
  per layer instead of seven, none of them reordering);
- a KV cache preallocated for the whole rollout, each token's keys and values written in place
  at slot ``Lp + t`` (left-padded prompts fill slots ``0..Lp-1``, masked where padded); values
  ``[R, H_kv, capacity, D]``, keys stored transposed, ``[R, H_kv, D, capacity]``, so that the
  ``K^T`` of the first ``n`` slots that the score matmul reads is ``D`` contiguous runs of ``n``
  (the batched matmul copies a sliced operand to a contiguous one either way; copying runs
  instead of transposing element by element halved the score matmul's time at 32 rows, and
  the product is the same);
- grouped-query attention on that cache without expanding it (query heads of one KV head
  stacked), softmax in float32 as transformers computes it.

Per layer, with ``x [R, d]`` the residual stream of the R decoding rows::

    h = RMSNorm(x);  q, k, v = split(h [Wq; Wk; Wv]^T);  q, k = rope(q, k, position)
    K[:, :, slot], V[:, :, slot] = k, v;   o = softmax(q K^T / sqrt(D) + mask) V
    x = x + o Wo^T;  h = RMSNorm(x);  g, u = split(h [Wg; Wu]^T);  x = x + (silu(g) u) Wd^T

and ``logits = RMSNorm(x) W_head^T``. The result equals transformers' forward up to the
rounding of the fused and packed matmuls (measured in tests/kernels/test_packed_decode.py).
Models it does not recognise (other architectures, LoRA-wrapped layers, biases on the MLP,
per-head norms) are decoded by transformers as before: :func:`supports` says which.

With ``native_kernels`` (bf16 weights) the RMSNorms, the rotary embedding with the cache
writes, the attention and SiLU-times-up run as four C++ kernels of
:mod:`groupwise.kernels.native`, one call each instead of chains of small torch kernels, with
the same roundings (float32 sums in another order); where they are not built the torch
operations below run.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from groupwise.kernels import native

SUPPORTED_MODEL_TYPES = ("llama", "mistral", "qwen2")
"""``config.model_type`` values whose decoder layers this step reproduces."""


def _packable(dtype: torch.dtype) -> bool:
    """bf16 weights where oneDNN computes bf16 natively (AVX512-BF16 or AVX-NE-CONVERT class
    CPUs): elsewhere (AVX2 only) it refuses to pack them and ``F.linear`` runs."""
    return (
        dtype == torch.bfloat16
        and torch.backends.mkldnn.is_available()
        and bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    )


class PackedLinear:
    """``y = x W^T + b`` for fixed ``W`` ``[out, in]``: oneDNN-packed in bf16, plain otherwise."""

    def __init__(self, weight: Tensor, bias: Tensor | None, rows: int) -> None:
        self.out_features = weight.shape[0]
        self.bias = bias
        self.packed = _packable(weight.dtype) and weight.device.type == "cpu"
        if self.packed:
            self.weight = torch.ops.mkldnn._reorder_linear_weight(weight, max(rows, 1))
        else:
            self.weight = weight.contiguous()

    def __call__(self, x: Tensor) -> Tensor:
        if self.packed:
            out: Tensor = torch.ops.mkldnn._linear_pointwise(
                x, self.weight, self.bias, "none", [], ""
            )
            return out
        return F.linear(x, self.weight, self.bias)


def _cat_rows(*tensors: Tensor | None) -> Tensor | None:
    if all(t is None for t in tensors):
        return None
    if any(t is None for t in tensors):
        raise ValueError("packed decode: biases on some fused projections but not others")
    return torch.cat([t for t in tensors if t is not None], dim=0)


@dataclass
class _Layer:
    norm_in: Tensor
    norm_post: Tensor
    qkv: PackedLinear
    out: PackedLinear
    gate_up: PackedLinear
    down: PackedLinear


def supports(model: nn.Module) -> bool:
    """Whether ``model`` is a Llama-family causal LM of plain linear layers this step runs."""
    config: Any = getattr(model, "config", None)
    inner = getattr(model, "model", None)
    if (
        config is None
        or inner is None
        or getattr(config, "model_type", None) not in (SUPPORTED_MODEL_TYPES)
    ):
        return False
    if getattr(config, "hidden_act", "silu") != "silu" or getattr(config, "mlp_bias", False):
        return False
    if getattr(config, "use_sliding_window", False) or getattr(config, "sliding_window", None):
        return False
    layers = getattr(inner, "layers", None)
    if layers is None or not isinstance(getattr(model, "lm_head", None), nn.Linear):
        return False
    for layer in layers:
        attn, mlp = layer.self_attn, layer.mlp
        linears = [attn.q_proj, attn.k_proj, attn.v_proj, attn.o_proj]
        linears += [mlp.gate_proj, mlp.up_proj, mlp.down_proj]
        if any(type(m) is not nn.Linear for m in linears) or hasattr(attn, "q_norm"):
            return False
    return True


class PackedDecoder:
    """Decode steps of ``model`` for ``rows`` rows after a transformers prefill.

    ``prefix`` is the prefill's cache (one row per prompt, not yet repeated), ``prompt_mask``
    ``[P, Lp]``; each prompt's row is repeated ``group_size`` times into a cache of
    ``Lp + max_new_tokens`` slots. Weights are read (and packed) once, here: build a new decoder
    after the weights change.
    """

    def __init__(
        self,
        model: nn.Module,
        prefix: Any,
        prompt_mask: Tensor,
        group_size: int,
        max_new_tokens: int,
        *,
        native_kernels: bool = False,
    ) -> None:
        inner: Any = model.model
        config: Any = model.config
        self.heads = config.num_attention_heads
        self.kv_heads = getattr(config, "num_key_value_heads", None) or self.heads
        self.head_dim = getattr(config, "head_dim", None) or config.hidden_size // self.heads
        self.scale = self.head_dim**-0.5
        self.eps = float(config.rms_norm_eps)
        self.embed = inner.embed_tokens.weight
        self.rotary = inner.rotary_emb
        self.norm = inner.norm.weight
        rows = prompt_mask.shape[0] * group_size
        self.layers = [self._pack(layer, rows) for layer in inner.layers]
        head: Any = model.lm_head
        self.head = PackedLinear(head.weight, head.bias, rows)
        self._fill_cache(prefix, prompt_mask, group_size, max_new_tokens)
        use_native = native_kernels and self.head.packed  # bf16 weights on CPU
        self.native: Any = native.load() if use_native else None

    @staticmethod
    def _pack(layer: Any, rows: int) -> _Layer:
        attn, mlp = layer.self_attn, layer.mlp
        qkv_w = torch.cat([attn.q_proj.weight, attn.k_proj.weight, attn.v_proj.weight])
        qkv_b = _cat_rows(attn.q_proj.bias, attn.k_proj.bias, attn.v_proj.bias)
        return _Layer(
            norm_in=layer.input_layernorm.weight,
            norm_post=layer.post_attention_layernorm.weight,
            qkv=PackedLinear(qkv_w, qkv_b, rows),
            out=PackedLinear(attn.o_proj.weight, attn.o_proj.bias, rows),
            gate_up=PackedLinear(torch.cat([mlp.gate_proj.weight, mlp.up_proj.weight]), None, rows),
            down=PackedLinear(mlp.down_proj.weight, None, rows),
        )

    def _fill_cache(
        self, prefix: Any, prompt_mask: Tensor, group_size: int, max_new_tokens: int
    ) -> None:
        """Slots ``0..Lp-1`` from the prefill, repeated G times; an additive mask ``[R, cap]``."""
        prompts, prompt_length = prompt_mask.shape
        capacity = prompt_length + max_new_tokens
        self.keys: list[Tensor] = []  # [R, H_kv, D, cap] (transposed)
        self.values: list[Tensor] = []  # [R, H_kv, cap, D]
        rows = prompts * group_size
        for layer in prefix.layers:
            k, v = layer.keys, layer.values  # [P, H_kv, Lp, D]
            keys = k.new_empty((rows, self.kv_heads, self.head_dim, capacity))
            values = v.new_empty((rows, self.kv_heads, capacity, self.head_dim))
            keys[..., :prompt_length] = k.transpose(2, 3).repeat_interleave(group_size, dim=0)
            values[:, :, :prompt_length] = v.repeat_interleave(group_size, dim=0)
            self.keys.append(keys)
            self.values.append(values)
        mask = torch.zeros((prompts * group_size, capacity), dtype=self.embed.dtype)
        padded = prompt_mask.repeat_interleave(group_size, dim=0) == 0  # [R, Lp]
        mask[:, :prompt_length].masked_fill_(padded, float("-inf"))
        self.mask = mask.to(prompt_mask.device)  # [R, cap] additive
        self.prompt_length = prompt_length

    def select(self, index: Tensor) -> None:
        """Keep only rows ``index`` (rows that finished leave the batch)."""
        self.keys = [k.index_select(0, index) for k in self.keys]
        self.values = [v.index_select(0, index) for v in self.values]
        self.mask = self.mask.index_select(0, index)

    def _rms(self, x: Tensor, weight: Tensor) -> Tensor:
        """transformers' RMSNorm, ``weight * (x32 * rsqrt(mean(x32^2) + eps)).to(x.dtype)``,
        in place on its own temporaries (the same values, fewer allocations)."""
        xf = x.to(torch.float32, copy=True)  # a copy also when x is float32 already
        scale = xf.pow(2).mean(-1, keepdim=True).add_(self.eps).rsqrt_()  # [R, 1]
        return xf.mul_(scale).to(x.dtype).mul_(weight)

    @torch.no_grad()
    def step(self, tokens: Tensor, positions: Tensor, step: int) -> Tensor:
        """Logits ``[R, V]`` after feeding ``tokens`` ``[R]`` (decoded token ``step``) at
        rotary ``positions`` ``[R]``."""
        x = F.embedding(tokens, self.embed)  # [R, d], a new tensor: updated in place below
        cos, sin = self.rotary(x, positions[:, None])  # [R, 1, D]
        sin = _signed_sin(sin)  # [R, 1, D]
        slot = self.prompt_length + step
        if self.native is not None:
            return self._native_step(x, cos.contiguous(), sin, slot)
        for index, layer in enumerate(self.layers):
            x.add_(self._attention(index, layer, x, cos, sin, slot))
            h = layer.gate_up(self._rms(x, layer.norm_post))  # [R, 2F]
            gate, up = h.chunk(2, dim=-1)
            x.add_(layer.down(F.silu(gate, inplace=True).mul_(up)))
        return self.head(self._rms(x, self.norm))

    def _native_step(self, x: Tensor, cos: Tensor, sin: Tensor, slot: int) -> Tensor:
        """:meth:`step`'s layers through the C++ kernels (the same arithmetic)."""
        ops, eps = self.native, self.eps
        for index, layer in enumerate(self.layers):
            keys, values = self.keys[index], self.values[index]
            qkv = layer.qkv(ops.rms_norm(x, layer.norm_in, eps))  # [R, (H + 2 H_kv) D]
            q = ops.rope_cache(qkv, cos, sin, keys, values, slot, self.heads, self.kv_heads)
            x.add_(layer.out(ops.attention(q, keys, values, self.mask, slot + 1, self.scale)))
            h = layer.gate_up(ops.rms_norm(x, layer.norm_post, eps))  # [R, 2F]
            x.add_(layer.down(ops.silu_mul(h)))
        logits: Tensor = self.head(ops.rms_norm(x, self.norm, eps))
        return logits

    def _attention(
        self, index: int, layer: _Layer, x: Tensor, cos: Tensor, sin: Tensor, slot: int
    ) -> Tensor:
        rows, hd, heads, kvh = x.shape[0], self.head_dim, self.heads, self.kv_heads
        qkv = layer.qkv(self._rms(x, layer.norm_in))  # [R, (H + 2 H_kv) D]
        qk = _rope(qkv[:, : (heads + kvh) * hd].view(rows, heads + kvh, hd), cos, sin)
        keys, values = self.keys[index], self.values[index]  # [R, H_kv, D, cap], [R, H_kv, cap, D]
        keys[..., slot] = qk[:, heads:]
        values[:, :, slot] = qkv[:, (heads + kvh) * hd :].view(rows, kvh, hd)
        n = slot + 1
        grouped = qk[:, :heads].view(rows, kvh, heads // kvh, hd)  # [R, H_kv, r, D]
        scores = torch.matmul(grouped, keys[..., :n]).mul_(self.scale)  # [R, H_kv, r, n]
        scores.add_(self.mask[:, None, None, :n])
        probs = torch.softmax(scores, dim=-1, dtype=torch.float32).to(x.dtype)
        out = torch.matmul(probs, values[:, :, :n])  # [R, H_kv, r, D]
        return layer.out(out.reshape(rows, heads * hd))


def _signed_sin(sin: Tensor) -> Tensor:
    """``sin`` with its first half negated, ``[R, 1, D]``: ``rotate_half(x) * sin`` equals
    ``swap_halves(x) * signed_sin`` exactly (negation commutes with rounding), and the sign is
    applied once per step instead of once per layer."""
    half = sin.shape[-1] // 2
    return torch.cat((-sin[..., :half], sin[..., half:]), dim=-1)


def _rope(x: Tensor, cos: Tensor, signed_sin: Tensor) -> Tensor:
    """``x cos + rotate_half(x) sin`` for ``x`` ``[R, H, D]``, ``cos`` ``[R, 1, D]``, as
    ``swap_halves(x) signed_sin + x cos`` (:func:`_signed_sin`; the same values)."""
    half = x.shape[-1] // 2
    swapped = torch.cat((x[..., half:], x[..., :half]), dim=-1)
    return swapped.mul_(signed_sin).add_(x * cos)
