"""The ``episodes`` engine: multi-turn rollouts against an environment (tools, games, users).

``rollout.engine=episodes`` with ``rollout.engine_kwargs``:

- ``environment`` (required): a name in :data:`groupwise.envs.ENVIRONMENTS`;
- ``env_kwargs``: keyword arguments of the environment's factory (one instance per episode);
- ``max_turns`` (default 4): policy turns per episode; an episode the environment has not ended
  by then is *truncated*;
- ``max_tokens``: completion tokens per episode, the policy's and the environment's together
  (default: the request's budget: ``rollout.max_completion_length`` in training,
  ``eval.max_new_tokens`` in evaluation, so set it when evaluation episodes need more than
  that); a policy turn that reaches it, or an
  environment message that leaves no room for a reply, ends the episode truncated;
- ``max_tokens_per_turn``: cap of one policy turn (default: the episode budget ``max_tokens``
  divided by ``max_turns``, integer, at least 1, so every turn has room); a turn cut by it is
  closed with an inserted EOS (an environment token: no loss) and the episode goes on;
- ``kv_reuse`` (default true): keep the conversation's KV cache from turn to turn (false:
  re-prefill the whole conversation every turn; the reference the KV path is tested against);
- ``backend`` (default ``torch``): who decodes the turns, one of :data:`BACKENDS`. ``torch``:
  the rollout weights' model in this process (below). ``llamacpp``: llama.cpp on a GGUF copy
  of the policy, one llama.cpp sequence per episode
  (:mod:`groupwise.rollout.llamacpp_turns`; needs llama-cpp-python, as ``rollout.engine=
  llamacpp``), with ``llamacpp_dtype`` (``auto`` | ``bf16`` | ``f32``: the file's dtype, auto
  following the rollout weights) and ``threads`` (default ``torch.get_num_threads()``). The
  turn loop, budgets and draws are the same for both (:mod:`groupwise.rollout.turns`); from
  the same logits they sample the same tokens.
- ``tool_format`` (default ``auto``): how tool calls are read, one of ``auto``, ``hermes``,
  ``llama3``, ``mistral`` (:mod:`groupwise.envs.formats`); ``auto`` takes the format the chat
  template writes an assistant message's ``tool_calls`` in (``hermes`` when it writes none),
  read first by the tokenizer's own response parser when it has one
  (:attr:`groupwise.rollout.chat.ChatFormat.tool_format`).

A group is G episodes from the same row: each environment is built, then ``reset(row)``; a
returned observation is appended to the prompt (it must be the same for the G episodes of a
row), and an environment with ``tools`` has them described in the prompt (chat template
``tools=``, or the text protocol of :func:`groupwise.envs.tools.tools_instructions` with one
worked call and a worked exchange as earlier turns when the template ignores tools). A row's string prompt is one user message of the
chat template (raw text only for a tokenizer without one): the first turn is framed as a chat
turn, like every later one (:mod:`groupwise.rollout.chat`). The first call prints these choices
and the per-turn budget (``episodes: ...`` lines). Every turn
decodes all active episodes of the batch together; a turn ends at EOS. The policy's text goes
to ``env.step``; its message is rendered as the continuation of the conversation in the
environment's role (the chat template's rendering of that message after an assistant turn,
generation prompt included) and appended. Finished episodes leave the batch.

KV reuse: after the shared prefill (one per prompt, repeated G times), each turn decodes with
a per-row attention mask and per-row position ids; rows that ended their turn early stay in the
batch with masked (attention 0) filler tokens that do not advance their positions. The
environment's tokens (and each row's last sampled token, not yet in the cache) are then
prefilled as one right-padded chunk, its padding masked. The cache thus has holes, but every
row attends exactly to its own conversation at the same positions as a fresh prefill would.

The output is one :class:`~groupwise.rollout.records.Rollout`: per row, ``completion_ids`` are
all turns after the prompt, contiguous; ``loss_mask`` is 1 on the policy's tokens only;
``turn_index`` numbers the segments (policy turn 0, environment message 1, policy turn 2...);
``entropy`` is 0 on inserted tokens. The environment's end reward (``reward()``) is recorded
per row as the ``env_reward`` column (``rollout.columns``), read by the ``env_reward`` reward.
Each episode's conversation as chat messages (:attr:`Episode.messages`, an assistant message
with ``<tool_call>`` blocks given as content plus structured ``tool_calls``, as TRL's parser
gives it; :func:`groupwise.rollout.chat.structured_messages`) is the reserved column
:data:`~groupwise.rewards.base.COMPLETION_MESSAGES`: TRL-style reward functions get it as
their conversational ``completions``, other functions never see it.
``behaviour_logp`` (``log_softmax(logits / T)`` of each sampled token, 0 on inserted tokens) is
reported by the ``llamacpp`` backend always (mismatch correction then follows it under
``auto``) and by the ``torch`` backend when the request asks (correction set to true); the
draws are the same either way.

How each episode ended, as fractions of the batch's episodes (``episodes/ended/<reason>``):
``env_done`` (the environment said done, e.g. an answer without a tool call), ``max_turns``
(``max_turns`` policy turns played), ``token_budget`` (a policy turn reached the episode's
token budget without EOS) and ``no_room`` (the environment's message left no room for another
policy turn); with ``episodes/turns_cut``, the fraction of policy turns cut by
``max_tokens_per_turn`` (closed with an inserted EOS, the episode going on).

Draws: from ``request.generator`` by ``torch.multinomial``; with ``request.total_rows`` (set by
``rollout.rank_invariant_sampling`` and under torchrun) a table of uniforms
``[max_turns, per-turn tokens, total_rows]`` is drawn once per call and episode ``i`` of the
global batch samples turn ``t``'s token ``k`` from entry ``[t, k, i]`` by inverse CDF, so N ranks
that each play a slice of the batch (``row_offset``) sample exactly what one process would,
however many turns their episodes take.

Limits: ``rollout.compile`` is not used; the environments run one after the other in this
process.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from groupwise.distributed import is_main
from groupwise.envs import ENVIRONMENTS, Environment, as_env_step, end_reward, env_columns
from groupwise.envs.base import COMPLETION_MESSAGES
from groupwise.envs.tools import tool_frequencies
from groupwise.kernels.kv_cache import cache_kwargs
from groupwise.rollout.chat import ChatFormat, structured_messages
from groupwise.rollout.decode import _prefill, generate
from groupwise.rollout.engine import (
    ENGINES,
    EngineContext,
    RolloutEngine,
    RolloutRequest,
    engine_options,
)
from groupwise.rollout.llamacpp import GGUFPolicy
from groupwise.rollout.llamacpp_turns import LlamaCppDecoder
from groupwise.rollout.records import PromptBatch, Rollout, tokenize_prompts
from groupwise.rollout.turns import Sampler, Turn, TurnDecoder, Turns, turn_outputs
from groupwise.rollout.weights import RolloutWeights, ServesWeights


@dataclass
class Episode:
    """One conversation after the prompt, token by token."""

    env: Environment
    index: int = 0  # the episode's row in the global batch (rank-invariant draws)
    tokens: list[int] = field(default_factory=list)
    policy: list[int] = field(default_factory=list)  # 1 = the policy's token
    turn: list[int] = field(default_factory=list)
    entropy: list[float] = field(default_factory=list)
    logp: list[float] = field(default_factory=list)  # behaviour log-probs (0: environment)
    segments: int = 0
    policy_turns: int = 0
    done: bool = False
    truncated: bool = False
    ended: str = ""  # why it ended: one of ENDINGS
    cut_turns: int = 0  # policy turns cut by max_tokens_per_turn
    step_rewards: list[float] = field(default_factory=list)
    messages: list[dict[str, Any]] = field(default_factory=list)
    """The conversation after the prompt as chat messages: each policy turn's text as an
    ``assistant`` message, each environment message that was appended (its ``tool_messages``,
    one ``tool`` message per call, when it has them; else one message of its role)."""

    def add(
        self,
        ids: Sequence[int],
        policy: bool,
        entropy: Sequence[float] = (),
        logp: Sequence[float] = (),
    ) -> None:
        """Append one segment (a policy turn or an environment message)."""
        self.tokens.extend(ids)
        self.policy.extend([int(policy)] * len(ids))
        self.turn.extend([self.segments] * len(ids))
        self.entropy.extend(entropy if entropy else [0.0] * len(ids))
        self.logp.extend(logp if logp else [0.0] * len(ids))
        self.segments += 1

    def end(self, truncated: bool, reason: str = "") -> None:
        """Leave the batch (``reason``: one of :data:`ENDINGS`)."""
        self.done, self.truncated, self.ended = True, truncated, reason


ENDINGS = ("env_done", "max_turns", "token_budget", "no_room")
"""Why an episode ended (``episodes/ended/<reason>``; see the module docstring)."""


class KVRunner:
    """Decodes turns on one KV cache kept for the whole conversation (see the module doc):
    the :class:`~groupwise.rollout.turns.Turns` of the ``torch`` backend."""

    def __init__(self, model: nn.Module, prompts: PromptBatch, group_size: int) -> None:
        self.model = model
        self.cache, self.logits, self.attn = _prefill(model, prompts, group_size, False)
        self.pos = prompts.lengths.repeat_interleave(group_size)  # [R] next position
        self.pending = torch.full_like(self.pos, -1)  # [R] last sampled token not in the cache

    def decode(
        self, budgets: Sequence[int], sampler: Sampler, draws: Tensor | None = None
    ) -> list[Turn]:
        """One turn of every row in the batch, row i at most ``budgets[i]`` tokens (``draws``
        ``[per_turn, R]``: the turn's uniforms, see :meth:`Sampler.turn_draws`); the
        behaviour log-probs when ``sampler.logp``."""
        rows, steps = len(budgets), max(budgets)
        budget = torch.tensor(list(budgets), device=self.pos.device)
        tokens = torch.full((rows, steps), sampler.pad, device=self.pos.device)
        entropy = torch.zeros((rows, steps))
        logp = torch.zeros((rows, steps)) if sampler.logp else None
        lengths = torch.zeros(rows, dtype=torch.long, device=self.pos.device)
        going = torch.ones(rows, dtype=torch.bool, device=self.pos.device)
        logits = self.logits
        for step in range(steps):
            nxt, h = sampler.sample(logits, None if draws is None else draws[step])
            nxt = torch.where(going, nxt, sampler.pad)
            tokens[:, step] = nxt
            if h is not None:
                entropy[:, step] = (h * going).float().cpu()
            if logp is not None:
                logp[:, step] = (sampler.token_logp(logits, nxt) * going).cpu()
            real = going.clone()
            lengths += real.long()
            going &= ~torch.isin(nxt, sampler.eos) & (step + 1 < budget)
            if not bool(going.any()) or step == steps - 1:
                self.pending = torch.where(real, nxt, -1)
                break
            logits = self._feed(nxt[:, None], real.long()[:, None], self.pos[:, None])[:, -1]
            self.pos = self.pos + real.long()
        return turn_outputs(tokens, entropy, lengths, sampler.eos, logp)

    def advance(self, keep: Sequence[bool], chunks: Sequence[Sequence[int]]) -> None:
        """Drop finished rows; prefill each kept row's environment tokens (``chunks``)."""
        idx = torch.tensor([i for i, k in enumerate(keep) if k], dtype=torch.long)
        if idx.numel() == 0:
            return
        if idx.numel() < len(keep):
            self.cache.batch_select_indices(idx.to(self.pos.device))
            self.attn, self.pos, self.pending = self.attn[idx], self.pos[idx], self.pending[idx]
        seqs = [
            ([int(p)] if p >= 0 else []) + list(c)
            for p, c in zip(self.pending.tolist(), chunks, strict=True)
        ]
        width, device = max(len(s) for s in seqs), self.pos.device
        ids = torch.zeros((len(seqs), width), dtype=torch.long, device=device)
        mask = torch.zeros_like(ids)
        for i, s in enumerate(seqs):
            ids[i, : len(s)] = torch.tensor(s, dtype=torch.long)
            mask[i, : len(s)] = 1
        positions = self.pos[:, None] + torch.arange(width, device=device)[None, :]
        logits = self._feed(ids, mask, positions)  # [R, W, V]
        lens = mask.sum(dim=1)
        self.logits = logits[torch.arange(len(seqs), device=device), lens - 1]
        self.pos = self.pos + lens
        self.pending = torch.full_like(self.pos, -1)

    def _feed(self, ids: Tensor, mask: Tensor, positions: Tensor) -> Tensor:
        self.attn = torch.cat([self.attn, mask], dim=1)
        out = self.model(
            input_ids=ids,
            attention_mask=self.attn,
            position_ids=positions,
            **cache_kwargs(self.model, self.cache),
            use_cache=True,
        )
        logits: Tensor = out.logits
        return logits


class ReprefillRunner:
    """Decodes each turn with :func:`groupwise.rollout.decode.generate` on the whole
    conversation so far (prompt + completion), prefilled afresh (``kv_reuse=false``, the
    reference :class:`KVRunner` is tested against). Behaviour log-probs only when sampling."""

    def __init__(self, model: nn.Module, prompts: PromptBatch, group_size: int) -> None:
        self.model = model
        self.conversations = [  # per live row: the prompt and every token since
            row[mask.bool()].tolist()
            for row, mask in zip(prompts.input_ids, prompts.attention_mask, strict=True)
            for _ in range(group_size)
        ]
        self.device = prompts.input_ids.device

    def decode(
        self, budgets: Sequence[int], sampler: Sampler, draws: Tensor | None = None
    ) -> list[Turn]:
        """One turn of every active row (see :meth:`KVRunner.decode`)."""
        batch = left_pad(self.conversations, sampler.pad, self.device)
        out = generate(
            self.model,
            batch,
            group_size=1,
            max_completion_length=max(budgets),
            eos_token_ids=sampler.eos.tolist(),
            pad_token_id=sampler.pad,
            temperature=sampler.temperature,
            top_p=sampler.top_p,
            top_k=sampler.top_k,
            generator=sampler.generator,
            uniforms=draws,
            behaviour_logp=sampler.logp,
        )
        lengths = torch.minimum(out.completion_lengths, torch.tensor(list(budgets)))
        entropy = out.entropy if out.entropy is not None else torch.zeros_like(out.completion_ids)
        logp = out.behaviour_logp
        if sampler.logp and logp is None:  # greedy
            logp = torch.zeros_like(entropy, dtype=torch.float32)
        turns = turn_outputs(out.completion_ids, entropy.float(), lengths, sampler.eos, logp)
        for conversation, turn in zip(self.conversations, turns, strict=True):
            conversation.extend(turn.tokens)
        return turns

    def advance(self, keep: Sequence[bool], chunks: Sequence[Sequence[int]]) -> None:
        """Drop finished rows; append each kept row's environment tokens."""
        kept = [c for c, k in zip(self.conversations, keep, strict=True) if k]
        for conversation, chunk in zip(kept, chunks, strict=True):
            conversation.extend(chunk)
        self.conversations = kept


class TorchDecoder:
    """The ``torch`` backend: :class:`KVRunner` (``kv_reuse``) or :class:`ReprefillRunner` on
    the rollout weights' model."""

    max_rows: int | None = None

    def __init__(self, model: nn.Module, kv_reuse: bool = True) -> None:
        self.model = model
        self.kv_reuse = kv_reuse

    def start(self, prompts: PromptBatch, group_size: int, max_tokens: int) -> Turns:
        """See :meth:`groupwise.rollout.turns.TurnDecoder.start`."""
        if self.kv_reuse:
            return KVRunner(self.model, prompts, group_size)
        return ReprefillRunner(self.model, prompts, group_size)


def left_pad(seqs: Sequence[Sequence[int]], pad: int, device: torch.device) -> PromptBatch:
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, width - len(s) :] = torch.tensor(list(s), dtype=torch.long)
        mask[i, width - len(s) :] = 1
    return PromptBatch(ids.to(device), mask.to(device))


_OPTIONS = (
    "environment",
    "env_kwargs",
    "max_turns",
    "max_tokens",
    "max_tokens_per_turn",
    "kv_reuse",
    "backend",
    "llamacpp_dtype",
    "threads",
    "tool_format",
)
BACKENDS = ("torch", "llamacpp")
"""The decode backends of the episodes engine (``rollout.engine_kwargs.backend``)."""


class EpisodeEngine(ServesWeights):
    """Runs G episodes per prompt against an environment, all episodes of a call batched."""

    def __init__(
        self,
        weights: RolloutWeights,
        tokenizer: Any,
        eos_token_ids: Sequence[int],
        *,
        environment: str,
        env_kwargs: Mapping[str, Any] | None = None,
        max_turns: int = 4,
        max_tokens: int | None = None,
        max_tokens_per_turn: int | None = None,
        kv_reuse: bool = True,
        backend: str = "torch",
        llamacpp_dtype: str = "auto",
        threads: int | None = None,
        tool_format: str = "auto",
    ) -> None:
        if max_turns < 1:
            raise ValueError("rollout.engine_kwargs.max_turns must be at least 1")
        self.weights = weights
        self.tokenizer = tokenizer
        self.eos_token_ids = list(eos_token_ids)
        self.factory = ENVIRONMENTS.get(environment)
        self.env_kwargs = dict(env_kwargs or {})
        self.max_turns = max_turns
        self.max_tokens = max_tokens
        self.max_tokens_per_turn = max_tokens_per_turn
        self.kv_reuse = kv_reuse
        self.format = ChatFormat(tokenizer, self.eos_token_ids, tool_format)
        self.logged: set[str] = set()  # run-log lines printed already
        self.last_episodes: list[Episode] = []
        self.env_seconds = 0.0
        self.llamacpp = _llamacpp_decoder(self, backend, llamacpp_dtype, threads)

    def sync_weights(self) -> None:
        """Bring the decoding weights up to the policy (the llama.cpp backend: its GGUF file)."""
        if self.llamacpp is None:
            super().sync_weights()
        else:
            self.llamacpp.sync()

    @contextmanager
    def serving(self) -> Iterator[None]:
        """The torch backend's weight preparation; nothing for llama.cpp (synced already)."""
        if self.llamacpp is not None:
            yield
            return
        with super().serving():
            yield

    def generate(self, prompts: PromptBatch, request: RolloutRequest) -> Rollout:
        """See :meth:`RolloutEngine.generate` and the module docstring."""
        g = request.group_size
        rows = self._rows(prompts, request)
        budget = self.max_tokens or request.sampling.max_tokens
        per_turn = self.turn_budget(budget)
        episodes = [
            Episode(self.factory(**self.env_kwargs), index=request.row_offset + i)
            for i in range(len(rows) * g)
        ]
        for ep in episodes:
            self.format.attach(ep.env)  # the tool-call format, for environments with tools
        start = time.perf_counter()
        observations = [ep.env.reset(rows[i // g]) for i, ep in enumerate(episodes)]
        self.env_seconds = time.perf_counter() - start
        prompts = self._prompts(prompts, rows, episodes, observations, g, request.rows is None)
        self._log(episodes, budget, per_turn)
        model = self.weights.model
        model.eval()
        sampling = request.sampling
        sampler = Sampler(
            torch.tensor(self.eos_token_ids, device=prompts.input_ids.device),
            self.tokenizer.pad_token_id,
            sampling.temperature,
            sampling.top_p,
            sampling.top_k,
            request.generator,
            logp=request.behaviour_logp or self.llamacpp is not None,
        )
        if request.total_rows is not None and sampling.temperature > 0:
            shape = (self.max_turns, per_turn, request.total_rows)
            sampler.table = torch.rand(
                shape, generator=request.generator, device=sampler.eos.device
            )
        decoder: TurnDecoder = self.llamacpp or TorchDecoder(model, self.kv_reuse)
        with self.serving(), torch.no_grad():
            for part, eps in _chunks(prompts, episodes, g, decoder.max_rows):
                self._play(decoder.start(part, g, budget), eps, sampler, budget, per_turn)
        self.last_episodes = episodes
        rollout = self._rollout(prompts, episodes, g, sampler.logp)
        rollout.metrics = episode_metrics(episodes, self.env_seconds)
        return rollout

    def turn_budget(self, budget: int) -> int:
        """Tokens one policy turn may take: ``max_tokens_per_turn`` when set, else the episode
        ``budget`` split evenly over ``max_turns`` (``max(1, budget // max_turns)``)."""
        return self.max_tokens_per_turn or max(1, budget // self.max_turns)

    def _log(self, episodes: Sequence[Episode], budget: int, per_turn: int) -> None:
        """Print how prompts, tools and the per-turn budget are set, each line once per run."""
        tools = list(getattr(episodes[0].env, "tools", ()) or ()) if episodes else []
        how = "set" if self.max_tokens_per_turn else f"{budget} // max_turns {self.max_turns}"
        lines = [
            *self.format.describe(tools),
            f"episodes: max_tokens_per_turn={per_turn} ({how}), episode budget {budget} tokens",
        ]
        for line in lines:
            if line not in self.logged and is_main():
                print(line, flush=True)
            self.logged.add(line)

    def _play(
        self, turns: Turns, episodes: list[Episode], sampler: Sampler, budget: int, per_turn: int
    ) -> None:
        """Turns until every episode is done: decode, then the environments answer."""
        active, turn = list(episodes), 0
        while active:
            budgets = [min(per_turn, budget - len(ep.tokens)) for ep in active]
            draws = sampler.turn_draws(turn, [ep.index for ep in active])
            outputs = turns.decode(budgets, sampler, draws)
            turn += 1
            chunks: list[list[int]] = []
            for ep, out in zip(active, outputs, strict=True):
                ep.add(out.tokens, policy=True, entropy=out.entropy, logp=out.logp)
                ep.policy_turns += 1
                chunks.append(self._respond(ep, out.tokens, out.eos, budget))
            keep = [not ep.done for ep in active]
            turns.advance(keep, [c for c, k in zip(chunks, keep, strict=True) if k])
            active = [ep for ep in active if not ep.done]

    def _respond(self, ep: Episode, ids: list[int], eos: bool, budget: int) -> list[int]:
        """The environment's answer to the policy turn ``ids`` (its tokens, appended)."""
        closing: list[int] = []
        if not eos:
            if len(ep.tokens) >= budget:  # cut by the episode's token budget
                ep.end(truncated=True, reason="token_budget")
                return []
            closing = self.eos_token_ids[:1]  # cut by max_tokens_per_turn: close the turn
            ep.cut_turns += 1
        text = self.format.policy_text(ids)
        ep.messages.append({"role": "assistant", "content": text})
        start = time.perf_counter()
        result = as_env_step(ep.env.step(text))
        self.env_seconds += time.perf_counter() - start
        if result.reward is not None:
            ep.step_rewards.append(float(result.reward))
        if result.done:
            ep.end(truncated=False, reason="env_done")
            return []
        if ep.policy_turns >= self.max_turns:
            ep.end(truncated=True, reason="max_turns")
            return []
        role = getattr(ep.env, "role", "user")
        chunk = closing + self.format.reply_ids(result, role)
        if not chunk or len(ep.tokens) + len(chunk) >= budget:  # no room for a reply
            ep.end(truncated=True, reason="no_room")
            return []
        ep.add(chunk, policy=False)
        ep.messages += result.tool_messages or [{"role": role, "content": result.message or ""}]
        return chunk

    def _rows(self, prompts: PromptBatch, request: RolloutRequest) -> list[Mapping[str, Any]]:
        """The dataset rows (``request.rows``), else the decoded prompts as ``{"prompt"}``."""
        rows = request.rows
        if rows is not None:
            return list(rows)
        texts = [
            self.tokenizer.decode(row[mask.bool()].tolist())
            for row, mask in zip(prompts.input_ids, prompts.attention_mask, strict=True)
        ]
        return [{"prompt": t} for t in texts]

    def _prompts(
        self,
        prompts: PromptBatch,
        rows: Sequence[Mapping[str, Any]],
        episodes: Sequence[Episode],
        observations: Sequence[str | None],
        g: int,
        rendered: bool = False,
    ) -> PromptBatch:
        """The prompts, re-rendered when the environment adds an observation or tools (each
        row's own: those of its first episode's environment, after ``reset``), or a string
        prompt becomes a chat message (``rendered``: the rows are the decoded prompts, already
        as the model sees them; see :meth:`ChatFormat.prompt_text`)."""
        tools = [list(getattr(episodes[p * g].env, "tools", ()) or ()) for p in range(len(rows))]
        as_chat = not rendered and self.format.templated
        strings = as_chat and any(isinstance(row["prompt"], str) for row in rows)
        if not any(tools) and not any(observations) and not strings:
            return prompts
        texts = []
        for p, row in enumerate(rows):
            group = set(observations[p * g : (p + 1) * g])
            if len(group) > 1:
                raise ValueError(
                    "the environment's reset() returned different observations for the "
                    "episodes of one prompt; a group must start from the same state"
                )
            texts.append(self.format.prompt_text(row["prompt"], tools[p], group.pop(), rendered))
        return tokenize_prompts(self.tokenizer, texts, prompts.input_ids.device)

    def _rollout(
        self, prompts: PromptBatch, episodes: Sequence[Episode], g: int, logp: bool = False
    ) -> Rollout:
        """One Rollout row per episode, plus the ``env_reward`` column; ``logp``: with the
        behaviour log-probs (0 on the environment's tokens)."""
        width = max([1, *(len(ep.tokens) for ep in episodes)])
        shape = (len(episodes), width)
        ids = torch.full(shape, self.tokenizer.pad_token_id, dtype=torch.long)
        mask, policy, turn = (torch.zeros(shape, dtype=torch.long) for _ in range(3))
        entropy, behaviour = torch.zeros(shape), torch.zeros(shape)
        for i, ep in enumerate(episodes):
            n = len(ep.tokens)
            ids[i, :n] = torch.tensor(ep.tokens, dtype=torch.long)
            mask[i, :n] = 1
            policy[i, :n] = torch.tensor(ep.policy, dtype=torch.long)
            turn[i, :n] = torch.tensor(ep.turn, dtype=torch.long)
            entropy[i, :n] = torch.tensor(ep.entropy)
            behaviour[i, :n] = torch.tensor(ep.logp)
        device = prompts.input_ids.device
        rollout = Rollout(
            prompts=prompts,
            completion_ids=ids.to(device),
            completion_mask=mask.to(device),
            truncated=torch.tensor([ep.truncated for ep in episodes], device=device),
            group_size=g,
            entropy=entropy.to(device),
            loss_mask=policy.to(device),
            turn_index=turn.to(device),
            behaviour_logp=behaviour.to(device) if logp else None,
        )
        columns: dict[str, list[Any]] = {"env_reward": [end_reward(ep.env) for ep in episodes]}
        columns.update(env_columns([ep.env for ep in episodes]))  # e.g. TRL's environments
        columns[COMPLETION_MESSAGES] = [structured_messages(ep.messages) for ep in episodes]
        # Rollout.columns: per-row values the reward functions receive as columns (env_reward)
        rollout.columns = columns
        return rollout


def episode_metrics(episodes: Sequence[Episode], env_seconds: float) -> dict[str, float]:
    """``tools/calls_mean`` (per episode), ``tools/error_rate`` (error results per call),
    ``time/environment`` (seconds the environments took: reset and every step),
    ``episodes/ended/<reason>`` (the fraction of episodes that ended so, for every reason of
    :data:`ENDINGS`), ``episodes/turns_cut`` (cut policy turns / policy turns) and, when the
    environments have tools, TRL's ``tools/call_frequency`` and ``tools/failure_frequency``
    (:func:`groupwise.envs.tools.tool_frequencies`)."""
    calls = [len(getattr(ep.env, "calls", ())) for ep in episodes]
    errors = sum(int(getattr(ep.env, "errors", 0)) for ep in episodes)
    total, n = sum(calls), max(len(episodes), 1)
    out = {
        "tools/calls_mean": total / n,
        "tools/error_rate": errors / total if total else 0.0,
        "time/environment": env_seconds,
    }
    for reason in ENDINGS:
        out[f"episodes/ended/{reason}"] = sum(ep.ended == reason for ep in episodes) / n
    turns = sum(ep.policy_turns for ep in episodes)
    out["episodes/turns_cut"] = sum(ep.cut_turns for ep in episodes) / turns if turns else 0.0
    return out | tool_frequencies(ep.env for ep in episodes)


def _llamacpp_decoder(
    engine: EpisodeEngine, backend: str, dtype: str, threads: int | None
) -> LlamaCppDecoder | None:
    """The llama.cpp decoder for ``backend=llamacpp`` (None for ``torch``)."""
    if backend not in BACKENDS:
        raise ValueError(
            f"rollout.engine_kwargs.backend={backend!r} unknown to the episodes engine; "
            f"valid: {', '.join(BACKENDS)}"
        )
    if backend == "torch":
        return None
    if not engine.kv_reuse:
        raise ValueError(
            "rollout.engine_kwargs.kv_reuse=false is the torch backend's reference path; "
            "the llamacpp backend always keeps each episode's cache"
        )
    owner = "rollout.engine_kwargs.backend=llamacpp"
    policy = GGUFPolicy(engine.weights, engine.tokenizer, dtype=dtype, threads=threads, owner=owner)
    return LlamaCppDecoder(policy)


def _chunks(
    prompts: PromptBatch, episodes: list[Episode], g: int, max_rows: int | None
) -> Iterator[tuple[PromptBatch, list[Episode]]]:
    """The batch in chunks of whole groups of at most ``max_rows`` episodes (one chunk: the
    batch itself)."""
    per = len(episodes) // g if max_rows is None else max(max_rows // g, 1)
    if per * g >= len(episodes):
        yield prompts, episodes
        return
    for lo in range(0, prompts.input_ids.shape[0], per):
        part = PromptBatch(prompts.input_ids[lo : lo + per], prompts.attention_mask[lo : lo + per])
        yield part, episodes[lo * g : (lo + per) * g]


@ENGINES.register("episodes")
def build_episode_engine(ctx: EngineContext) -> RolloutEngine:
    """Multi-turn episodes on ``ctx.weights`` against ``engine_kwargs.environment``."""
    options = engine_options(ctx, "episodes", _OPTIONS, required="environment")
    return EpisodeEngine(ctx.weights, ctx.tokenizer, ctx.eos_token_ids, **options)
