"""A stub of the vLLM server APIs the ``vllm`` engine speaks, for tests (no vLLM, no GPU).

A threaded HTTP server on 127.0.0.1 answering ``trl vllm-serve``'s endpoints (``/health/``,
``/get_world_size/``, ``/generate/``, ``/init_communicator/``, ``/update_named_param/``,
``/reset_prefix_cache/``, ``/close_communicator/``) and vLLM's ``/health`` and
``/v1/completions``, with the request and answer shapes of those servers. Completions are
fixed arithmetic of the prompt's ids, the sample's index and the position (see
:func:`planned_completion`), so a test can say what each row must be. Every request is
recorded; so are the weight updates: ``/update_named_param/`` announces ``(name, dtype,
shape)`` and :func:`loopback_transport` delivers the tensor, standing in for the NCCL broadcast
(``weight_sync: tests.rollout.vllm_stub:loopback_transport``).
"""

from __future__ import annotations

import json
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import torch
from torch import Tensor

from groupwise.rollout.vllm import TransportSpec

FIRST_TOKEN = 1000
"""Completion tokens are ``FIRST_TOKEN + (something mod 97)``: never an EOS id."""

STUBS: dict[int, VllmStub] = {}
"""Stubs by the group port of their ``/init_communicator/`` (what the loopback joins)."""


def planned_completion(
    prompt: Sequence[int], j: int, params: dict[str, Any]
) -> tuple[list[int], list[float]]:
    """Sample ``j`` of ``prompt``: ``(len(prompt) + 2 j) % 6 + 1`` tokens (never fewer than
    ``min_tokens``), then the first stop id, all cut at ``max_tokens``; greedy (temperature
    0) makes every sample sample 0. Log-probability of position k: ``-0.5 - 0.01 k - 0.1 j``."""
    j = 0 if params.get("temperature", 1.0) == 0 else j
    seed = int(params.get("seed") or 0)
    body = max((len(prompt) + 2 * j) % 6 + 1, int(params.get("min_tokens") or 0))
    tokens = [FIRST_TOKEN + (sum(prompt) + 7 * j + 3 * k + seed) % 97 for k in range(body)]
    stops = params.get("stop_token_ids") or []
    if stops:
        tokens.append(int(stops[0]))
    tokens = tokens[: int(params["max_tokens"])]
    return tokens, [-0.5 - 0.01 * k - 0.1 * j for k in range(len(tokens))]


@dataclass
class StubState:
    """What the stub was asked and what it received."""

    requests: list[tuple[str, str, Any]] = field(default_factory=list)
    """(method, path, JSON body) of every request, in order."""
    announced: list[dict[str, Any]] = field(default_factory=list)
    """The bodies of ``/update_named_param/``, in order."""
    received: list[tuple[str, Tensor]] = field(default_factory=list)
    """(name, tensor) delivered by the loopback transport, in order."""
    resets: int = 0
    """``/reset_prefix_cache/`` calls."""
    communicator: dict[str, Any] | None = None
    """The body of ``/init_communicator/`` while the group is open."""


class VllmStub:
    """The stub server; ``with VllmStub() as stub: stub.url ...``."""

    def __init__(self, world_size: int = 1) -> None:
        self.world_size = world_size
        self.state = StubState()
        self.lock = threading.Lock()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        """``http://127.0.0.1:PORT``."""
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def __enter__(self) -> VllmStub:
        self.thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.server.shutdown()
        self.server.server_close()
        for port, stub in list(STUBS.items()):
            if stub is self:
                del STUBS[port]

    def bodies(self, path: str) -> list[Any]:
        """The JSON bodies of the requests to ``path``."""
        return [body for _, p, body in self.state.requests if p == path]

    # ---------------------------------------------------------------- endpoints
    def answer(self, method: str, path: str, body: Any) -> tuple[int, Any]:
        """(HTTP status, JSON answer) of one request."""
        with self.lock:
            self.state.requests.append((method, path, body))
            if method == "GET" and path in ("/health/", "/health"):
                return 200, {"status": "ok"}
            if method == "GET" and path == "/get_world_size/":
                return 200, {"world_size": self.world_size}
            if method != "POST":
                return 404, {"detail": "Not Found"}
            if path == "/generate/":
                return self.generate(body)
            if path == "/v1/completions":
                return self.completions(body)
            return self.weights(path, body)

    def generate(self, body: dict[str, Any]) -> tuple[int, Any]:
        """``trl vllm-serve``'s ``/generate/``: generation_kwargs override the fields."""
        prompts = body["prompts"]
        if not prompts or not all(isinstance(p, list) for p in prompts):
            return 422, {"detail": "the stub takes token-id prompts only"}
        params = {**body, **body.get("generation_kwargs", {})}
        rows = [planned_completion(p, j, params) for p in prompts for j in range(body["n"])]
        with_logprobs = body.get("logprobs") is not None
        return 200, {
            "prompt_ids": prompts,
            "completion_ids": [ids for ids, _ in rows],
            "logprobs": [[[v] for v in lp] for _, lp in rows] if with_logprobs else None,
            "logprob_token_ids": [[[t] for t in ids] for ids, _ in rows] if with_logprobs else None,
        }

    def completions(self, body: dict[str, Any]) -> tuple[int, Any]:
        """vLLM's ``/v1/completions`` with token-id prompts (choice index = prompt * n + j)."""
        prompts = body["prompt"]
        if not prompts or not all(isinstance(p, list) for p in prompts):
            return 422, {"detail": "the stub takes token-id prompts only"}
        choices = []
        for i, prompt in enumerate(prompts):
            for j in range(body.get("n", 1)):
                ids, lp = planned_completion(prompt, j, body)
                ended = bool(ids) and ids[-1] in (body.get("stop_token_ids") or [])
                choice: dict[str, Any] = {
                    "index": i * body.get("n", 1) + j,
                    "text": "",
                    "finish_reason": "stop" if ended else "length",
                    "logprobs": None,
                }
                if body.get("return_token_ids"):
                    choice["token_ids"] = ids
                if body.get("logprobs") is not None:
                    as_ids = body.get("return_tokens_as_token_ids")
                    choice["logprobs"] = {
                        "tokens": [f"token_id:{t}" if as_ids else str(t) for t in ids],
                        "token_logprobs": lp,
                        "top_logprobs": [
                            {f"token_id:{t}": v} for t, v in zip(ids, lp, strict=True)
                        ],
                        "text_offset": [0] * len(ids),
                    }
                choices.append(choice)
        choices.reverse()  # the engine must order them by index
        return 200, {"id": "cmpl-stub", "object": "text_completion", "choices": choices}

    def weights(self, path: str, body: Any) -> tuple[int, Any]:
        """The weight-update control endpoints of ``trl vllm-serve``."""
        s = self.state
        if path == "/init_communicator/":
            s.communicator = body
            STUBS[int(body["port"])] = self
            return 200, {"message": "Request received, initializing communicator"}
        if path == "/update_named_param/":
            if s.communicator is None:
                return 500, {"detail": "Communicator not initialized"}
            s.announced.append(body)
            return 200, {"message": "Request received, updating named parameter"}
        if path == "/reset_prefix_cache/":
            s.resets += 1
            return 200, {"message": "Request received, resetting prefix cache status: True"}
        if path == "/close_communicator/":
            s.communicator = None
            return 200, {"message": "Request received, closing communicator"}
        return 404, {"detail": "Not Found"}

    def receive(self, tensor: Tensor) -> None:
        """The tensor of the last announced parameter (the broadcast's receiving side)."""
        with self.lock:
            meta = self.state.announced[len(self.state.received)]
            assert meta["dtype"] == str(tensor.dtype) and meta["shape"] == list(tensor.shape)
            self.state.received.append((meta["name"], tensor.detach().clone()))


def _handler(stub: VllmStub) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self._reply(*stub.answer("GET", self.path, None))

        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length) if length else b""
            self._reply(*stub.answer("POST", self.path, json.loads(raw) if raw else None))

        def _reply(self, status: int, payload: Any) -> None:
            data = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *_: Any) -> None:  # quiet
            pass

    return Handler


class LoopbackTransport:
    """Hands each tensor to the stub that opened the group on ``spec.port`` (in-process)."""

    def __init__(self, spec: TransportSpec) -> None:
        self.spec = spec
        self.stub: VllmStub | None = None
        self.closed = False

    def connect(self) -> None:
        self.stub = STUBS[self.spec.port]
        communicator = self.stub.state.communicator
        assert communicator is not None and communicator["world_size"] == self.spec.world_size

    def send(self, tensor: Tensor) -> None:
        assert self.stub is not None, "send before connect"
        self.stub.receive(tensor)

    def close(self) -> None:
        self.closed = True


def loopback_transport(spec: TransportSpec) -> LoopbackTransport:
    """``weight_sync: tests.rollout.vllm_stub:loopback_transport``."""
    return LoopbackTransport(spec)


def as_float(values: Sequence[float]) -> Tensor:
    """``values`` as a float32 tensor (expected log-probabilities)."""
    return torch.tensor(list(values), dtype=torch.float32)
