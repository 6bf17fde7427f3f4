"""The seam between the ``episodes`` engine's turn loop and the decoder that runs it.

The turn loop (:class:`groupwise.rollout.episodes.EpisodeEngine`: budgets, truncation, the
environments, the rank-invariant draw table) talks to a :class:`TurnDecoder` only:

- ``start(prompts, group_size, max_tokens)``: prefill each prompt once and fork it to its G
  rows; returns the :class:`Turns` of that batch;
- ``Turns.decode(budgets, sampler, draws)``: one policy turn of every live row, row ``i`` at
  most ``budgets[i]`` tokens, ending at EOS; a :class:`Turn` per row;
- ``Turns.advance(keep, chunks)``: drop the rows whose episode ended (``keep[i]`` false) and
  prefill each kept row's environment tokens ``chunks[j]`` (after its last sampled token, which
  no decoder has put in its cache yet).

Two decoders implement it: ``torch`` (:class:`groupwise.rollout.episodes.TorchDecoder`, one HF
KV cache for the conversation) and ``llamacpp``
(:class:`groupwise.rollout.llamacpp_turns.LlamaCppDecoder`, one llama.cpp sequence per episode).
Both sample through the same :class:`Sampler` on the logits they return.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple, Protocol

import torch
from torch import Tensor

from groupwise.rollout.records import PromptBatch
from groupwise.rollout.sampling import sample_with_entropy


class Turn(NamedTuple):
    """One row's policy turn."""

    tokens: list[int]
    entropy: list[float]
    """Sampling entropy per token (0 when greedy)."""
    eos: bool
    """The turn ended with an EOS token (else its budget cut it)."""
    logp: list[float]
    """Behaviour log-prob per token (:meth:`Sampler.token_logp`); empty when not recorded."""


@dataclass
class Sampler:
    """How one turn samples (the request's sampling keys)."""

    eos: Tensor
    pad: int
    temperature: float
    top_p: float
    top_k: int
    generator: torch.Generator | None
    table: Tensor | None = None
    """Rank-invariant draws ``[max_turns, per_turn, total_rows]`` (None: torch.multinomial)."""
    logp: bool = False
    """Record each sampled token's behaviour log-prob (:meth:`token_logp`)."""

    def turn_draws(self, turn: int, rows: Sequence[int]) -> Tensor | None:
        """Turn ``turn``'s draws ``[per_turn, R]`` for the global rows ``rows``, or None."""
        if self.table is None:
            return None
        return self.table[turn][:, torch.tensor(list(rows), device=self.table.device)]

    def sample(self, logits: Tensor, uniform: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
        """Next token [R] and its sampling entropy [R] (None when greedy); ``uniform`` [R]:
        inverse-CDF draws instead of torch.multinomial."""
        return sample_with_entropy(
            logits,
            temperature=self.temperature,
            top_p=self.top_p,
            top_k=self.top_k,
            generator=self.generator,
            uniform=uniform,
        )

    def token_logp(self, logits: Tensor, tokens: Tensor) -> Tensor:
        """``[R]`` float32 behaviour log-probs of ``tokens`` [R] (``Rollout.behaviour_logp``)::

            logp_r = s_r[token_r] - logsumexp_v s_rv,   s = logits / T   (T = 1 when greedy)

        over the full vocabulary, before top-k/top-p, as the trainer computes ``logp``; a
        separate pass over the logits that does not touch the draws."""
        scale = self.temperature if self.temperature > 0 else 1.0
        scores = logits.float() / scale  # [R, V]
        picked = scores.gather(-1, tokens[:, None].to(scores.device)).squeeze(-1)  # [R]
        return picked - torch.logsumexp(scores, dim=-1)


class Turns(Protocol):
    """The decoding state of one batch of episodes (see the module docstring)."""

    def decode(
        self, budgets: Sequence[int], sampler: Sampler, draws: Tensor | None = None
    ) -> list[Turn]:
        """One turn of every live row (``draws`` ``[per_turn, R]``: :meth:`Sampler.turn_draws`)."""
        ...

    def advance(self, keep: Sequence[bool], chunks: Sequence[Sequence[int]]) -> None:
        """Drop finished rows; prefill each kept row's environment tokens."""
        ...


class TurnDecoder(Protocol):
    """A decode backend of the ``episodes`` engine (``rollout.engine_kwargs.backend``)."""

    max_rows: int | None
    """Rows one :meth:`start` takes at most (None: any); larger batches play in chunks of whole
    groups."""

    def start(self, prompts: PromptBatch, group_size: int, max_tokens: int) -> Turns:
        """Prefill ``prompts`` (each once, forked to ``group_size`` rows) for episodes of at
        most ``max_tokens`` completion tokens each."""
        ...


def turn_outputs(
    tokens: Tensor, entropy: Tensor, lengths: Tensor, eos: Tensor, logp: Tensor | None = None
) -> list[Turn]:
    """Per row, the first ``lengths[i]`` of ``tokens``/``entropy``/``logp`` ``[R, L]``."""
    out: list[Turn] = []
    eos_ids = set(eos.tolist())
    logps = logp.tolist() if logp is not None else [[]] * tokens.shape[0]
    rows = zip(tokens.tolist(), entropy.tolist(), lengths.tolist(), logps, strict=True)
    for row, ent, n, lp in rows:
        ids = row[:n]
        out.append(Turn(ids, ent[:n], bool(ids) and ids[-1] in eos_ids, lp[:n]))
    return out
