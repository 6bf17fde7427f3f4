"""The ``vllm`` engine: completions from a vLLM server over HTTP, weights pushed after updates.

vLLM runs in its own environment (it pins its own CUDA torch); this module never imports it
and speaks HTTP only (standard library ``urllib``). Two server APIs are understood
(``rollout.engine_kwargs.api``):

``trl`` (default)
    TRL's ``trl vllm-serve --model NAME``: ``POST /generate/`` takes token-id prompts, ``n``
    and the sampling settings (``generation_kwargs`` go to vLLM's ``SamplingParams``) and
    answers ``{prompt_ids, completion_ids, logprobs, logprob_token_ids}`` (``logprobs[s][t]``
    lists the log-probabilities of ``logprob_token_ids[s][t]``; with ``logprobs=0`` only the
    sampled token's). Its weight-update API is what :meth:`VllmEngine.sync_weights` drives:
    ``GET /get_world_size/``, ``POST /init_communicator/`` once, then per parameter
    ``POST /update_named_param/ {name, dtype, shape}`` followed by the tensor itself over the
    NCCL group, then ``POST /reset_prefix_cache/``; ``POST /close_communicator/`` at the end.
``openai``
    vLLM's own ``vllm serve NAME``: ``POST /v1/completions`` with ``prompt`` a list of token-id
    lists, vLLM's extra sampling fields (``top_k``, ``min_tokens``, ``stop_token_ids``,
    ``seed``), ``logprobs``, ``return_tokens_as_token_ids`` (log-prob tokens come back as
    ``"token_id:N"``) and ``return_token_ids``; ``choices[i]`` (``index = prompt * n + j``)
    carries ``token_ids`` and ``logprobs.tokens`` / ``logprobs.token_logprobs``. Weight sync
    still uses the ``trl`` endpoints above, which plain ``vllm serve`` does not expose: there,
    set ``weight_sync: none`` (a server that keeps its weights, e.g. evaluation only).

Prompts and completions travel as token ids, never text: what is trained is exactly what was
sampled. Each completion is cut after its first EOS id (``completion_mask`` covers it);
a completion without EOS is ``truncated``; rows are padded with the pad id.

**Which log-probabilities.** ``Rollout.behaviour_logp`` wants ``log_softmax(logits / T)`` over
the whole vocabulary, before top-p/top-k (what the trainer computes as ``logp``). vLLM returns
the distribution its ``logprobs_mode`` names: ``raw_logprobs`` (vLLM's default) is
``log_softmax(logits)``, *before* the temperature, so it matches only at ``T = 1``;
``processed_logprobs`` (what ``trl vllm-serve`` sets) is after the temperature *and* after
top-k/top-p (and penalties), so it matches only with ``top_p = 1`` and ``top_k = 0``. The
engine cannot see the server's mode: run ``T = 1`` with either, or ``processed_logprobs`` with
top-p/top-k off, or set ``logprobs: false`` (no ``behaviour_logp``). Also, vLLM's
``min_tokens`` masks EOS before it normalises, which no mode undoes.

The tensor transport of the weight update is NCCL between this process's GPU and the server's
(:class:`NcclTransport`: vLLM's ``StatelessProcessGroup`` + ``PyNcclCommunicator``, so vLLM
must be importable beside groupwise on the GPU machine); without a CUDA device or vLLM it
raises naming what is missing, before the server is asked to wait. ``weight_sync:
"module:function"`` plugs in any other :class:`WeightTransport` (the tests use one that hands
tensors to a stub server, and stand-ins of vLLM's two classes for the NCCL one). This engine
has not been run against a real vLLM server on a GPU.
"""

from __future__ import annotations

import atexit
import importlib
import importlib.util
import json
import math
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, fields
from typing import Any, Literal, Protocol
from urllib.parse import urlparse

import torch
from torch import Tensor, nn

from groupwise.distributed import full_tensor, is_main
from groupwise.rollout.engine import ENGINES, EngineContext, RolloutEngine, RolloutRequest
from groupwise.rollout.records import PromptBatch, Rollout
from groupwise.rollout.weights import RolloutWeights

KEY = "rollout.engine_kwargs"


# ------------------------------------------------------------------------------ options
@dataclass(frozen=True)
class VllmOptions:
    """``rollout.engine_kwargs`` of the ``vllm`` engine."""

    base_url: str = "http://127.0.0.1:8000"
    """The server's address (``trl vllm-serve`` and ``vllm serve`` listen on port 8000)."""
    timeout: float = 600.0
    """Seconds to wait for one HTTP answer (a whole batch's generation)."""
    api: Literal["trl", "openai"] = "trl"
    """``trl``: ``trl vllm-serve``'s ``/generate/``; ``openai``: vLLM's ``/v1/completions``."""
    model: str | None = None
    """The served model's name for ``api: openai`` (None: the server's only model)."""
    logprobs: bool = True
    """Ask for the sampled tokens' log-probabilities (``Rollout.behaviour_logp``)."""
    seed: bool = True
    """Send a per-request seed drawn from the run's generator (reproducible rollouts)."""
    weight_sync: str = "nccl"
    """``nccl`` (TRL's protocol), ``none`` (the server keeps its weights) or
    ``module:function`` returning a :class:`WeightTransport` for a :class:`TransportSpec`."""
    group_port: int = 51216
    """Port of the weight-update group (``trl vllm-serve`` / ``VLLMClient``'s default)."""
    sync_dtype: str | None = None
    """Cast the weights to this torch dtype before sending (e.g. ``bfloat16``); None: as is."""

    @classmethod
    def parse(cls, options: dict[str, Any] | None) -> VllmOptions:
        """The options of ``rollout.engine_kwargs``; unknown keys are an error naming them."""
        options = dict(options or {})
        valid = [f.name for f in fields(cls)]
        unknown = sorted(set(options) - set(valid))
        if unknown:
            raise ValueError(f"{KEY}: unknown keys {unknown} for engine vllm; valid: {valid}")
        parsed = cls(**options)
        if parsed.api not in ("trl", "openai"):
            raise ValueError(f"{KEY}.api must be 'trl' or 'openai', not {parsed.api!r}")
        if parsed.sync_dtype is not None and not isinstance(
            getattr(torch, parsed.sync_dtype, None), torch.dtype
        ):
            raise ValueError(f"{KEY}.sync_dtype: {parsed.sync_dtype!r} is not a torch dtype")
        return parsed


# ------------------------------------------------------------------------------ HTTP
class VllmClient:
    """JSON over HTTP to the server at ``base_url``; errors name ``rollout.engine_kwargs``."""

    def __init__(self, base_url: str, timeout: float) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout

    def request(self, path: str, payload: dict[str, Any] | None = None) -> Any:
        """``POST`` ``payload`` as JSON (``GET`` when None) to ``path``; the decoded answer."""
        url = self.base_url + path
        data = None if payload is None else json.dumps(payload).encode()
        req = urllib.request.Request(url, data=data, method="GET" if data is None else "POST")
        req.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as answer:
                body = answer.read()
        except urllib.error.HTTPError as err:
            detail = err.read().decode(errors="replace")[:500]
            raise RuntimeError(
                f"vLLM server at {self.base_url}: {req.method} {path} failed with HTTP "
                f"{err.code}: {detail} (is it the server {KEY}.api expects?)"
            ) from err
        except (urllib.error.URLError, OSError) as err:
            reason = getattr(err, "reason", err)
            raise ConnectionError(
                f"{KEY}.base_url: cannot reach the vLLM server at {self.base_url} ({reason}); "
                "start it in its own environment (`trl vllm-serve --model NAME`, or "
                "`vllm serve NAME` with api: openai) or set rollout.engine_kwargs.base_url"
            ) from err
        return json.loads(body) if body else None

    def check(self, api: str) -> None:
        """Fail now, naming ``base_url``, if the server does not answer its health check."""
        self.request("/health/" if api == "trl" else "/health")


# ------------------------------------------------------------------------------ requests
def prompt_token_ids(prompts: PromptBatch) -> list[list[int]]:
    """The real (unpadded) token ids of each prompt."""
    return [
        ids[mask.bool()].tolist()
        for ids, mask in zip(prompts.input_ids.cpu(), prompts.attention_mask.cpu(), strict=True)
    ]


def sampling_fields(
    request: RolloutRequest, eos_ids: Sequence[int], seed: int | None
) -> dict[str, Any]:
    """vLLM ``SamplingParams`` fields of a request: ``top_k=-1`` is off; EOS ids stop."""
    s = request.sampling
    params: dict[str, Any] = {
        "n": request.group_size,
        "temperature": s.temperature,
        "top_p": s.top_p,
        "top_k": s.top_k if s.top_k > 0 else -1,
        "max_tokens": s.max_tokens,
        "min_tokens": s.min_new_tokens,
        "stop_token_ids": [int(i) for i in eos_ids],
    }
    if seed is not None:
        params["seed"] = seed
    return params


def trl_payload(prompts: list[list[int]], params: dict[str, Any], logprobs: bool) -> dict[str, Any]:
    """The body of ``trl vllm-serve``'s ``POST /generate/``."""
    extra = {k: params[k] for k in ("min_tokens", "stop_token_ids", "seed") if k in params}
    return {
        "prompts": prompts,
        "n": params["n"],
        "repetition_penalty": 1.0,
        "temperature": params["temperature"],
        "top_p": params["top_p"],
        "top_k": params["top_k"],
        "min_p": 0.0,
        "max_tokens": params["max_tokens"],
        "logprobs": 0 if logprobs else None,
        "generation_kwargs": extra,
    }


def openai_payload(
    prompts: list[list[int]], params: dict[str, Any], logprobs: bool, model: str | None
) -> dict[str, Any]:
    """The body of vLLM's ``POST /v1/completions`` (token-id prompts, token-id answers)."""
    body: dict[str, Any] = {
        "prompt": prompts,
        **params,
        "logprobs": 1 if logprobs else None,
        "return_tokens_as_token_ids": True,
        "return_token_ids": True,
        "skip_special_tokens": False,
    }
    if model is not None:
        body["model"] = model
    return body


# ------------------------------------------------------------------------------ answers
@dataclass
class Completion:
    """One returned completion: its token ids and their log-probabilities (if asked)."""

    token_ids: list[int]
    logprobs: list[float] | None


def sampled_logprob(token: int, candidates: Sequence[int], values: Sequence[Any]) -> float:
    """The log-probability of ``token`` among a position's ``candidates``."""
    for candidate, value in zip(candidates, values, strict=True):
        if int(candidate) == token:
            if value is None or not math.isfinite(float(value)):
                raise ValueError(f"vLLM returned log-probability {value!r} for token {token}")
            return float(value)
    raise ValueError(f"vLLM returned no log-probability for the sampled token {token}")


def parse_trl(answer: dict[str, Any], logprobs: bool) -> list[Completion]:
    """``/generate/``'s completions, prompt-major (the n of a prompt contiguous)."""
    out = []
    for s, ids in enumerate(answer["completion_ids"]):
        values = None
        if logprobs:
            if answer.get("logprobs") is None:
                raise ValueError(f"vLLM server answered without logprobs; or set {KEY}.logprobs")
            lp, lp_ids = answer["logprobs"][s], answer["logprob_token_ids"][s]
            values = [sampled_logprob(int(t), lp_ids[k], lp[k]) for k, t in enumerate(ids)]
        out.append(Completion([int(t) for t in ids], values))
    return out


def parse_openai(answer: dict[str, Any], logprobs: bool) -> list[Completion]:
    """``/v1/completions``' choices in ``index`` order; ids from ``token_ids`` or the
    ``"token_id:N"`` log-prob tokens."""
    out = []
    for choice in sorted(answer["choices"], key=lambda c: int(c["index"])):
        lp = choice.get("logprobs") or {}
        tokens = choice.get("token_ids")
        if tokens is None:
            if not lp.get("tokens"):
                raise ValueError("vLLM answered without token ids (return_token_ids/logprobs)")
            tokens = [int(str(t).removeprefix("token_id:")) for t in lp["tokens"]]
        values = None
        if logprobs:
            raw = lp.get("token_logprobs")
            if raw is None or len(raw) != len(tokens):
                raise ValueError(f"vLLM answered without logprobs; or set {KEY}.logprobs")
            values = [sampled_logprob(int(t), [t], [v]) for t, v in zip(tokens, raw, strict=True)]
        out.append(Completion([int(t) for t in tokens], values))
    return out


def completions_to_rollout(
    prompts: PromptBatch,
    completions: Sequence[Completion],
    group_size: int,
    eos_ids: Sequence[int],
    pad_id: int,
) -> Rollout:
    """The :class:`Rollout` of ``completions`` (prompt-major, ``group_size`` per prompt).

    Each row is cut after its first EOS id (kept, in the mask); a row without one is
    ``truncated``. ``behaviour_logp`` holds the returned log-probabilities (0 on padding).
    """
    rows = prompts.input_ids.shape[0] * group_size
    if len(completions) != rows:
        raise ValueError(f"vLLM returned {len(completions)} completions, expected {rows}")
    eos = set(int(i) for i in eos_ids)
    cut = [_through_eos(c.token_ids, eos) for c in completions]
    width = max([1, *(len(ids) for ids in cut)])
    device = prompts.input_ids.device
    ids = torch.full((rows, width), pad_id, dtype=torch.long)
    mask = torch.zeros((rows, width), dtype=torch.long)
    with_logp = all(c.logprobs is not None for c in completions)
    logp = torch.zeros((rows, width), dtype=torch.float32)
    for i, (tokens, c) in enumerate(zip(cut, completions, strict=True)):
        ids[i, : len(tokens)] = torch.tensor(tokens, dtype=torch.long)
        mask[i, : len(tokens)] = 1
        if with_logp and c.logprobs is not None:
            logp[i, : len(tokens)] = torch.tensor(c.logprobs[: len(tokens)], dtype=torch.float32)
    truncated = torch.tensor([not t or t[-1] not in eos for t in cut], dtype=torch.bool)
    return Rollout(
        prompts=prompts,
        completion_ids=ids.to(device),
        completion_mask=mask.to(device),
        truncated=truncated.to(device),
        group_size=group_size,
        behaviour_logp=logp.to(device) if with_logp else None,
    )


def _through_eos(tokens: list[int], eos: set[int]) -> list[int]:
    for k, token in enumerate(tokens):
        if token in eos:
            return tokens[: k + 1]
    return tokens


# ------------------------------------------------------------------------------ weights
@dataclass(frozen=True)
class TransportSpec:
    """Where the weight-update group meets: the client is the last rank."""

    host: str
    """The server's host (from ``base_url``); the group's store listens there."""
    port: int
    """``group_port``."""
    rank: int
    """This client's rank: the server's world size."""
    world_size: int
    """The server's world size + 1."""
    device: torch.device
    """Where the tensors to send live."""


class WeightTransport(Protocol):
    """Sends tensors to the server's workers after each ``/update_named_param/`` request."""

    def connect(self) -> None:
        """Join the group (after ``/init_communicator/`` was posted)."""

    def send(self, tensor: Tensor) -> None:
        """Broadcast ``tensor`` from this rank to the server's workers (and wait for them)."""

    def close(self) -> None:
        """Leave the group."""


class NcclTransport:
    """The NCCL transport of ``trl vllm-serve``'s weight updates, through vLLM's own classes
    (vLLM's documented pattern for an external trainer): a ``StatelessProcessGroup`` on
    ``spec.host:spec.port`` joined as the last rank, a ``PyNcclCommunicator`` on this
    process's CUDA device, each tensor broadcast from this rank on the current stream, then a
    barrier so the server has loaded it before the next ``/update_named_param/``.

    Needs vLLM importable in the trainer's environment (on a GPU machine: ``pip install vllm``
    beside groupwise). Not run on a GPU yet: tested against stand-ins of the two vLLM classes.
    """

    def __init__(self, spec: TransportSpec) -> None:
        self.spec = spec
        self.communicator: Any = None

    def connect(self) -> None:
        """Join the group the server opened on ``/init_communicator/``."""
        pynccl = importlib.import_module("vllm.distributed.device_communicators.pynccl")
        utils = importlib.import_module("vllm.distributed.utils")
        s = self.spec
        group = utils.StatelessProcessGroup.create(
            host=s.host, port=s.port, rank=s.rank, world_size=s.world_size
        )
        self.communicator = pynccl.PyNcclCommunicator(group, device=s.device)

    def send(self, tensor: Tensor) -> None:
        """Broadcast from this rank; wait until every rank has it."""
        assert self.communicator is not None, "connect() first"
        self.communicator.broadcast(tensor, src=self.spec.rank, stream=torch.cuda.current_stream())
        self.communicator.group.barrier()

    def close(self) -> None:
        """Drop the communicator (the server closes its side on ``/close_communicator/``)."""
        self.communicator = None


def nccl_weight_transport(spec: TransportSpec) -> WeightTransport:
    """:class:`NcclTransport` for ``spec``; raises before anything is posted, so the server is
    not left waiting for a group that never forms, when this process has no CUDA device or
    vLLM is not importable here."""
    missing = None
    if spec.device.type != "cuda" or not torch.cuda.is_available():
        missing = "a CUDA device (the policy is on " + str(spec.device) + ")"
    elif importlib.util.find_spec("vllm") is None:
        missing = "vLLM in the trainer's environment (pip install vllm)"
    if missing is not None:
        raise RuntimeError(
            f"{KEY}.weight_sync=nccl: pushing weights to the vLLM server needs NCCL, and "
            f"{missing} is missing. Set weight_sync to 'module:function' returning a "
            "WeightTransport, or 'none' to keep the server's weights"
        )
    return NcclTransport(spec)


def load_transport(weight_sync: str) -> Callable[[TransportSpec], WeightTransport] | None:
    """The transport factory named by ``weight_sync`` (None for ``none``)."""
    if weight_sync == "none":
        return None
    if weight_sync == "nccl":
        return nccl_weight_transport
    module, _, name = weight_sync.partition(":")
    if not name:
        raise ValueError(
            f"{KEY}.weight_sync: 'nccl', 'none' or 'module:function', not {weight_sync!r}"
        )
    factory: Callable[[TransportSpec], WeightTransport] = getattr(
        importlib.import_module(module), name
    )
    return factory


@contextmanager
def named_weights(
    policy: nn.Module, weights: RolloutWeights
) -> Iterator[Iterator[tuple[str, Tensor]]]:
    """The policy's weights under the names of the plain (Hugging Face) model, as vLLM loads them.

    A plain policy gives its own parameters (whole tensors under FSDP: a collective). Under
    LoRA the adapters must be merged: the rollout copy or the in-place merge provide that
    model (``model.lora_rollout_copy`` or ``model.lora_merge_in_place``).
    """
    if not hasattr(policy, "peft_config"):
        yield ((n, full_tensor(p.detach())) for n, p in policy.named_parameters())
        return
    if hasattr(weights.model, "peft_config"):
        raise ValueError(
            "rollout.engine=vllm with LoRA sends merged weights: set "
            "model.lora_rollout_copy=true or model.lora_merge_in_place=true"
        )
    weights.sync()  # the copy takes the merged adapters (a no-op for the in-place merge)
    with weights.active():  # the in-place merge, restored afterwards
        yield ((n, p.detach()) for n, p in weights.model.named_parameters())


# ------------------------------------------------------------------------------ engine
class VllmEngine:
    """Generates on a vLLM server and pushes the policy's weights to it after each update."""

    def __init__(
        self,
        options: VllmOptions,
        policy: nn.Module,
        weights: RolloutWeights,
        eos_token_ids: Sequence[int],
        pad_token_id: int,
    ) -> None:
        self.options = options
        self.client = VllmClient(options.base_url, options.timeout)
        self.policy = policy
        self.weights = weights
        self.eos_token_ids = [int(i) for i in eos_token_ids]
        self.pad_token_id = pad_token_id
        self.transport_factory = load_transport(options.weight_sync)
        self.transport: WeightTransport | None = None
        self.client.check(options.api)

    def generate(self, prompts: PromptBatch, request: RolloutRequest) -> Rollout:
        """One HTTP request for the batch: ``n = group_size`` completions per prompt."""
        o = self.options
        seed = None
        if o.seed and request.generator is not None:
            draw = int(torch.randint(0, 2**31 - 1, (), generator=request.generator))
            seed = (draw + request.row_offset) % (2**31 - 1)
        params = sampling_fields(request, self.eos_token_ids, seed)
        ids = prompt_token_ids(prompts)
        if o.api == "trl":
            answer = self.client.request("/generate/", trl_payload(ids, params, o.logprobs))
            completions = parse_trl(answer, o.logprobs)
        else:
            body = openai_payload(ids, params, o.logprobs, o.model)
            completions = parse_openai(self.client.request("/v1/completions", body), o.logprobs)
        return completions_to_rollout(
            prompts, completions, request.group_size, self.eos_token_ids, self.pad_token_id
        )

    def sync_weights(self) -> None:
        """Every parameter once (``/update_named_param/`` + the tensor), then the prefix cache
        is reset. Every rank calls this (gathers are collectives); rank 0 sends."""
        if self.transport_factory is None:
            return
        with named_weights(self.policy, self.weights) as tensors:
            for name, tensor in tensors:
                if is_main():
                    self._send(name, tensor)
        if is_main():
            self.client.request("/reset_prefix_cache/", {})

    def _send(self, name: str, tensor: Tensor) -> None:
        transport = self._connect()
        if self.options.sync_dtype is not None:
            tensor = tensor.to(getattr(torch, self.options.sync_dtype))
        tensor = tensor.contiguous()
        meta = {"name": name, "dtype": str(tensor.dtype), "shape": list(tensor.shape)}
        self.client.request("/update_named_param/", meta)
        transport.send(tensor)

    def _connect(self) -> WeightTransport:
        """The weight-update group, joined on first use (TRL's ``init_communicator``)."""
        if self.transport is not None:
            return self.transport
        assert self.transport_factory is not None
        server_world = int(self.client.request("/get_world_size/")["world_size"])
        device = next(self.policy.parameters()).device
        spec = TransportSpec(
            host=urlparse(self.client.base_url).hostname or "127.0.0.1",
            port=self.options.group_port,
            rank=server_world,
            world_size=server_world + 1,
            device=device,
        )
        transport = self.transport_factory(spec)  # raises before the server waits
        uuid = (
            str(torch.cuda.get_device_properties(device).uuid) if device.type == "cuda" else "cpu"
        )
        self.client.request(
            "/init_communicator/",
            {
                "host": "0.0.0.0",
                "port": spec.port,
                "world_size": spec.world_size,
                "client_device_uuid": uuid,
            },
        )
        transport.connect()
        self.transport = transport
        atexit.register(self.close)
        return transport

    def close(self) -> None:
        """Leave the weight-update group (``/close_communicator/``); idempotent."""
        transport, self.transport = self.transport, None
        if transport is None:
            return
        with suppress(ConnectionError):  # the server may already be gone
            self.client.request("/close_communicator/", {})
        transport.close()

    @contextmanager
    def serving(self) -> Iterator[None]:
        """Nothing to prepare: the server has the weights of the last ``sync_weights``."""
        yield


@ENGINES.register("vllm")
def build_vllm_engine(ctx: EngineContext) -> RolloutEngine:
    """``rollout.engine_kwargs``: see :class:`VllmOptions` (``base_url``, ``api``, ...)."""
    options = VllmOptions.parse(ctx.options)
    return VllmEngine(
        options, ctx.policy, ctx.weights, ctx.eos_token_ids, ctx.tokenizer.pad_token_id
    )
