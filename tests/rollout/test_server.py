"""The policy server: bound to 127.0.0.1 only, episodes token-in/token-out (a request must extend
the stored conversation), log-probs equal to a plain forward, tool calls as OpenAI tool_calls."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest
import torch

from groupwise.models import tiny_random_model
from groupwise.rollout import SamplingParams
from groupwise.rollout.server import ChatBackend, EpisodeSettings, PolicyServer, ServedEpisode
from groupwise.rollout.weights import SharedWeights

TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "calculator",
            "description": "Evaluate an arithmetic expression.",
            "parameters": {
                "type": "object",
                "properties": {"expression": {"type": "string"}},
                "required": ["expression"],
            },
        },
    }
]


@pytest.fixture(scope="module")
def tiny() -> tuple[Any, Any]:
    return tiny_random_model(seed=0)


@pytest.fixture
def backend(tiny: tuple[Any, Any]) -> ChatBackend:
    model, tokenizer = tiny
    return ChatBackend(SharedWeights(model), tokenizer, [tokenizer.eos_token_id])


@pytest.fixture
def server(backend: ChatBackend) -> Iterator[PolicyServer]:
    srv = PolicyServer(backend).start()
    yield srv
    srv.close()


def _open(backend: ChatBackend, name: str = "e", **kw: Any) -> None:
    sampling = SamplingParams(max_tokens=kw.pop("max_tokens", 96), temperature=0.0)
    backend.open_episode(name, "g", EpisodeSettings(sampling, **{"max_tokens_per_turn": 5, **kw}))


def _post(url: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    data = json.dumps(body).encode()
    req = urllib.request.Request(url, data, {"Content-Type": "application/json"}, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=60) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def _plain_logp(model: Any, ep: ServedEpisode) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A plain forward (no cache) over prompt + recorded tokens: the recorded ids, the
    log-softmax of each and its argmax, per recorded position."""
    assert ep.prompt_ids is not None
    ids = torch.tensor(ep.prompt_ids + ep.record.tokens)
    with torch.no_grad():
        logits = model(input_ids=ids[None]).logits[0, len(ep.prompt_ids) - 1 : -1].float()
    target = ids[len(ep.prompt_ids) :]
    logp = torch.log_softmax(logits, dim=-1).gather(1, target[:, None])[:, 0]
    return target, logp, logits.argmax(-1)


def test_binds_to_loopback_only(backend: ChatBackend) -> None:
    srv = PolicyServer(backend)
    try:
        host, port = srv.address
        assert host == "127.0.0.1" and port > 0  # port 0: a free port was picked
        assert srv.base_url == f"http://127.0.0.1:{port}/v1"
    finally:
        srv.close()
    for host in ("0.0.0.0", "::", "localhost", "10.0.0.1"):
        with pytest.raises(ValueError, match=r"127\.0\.0\.1 only"):
            PolicyServer(backend, host=host)


def test_models_and_unnamed_requests(server: PolicyServer) -> None:
    with urllib.request.urlopen(server.base_url + "/models", timeout=30) as resp:
        models = json.loads(resp.read())
    assert [m["id"] for m in models["data"]] == ["groupwise-policy"]
    status, out = _post(
        server.base_url + "/chat/completions",
        {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 3, "temperature": 0},
    )
    assert status == 200
    choice = out["choices"][0]
    assert len(choice["groupwise"]["token_ids"]) == 3 and choice["finish_reason"] == "length"
    assert choice["groupwise"]["episode_id"] is None
    status, out = _post(
        server.base_url + "/chat/completions",
        {"messages": [{"role": "user", "content": "hi"}], "n": 2},
    )
    assert status == 400 and "n must be 1" in out["error"]["message"]


def test_messages_that_do_not_extend_the_episode_are_refused(
    server: PolicyServer, backend: ChatBackend
) -> None:
    _open(backend)
    url = server.episode_url("e") + "/chat/completions"
    messages: list[dict[str, Any]] = [{"role": "user", "content": "hello"}]
    status, out = _post(url, {"messages": messages})
    assert status == 200
    reply = out["choices"][0]["message"]
    # the assistant message altered: refused, naming the message and the stored one
    altered = [*messages, {**reply, "content": "something else"}, {"role": "user", "content": "x"}]
    status, err = _post(url, {"messages": altered})
    assert status == 409
    assert "do not extend episode 'e'" in err["error"]["message"]
    assert "message 1" in err["error"]["message"]
    status, err = _post(url, {"messages": [{"role": "user", "content": "hello again"}]})
    assert status == 409 and "message 0" in err["error"]["message"]
    # the refused requests changed nothing: the right continuation goes on
    status, out = _post(url, {"messages": [*messages, reply, {"role": "user", "content": "y"}]})
    assert status == 200
    assert backend.episodes["e"].record.policy_turns == 2
    # the episode named by the extra field instead of the path; unknown and closed episodes
    body = {"messages": [{"role": "user", "content": "z"}], "groupwise": {"episode_id": "nope"}}
    status, err = _post(server.base_url + "/chat/completions", body)
    assert status == 404 and "unknown episode 'nope'" in err["error"]["message"]
    status, closed = _post(server.base_url + "/episodes/e/close", {})
    assert status == 200 and closed["closed"] is True
    status, err = _post(url, {"messages": messages})
    assert status == 409 and "closed" in err["error"]["message"]


def test_log_probs_equal_a_plain_forward_over_the_conversation(
    tiny: tuple[Any, Any], backend: ChatBackend
) -> None:
    """Greedy, three turns on one kept KV cache, then a stop string (the cache is rebuilt):
    every returned id is the argmax of a plain forward and its log-prob that forward's
    log-softmax; the episode's tokens are the returned and inserted ids, in order."""
    model, _ = tiny
    _open(backend)
    extra = {"groupwise": {"episode_id": "e", "group_id": "g"}}
    messages: list[dict[str, Any]] = [{"role": "user", "content": "Count with me: 1 2 3"}]
    returned: list[int] = []
    logps: list[float] = []
    for turn in range(4):
        body: dict[str, Any] = {"messages": messages, **extra}
        if turn == 2:
            body["stop"] = "\n\n"  # the tiny model writes newlines: cut the turn early
        out = backend.chat(body)["choices"][0]
        gw = out["groupwise"]
        if turn == 2:
            assert out["finish_reason"] == "stop" and len(gw["token_ids"]) < 5
            assert backend.episodes["e"].runner is None  # rebuilt by the next turn's prefill
        if turn:
            returned += gw["inserted_token_ids"]
            logps += [0.0] * len(gw["inserted_token_ids"])
        returned += gw["token_ids"]
        logps += gw["logprobs"]
        messages += [out["message"], {"role": "user", "content": f"turn {turn}"}]
    ep = backend.episodes["e"]
    assert ep.record.tokens == returned  # token-in/token-out: nothing re-tokenized
    target, plain, argmax = _plain_logp(model, ep)
    policy = torch.tensor(ep.record.policy, dtype=torch.bool)
    assert policy.any() and (~policy).any()
    assert torch.equal(argmax[policy], target[policy])  # greedy on the kept cache
    got = torch.tensor(logps)
    torch.testing.assert_close(got[policy], plain[policy], atol=1e-5, rtol=1e-5)
    assert (got[~policy] == 0).all()


def test_tool_calls_come_back_as_openai_tool_calls(backend: ChatBackend) -> None:
    """A scripted policy (a model whose greedy turn writes a tool call) is out of reach of a
    random model: the reply of a text with a call is checked through the parsing helper."""
    from groupwise.rollout.server import _assistant_message

    ep = ServedEpisode("e", "g", EpisodeSettings(SamplingParams(8)))
    call_text = '{"name": "calculator", "arguments": {"expression": "2*3"}}'
    text = f"Let me compute. <tool_call>{call_text}</tool_call>"
    message = _assistant_message(text, ep, tools=True)
    assert message["content"] == "Let me compute."
    [call] = message["tool_calls"]
    assert call["function"]["name"] == "calculator"
    assert json.loads(call["function"]["arguments"]) == {"expression": "2*3"}
    assert _assistant_message(text, ep, tools=False) == {"role": "assistant", "content": text}
    broken = text + "<tool_call>{oops</tool_call>"
    kept = _assistant_message(broken, ep, tools=True)
    assert kept["content"] == broken and len(kept["tool_calls"]) == 1  # the text kept whole


def test_tool_results_are_framed_as_the_chat_template_and_protocol_say(
    backend: ChatBackend,
) -> None:
    """The first request's tools are described in the prompt; a tool result is inserted as
    the template's tool turn with <tool_response> tags, after an inserted EOS closing a turn
    cut by max_tokens."""
    _open(backend)
    extra = {"groupwise": {"episode_id": "e"}}
    messages: list[dict[str, Any]] = [{"role": "user", "content": "What is 6 * 7?"}]
    out = backend.chat({"messages": messages, "tools": TOOLS, **extra})["choices"][0]
    prompt = backend.tokenizer.decode(out["groupwise"]["inserted_token_ids"])
    assert '"name": "calculator"' in prompt  # SmolLM2's template: the text protocol
    assert out["finish_reason"] == "length"  # 5 tokens without EOS
    messages += [out["message"], {"role": "tool", "tool_call_id": "c", "content": "42"}]
    out = backend.chat({"messages": messages, "tools": TOOLS, **extra})["choices"][0]
    inserted = out["groupwise"]["inserted_token_ids"]
    eos = backend.tokenizer.eos_token_id
    assert inserted[0] == eos
    text = backend.tokenizer.decode(inserted[1:])
    tool_turn = "\n<|im_start|>tool\n<tool_response>42</tool_response><|im_end|>\n"
    assert text == tool_turn + "<|im_start|>assistant\n"


def test_budget_and_max_turns_end_the_episode_truncated(backend: ChatBackend) -> None:
    _open(backend, max_turns=2)
    extra = {"groupwise": {"episode_id": "e"}}
    messages: list[dict[str, Any]] = [{"role": "user", "content": "a"}]
    for _ in range(2):
        out = backend.chat({"messages": messages, **extra})["choices"][0]
        messages += [out["message"], {"role": "user", "content": "b"}]
    ep = backend.episodes["e"]
    before = list(ep.record.tokens)
    out = backend.chat({"messages": messages, **extra})["choices"][0]
    assert out["finish_reason"] == "length" and out["groupwise"]["token_ids"] == []
    assert ep.truncated and ep.record.tokens == before  # the last message is not recorded
