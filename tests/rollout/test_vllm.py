"""The ``vllm`` engine against a stub of the vLLM server APIs (tests/rollout/vllm_stub.py):
the requests it sends, the rollout it builds, the weight updates, training end to end."""

from __future__ import annotations

import json
import socket
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

import groupwise.rollout.vllm as vllm_engine
from groupwise.cli import main
from groupwise.models import LoraSettings, apply_lora, tiny_random_model
from groupwise.rollout import (
    ENGINES,
    EngineContext,
    PromptBatch,
    RolloutRequest,
    SamplingParams,
    tokenize_prompts,
)
from groupwise.rollout.records import eos_token_ids
from groupwise.rollout.vllm import VllmEngine
from groupwise.rollout.weights import SharedWeights, build_rollout_weights
from tests.rollout.vllm_stub import VllmStub, planned_completion
from tests.tests_helpers import tiny_overrides

LOOPBACK = "tests.rollout.vllm_stub:loopback_transport"


@pytest.fixture(scope="module")
def tiny() -> tuple[nn.Module, Any]:
    return tiny_random_model(seed=0)


@pytest.fixture
def stub() -> Iterator[VllmStub]:
    with VllmStub(world_size=2) as server:
        yield server


def _engine(tiny: tuple[nn.Module, Any], **options: Any) -> VllmEngine:
    model, tokenizer = tiny
    ctx = EngineContext(
        model, SharedWeights(model), tokenizer, eos_token_ids(tokenizer, model), options=options
    )
    engine = ENGINES.get("vllm")(ctx)
    assert isinstance(engine, VllmEngine)
    return engine


def _prompts(tokenizer: Any) -> PromptBatch:
    texts = ["2 + 2 =", "a much longer prompt than the first one", "x"]
    return tokenize_prompts(tokenizer, texts, torch.device("cpu"))


SAMPLING = SamplingParams(max_tokens=5, temperature=0.7, top_p=0.9, top_k=20, min_new_tokens=1)


def _request(
    group_size: int = 3, sampling: SamplingParams = SAMPLING, seed: int = 0
) -> RolloutRequest:
    return RolloutRequest(group_size, sampling, generator=torch.Generator().manual_seed(seed))


def test_generate_sends_token_ids_group_size_and_sampling(tiny: Any, stub: VllmStub) -> None:
    model, tokenizer = tiny
    engine = _engine(tiny, base_url=stub.url)
    prompts = _prompts(tokenizer)
    engine.generate(prompts, _request())
    (body,) = stub.bodies("/generate/")
    want_ids = [
        tokenizer(t, add_special_tokens=False)["input_ids"]
        for t in ["2 + 2 =", "a much longer prompt than the first one", "x"]
    ]
    assert body["prompts"] == want_ids  # unpadded token ids, never text
    assert body["n"] == 3 and body["max_tokens"] == 5 and body["logprobs"] == 0
    assert (body["temperature"], body["top_p"], body["top_k"]) == (0.7, 0.9, 20)
    extra = body["generation_kwargs"]
    assert extra["min_tokens"] == 1
    assert extra["stop_token_ids"] == eos_token_ids(tokenizer, model)
    assert isinstance(extra["seed"], int)
    engine.generate(prompts, _request(sampling=SamplingParams(max_tokens=4), seed=1))
    second = stub.bodies("/generate/")[1]
    assert second["top_k"] == -1 and second["generation_kwargs"]["seed"] != extra["seed"]
    engine.generate(prompts, RolloutRequest(1, SamplingParams(max_tokens=4, temperature=0.0)))
    greedy = stub.bodies("/generate/")[2]
    assert greedy["temperature"] == 0.0 and "seed" not in greedy["generation_kwargs"]


def _expected(body: dict[str, Any]) -> list[tuple[list[int], list[float]]]:
    params = {**body, **body.get("generation_kwargs", {})}
    prompts = body.get("prompts") or body["prompt"]
    return [planned_completion(p, j, params) for p in prompts for j in range(body["n"])]


def test_rollout_pads_masks_truncates_and_keeps_the_logprobs(tiny: Any, stub: VllmStub) -> None:
    model, tokenizer = tiny
    eos = eos_token_ids(tokenizer, model)
    rollout = _engine(tiny, base_url=stub.url).generate(_prompts(tokenizer), _request())
    rows = _expected(stub.bodies("/generate/")[0])
    width = max(len(ids) for ids, _ in rows)
    assert rollout.completion_ids.shape == (9, width) and rollout.group_size == 3
    assert rollout.behaviour_logp is not None and rollout.behaviour_logp.dtype == torch.float32
    for i, (ids, lp) in enumerate(rows):
        n = len(ids)
        ended = ids[-1] in eos
        assert rollout.completion_ids[i, :n].tolist() == ids
        assert (rollout.completion_ids[i, n:] == tokenizer.pad_token_id).all()
        assert rollout.completion_mask[i].tolist() == [1] * n + [0] * (width - n)
        assert bool(rollout.truncated[i]) is (not ended)
        assert rollout.behaviour_logp[i, :n].tolist() == pytest.approx(lp)
        assert (rollout.behaviour_logp[i, n:] == 0).all()
    assert rollout.truncated.any() and not rollout.truncated.all()  # both kinds of rows


def test_openai_completions_api_gives_the_same_rollout(tiny: Any, stub: VllmStub) -> None:
    _, tokenizer = tiny
    prompts = _prompts(tokenizer)
    trl = _engine(tiny, base_url=stub.url).generate(prompts, _request())
    engine = _engine(tiny, base_url=stub.url, api="openai", model="served", weight_sync="none")
    openai = engine.generate(prompts, _request())
    (body,) = stub.bodies("/v1/completions")
    assert body["prompt"] == stub.bodies("/generate/")[0]["prompts"]
    assert body["return_tokens_as_token_ids"] is True and body["logprobs"] == 1
    assert body["model"] == "served" and body["n"] == 3 and body["min_tokens"] == 1
    assert (
        body["stop_token_ids"]
        == stub.bodies("/generate/")[0]["generation_kwargs"]["stop_token_ids"]
    )
    assert ("GET", "/health", None) in stub.state.requests
    for name in ("completion_ids", "completion_mask", "truncated", "behaviour_logp"):
        assert torch.equal(getattr(trl, name), getattr(openai, name)), name


def test_without_logprobs_there_is_no_behaviour_logp(tiny: Any, stub: VllmStub) -> None:
    _, tokenizer = tiny
    rollout = _engine(tiny, base_url=stub.url, logprobs=False).generate(
        _prompts(tokenizer), _request()
    )
    assert stub.bodies("/generate/")[0]["logprobs"] is None
    assert rollout.behaviour_logp is None


def test_sync_sends_every_parameter_once_per_update_then_resets(stub: VllmStub) -> None:
    model, tokenizer = tiny_random_model(seed=1)  # its weights change here
    engine = _engine((model, tokenizer), base_url=stub.url, weight_sync=LOOPBACK)
    params = dict(model.named_parameters())
    engine.sync_weights()
    with torch.no_grad():
        next(iter(params.values())).add_(1.0)
    engine.sync_weights()
    s = stub.state
    (init,) = stub.bodies("/init_communicator/")
    assert init["world_size"] == stub.world_size + 1  # the client is the last rank
    assert [m["name"] for m in s.announced] == list(params) * 2
    for meta in s.announced:
        p = params[meta["name"]]
        assert meta["dtype"] == str(p.dtype) and meta["shape"] == list(p.shape)
    for name, tensor in s.received[len(params) :]:
        assert torch.equal(tensor, params[name])  # the second update's values
    assert not torch.equal(s.received[0][1], s.received[len(params)][1])
    assert s.resets == 2
    resets = [i for i, (_, p, _) in enumerate(s.requests) if p == "/reset_prefix_cache/"]
    updates = [i for i, (_, p, _) in enumerate(s.requests) if p == "/update_named_param/"]
    assert updates[len(params) - 1] < resets[0] < updates[len(params)]  # reset after a round
    engine.close()
    assert s.communicator is None and stub.bodies("/close_communicator/") == [{}]


def test_sync_dtype_casts_what_is_sent(tiny: Any, stub: VllmStub) -> None:
    _engine(tiny, base_url=stub.url, weight_sync=LOOPBACK, sync_dtype="bfloat16").sync_weights()
    assert {m["dtype"] for m in stub.state.announced} == {"torch.bfloat16"}
    assert {str(t.dtype) for _, t in stub.state.received} == {"torch.bfloat16"}


@pytest.mark.parametrize("strategy", ["copy", "merge_in_place"])
def test_lora_sends_the_merged_weights_under_plain_names(
    tmp_path: Path, stub: VllmStub, strategy: str
) -> None:
    base, tokenizer = tiny_random_model(seed=2)
    plain = {n: p.detach().clone() for n, p in base.named_parameters()}
    settings = LoraSettings(r=4, alpha=8, dropout=0.0, target_modules=["q_proj"])
    policy, weights = build_rollout_weights(
        base,
        lambda m: apply_lora(m, settings),
        strategy=strategy,
        rollout_dtype=torch.float32,
        snapshot_dir=tmp_path,
    )
    with torch.no_grad():  # a non-zero adapter: merged q_proj = W + B A * alpha / r
        for name, p in policy.named_parameters():
            if "lora_B" in name:
                p.fill_(0.01)
    ctx = EngineContext(
        policy,
        weights,
        tokenizer,
        eos_token_ids(tokenizer, base),
        options={"base_url": stub.url, "weight_sync": LOOPBACK},
    )
    ENGINES.get("vllm")(ctx).sync_weights()
    received = dict(stub.state.received)
    assert list(received) == list(plain)  # the plain model's names, no adapters
    q = "model.layers.0.self_attn.q_proj.weight"
    module: Any = policy.get_submodule("base_model.model." + q.removesuffix(".weight"))
    delta = module.get_delta_weight("default")
    assert torch.allclose(received[q], plain[q] + delta)
    assert not torch.equal(received[q], plain[q])
    for name, p in base.named_parameters():  # the in-place merge was undone
        if "lora_" not in name:
            assert torch.equal(p.detach(), plain[name.replace("base_layer.", "")]), name


def test_lora_decoding_through_unmerged_adapters_is_refused(tmp_path: Path, stub: VllmStub) -> None:
    base, tokenizer = tiny_random_model(seed=2)
    settings = LoraSettings(r=4, alpha=8, dropout=0.0, target_modules=["q_proj"])
    policy, weights = build_rollout_weights(
        base,
        lambda m: apply_lora(m, settings),
        strategy="adapters",
        rollout_dtype=torch.float32,
        snapshot_dir=tmp_path,
    )
    options = {"base_url": stub.url, "weight_sync": LOOPBACK}
    ctx = EngineContext(policy, weights, tokenizer, [0], options=options)
    with pytest.raises(ValueError, match="model.lora_rollout_copy=true"):
        ENGINES.get("vllm")(ctx).sync_weights()


def test_nccl_transport_on_cpu_fails_before_the_server_waits(tiny: Any, stub: VllmStub) -> None:
    engine = _engine(tiny, base_url=stub.url)
    with pytest.raises(RuntimeError, match=r"weight_sync=nccl: .*a CUDA device"):
        engine.sync_weights()
    assert stub.bodies("/init_communicator/") == []  # nothing half-started on the server
    assert stub.state.announced == []


def test_nccl_transport_joins_vllms_group_as_the_last_rank_and_broadcasts(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Against stand-ins of vLLM's StatelessProcessGroup and PyNcclCommunicator (vLLM itself
    needs a GPU): the group is created as TRL's server expects, each tensor is broadcast from
    the client's rank and followed by a barrier."""
    calls: list[tuple[str, Any]] = []

    class Group:
        @staticmethod
        def create(**kwargs: Any) -> Group:
            calls.append(("create", kwargs))
            return Group()

        def barrier(self) -> None:
            calls.append(("barrier", None))

    class Communicator:
        def __init__(self, group: Group, device: torch.device) -> None:
            self.group = group
            calls.append(("communicator", device))

        def broadcast(self, tensor: torch.Tensor, src: int, stream: Any) -> None:
            calls.append(("broadcast", (tensor.shape, src)))

    modules = {
        "vllm.distributed.utils": types.SimpleNamespace(StatelessProcessGroup=Group),
        "vllm.distributed.device_communicators.pynccl": types.SimpleNamespace(
            PyNcclCommunicator=Communicator
        ),
    }
    monkeypatch.setattr(vllm_engine.importlib, "import_module", modules.__getitem__)
    monkeypatch.setattr(vllm_engine.torch.cuda, "current_stream", lambda: "stream")
    spec = vllm_engine.TransportSpec("10.0.0.5", 51216, 2, 3, torch.device("cpu"))
    transport = vllm_engine.NcclTransport(spec)
    transport.connect()
    transport.send(torch.zeros(4, 2))
    assert calls == [
        ("create", {"host": "10.0.0.5", "port": 51216, "rank": 2, "world_size": 3}),
        ("communicator", torch.device("cpu")),
        ("broadcast", (torch.Size([4, 2]), 2)),
        ("barrier", None),
    ]


def test_unreachable_server_names_base_url(tiny: Any) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # closed again before the engine connects
    with pytest.raises(ConnectionError, match=r"rollout\.engine_kwargs\.base_url: cannot reach"):
        _engine(tiny, base_url=f"http://127.0.0.1:{port}", timeout=5)


def test_unknown_option_lists_the_valid_ones(tiny: Any) -> None:
    with pytest.raises(ValueError, match=r"unknown keys \['url'\] .*'base_url'"):
        _engine(tiny, url="http://127.0.0.1:1")


def test_train_two_steps_against_the_stub(tmp_path: Path, stub: VllmStub) -> None:
    """`groupwise train rollout.engine=vllm`: generation over HTTP, the policy's weights
    pushed after each update, completions recorded from the stub's tokens."""
    kwargs = {"base_url": stub.url, "weight_sync": LOOPBACK}
    overrides = tiny_overrides(tmp_path, max_steps=2)
    overrides += [
        "rewards.funcs=[tests.tests_helpers:varied_reward]",
        "rollout.engine=vllm",
        f"rollout.engine_kwargs={json.dumps(kwargs)}",
    ]
    assert main(["train", *overrides]) == 0
    generated = stub.bodies("/generate/")
    assert len(generated) == 2 and all(b["n"] == 4 for b in generated)
    names = [m["name"] for m in stub.state.announced]
    per_round = len(names) // 2
    assert per_round > 0 and names[:per_round] == names[per_round:] and stub.state.resets == 2
    moved = [
        a[0]
        for a, b in zip(
            stub.state.received[:per_round], stub.state.received[per_round:], strict=True
        )
        if not torch.equal(a[1], b[1])
    ]
    assert moved  # the second push carries the updated policy
    lines = (tmp_path / "run" / "completions.jsonl").read_text().splitlines()
    assert len(lines) == sum(len(b["prompts"]) * 4 for b in generated)
