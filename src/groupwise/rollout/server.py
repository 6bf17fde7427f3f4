"""The policy behind an OpenAI-compatible chat-completions endpoint, token-in/token-out.

An agent written against the ``openai`` client (any framework) talks to :class:`PolicyServer`;
every reply is decoded in this process by the policy being trained (the ``episodes`` engine's
KV-cached :class:`~groupwise.rollout.episodes.KVRunner`, one per episode, kept from turn to
turn), and every token of the conversation is recorded for training (the ``agent`` engine,
:mod:`groupwise.rollout.agent`).

Routes (bound to 127.0.0.1 only; no authentication, nothing else is served):

- ``POST /v1/chat/completions``: ``messages``, ``tools``, ``max_tokens`` (or
  ``max_completion_tokens``), ``stop``, ``temperature``, ``top_p``; ``n`` must be 1 and
  ``stream`` false. The episode is named by the extra field
  ``"groupwise": {"episode_id": ..., "group_id": ...}`` (the ``openai`` client's
  ``extra_body={"groupwise": {...}}``) or by the path prefix ``/episodes/{episode_id}`` (a client
  whose ``base_url`` is ``http://127.0.0.1:PORT/episodes/ID/v1`` needs no extra field). A request
  that names no episode is answered and forgotten (nothing recorded).
- ``POST /v1/episodes/{episode_id}/close``: the episode takes no more requests.
- ``GET /v1/models``: the policy, as one model.

Token-in/token-out: an episode stores its token ids and the messages they stand for. The first
request's messages are rendered with the chat template (tools: the template's ``tools=`` or the
text protocol of :func:`groupwise.envs.tools.tools_instructions`) and tokenized once: the prompt.
Every later request must repeat the stored conversation (the messages sent so far and each
assistant message as it was returned; compared by role, text content and tool calls) as a prefix
of its messages, else it is refused (HTTP 409, naming the first differing message). Only the new
messages are tokenized and appended, in the chat template's framing for their roles (the text
after an assistant turn's EOS, up to the next generation prompt; a turn that ended without EOS
is first closed with an inserted EOS), then the assistant turn is generated: the assistant's
own tokens are never re-tokenized. Tool results (role ``tool``) are wrapped in
``<tool_response>...</tool_response>`` where neither the template nor the text does it.

Replies: ``choices[0].message`` with ``content`` and, when the request has ``tools``, the
``<tool_call>{...}</tool_call>`` blocks of the text (:func:`groupwise.envs.tools.parse_tool_calls`)
as OpenAI ``tool_calls`` (removed from ``content`` when all of them parse);
``choices[0].groupwise = {"token_ids", "logprobs", "inserted_token_ids", "episode_id"}``: the
generated ids, ``log_softmax(logits / T)`` of each (T = the temperature, 1 when greedy; the full
vocabulary before top-p/top-k) and the ids inserted before the turn (the prompt on the first
request, else the new messages' framing).

A registered episode (:meth:`ChatBackend.open_episode`) samples with its own settings (the
rollout's temperature, top-p, top-k, and a seeded generator: the draws of an episode do not
depend on how the requests of concurrent episodes interleave); a request's ``temperature`` and
``top_p`` apply only to unnamed requests. It ends *truncated* when a turn would exceed its token
budget or ``max_turns``: such a request gets an empty reply with ``finish_reason: "length"``
and its messages are not recorded. The requests waiting at one moment are decoded together as one
batch (:mod:`groupwise.rollout.batching`; ``max_batch=1``: one at a time); an episode takes one
request at a time (a second one while the first is decoded gets HTTP 409).
"""

from __future__ import annotations

import contextlib
import json
import re
import threading
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import torch

from groupwise.envs import Tool
from groupwise.envs.tools import parse_tool_calls
from groupwise.rollout.batching import DecodeJob, RequestBatcher, RowSampling, decode_batch
from groupwise.rollout.engine import SamplingParams
from groupwise.rollout.episodes import ChatFormat, Episode, KVRunner
from groupwise.rollout.weights import RolloutWeights

LOOPBACK = "127.0.0.1"
MODEL_NAME = "groupwise-policy"
_REPLY = "\x1fREPLY\x1f"
_CALL_BLOCK = re.compile(r"<tool_call>.*?</tool_call>", re.DOTALL)


class RequestError(Exception):
    """A refused request: its HTTP status and the message sent back."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(frozen=True)
class EpisodeSettings:
    """How a registered episode samples and where it ends."""

    sampling: SamplingParams
    """Temperature, top-p, top-k; ``max_tokens`` is the episode's budget of tokens after the
    prompt (the policy's and the inserted ones)."""
    max_turns: int = 8
    """Policy turns at most."""
    max_tokens_per_turn: int | None = None
    """Cap of one policy turn."""
    seed: int | None = None
    """Seeds the episode's generator (None: torch's global generator)."""


@dataclass
class ServedEpisode:
    """One conversation: its prompt, its turns token by token, and the messages they stand for."""

    episode_id: str
    group_id: str | None
    settings: EpisodeSettings
    record: Episode = field(default_factory=lambda: Episode(env=None))  # type: ignore[arg-type]
    prompt_ids: list[int] | None = None  # None: no request yet
    logp: list[float] = field(default_factory=list)  # per token after the prompt (0: inserted)
    messages: list[tuple[Any, ...]] = field(default_factory=list)  # normalised, see _normalise
    runner: KVRunner | None = None
    generator: torch.Generator | None = None
    closed: bool = False
    active: bool = False  # its agent is running (the batcher waits for its requests)
    busy: bool = False  # a request of it is being decoded
    open_turn: bool = False  # the last policy turn ended without EOS
    finish: str | None = None  # the last reply's finish_reason
    requests: int = 0

    @property
    def truncated(self) -> bool:
        """Cut by the budget or max_turns, or its last turn cut by max_tokens."""
        return self.record.truncated or self.finish == "length"


class ChatBackend:
    """Answers chat-completion requests with the policy; keeps the episodes' tokens."""

    def __init__(
        self,
        weights: RolloutWeights,
        tokenizer: Any,
        eos_token_ids: Sequence[int],
        *,
        describe_tools: bool = True,
        model_name: str = MODEL_NAME,
        max_batch: int | None = None,
        batch_wait: float = 0.05,
    ) -> None:
        self.weights = weights
        self.tokenizer = tokenizer
        self.eos_token_ids = list(eos_token_ids)
        self.describe_tools = describe_tools
        self.model_name = model_name
        self.format = ChatFormat(tokenizer, self.eos_token_ids)
        self.episodes: dict[str, ServedEpisode] = {}
        self.lock = threading.Lock()
        self._wraps_tool: bool | None = None
        self.batcher = RequestBatcher(
            self._run_batch, self._waiting_for, wait=batch_wait, max_batch=max_batch
        )

    # ------------------------------------------------------------------ episodes
    def open_episode(
        self, episode_id: str, group_id: str | None, settings: EpisodeSettings
    ) -> ServedEpisode:
        """Register an episode (its requests then name ``episode_id``)."""
        with self.lock:
            if episode_id in self.episodes:
                raise ValueError(f"episode {episode_id!r} is already open")
            ep = ServedEpisode(episode_id, group_id, settings)
            if settings.seed is not None:
                ep.generator = torch.Generator().manual_seed(settings.seed)
            self.episodes[episode_id] = ep
            return ep

    def begin_episode(self, episode_id: str) -> None:
        """Mark an episode's agent as running: a batch of requests waits for its request
        (until ``batch_wait`` seconds pass without a new one) until it is closed."""
        with self.lock:
            self._registered(episode_id).active = True

    def close_episode(self, episode_id: str) -> ServedEpisode:
        """End an episode: no more requests; its KV cache is freed."""
        with self.lock:
            ep = self._registered(episode_id)
            ep.closed, ep.active, ep.runner = True, False, None
        with self.batcher.cond:  # a batch waiting for this episode's request starts
            self.batcher.cond.notify_all()
        return ep

    def pop_episode(self, episode_id: str) -> ServedEpisode:
        """Close and forget an episode; its record."""
        ep = self.close_episode(episode_id)
        with self.lock:
            del self.episodes[episode_id]
        return ep

    def _registered(self, episode_id: str) -> ServedEpisode:
        ep = self.episodes.get(episode_id)
        if ep is None:
            raise RequestError(404, f"unknown episode {episode_id!r}: open it first")
        return ep

    def models(self) -> dict[str, Any]:
        """The ``GET /v1/models`` answer."""
        model = {"id": self.model_name, "object": "model", "created": 0, "owned_by": "groupwise"}
        return {"object": "list", "data": [model]}

    # ------------------------------------------------------------------ requests
    def chat(self, body: Mapping[str, Any], episode_id: str | None = None) -> dict[str, Any]:
        """The chat-completion answer to ``body`` (see the module docstring)."""
        messages = _messages(body)
        if int(body.get("n") or 1) != 1:
            raise RequestError(400, "n must be 1 (one completion per request)")
        if body.get("stream"):
            raise RequestError(400, "stream is not supported; send stream=false")
        extra = body.get("groupwise") or {}
        if not isinstance(extra, Mapping):
            raise RequestError(400, '"groupwise" must be an object {episode_id, group_id}')
        episode_id = episode_id or extra.get("episode_id")
        tools = _tools(body)
        with self.lock:
            if episode_id is None:
                ep = ServedEpisode("", None, _request_settings(body))
            else:
                ep = self._registered(str(episode_id))
                if ep.closed:
                    raise RequestError(409, f"episode {episode_id!r} is closed")
                if ep.busy:
                    raise RequestError(
                        409, f"episode {episode_id!r} has a request in flight: send one at a time"
                    )
            ep.requests += 1
            first = ep.prompt_ids is None
            inserted = self._extend(ep, messages, tools)
            if inserted is None:  # over budget or max_turns: the episode is truncated
                return self._response(ep, {"role": "assistant", "content": ""}, "length", [])
            if not first:
                ep.record.add(inserted, policy=False)
                ep.logp.extend([0.0] * len(inserted))
            job = self._job(ep, inserted, body)
            ep.busy = True
        try:
            self.batcher.submit(job)
        finally:
            with self.lock:
                ep.busy = False
        with self.lock:
            return self._turn(ep, job, inserted, body, bool(tools))

    def _extend(
        self, ep: ServedEpisode, messages: list[Mapping[str, Any]], tools: list[Tool]
    ) -> list[int] | None:
        """The token ids the new messages add (the prompt on the first request); None when the
        episode has no room for another turn."""
        if ep.prompt_ids is None:
            shown = tools if self.describe_tools else []
            text = self.format.prompt_text(self._template(messages), shown, None)
            ep.prompt_ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
            ep.messages = [_normalise(m) for m in messages]
            return list(ep.prompt_ids)
        if ep.record.truncated:
            return None
        stored = ep.messages
        for k, stored_message in enumerate(stored):
            got = _normalise(messages[k]) if k < len(messages) else None
            if got != stored_message:
                raise RequestError(409, _mismatch(ep.episode_id, k, stored_message, got))
        tail = messages[len(stored) :]
        ids = self.eos_token_ids[:1] if ep.open_turn else []
        ids = ids + self._tail_ids(tail)
        s = ep.settings
        if ep.record.policy_turns >= s.max_turns or (
            len(ep.record.tokens) + len(ids) >= s.sampling.max_tokens
        ):
            ep.record.end(truncated=True)
            return None
        ep.messages += [_normalise(m) for m in tail]
        return ids

    def _turn(
        self,
        ep: ServedEpisode,
        job: DecodeJob,
        inserted: list[int],
        body: Mapping[str, Any],
        tools: bool,
    ) -> dict[str, Any]:
        """Record the assistant turn ``job`` decoded after ``inserted`` and answer."""
        assert job.output is not None
        ids, entropy, eos = job.output
        logp = job.logp[: len(ids)]
        ep.runner = None if ep.closed else job.runner
        text = self.tokenizer.decode(ids, skip_special_tokens=True)
        finish = "stop" if eos else "length"
        stop = _stop_index(self.tokenizer, ids, body.get("stop"))
        if stop is not None and not eos:
            cut, text = stop
            ids, entropy, logp, finish = ids[:cut], entropy[:cut], logp[:cut], "stop"
            ep.runner = None  # its cache holds the tokens after the stop: prefill anew
        ep.record.add(ids, policy=True, entropy=entropy)
        ep.record.policy_turns += 1
        ep.logp.extend(logp)
        ep.open_turn = not eos
        message = _assistant_message(text, ep, tools)
        if message.get("tool_calls"):
            finish = "tool_calls" if finish != "length" else finish
        ep.messages.append(_normalise(message))
        ep.finish = finish
        return self._response(ep, message, finish, inserted, ids, logp)

    def _job(self, ep: ServedEpisode, inserted: list[int], body: Mapping[str, Any]) -> DecodeJob:
        """The decode job of the turn after ``inserted``: on the episode's KV cache (a new one
        holds the prompt and every recorded token; a kept one takes ``inserted``), its token
        budget the least of the episode's room, ``max_tokens_per_turn`` and the request's cap."""
        assert ep.prompt_ids is not None
        s = ep.settings
        budget = s.sampling.max_tokens - len(ep.record.tokens)
        for cap in (
            s.max_tokens_per_turn,
            body.get("max_completion_tokens"),
            body.get("max_tokens"),
        ):
            if cap is not None:
                budget = min(budget, int(cap))
        if budget < 1:
            raise RequestError(400, f"max_tokens must be at least 1 (got {budget})")
        sampling = RowSampling(
            s.sampling.temperature, s.sampling.top_p, s.sampling.top_k, ep.generator
        )
        context = ep.prompt_ids + ep.record.tokens if ep.runner is None else []
        return DecodeJob(context, ep.runner, inserted, budget, sampling, ep.episode_id or None)

    def _run_batch(self, jobs: list[DecodeJob]) -> None:
        model = self.weights.model
        model.eval()
        with torch.no_grad():
            decode_batch(model, jobs, self.eos_token_ids, self.tokenizer.pad_token_id)

    def _waiting_for(self, queued: set[Any]) -> int:
        """Active episodes without a queued request (read without the lock: a snapshot)."""
        episodes = list(self.episodes.values())
        return sum(1 for e in episodes if e.active and not e.closed and e.episode_id not in queued)

    def _response(
        self,
        ep: ServedEpisode,
        message: dict[str, Any],
        finish: str,
        inserted: list[int],
        ids: Sequence[int] = (),
        logp: Sequence[float] = (),
    ) -> dict[str, Any]:
        context = len(ep.prompt_ids or []) + len(ep.record.tokens) - len(ids)
        choice = {
            "index": 0,
            "message": message,
            "finish_reason": finish,
            "logprobs": None,
            "groupwise": {
                "token_ids": list(ids),
                "logprobs": list(logp),
                "inserted_token_ids": list(inserted),
                "episode_id": ep.episode_id or None,
            },
        }
        return {
            "id": f"chatcmpl-{uuid.uuid4().hex}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": self.model_name,
            "choices": [choice],
            "usage": {
                "prompt_tokens": context,
                "completion_tokens": len(ids),
                "total_tokens": context + len(ids),
            },
        }

    # ------------------------------------------------------------------ rendering
    def _template(self, messages: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
        """Messages as the chat template takes them: text content, tool results wrapped."""
        out: list[dict[str, Any]] = []
        for m in messages:
            msg: dict[str, Any] = {"role": m["role"], "content": _text(m.get("content"))}
            if m.get("tool_calls"):
                msg["tool_calls"] = m["tool_calls"]
            wrapped = "<tool_response>" in msg["content"]
            if m["role"] == "tool" and not wrapped and not self._template_wraps_tool():
                msg["content"] = f"<tool_response>{msg['content']}</tool_response>"
            out.append(msg)
        return out

    def _template_wraps_tool(self) -> bool:
        if self._wraps_tool is None:
            probe = self._render_tail([{"role": "tool", "content": "1"}], wrap=False)
            self._wraps_tool = "<tool_response>" in probe
        return self._wraps_tool

    def _tail_ids(self, tail: Sequence[Mapping[str, Any]]) -> list[int]:
        """Token ids of ``tail`` continuing the conversation after an assistant turn's EOS,
        up to and including the next generation prompt."""
        ids: list[int] = self.tokenizer(self._render_tail(tail), add_special_tokens=False)[
            "input_ids"
        ]
        return ids

    def _render_tail(self, tail: Sequence[Mapping[str, Any]], wrap: bool = True) -> str:
        if getattr(self.tokenizer, "chat_template", None) is None:
            return "".join("\n" + _text(m.get("content")) for m in tail) + "\n"
        messages = self._template(tail) if wrap else [dict(m) for m in tail]
        head = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": _REPLY}]
        try:
            full = self._apply(head + messages)
        except Exception:  # a template without these roles: the user says them
            named = [
                m
                if m["role"] in ("user", "assistant")
                else {"role": "user", "content": f"<{m['role']}>\n{m['content']}\n</{m['role']}>"}
                for m in messages
            ]
            full = self._apply(head + named)
        rest = full[full.index(_REPLY) + len(_REPLY) :]
        for eos in self.format.eos_texts:  # the assistant's turn ends with its EOS token
            if eos and rest.startswith(eos):
                return rest[len(eos) :]
        return rest

    def _apply(self, messages: list[dict[str, Any]]) -> str:
        text: str = self.tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=True
        )
        return text


# ---------------------------------------------------------------------- message helpers
def _messages(body: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise RequestError(400, '"messages" must be a non-empty list')
    for k, m in enumerate(messages):
        if not isinstance(m, Mapping) or not isinstance(m.get("role"), str):
            raise RequestError(400, f"message {k} must be an object with a string role")
    return messages


def _tools(body: Mapping[str, Any]) -> list[Tool]:
    """The request's ``tools`` as :class:`~groupwise.envs.Tool` (schemas only)."""
    out: list[Tool] = []
    for k, spec in enumerate(body.get("tools") or []):
        fn = spec.get("function") if isinstance(spec, Mapping) else None
        if not isinstance(fn, Mapping) or not isinstance(fn.get("name"), str):
            raise RequestError(400, f'tools[{k}] must be {{"type": "function", "function": ...}}')
        params = fn.get("parameters") or {"type": "object", "properties": {}}
        out.append(Tool(fn["name"], str(fn.get("description") or ""), dict(params), _no_call))
    return out


def _no_call(**_: Any) -> None:
    raise RuntimeError("the agent runs its tools; the server only describes them")


def _text(content: Any) -> str:
    """A message's text: a string, or the text parts of a list of content parts."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(str(p.get("text", "")) for p in content if isinstance(p, Mapping))
    raise RequestError(400, f"message content must be a string or a list of parts, not {content!r}")


def _normalise(message: Mapping[str, Any]) -> tuple[Any, ...]:
    """What two messages must share to be the same: role, text and tool calls (by name and
    parsed arguments); ids, names and null fields are ignored."""
    calls = []
    for call in message.get("tool_calls") or []:
        fn = call.get("function") or {}
        args = fn.get("arguments")
        if isinstance(args, str):
            with contextlib.suppress(json.JSONDecodeError):
                args = json.loads(args)
        calls.append((fn.get("name"), json.dumps(args, sort_keys=True)))
    return (message.get("role"), _text(message.get("content")), tuple(calls))


def _mismatch(episode_id: str, k: int, stored: tuple[Any, ...], got: tuple[Any, ...] | None) -> str:
    def show(m: tuple[Any, ...] | None) -> str:
        if m is None:
            return "nothing (the request has fewer messages)"
        text = m[1] if len(m[1]) <= 80 else m[1][:77] + "..."
        return f"{m[0]} {text!r}" + (f" with {len(m[2])} tool calls" if m[2] else "")

    return (
        f"the messages do not extend episode {episode_id!r}: message {k} is {show(got)}, the "
        f"stored conversation has {show(stored)}. Send the conversation so far unchanged "
        "(every assistant message as it was returned) followed by the new messages."
    )


def _assistant_message(text: str, ep: ServedEpisode, tools: bool) -> dict[str, Any]:
    """The OpenAI message of a turn's text: ``<tool_call>`` blocks as ``tool_calls`` when the
    request declared tools (removed from the content when they all parse)."""
    calls = parse_tool_calls(text) if tools else []
    good = [c for c in calls if c.error is None]
    message: dict[str, Any] = {"role": "assistant", "content": text}
    if good:
        turn = ep.record.policy_turns
        message["tool_calls"] = [
            {
                "id": f"call_{ep.episode_id or 'x'}_{turn}_{k}",
                "type": "function",
                "function": {"name": c.name, "arguments": json.dumps(c.arguments)},
            }
            for k, c in enumerate(good)
        ]
        if len(good) == len(calls):
            message["content"] = _CALL_BLOCK.sub("", text).strip() or None
    return message


def _stop_index(tokenizer: Any, ids: Sequence[int], stop: Any) -> tuple[int, str] | None:
    """``(k, text)``: the shortest prefix ``ids[:k]`` whose text contains a ``stop`` string,
    and that text cut before it; None when no stop string occurs."""
    stops = [stop] if isinstance(stop, str) else [s for s in (stop or []) if s]
    full = tokenizer.decode(ids, skip_special_tokens=True)
    if not any(s in full for s in stops):
        return None
    for k in range(1, len(ids) + 1):
        text = tokenizer.decode(ids[:k], skip_special_tokens=True)
        hits = [text.index(s) for s in stops if s in text]
        if hits:
            return k, text[: min(hits)]
    return None


def _request_settings(body: Mapping[str, Any]) -> EpisodeSettings:
    """An unnamed request's settings: its own temperature and top-p (defaults 1)."""
    cap = body.get("max_completion_tokens") or body.get("max_tokens") or 256
    temperature = float(
        body.get("temperature", 1.0) if body.get("temperature") is not None else 1.0
    )
    top_p = float(body.get("top_p") or 1.0)
    sampling = SamplingParams(max_tokens=1 << 30, temperature=temperature, top_p=top_p)
    return EpisodeSettings(sampling, max_turns=1, max_tokens_per_turn=int(cap))


# ---------------------------------------------------------------------- HTTP
_CHAT = re.compile(r"^(?:/episodes/(?P<episode>[^/]+))?/v1/chat/completions/?$")
_CLOSE = re.compile(r"^(?:/episodes/[^/]+)?/v1/episodes/(?P<episode>[^/]+)/close/?$")
_MODELS = re.compile(r"^(?:/episodes/[^/]+)?/v1/models/?$")


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    backend: ChatBackend  # set on the subclass made per server

    def do_GET(self) -> None:
        """``/v1/models``."""
        if _MODELS.match(self.path.split("?")[0]):
            self._send(200, self.backend.models())
        else:
            self._error(RequestError(404, f"no route GET {self.path}"))

    def do_POST(self) -> None:
        """Chat completions and episode close."""
        path = self.path.split("?")[0]
        try:
            body = self._body()
            if m := _CHAT.match(path):
                self._send(200, self.backend.chat(body, m.group("episode")))
            elif m := _CLOSE.match(path):
                ep = self.backend.close_episode(m.group("episode"))
                self._send(200, {"id": ep.episode_id, "object": "episode", "closed": True})
            else:
                raise RequestError(404, f"no route POST {path}")
        except RequestError as exc:
            self._error(exc)
        except Exception as exc:  # the server stays up; the agent sees what failed
            self._error(RequestError(500, f"{type(exc).__name__}: {exc}"))

    def _body(self) -> dict[str, Any]:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b"{}"
        try:
            body = json.loads(raw or b"{}")
        except json.JSONDecodeError as exc:
            raise RequestError(400, f"the body is not JSON: {exc}") from exc
        if not isinstance(body, dict):
            raise RequestError(400, "the body must be a JSON object")
        return body

    def _error(self, exc: RequestError) -> None:
        kind = "invalid_request_error" if exc.status < 500 else "server_error"
        self._send(exc.status, {"error": {"message": exc.message, "type": kind, "code": None}})

    def _send(self, status: int, payload: Mapping[str, Any]) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: one line per request would flood a training log."""


class _HTTPServer(ThreadingHTTPServer):
    request_queue_size = 1024  # every agent of a call connects at once (the default 5 resets)


class PolicyServer:
    """A :class:`ChatBackend` served over HTTP on 127.0.0.1 (port 0: a free one), in a
    daemon thread of this process."""

    def __init__(self, backend: ChatBackend, *, host: str = LOOPBACK, port: int = 0) -> None:
        if host != LOOPBACK:
            raise ValueError(
                f"the policy server binds to {LOOPBACK} only (got host {host!r}): it has no "
                "authentication and runs the policy for whoever connects"
            )
        self.backend = backend
        handler: Callable[..., BaseHTTPRequestHandler] = type(
            "Handler", (_Handler,), {"backend": backend}
        )
        self.httpd = _HTTPServer((host, port), handler)
        self.httpd.daemon_threads = True
        self.thread: threading.Thread | None = None

    @property
    def address(self) -> tuple[str, int]:
        """The bound ``(host, port)``."""
        host, port = self.httpd.server_address[:2]
        return str(host), int(port)

    @property
    def base_url(self) -> str:
        """``http://127.0.0.1:PORT/v1`` (episodes named by the extra field)."""
        host, port = self.address
        return f"http://{host}:{port}/v1"

    def episode_url(self, episode_id: str) -> str:
        """A base URL whose requests belong to ``episode_id`` (no extra field needed)."""
        host, port = self.address
        return f"http://{host}:{port}/episodes/{episode_id}/v1"

    def start(self) -> PolicyServer:
        """Serve in a daemon thread (idempotent)."""
        if self.thread is None:
            self.thread = threading.Thread(
                target=self.httpd.serve_forever, name="groupwise-policy-server", daemon=True
            )
            self.thread.start()
        return self

    def close(self) -> None:
        """Stop serving and release the port."""
        if self.thread is not None:
            self.httpd.shutdown()
            self.thread.join()
            self.thread = None
        self.httpd.server_close()
