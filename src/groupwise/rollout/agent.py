"""The ``agent`` engine: episodes played by the user's own agent through the ``openai`` client.

``rollout.engine=agent`` with ``rollout.engine_kwargs``:

- ``agent`` (required): ``"module:function"``, ``"path/to/file.py:function"`` or a callable,
  called as ``agent(client, row, episode)`` for every episode: ``client`` an ``openai.OpenAI`` client
  whose ``base_url`` names the episode (``client: base_url`` passes that URL as a string
  instead), ``row`` the dataset row, ``episode`` a dict with ``episode_id``, ``group_id``,
  ``index``, ``base_url``, ``server_url`` (the shared ``.../v1``), ``extra_body`` (the
  ``{"groupwise": {...}}`` naming the episode, for a client on ``server_url``) and ``model``.
  It returns None or the episode's final reward (recorded as the ``env_reward`` column, read by
  the ``env_reward`` reward);
- ``max_turns`` (default 8): policy turns per episode; ``max_tokens``: tokens after the prompt
  per episode (default ``rollout.max_completion_length``); ``max_tokens_per_turn``;
- ``concurrency``: agents running at once (default: every episode of the call);
- ``describe_tools`` (default true): render a request's ``tools`` in the prompt (false: the
  prompt describes them itself);
- ``timeout`` (default 600): seconds the client waits for one reply;
- ``max_batch`` (default: no cap): requests decoded together at most (1: one at a time);
  ``batch_wait`` (default 0.05): seconds a batch waits for one more request
  (:mod:`groupwise.rollout.batching`).

``generate`` starts the policy server (:mod:`groupwise.rollout.server`, once, on 127.0.0.1 and a
free port), registers G episodes per row (group ``g`` = the G episodes of row ``g``, each with
its own seeded generator drawn from ``request.generator``: the draws do not depend on how the
agents' requests interleave), runs the agents in a thread pool, closes every episode when its
agent returns and builds the :class:`~groupwise.rollout.records.Rollout` from the stored token
ids: per group, the prompt is the longest common prefix of its episodes' first-request prompts
(the part of an episode's prompt past it starts its completion, as inserted tokens);
``loss_mask`` is 1 on the policy's tokens, ``turn_index`` numbers the segments (inserted ones
included), ``entropy`` and ``behaviour_logp`` come from the decoder (0 on inserted tokens). A
group none of whose agents sent a request keeps the dataset prompt and empty completions. The
completion text the rewards see is the decoded conversation after the prompt, as for
``episodes``. An agent that raises fails the call, naming the episode.

The requests waiting at one moment are decoded as one batch (:mod:`groupwise.rollout.batching`:
a batch starts once every running agent has a request waiting, or ``batch_wait`` seconds pass
without a new one); each episode keeps its own KV cache until it is closed, merged into the
batch's and split back. Metric ``agent/batch_rows_mean``: requests per batch. Sampling follows the request's sampling settings (the rollout's
temperature, top-p, top-k; greedy in evaluation), whatever temperature the agent asks for.
"""

from __future__ import annotations

import importlib
import importlib.util
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import ModuleType
from typing import Any

import torch

from groupwise.models.loading import trim_heap
from groupwise.rollout.engine import (
    ENGINES,
    EngineContext,
    RolloutEngine,
    RolloutRequest,
    engine_options,
)
from groupwise.rollout.episodes import left_pad
from groupwise.rollout.records import PromptBatch, Rollout
from groupwise.rollout.server import ChatBackend, EpisodeSettings, PolicyServer, ServedEpisode
from groupwise.rollout.weights import RolloutWeights, ServesWeights

AgentFn = Callable[[Any, Mapping[str, Any], dict[str, Any]], float | None]

_OPTIONS = (
    "agent",
    "max_turns",
    "max_tokens",
    "max_tokens_per_turn",
    "client",
    "concurrency",
    "describe_tools",
    "timeout",
    "max_batch",
    "batch_wait",
)


def load_agent(spec: str | AgentFn) -> AgentFn:
    """The agent function: a callable, a ``module:function`` import path or a
    ``path/to/file.py:function`` (a file path is taken from the working directory)."""
    if callable(spec):
        return spec
    module_name, _, attr = str(spec).rpartition(":")
    if not module_name:
        raise ValueError(
            f"rollout.engine_kwargs.agent: {spec!r} is not 'module:function' or 'file.py:function'"
        )
    try:
        if module_name.endswith(".py"):
            module = _module_from_file(Path(module_name))
        else:
            module = importlib.import_module(module_name)
    except (ImportError, OSError) as exc:
        raise ValueError(
            f"rollout.engine_kwargs.agent: cannot import {module_name!r}: {exc}"
        ) from exc
    func = getattr(module, attr, None)
    if not callable(func):
        raise ValueError(f"rollout.engine_kwargs.agent: {spec!r} is not a callable")
    return func


def _module_from_file(path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"groupwise_agent_{path.stem}", path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class AgentEngine(ServesWeights):
    """Runs the user's agent G times per row against the policy server."""

    def __init__(
        self,
        weights: RolloutWeights,
        tokenizer: Any,
        eos_token_ids: Sequence[int],
        *,
        agent: str | AgentFn,
        max_turns: int = 8,
        max_tokens: int | None = None,
        max_tokens_per_turn: int | None = None,
        client: str = "openai",
        concurrency: int | None = None,
        describe_tools: bool = True,
        timeout: float = 600.0,
        max_batch: int | None = None,
        batch_wait: float = 0.05,
    ) -> None:
        if max_turns < 1:
            raise ValueError("rollout.engine_kwargs.max_turns must be at least 1")
        if client not in ("openai", "base_url"):
            raise ValueError(
                f"rollout.engine_kwargs.client: 'openai' or 'base_url', not {client!r}"
            )
        self.weights = weights
        self.tokenizer = tokenizer
        self.agent = load_agent(agent)
        self.max_turns = max_turns
        self.max_tokens = max_tokens
        self.max_tokens_per_turn = max_tokens_per_turn
        self.client = client
        self.concurrency = concurrency
        self.timeout = timeout
        self.backend = ChatBackend(
            weights,
            tokenizer,
            eos_token_ids,
            describe_tools=describe_tools,
            max_batch=max_batch,
            batch_wait=batch_wait,
        )
        self.server: PolicyServer | None = None
        self.calls = 0

    def start(self) -> PolicyServer:
        """The policy server, started on first use."""
        if self.server is None:
            self.server = PolicyServer(self.backend).start()
        return self.server

    def close(self) -> None:
        """Stop the server."""
        if self.server is not None:
            self.server.close()
            self.server = None

    def generate(self, prompts: PromptBatch, request: RolloutRequest) -> Rollout:
        """See :meth:`RolloutEngine.generate` and the module docstring."""
        server, g = self.start(), request.group_size
        rows = self._rows(prompts, request)
        n = len(rows) * g
        seeds = self._seeds(n, request)
        sampling = request.sampling
        budget = self.max_tokens or sampling.max_tokens
        self.calls += 1
        metas: list[dict[str, Any]] = []
        for i in range(n):
            eid, gid = f"c{self.calls}-e{i}", f"c{self.calls}-g{i // g}"
            settings = EpisodeSettings(
                type(sampling)(budget, sampling.temperature, sampling.top_p, sampling.top_k),
                self.max_turns,
                self.max_tokens_per_turn,
                seeds[i],
            )
            self.backend.open_episode(eid, gid, settings)
            metas.append(self._meta(server, eid, gid, i))
        start, batches = time.perf_counter(), len(self.backend.batcher.batches)
        try:
            with self.serving():
                rewards = self._run_all(rows, metas, g)
        finally:
            episodes = [self.backend.pop_episode(m["episode_id"]) for m in metas]
            trim_heap()  # the batches' caches, of varying shapes, leave the heap fragmented
        rollout = agent_rollout(prompts, episodes, g, self.tokenizer.pad_token_id)
        rollout.columns = {"env_reward": rewards}
        requests = sum(ep.requests for ep in episodes)
        sizes = self.backend.batcher.batches[batches:]
        rollout.metrics = {
            "agent/requests_mean": requests / max(n, 1),
            "agent/batch_rows_mean": sum(sizes) / max(len(sizes), 1),
            "time/agent": time.perf_counter() - start,
        }
        return rollout

    def _run_all(
        self, rows: Sequence[Mapping[str, Any]], metas: Sequence[dict[str, Any]], g: int
    ) -> list[float | None]:
        """Every episode's agent, concurrently; their returned rewards."""

        def run(i: int) -> float | None:
            meta = metas[i]
            client = self._client(meta["base_url"])
            self.backend.begin_episode(meta["episode_id"])
            try:
                out = self.agent(client, rows[i // g], meta)
            except Exception as exc:
                raise RuntimeError(
                    f"the agent ({getattr(self.agent, '__name__', self.agent)}) raised in "
                    f"episode {meta['episode_id']} (row {i // g}): {type(exc).__name__}: {exc}"
                ) from exc
            finally:
                self.backend.close_episode(meta["episode_id"])
                close = getattr(client, "close", None)
                if callable(close):
                    close()
            return None if out is None else float(out)

        workers = max(1, min(self.concurrency or len(metas), len(metas)))
        for meta in metas[:workers]:  # the first batch waits for every agent that starts now
            self.backend.begin_episode(meta["episode_id"])
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="groupwise-agent") as pool:
            return list(pool.map(run, range(len(metas))))

    def _client(self, base_url: str) -> Any:
        if self.client == "base_url":
            return base_url
        try:
            import openai
        except ImportError as exc:
            raise ImportError(
                "rollout.engine=agent passes an openai client: pip install openai "
                "(or set rollout.engine_kwargs.client=base_url to get the URL instead)"
            ) from exc
        return openai.OpenAI(
            base_url=base_url, api_key="groupwise", max_retries=0, timeout=self.timeout
        )

    def _meta(self, server: PolicyServer, eid: str, gid: str, index: int) -> dict[str, Any]:
        return {
            "episode_id": eid,
            "group_id": gid,
            "index": index,
            "base_url": server.episode_url(eid),
            "server_url": server.base_url,
            "extra_body": {"groupwise": {"episode_id": eid, "group_id": gid}},
            "model": self.backend.model_name,
        }

    def _seeds(self, n: int, request: RolloutRequest) -> list[int | None]:
        """One generator seed per episode, drawn from ``request.generator`` (for the global
        batch when ``total_rows`` is set: rank-invariant); None when greedy."""
        if request.sampling.temperature <= 0:
            return [None] * n
        total = request.total_rows or n
        drawn = torch.randint(0, 2**62, (total,), generator=request.generator)
        return [int(s) for s in drawn[request.row_offset : request.row_offset + n]]

    def _rows(self, prompts: PromptBatch, request: RolloutRequest) -> list[Mapping[str, Any]]:
        if request.rows is not None:
            return list(request.rows)
        return [
            {"prompt": self.tokenizer.decode(row[mask.bool()].tolist())}
            for row, mask in zip(prompts.input_ids, prompts.attention_mask, strict=True)
        ]


def _common_prefix(seqs: Sequence[Sequence[int]]) -> list[int]:
    first = list(seqs[0])
    n = len(first)
    for s in seqs[1:]:
        n = min(n, len(s))
        n = next((k for k in range(n) if s[k] != first[k]), n)
    return first[:n]


def _group_prompts(
    prompts: PromptBatch, episodes: Sequence[ServedEpisode], g: int
) -> list[list[int]]:
    """Per group: the common prefix of its episodes' prompts (the dataset prompt if none)."""
    out = []
    for p in range(len(episodes) // g):
        started = [ep.prompt_ids for ep in episodes[p * g : (p + 1) * g] if ep.prompt_ids]
        if started:
            head = _common_prefix(started)
            if not head:
                raise ValueError(
                    f"the episodes of group {p} share no prompt prefix: the agent's first "
                    "request must start every episode of a row the same way"
                )
            out.append(head)
        else:
            row, mask = prompts.input_ids[p], prompts.attention_mask[p]
            out.append(row[mask.bool()].tolist())
    return out


def agent_rollout(
    prompts: PromptBatch, episodes: Sequence[ServedEpisode], g: int, pad: int
) -> Rollout:
    """The Rollout of finished episodes (rows of a group contiguous; see the module doc)."""
    heads = _group_prompts(prompts, episodes, g)
    rows: list[tuple[list[int], list[int], list[int], list[float], list[float]]] = []
    for i, ep in enumerate(episodes):
        rest = (ep.prompt_ids or [])[len(heads[i // g]) :]
        shift = 1 if rest else 0
        rec = ep.record
        rows.append(
            (
                rest + rec.tokens,
                [0] * len(rest) + rec.policy,
                [0] * len(rest) + [t + shift for t in rec.turn],
                [0.0] * len(rest) + rec.entropy,
                [0.0] * len(rest) + ep.logp,
            )
        )
    width = max([1, *(len(r[0]) for r in rows)])
    shape = (len(episodes), width)
    ids = torch.full(shape, pad, dtype=torch.long)
    mask, policy, turn = (torch.zeros(shape, dtype=torch.long) for _ in range(3))
    entropy, logp = torch.zeros(shape), torch.zeros(shape)
    for i, (tokens, pol, trn, ent, lp) in enumerate(rows):
        n = len(tokens)
        ids[i, :n] = torch.tensor(tokens, dtype=torch.long)
        mask[i, :n] = 1
        policy[i, :n] = torch.tensor(pol, dtype=torch.long)
        turn[i, :n] = torch.tensor(trn, dtype=torch.long)
        entropy[i, :n] = torch.tensor(ent)
        logp[i, :n] = torch.tensor(lp)
    device = prompts.input_ids.device
    return Rollout(
        prompts=left_pad(heads, pad, device),
        completion_ids=ids.to(device),
        completion_mask=mask.to(device),
        truncated=torch.tensor([ep.truncated for ep in episodes], device=device),
        group_size=g,
        entropy=entropy.to(device),
        loss_mask=policy.to(device),
        turn_index=turn.to(device),
        behaviour_logp=logp.to(device),
    )


@ENGINES.register("agent")
def build_agent_engine(ctx: EngineContext) -> RolloutEngine:
    """The user's agent against the policy server, on ``ctx.weights``."""
    options = engine_options(ctx, "agent", _OPTIONS, required="agent")
    return AgentEngine(ctx.weights, ctx.tokenizer, ctx.eos_token_ids, **options)
