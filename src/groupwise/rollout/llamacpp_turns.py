"""The ``episodes`` engine's llama.cpp decoder (``rollout.engine_kwargs.backend=llamacpp``).

One llama.cpp sequence per episode, on the :class:`~groupwise.rollout.llamacpp.LlamaRuntime`
of a :class:`~groupwise.rollout.llamacpp.GGUFPolicy` (the GGUF file the ``llamacpp`` engine
writes, updated in place after every optimizer step):

- ``start``: each prompt is prefilled once into its group's first sequence, whose cells the
  group's other G - 1 sequences share (``share``);
- ``decode``: one ``llama_decode`` per step over every row still in its turn, one token each;
  each row's last sampled token stays *pending* (not in the cache);
- ``advance``: finished episodes' sequences are dropped (``drop``); each kept row's pending
  token and environment tokens are prefilled at its next positions, all rows in one
  ``llama_decode``, and the logits of each row's last token start its next turn.

Tokens are sampled by the turn loop's :class:`~groupwise.rollout.turns.Sampler` on llama.cpp's
logits (the same draws from the same logits as the torch decoder), and every sampled token's
behaviour log-prob is recorded (``Rollout.behaviour_logp``). With an ``f32`` file
(``LlamaRuntime(exact=True)``: float32 KV cache, no flash attention) the logits are torch's to
~1e-6.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor

from groupwise.rollout.llamacpp import MAX_SEQUENCES, GGUFPolicy, LlamaRuntime
from groupwise.rollout.records import PromptBatch
from groupwise.rollout.turns import Sampler, Turn


class LlamaCppTurns:
    """The llama.cpp sequences of one batch of episodes (see the module docstring)."""

    def __init__(
        self, runtime: LlamaRuntime, prompts: PromptBatch, group_size: int, max_tokens: int
    ) -> None:
        ids = [
            row[mask.bool()].tolist()
            for row, mask in zip(prompts.input_ids, prompts.attention_mask, strict=True)
        ]
        rows = len(ids) * group_size
        prompt_tokens = sum(len(p) for p in ids)
        # cells: the prompts once, then at most max_tokens per episode (its last one pending);
        # one decode: the prompts, or every row's pending token and environment message
        per_row = max_tokens + 1
        runtime.context(prompt_tokens + rows * per_row, rows, max(prompt_tokens, rows * per_row))
        self.rt = runtime
        self.logits = runtime.prefill_groups(ids, group_size)  # [R, V]
        self.seq = list(range(rows))  # each live row's llama.cpp sequence
        self.pos = [len(p) for p in ids for _ in range(group_size)]  # next position per row
        self.pending = [-1] * rows  # last sampled token per row, not in the cache

    def decode(
        self, budgets: Sequence[int], sampler: Sampler, draws: Tensor | None = None
    ) -> list[Turn]:
        """One turn of every row, row i at most ``budgets[i]`` tokens (``draws``
        ``[per_turn, R]``: the turn's uniforms); rows that end their turn leave the decode."""
        rows = len(budgets)
        tokens: list[list[int]] = [[] for _ in range(rows)]
        entropy: list[list[float]] = [[] for _ in range(rows)]
        logp: list[list[float]] = [[] for _ in range(rows)]
        eos = set(sampler.eos.tolist())
        live, logits = list(range(rows)), self.logits
        for step in range(max(budgets)):
            u = None if draws is None else draws[step, live].cpu()
            nxt, h = sampler.sample(logits, u)
            lp = sampler.token_logp(logits, nxt).tolist()
            going = []
            for k, row in enumerate(live):
                t = int(nxt[k])
                tokens[row].append(t)
                entropy[row].append(0.0 if h is None else float(h[k]))
                logp[row].append(lp[k])
                if t not in eos and step + 1 < budgets[row]:
                    going.append(row)
                else:
                    self.pending[row] = t
            if not going:
                break
            feed = [tokens[r][-1] for r in going]
            self.rt.decode(
                feed,
                [self.pos[r] for r in going],
                [self.seq[r] for r in going],
                [True] * len(going),
            )
            for r in going:
                self.pos[r] += 1
            live, logits = going, self.rt.logits(range(len(going)))
        return [
            Turn(ids, ent, bool(ids) and ids[-1] in eos, lps)
            for ids, ent, lps in zip(tokens, entropy, logp, strict=True)
        ]

    def advance(self, keep: Sequence[bool], chunks: Sequence[Sequence[int]]) -> None:
        """Drop finished rows' sequences; prefill each kept row's pending token and
        environment tokens ``chunks`` at its next positions (one ``llama_decode``)."""
        for row, k in enumerate(keep):
            if not k:
                self.rt.drop(self.seq[row])
        kept = [row for row, k in enumerate(keep) if k]
        self.seq = [self.seq[r] for r in kept]
        self.pos = [self.pos[r] for r in kept]
        self.pending = [self.pending[r] for r in kept]
        if not kept:
            return
        tokens: list[int] = []
        pos: list[int] = []
        seqs: list[int] = []
        last: list[int] = []
        for j, chunk in enumerate(chunks):
            ids = ([self.pending[j]] if self.pending[j] >= 0 else []) + list(chunk)
            if not ids:
                raise ValueError("a kept episode has no tokens to prefill before its next turn")
            tokens += ids
            pos += range(self.pos[j], self.pos[j] + len(ids))
            seqs += [self.seq[j]] * len(ids)
            last.append(len(tokens) - 1)
            self.pos[j] += len(ids)
        outputs = [False] * len(tokens)
        for i in last:
            outputs[i] = True
        self.rt.decode(tokens, pos, seqs, outputs)
        self.logits = self.rt.logits(last)
        self.pending = [-1] * len(kept)


class LlamaCppDecoder:
    """The ``llamacpp`` backend: :class:`LlamaCppTurns` on a GGUF copy of the policy."""

    max_rows: int | None = MAX_SEQUENCES

    def __init__(self, policy: GGUFPolicy) -> None:
        self.policy = policy
        self.runtime = policy.sync()

    def sync(self) -> None:
        """Rewrite the GGUF file from the policy and reload it."""
        self.runtime = self.policy.sync()

    def start(self, prompts: PromptBatch, group_size: int, max_tokens: int) -> LlamaCppTurns:
        """See :meth:`groupwise.rollout.turns.TurnDecoder.start`."""
        if prompts.input_ids.shape[0] * group_size > MAX_SEQUENCES:
            raise ValueError(
                f"the llama.cpp backend takes at most {MAX_SEQUENCES} episodes per batch"
            )
        return LlamaCppTurns(self.runtime, prompts, group_size, max_tokens)
