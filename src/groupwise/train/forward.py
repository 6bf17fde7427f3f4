"""Policy forward pass: per-token log-probs of the completions of a rollout.

Choices:
- *Shared prefix.* The G completions of a prompt share it, so the prompt runs once per group
  and its keys and values are repeated G times for the completion tokens to attend to. Autograd
  flows through the repeated keys and values, so the gradient is exactly that of G separate
  forwards. With groupwise's attention (``kernels.attention``, the default) prompts and
  completions go through the model as *one* flattened sequence, split only inside attention
  (``kernels.attention.PrefixLayout``): every weight matmul runs once per micro-batch over all
  its tokens, instead of once for the prompts and again for the completions (with the second
  weight gradient added to the first). Other attention implementations take two passes: the
  prompts with a KV cache, repeated G times, then the completions.
- *No full logits.* Only the final hidden states of completion tokens are kept and the
  log-probs come from ``groupwise.core.chunked_token_logp``, which never holds a
  ``[tokens x vocab]`` float32 tensor and recomputes logits chunk by chunk in the backward pass.
- ``prefix_cache=False`` runs every row as prompt + completion without a KV cache (still with
  chunked log-probs): gradient checkpointing drops KV caches inside the layers, so it needs this.
- ``shared_prefix=False`` runs the straightforward path (each row is prompt + completion, the
  full logits and a float32 log-softmax), kept as the twin that tests compare against.
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from typing import Any

import torch
from torch import Tensor, nn

from groupwise.core import chunked_token_logp, naive_token_logp
from groupwise.core.logprobs import TORCH_ROWS, LogpRows
from groupwise.kernels.attention import (
    GROUPED_ATTENTION,
    prefix_layout,
    shared_prefix_layout,
)
from groupwise.kernels.kv_cache import cache_kwargs
from groupwise.rollout import Rollout


def _hf_model(model: nn.Module) -> Any:
    """The underlying transformers ``*ForCausalLM`` (unwrapping peft and DDP/FSDP)."""
    inner: Any = model
    if hasattr(inner, "module") and isinstance(inner.module, nn.Module):  # DDP
        inner = inner.module
    if hasattr(inner, "get_base_model"):  # peft
        inner = inner.get_base_model()
    return inner


def decoder_and_head(model: nn.Module) -> tuple[nn.Module, Tensor]:
    """The transformer body (returns hidden states) and the output-embedding weight."""
    hf = _hf_model(model)
    body = getattr(hf, hf.base_model_prefix)
    head = hf.get_output_embeddings()
    if getattr(head, "bias", None) is not None:
        raise ValueError("models whose lm_head has a bias are not supported yet")
    return body, head.weight


DROPOUT_CONFIG_KEYS = (
    "attention_dropout",
    "hidden_dropout",
    "attn_pdrop",
    "resid_pdrop",
    "embd_pdrop",
)
"""transformers config fields of dropouts applied inside the model's forward in training mode."""


def has_active_dropout(model: nn.Module) -> bool:
    """Whether a training-mode forward of ``model`` drops anything: a dropout module with
    ``p > 0`` (LoRA's ``lora_dropout`` among them) or a dropout probability in its config."""
    if any(isinstance(m, nn.modules.dropout._DropoutNd) and m.p > 0 for m in model.modules()):
        return True
    config = getattr(_hf_model(model), "config", None)
    return any(float(getattr(config, key, 0.0) or 0.0) > 0 for key in DROPOUT_CONFIG_KEYS)


def autocast_context(
    device: torch.device, dtype: torch.dtype | None
) -> AbstractContextManager[Any]:
    """bf16/fp16 autocast on ``device`` when ``dtype`` is set, otherwise a no-op."""
    if dtype is None:
        return nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def completion_logp(
    model: nn.Module,
    rollout: Rollout,
    *,
    temperature: float = 1.0,
    chunk_size: int = 1024,
    shared_prefix: bool = True,
    compute_entropy: bool = True,
    prefix_cache: bool = True,
    entropy_grad: bool = False,
    one_pass: bool = True,
    rows: LogpRows = TORCH_ROWS,
) -> tuple[Tensor, Tensor | None]:
    """Per-token log-probs ``logp`` [B, Lc] (0 at padding) and entropies of a rollout.

    ``one_pass=False`` takes the two-pass shared-prefix path even where the one-pass one applies
    (the twin tests compare it with). ``rows``: the per-row work on the LM head's logits
    (:class:`groupwise.core.logprobs.LogpRows`; torch's operations, or the C++ kernels).

    ``logp_it = log softmax(z_it / temperature)[o_it]`` with ``z`` the model's logits for the
    position that predicts completion token t of row i; ``H_it`` the entropy of that softmax
    ([B, Lc], 0 at padding), detached unless ``entropy_grad`` (an entropy bonus in the loss).
    """
    if not shared_prefix:
        return _completion_logp_naive(
            model, rollout, temperature=temperature, entropy_grad=entropy_grad
        )
    body, head_weight = decoder_and_head(model)
    if not prefix_cache:
        hidden = _full_rows_hidden(body, rollout)
    elif one_pass and _uses_grouped_attention(body):
        hidden = _one_pass_hidden(body, rollout)
    else:
        hidden = _two_pass_hidden(body, rollout)
    return _masked_token_logp(
        hidden,
        head_weight,
        rollout.completion_ids,
        rollout.completion_mask,
        temperature,
        chunk_size,
        compute_entropy,
        entropy_grad,
        rows,
    )


def _uses_grouped_attention(body: nn.Module) -> bool:
    """Whether the model's attention is groupwise's (which reads a flattened layout)."""
    config = getattr(body, "config", None)
    return getattr(config, "_attn_implementation", None) == GROUPED_ATTENTION


def _one_pass_hidden(body: nn.Module, rollout: Rollout) -> Tensor:
    """Hidden states [B, Lc, H] predicting the completion tokens: prompts and completions
    (all but their last token) as one sequence, attention split by a ``PrefixLayout``."""
    prompts, group = rollout.prompts, rollout.group_size
    ids = rollout.completion_ids  # [B, Lc]
    p, lp = prompts.input_ids.shape
    lc = ids.shape[1] - 1  # completion tokens fed to the model per row
    dtype = _hf_model(body).get_input_embeddings().weight.dtype  # what HF's masks are built in
    layout = prefix_layout(prompts.attention_mask, group, lc, dtype)
    prompt_pos = (prompts.attention_mask.cumsum(dim=1) - 1).clamp(min=0)  # [P, Lp]
    start = prompts.lengths.repeat_interleave(group)[:, None]  # [B, 1]
    comp_pos = start + torch.arange(lc, device=ids.device)[None, :]  # [B, Lc-1]
    tokens = torch.cat([prompts.input_ids.reshape(-1), ids[:, :-1].reshape(-1)])[None]  # [1,T]
    positions = torch.cat([prompt_pos.reshape(-1), comp_pos.reshape(-1)])[None]  # [1, T]
    unread = torch.zeros(1, 1, 1, 1, dtype=dtype, device=ids.device)
    with shared_prefix_layout(layout):
        out = body(
            input_ids=tokens,
            attention_mask=unread,  # a prepared 4D mask is passed on as is, and not read
            position_ids=positions,
            use_cache=False,
        ).last_hidden_state[0]  # [T, H]
    n = p * lp
    last_prompt = out[lp - 1 : n : lp]  # [P, H] (left padding: the last token is real)
    first = last_prompt.repeat_interleave(group, dim=0)[:, None]  # [B, 1, H]
    rest = out[n:].view(ids.shape[0], lc, out.shape[-1])  # [B, Lc-1, H]
    return torch.cat([first, rest], dim=1)  # [B, Lc, H]


def _two_pass_hidden(body: nn.Module, rollout: Rollout) -> Tensor:
    """Hidden states [B, Lc, H] predicting the completion tokens: the prompts with a KV cache,
    repeated G times, then the completions against it."""
    from transformers import DynamicCache

    prompts, group = rollout.prompts, rollout.group_size
    cache = DynamicCache(config=getattr(body, "config", None))
    prompt_pos = (prompts.attention_mask.cumsum(dim=1) - 1).clamp(min=0)  # [P, Lp]
    out = body(
        input_ids=prompts.input_ids,
        attention_mask=prompts.attention_mask,
        position_ids=prompt_pos,
        **cache_kwargs(body, cache),
        use_cache=True,
    )
    last_prompt_hidden = out.last_hidden_state[:, -1:]  # [P, 1, H] (left padding: last is real)
    cache.batch_repeat_interleave(group)
    ids = rollout.completion_ids  # [B, Lc]
    hidden = last_prompt_hidden.repeat_interleave(group, dim=0)  # [B, 1, H]
    if ids.shape[1] > 1:
        attn = torch.cat(
            [prompts.attention_mask.repeat_interleave(group, dim=0), torch.ones_like(ids[:, :-1])],
            dim=1,
        )  # [B, Lp + Lc - 1]
        start = prompts.lengths.repeat_interleave(group)[:, None]  # [B, 1]
        pos = start + torch.arange(ids.shape[1] - 1, device=ids.device)[None, :]  # [B, Lc-1]
        out = body(
            input_ids=ids[:, :-1],
            attention_mask=attn,
            position_ids=pos,
            **cache_kwargs(body, cache),
            use_cache=True,
        )
        hidden = torch.cat([hidden, out.last_hidden_state], dim=1)  # [B, Lc, H]
    return hidden


def _masked_token_logp(
    hidden: Tensor,
    head_weight: Tensor,
    ids: Tensor,
    mask: Tensor,
    temperature: float,
    chunk_size: int,
    compute_entropy: bool,
    entropy_grad: bool = False,
    rows: LogpRows = TORCH_ROWS,
) -> tuple[Tensor, Tensor | None]:
    """Log-probs (and entropies) of the masked positions only, scattered back to [B, Lc]; the
    entropies keep their gradient when ``entropy_grad``."""
    keep = mask.bool()  # [B, Lc]
    if torch.is_autocast_enabled(hidden.device.type):  # the final norm returns float32
        hidden = hidden.to(torch.get_autocast_dtype(hidden.device.type))
    logp_flat, ent_flat = chunked_token_logp(
        hidden[keep],  # [N, H]
        head_weight,
        ids[keep],  # [N]
        temperature=temperature,
        chunk_size=chunk_size,
        compute_entropy=compute_entropy or entropy_grad,
        entropy_grad=entropy_grad,
        rows=rows,
    )
    logp = torch.zeros(ids.shape, dtype=torch.float32, device=ids.device)
    logp = logp.masked_scatter(keep, logp_flat)  # [B, Lc]
    entropy = None
    if ent_flat is not None:
        entropy = torch.zeros(ids.shape, dtype=torch.float32, device=ids.device)
        entropy = entropy.masked_scatter(keep, ent_flat if entropy_grad else ent_flat.detach())
    return logp, entropy


def _full_rows_hidden(body: nn.Module, rollout: Rollout) -> Tensor:
    """Hidden states [B, Lc, H] predicting the completion tokens, each row run in full."""
    prompts, group = rollout.prompts, rollout.group_size
    prompt_ids = prompts.input_ids.repeat_interleave(group, dim=0)  # [B, Lp]
    prompt_mask = prompts.attention_mask.repeat_interleave(group, dim=0)  # [B, Lp]
    ids = torch.cat([prompt_ids, rollout.completion_ids[:, :-1]], dim=1)  # [B, Lp + Lc - 1]
    attn = torch.cat([prompt_mask, torch.ones_like(rollout.completion_ids[:, :-1])], dim=1)
    pos = (attn.cumsum(dim=1) - 1).clamp(min=0)
    out = body(input_ids=ids, attention_mask=attn, position_ids=pos, use_cache=False)
    hidden: Tensor = out.last_hidden_state[:, prompt_ids.shape[1] - 1 :]  # [B, Lc, H]
    return hidden


def _completion_logp_naive(
    model: nn.Module, rollout: Rollout, *, temperature: float, entropy_grad: bool = False
) -> tuple[Tensor, Tensor | None]:
    """Straightforward twin: each row is prompt + completion through the full model."""
    prompts, group = rollout.prompts, rollout.group_size
    prompt_ids = prompts.input_ids.repeat_interleave(group, dim=0)  # [B, Lp]
    prompt_mask = prompts.attention_mask.repeat_interleave(group, dim=0)  # [B, Lp]
    ids = torch.cat([prompt_ids, rollout.completion_ids], dim=1)  # [B, Lp + Lc]
    attn = torch.cat([prompt_mask, torch.ones_like(rollout.completion_ids)], dim=1)
    pos = (attn.cumsum(dim=1) - 1).clamp(min=0)
    body, head_weight = decoder_and_head(model)
    hidden = body(input_ids=ids, attention_mask=attn, position_ids=pos).last_hidden_state
    lp = prompt_ids.shape[1]
    hidden = hidden[:, lp - 1 : -1]  # [B, Lc, H] positions predicting completion tokens
    b, lc, h = hidden.shape
    logp, entropy = naive_token_logp(
        hidden.reshape(b * lc, h),
        head_weight,
        rollout.completion_ids.reshape(-1),
        temperature=temperature,
        entropy_grad=entropy_grad,
    )
    mask = rollout.completion_mask.float()
    entropy = entropy if entropy_grad else entropy.detach()
    return logp.view(b, lc) * mask, entropy.view(b, lc) * mask
