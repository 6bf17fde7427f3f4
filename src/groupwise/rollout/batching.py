"""Decoding the policy server's concurrent requests together: one batch per moment.

:class:`RequestBatcher` collects the decode jobs waiting at one moment and runs them as one
batch on its own decode thread (the requests' threads wait for their results). A batch
starts when every *active* episode (its agent running, see
:meth:`groupwise.rollout.server.ChatBackend.begin_episode`) has a request waiting, or when no
new request arrived for ``wait`` seconds; ``max_batch`` caps its rows (1: one request at a
time). Every reply of a batch is sent when the whole batch is done.

:func:`decode_batch` runs one batch on per-episode KV caches:

- episodes without a cache (a first request, or a turn cut by a ``stop`` string) are prefilled
  together, left-padded, each distinct context once (the G episodes of a row share their first
  prompt) and repeated for the episodes that share it;
- episodes with a cache have theirs merged (:func:`merge`: every layer's keys and values
  left-padded to the longest, the attention masks likewise, padding masked) and the new
  messages' tokens (after each row's last sampled token, not yet in its cache) prefilled as one
  right-padded chunk, as :meth:`~groupwise.rollout.episodes.KVRunner.advance` does;
- the two parts are merged and decoded together, each row at its own positions with its own
  attention mask; a row that ended its turn gets masked filler tokens and **draws nothing**:
  each sampled token takes one uniform from its own episode's generator and is picked by
  inverse CDF from that row's distribution, so an episode's draws are the same whichever
  requests it is batched with;
- the batch's cache is split back into one cache per episode (:func:`split`; each row's leading
  padding dropped, holes left by masked fillers kept masked).

The behaviour log-prob of a drawn token is ``log_softmax(logits / T)[token]`` (T the row's
temperature, 1 when greedy), over the full vocabulary.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from groupwise.rollout.episodes import KVRunner, left_pad
from groupwise.rollout.sampling import sample_with_entropy

TurnOutput = tuple[list[int], list[float], bool]
"""A row's turn: its tokens, their sampling entropies, whether it ended with EOS."""


@dataclass
class RowSampling:
    """How one row of a batch samples: its episode's settings and generator."""

    temperature: float
    top_p: float
    top_k: int
    generator: torch.Generator | None


@dataclass
class DecodeJob:
    """One request's turn to decode: the episode's context (the prompt and every recorded
    token; used when ``runner`` is None), the tokens new since its cache (``inserted``), the
    turn's token budget and how it samples. Filled in by the batch: ``output``,
    ``logp`` (per generated token) and the episode's new ``runner``."""

    context: list[int]
    runner: KVRunner | None
    inserted: list[int]
    budget: int
    sampling: RowSampling
    key: Any = None  # what the batcher counts as an active episode (None: never waited for)
    output: TurnOutput | None = None
    logp: list[float] = field(default_factory=list)
    error: BaseException | None = None
    done: bool = False


class BatchRunner(KVRunner):
    """A :class:`~groupwise.rollout.episodes.KVRunner` over given state (a merged or split
    cache) instead of a prefill."""

    def __init__(
        self,
        model: nn.Module,
        cache: Any,
        logits: Tensor,
        attn: Tensor,
        pos: Tensor,
        pending: Tensor,
    ) -> None:
        self.model, self.cache, self.logits = model, cache, logits
        self.attn, self.pos, self.pending = attn, pos, pending

    def decode_rows(
        self, budgets: Sequence[int], rows: Sequence[RowSampling], eos: Tensor, pad: int
    ) -> tuple[list[TurnOutput], list[list[float]]]:
        """One turn of every row, row i at most ``budgets[i]`` tokens sampled with
        ``rows[i]``; only rows still in their turn draw. The turns and their log-probs."""
        n, steps, device = len(budgets), max(budgets), self.pos.device
        budget = torch.tensor(list(budgets), device=device)
        tokens = torch.full((n, steps), pad, device=device)
        entropy = torch.zeros((n, steps))
        logps: list[list[float]] = [[] for _ in range(n)]
        lengths = torch.zeros(n, dtype=torch.long, device=device)
        going = torch.ones(n, dtype=torch.bool, device=device)
        scale = torch.tensor([[r.temperature if r.temperature > 0 else 1.0] for r in rows])
        logits = self.logits
        for step in range(steps):
            live = going.nonzero().flatten().tolist()
            nxt = torch.full((n,), pad, dtype=torch.long, device=device)
            for idx, tok, h in _sample_rows(logits, live, rows):
                nxt[idx] = tok
                if h is not None:
                    entropy[idx.cpu(), step] = h.float().cpu()
            at = torch.tensor(live, device=device)
            scores = logits[at].float() / scale[live].to(device)  # log_softmax(s)[t] below
            picked = scores.gather(1, nxt[at, None])[:, 0] - torch.logsumexp(scores, dim=-1)
            for i, value in zip(live, picked.tolist(), strict=True):
                logps[i].append(value)
            tokens[:, step] = nxt
            real = going.clone()
            lengths += real.long()
            going &= ~torch.isin(nxt, eos) & (step + 1 < budget)
            if not bool(going.any()) or step == steps - 1:
                self.pending = torch.where(real, nxt, -1)
                break
            logits = self._feed(nxt[:, None], real.long()[:, None], self.pos[:, None])[:, -1]
            self.pos = self.pos + real.long()
        return _outputs(tokens, entropy, lengths, eos), logps


def _sample_rows(
    logits: Tensor, live: Sequence[int], rows: Sequence[RowSampling]
) -> list[tuple[Tensor, Tensor, Tensor | None]]:
    """The next token of every live row: ``(row indices, tokens, entropies or None)`` per group
    of rows that sample alike. Each sampled row draws one uniform from its own generator and
    picks by inverse CDF (:func:`~groupwise.rollout.sampling.inverse_cdf_sample`), so its draws
    do not depend on the other rows of the batch."""
    groups: dict[tuple[float, float, int], list[int]] = {}
    for i in live:
        r = rows[i]
        groups.setdefault((r.temperature, r.top_p, r.top_k), []).append(i)
    out = []
    for (temperature, top_p, top_k), members in groups.items():
        idx = torch.tensor(members, device=logits.device)
        uniform = None
        if temperature > 0:
            draws = [torch.rand((1,), generator=rows[i].generator) for i in members]
            uniform = torch.cat(draws).to(logits.device)
        tok, h = sample_with_entropy(
            logits[idx], temperature=temperature, top_p=top_p, top_k=top_k, uniform=uniform
        )
        out.append((idx, tok, h))
    return out


def _outputs(tokens: Tensor, entropy: Tensor, lengths: Tensor, eos: Tensor) -> list[TurnOutput]:
    eos_ids = set(eos.tolist())
    out: list[TurnOutput] = []
    for row, ent, k in zip(tokens.tolist(), entropy.tolist(), lengths.tolist(), strict=True):
        out.append((row[:k], ent[:k], bool(row[:k]) and row[k - 1] in eos_ids))
    return out


def _layers(cache: Any) -> list[tuple[Tensor, Tensor]]:
    return [(layer.keys, layer.values) for layer in cache.layers]


def _cache(model: nn.Module, layers: Sequence[tuple[Tensor, Tensor]]) -> Any:
    from transformers import DynamicCache

    cache = DynamicCache(config=getattr(model, "config", None))
    for i, (k, v) in enumerate(layers):
        cache.update(k, v, i)
    return cache


def merge(model: nn.Module, runners: Sequence[KVRunner]) -> BatchRunner:
    """One runner over the rows of ``runners`` (in order): caches and masks left-padded to the
    longest (padding masked), positions, pending tokens and last logits stacked."""
    width = max(r.attn.shape[1] for r in runners)

    def pad(t: Tensor, r: KVRunner, dim_from_end: int) -> Tensor:
        extra = width - r.attn.shape[1]
        if not extra:
            return t
        spec = [0, 0] * (dim_from_end - 1) + [extra, 0]
        return F.pad(t, spec)

    per_runner = [_layers(r.cache) for r in runners]
    layers = [
        (
            torch.cat([pad(rl[i][0], r, 2) for r, rl in zip(runners, per_runner, strict=True)]),
            torch.cat([pad(rl[i][1], r, 2) for r, rl in zip(runners, per_runner, strict=True)]),
        )
        for i in range(len(per_runner[0]))
    ]
    return BatchRunner(
        model,
        _cache(model, layers),
        torch.cat([r.logits for r in runners]),
        torch.cat([pad(r.attn, r, 1) for r in runners]),
        torch.cat([r.pos for r in runners]),
        torch.cat([r.pending for r in runners]),
    )


def split(runner: KVRunner) -> list[BatchRunner]:
    """One runner per row of ``runner`` (its leading padding dropped)."""
    layers = _layers(runner.cache)
    out = []
    for i in range(runner.attn.shape[0]):
        first = int(runner.attn[i].nonzero()[0, 0]) if bool(runner.attn[i].any()) else 0
        cut = [(k[i : i + 1, :, first:], v[i : i + 1, :, first:]) for k, v in layers]
        out.append(
            BatchRunner(
                runner.model,
                _cache(runner.model, cut),
                runner.logits[i : i + 1],
                runner.attn[i : i + 1, first:],
                runner.pos[i : i + 1],
                runner.pending[i : i + 1],
            )
        )
    return out


def _prefilled(model: nn.Module, jobs: Sequence[DecodeJob], pad: int) -> BatchRunner:
    """The jobs' contexts prefilled together, each distinct context once."""
    distinct: dict[tuple[int, ...], int] = {}
    rows = [distinct.setdefault(tuple(j.context), len(distinct)) for j in jobs]
    device = next(model.parameters()).device
    base = KVRunner(model, left_pad([list(c) for c in distinct], pad, device), 1)
    index = torch.tensor(rows, device=device)
    if rows != list(range(len(distinct))):  # repeat each context for the jobs that share it
        base.cache.batch_select_indices(index)
    return BatchRunner(
        model,
        base.cache,
        base.logits[index],
        base.attn[index],
        base.pos[index],
        base.pending[index],
    )


def decode_batch(model: nn.Module, jobs: Sequence[DecodeJob], eos: Sequence[int], pad: int) -> None:
    """Decode every job's turn in one batch (see the module docstring); fills each job's
    ``output``, ``logp`` and ``runner``."""
    fresh = [j for j in jobs if j.runner is None]
    kept = [j for j in jobs if j.runner is not None]
    parts: list[KVRunner] = []
    if fresh:
        parts.append(_prefilled(model, fresh, pad))
    if kept:
        cached = merge(model, [j.runner for j in kept if j.runner is not None])
        cached.advance([True] * len(kept), [j.inserted for j in kept])
        parts.append(cached)
    order = fresh + kept
    runner = merge(model, parts) if len(parts) > 1 else parts[0]
    assert isinstance(runner, BatchRunner)
    eos_t = torch.tensor(list(eos), device=runner.pos.device)
    outputs, logps = runner.decode_rows(
        [j.budget for j in order], [j.sampling for j in order], eos_t, pad
    )
    rows = split(runner) if len(order) > 1 else [runner]
    for job, out, lp, row in zip(order, outputs, logps, rows, strict=True):
        job.output, job.logp, job.runner = out, lp, row


class RequestBatcher:
    """Runs the decode jobs submitted from many threads in batches (see the module doc), on one
    decode thread of its own (started on demand; it ends after ``IDLE`` seconds without a
    job), so the model only ever runs on a few long-lived threads, not on every HTTP
    handler's (per-thread allocator and kernel caches would otherwise pile up).

    ``run`` decodes one batch (``decode_batch`` bound to the model); ``waiting_for`` says how
    many active episodes have no job queued (0: start now)."""

    IDLE = 10.0

    def __init__(
        self,
        run: Callable[[list[DecodeJob]], None],
        waiting_for: Callable[[set[Any]], int],
        *,
        wait: float = 0.05,
        max_batch: int | None = None,
    ) -> None:
        if max_batch is not None and max_batch < 1:
            raise ValueError(f"max_batch must be at least 1 (got {max_batch})")
        self.run, self.waiting_for = run, waiting_for
        self.wait, self.max_batch = wait, max_batch
        self.cond = threading.Condition()
        self.queue: list[DecodeJob] = []
        self.thread: threading.Thread | None = None
        self.batches: list[int] = []  # rows of every batch run (a record for metrics)

    def submit(self, job: DecodeJob) -> DecodeJob:
        """Queue ``job`` and return it decoded (raises what its batch raised)."""
        with self.cond:
            self.queue.append(job)
            if self.thread is None:
                self.thread = threading.Thread(
                    target=self._loop, name="groupwise-decode", daemon=True
                )
                self.thread.start()
            self.cond.notify_all()
            while not job.done:
                self.cond.wait()
        if job.error is not None:
            raise job.error
        return job

    def _loop(self) -> None:
        """The decode thread: batch after batch while jobs come."""
        while True:
            with self.cond:
                if not self.queue and not self.cond.wait_for(lambda: self.queue, self.IDLE):
                    self.thread = None
                    return
            batch: list[DecodeJob] = []
            try:
                batch = self._gather()
                self.run(batch)
            except BaseException as exc:  # every job of the batch sees it
                for j in batch:
                    j.error = exc
            finally:
                with self.cond:
                    for j in batch:
                        j.done = True
                    self.cond.notify_all()

    def _gather(self) -> list[DecodeJob]:
        """The jobs of the next batch: wait until every active
        episode has one queued, or ``wait`` seconds pass without a new one."""
        with self.cond:
            seen, last = len(self.queue), time.monotonic()
            while not self._full():
                if self.waiting_for({j.key for j in self.queue if j.key is not None}) == 0:
                    break
                left = self.wait - (time.monotonic() - last)
                if left <= 0:
                    break
                self.cond.wait(left)
                if len(self.queue) != seen:
                    seen, last = len(self.queue), time.monotonic()
            take = len(self.queue) if self.max_batch is None else self.max_batch
            batch, self.queue = self.queue[:take], self.queue[take:]
            self.batches.append(len(batch))
            return batch

    def _full(self) -> bool:
        return self.max_batch is not None and len(self.queue) >= self.max_batch
