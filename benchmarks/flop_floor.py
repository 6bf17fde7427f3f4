"""The FLOP floor of a GRPO step on a decoder-only model: how fast the matmuls alone could run it.

Used by benchmarks/trl_vs_groupwise.py (no torch here: the driver reads the model's config.json
and hands in matmul rates measured elsewhere). The model, in FLOPs of the weight matmuls only:

    N_body = layers * (q + k + v + o + gate + up + down)   parameters of the decoder's Linears
    N_head = vocab * hidden                                 the LM head (tied to the embedding
                                                            in SmolLM2-135M: counted once, as the
                                                            matmul it is)
    N      = N_body + N_head
    forward of T tokens            = 2 N T
    forward + backward of T tokens = 6 N T   (2 N T forward, 2 N T input gradients, 2 N T
                                              weight gradients)

with the body and the head counted over the tokens that need them: the body over every token
fed, the head only where a next token is predicted. For a step of P prompts of T_p tokens,
G completions each (B = P G rows) of exactly L_c tokens:

    generate   prefill:  body over the prompts (groupwise: P T_p, one prefill per prompt shared
                         by its group; TRL: B T_p, every row prefills its own copy), head on the
                         last prompt token of each prefilled sequence
               decode:   B (L_c - 1) tokens through body and head (the prefill's logits give the
                         first completion token; the last one is never fed back)
    ref_logp   forward:  body over the prompts (groupwise P T_p, TRL B T_p) plus B (L_c - 1)
                         completion tokens, head on B L_c positions
    update     forward + backward of the same tokens as ref_logp. Under LoRA the frozen base
               weights need no weight gradients: 4 (base FLOPs) + 6 (adapter FLOPs), the
               adapters being r (in + out) parameters per adapted Linear (peft's all-linear: every
               decoder Linear, not the LM head)

Floor seconds = FLOPs / the measured matmul rate in the precision the trainer computed in: the
decode part at the rate of a decode-like matmul (32 rows), everything else at the rate of a
training-like one (512 rows).

Not counted, on purpose (so the floor is a floor): attention's own FLOPs (QK^T and AV, 4 d L
per token and layer for a context of L tokens, d = heads x head_dim = 576: at L <= ~100 here at
most 4 * 576 * 100 * 30 layers ~ 7 MFLOP per token against 2 N ~ 270 MFLOP, under 3%, ~1.5% on
average over a sequence), the adapters in the rollout and the
reference pass (groupwise merges them or disables them there; peft's unmerged adapters in TRL's
rollout add ~4%), gradient checkpointing's recomputed forward (TRL's default; an implementation
choice, not work the step needs), padding tokens, the optimizer step, element-wise ops, sampling
and rewards.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class MatmulParams:
    """Parameters of a decoder-only model's weight matmuls, from its HF config."""

    body: int
    """All decoder Linear weights: layers x (q, k, v, o, gate, up, down)."""
    head: int
    """The LM head, vocab x hidden (whether or not tied to the embedding)."""
    lora_adapters: int
    """LoRA adapter parameters (A and B) for rank ``lora_r`` on every decoder Linear; 0 if r=0."""

    @property
    def total(self) -> int:
        """N = body + head."""
        return self.body + self.head


def matmul_params(config: dict[str, Any], lora_r: int = 0) -> MatmulParams:
    """Count N_body, N_head (and LoRA adapters of rank ``lora_r``) from an HF ``config.json``.

    Per layer, with h = hidden, d = head_dim, a = heads, k = kv heads, f = intermediate:
    q = h a d, k = v = h k d, o = a d h, gate = up = down = h f; adapters r (in + out) each.
    """
    h = int(config["hidden_size"])
    f = int(config["intermediate_size"])
    layers = int(config["num_hidden_layers"])
    heads = int(config["num_attention_heads"])
    kv = int(config.get("num_key_value_heads") or heads)
    d = int(config.get("head_dim") or h // heads)
    shapes = [  # (in, out) of each decoder Linear
        (h, heads * d),  # q
        (h, kv * d),  # k
        (h, kv * d),  # v
        (heads * d, h),  # o
        (h, f),  # gate
        (h, f),  # up
        (f, h),  # down
    ]
    body = layers * sum(i * o for i, o in shapes)
    adapters = layers * sum(lora_r * (i + o) for i, o in shapes)
    return MatmulParams(body=body, head=int(config["vocab_size"]) * h, lora_adapters=adapters)


def load_matmul_params(model_dir: Path, lora_r: int = 0) -> MatmulParams:
    """:func:`matmul_params` of the HF model directory ``model_dir``."""
    return matmul_params(json.loads((model_dir / "config.json").read_text()), lora_r)


@dataclass(frozen=True)
class StepShape:
    """The token counts of one GRPO step."""

    prompts: int
    """P, prompts per step."""
    group: int
    """G, completions per prompt."""
    prompt_tokens: float
    """T_p, mean real (unpadded) tokens per prompt."""
    completion_tokens: int
    """L_c, tokens per completion (fixed in the benchmark)."""
    shared_prefix: bool
    """True: each prompt is forwarded once per group (groupwise); False: once per row (TRL)."""

    @property
    def rows(self) -> int:
        """B = P G."""
        return self.prompts * self.group

    @property
    def prompt_rows(self) -> int:
        """Sequences the prompt is forwarded for: P with a shared prefix, else B."""
        return self.prompts if self.shared_prefix else self.rows


@dataclass(frozen=True)
class PhaseFlops:
    """FLOPs of one step's phases; ``generate`` = ``prefill`` + ``decode``."""

    prefill: float
    decode: float
    ref_logp: float
    update: float

    @property
    def generate(self) -> float:
        return self.prefill + self.decode

    @property
    def step(self) -> float:
        return self.generate + self.ref_logp + self.update


def step_flops(params: MatmulParams, shape: StepShape, *, lora: bool = False) -> PhaseFlops:
    """Matmul FLOPs of each phase of one GRPO step (formulas in the module docstring).

    prefill  = 2 (N_body T_p rows_p + N_head rows_p)           rows_p = P shared, B per row
    decode   = 2 N B (L_c - 1)
    ref_logp = 2 (N_body T_fed + N_head B L_c)                 T_fed = T_p rows_p + B (L_c - 1)
    update   = 3 ref_logp (full fine-tuning), or
               2 ref_logp + 6 N_lora T_fed (LoRA: no weight gradients for the frozen base)
    """
    rows_p = shape.prompt_rows
    b, lc = shape.rows, shape.completion_tokens
    prefill = 2.0 * (params.body * shape.prompt_tokens * rows_p + params.head * rows_p)
    decode = 2.0 * params.total * b * (lc - 1)
    fed = shape.prompt_tokens * rows_p + b * (lc - 1)
    forward = 2.0 * (params.body * fed + params.head * b * lc)
    update = 2.0 * forward + 6.0 * params.lora_adapters * fed if lora else 3.0 * forward
    return PhaseFlops(prefill=prefill, decode=decode, ref_logp=forward, update=update)


@dataclass(frozen=True)
class PhaseFloor:
    """Seconds the matmuls of each phase take at the measured rates."""

    generate: float
    ref_logp: float
    update: float

    @property
    def step(self) -> float:
        return self.generate + self.ref_logp + self.update

    def as_dict(self) -> dict[str, float]:
        return {**asdict(self), "step": self.step}


def floor_seconds(flops: PhaseFlops, train_gflops: float, decode_gflops: float) -> PhaseFloor:
    """FLOPs over the rates (GFLOP/s): decode at ``decode_gflops``, the rest at ``train_gflops``."""
    train, decode = train_gflops * 1e9, decode_gflops * 1e9
    return PhaseFloor(
        generate=flops.prefill / train + flops.decode / decode,
        ref_logp=flops.ref_logp / train,
        update=flops.update / train,
    )
