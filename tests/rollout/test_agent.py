"""The ``agent`` engine: an agent written against the real ``openai`` client plays episodes
whose tokens are exactly the ones the server returned and inserted, and trains end to end."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from groupwise import GRPOTrainer, load_config
from groupwise.models import tiny_random_model
from groupwise.rollout import RolloutRequest, SamplingParams, tokenize_prompts
from groupwise.rollout.agent import AgentEngine
from groupwise.rollout.weights import SharedWeights
from tests.tests_helpers import tiny_overrides, varied_reward

openai = pytest.importorskip("openai")

SEEN: dict[str, list[dict[str, Any]]] = {}
"""Episode id -> the ``groupwise`` field of each reply (recorded by :func:`tool_agent`)."""


def tool_agent(client: Any, row: dict[str, Any], episode: dict[str, Any]) -> float:
    """A plain tool loop against the openai client: the model's reply, then a tool result (or
    a user nudge when it called no tool), three times; returns the number of replies."""
    messages: list[Any] = [{"role": "user", "content": str(row["prompt"])}]
    replies = SEEN.setdefault(episode["episode_id"], [])
    for turn in range(3):
        response = client.chat.completions.create(
            model=episode["model"],
            messages=messages,
            tools=[{"type": "function", "function": {"name": "echo", "parameters": {}}}],
            max_tokens=6,
        )
        choice = response.choices[0]
        replies.append(choice.groupwise)
        messages.append(choice.message)
        for call in choice.message.tool_calls or []:
            messages.append({"role": "tool", "tool_call_id": call.id, "content": "done"})
        if not choice.message.tool_calls:
            messages.append({"role": "user", "content": f"go on ({turn})"})
    return float(len(replies))


def varied_prompt_agent(client: Any, row: dict[str, Any], episode: dict[str, Any]) -> None:
    """Each episode of a group asks its own question (index in the text), once."""
    content = f"{row['prompt']} variant {episode['index']}"
    client.chat.completions.create(
        model=episode["model"], messages=[{"role": "user", "content": content}], max_tokens=3
    )


def failing_agent(client: Any, row: dict[str, Any], episode: dict[str, Any]) -> None:
    raise KeyError("no such column")


@pytest.fixture(scope="module")
def tiny() -> tuple[Any, Any]:
    return tiny_random_model(seed=0)


def _engine(tiny: tuple[Any, Any], agent: Any, **kw: Any) -> AgentEngine:
    model, tokenizer = tiny
    return AgentEngine(SharedWeights(model), tokenizer, [tokenizer.eos_token_id], agent=agent, **kw)


def _generate(engine: AgentEngine, prompts: list[str], temperature: float = 1.0) -> Any:
    batch = tokenize_prompts(engine.tokenizer, prompts, torch.device("cpu"))
    request = RolloutRequest(
        2,
        SamplingParams(max_tokens=96, temperature=temperature),
        torch.Generator().manual_seed(0),
        rows=[{"prompt": p} for p in prompts],
    )
    try:
        return engine.generate(batch, request)
    finally:
        engine.close()


def test_rollout_tokens_are_the_returned_and_inserted_ids(tiny: tuple[Any, Any]) -> None:
    """Token-in/token-out: each row's completion is the concatenation of the ids the server
    returned and the ids it inserted (new messages' template framing), never a re-tokenization;
    loss on the returned ids only, behaviour_logp their returned log-probs."""
    SEEN.clear()
    engine = _engine(tiny, "tests.rollout.test_agent:tool_agent")
    rollout = _generate(engine, ["Say something.", "Tell me more."])
    assert rollout.completion_ids.shape[0] == 4 and rollout.group_size == 2
    assert rollout.columns == {"env_reward": [3.0, 3.0, 3.0, 3.0]}
    assert rollout.num_turns.tolist() == [5, 5, 5, 5]  # reply, message, reply, message, reply
    tok = engine.tokenizer
    retokenized_differs = False
    for i, (eid, replies) in enumerate(
        sorted(SEEN.items(), key=lambda kv: int(kv[0].split("-e")[1]))
    ):
        assert eid == f"c1-e{i}"
        prompt = rollout.prompts.input_ids[i // 2][rollout.prompts.attention_mask[i // 2].bool()]
        assert prompt.tolist() == replies[0]["inserted_token_ids"]
        ids: list[int] = []
        loss: list[int] = []
        logp: list[float] = []
        for k, gw in enumerate(replies):
            inserted = gw["inserted_token_ids"] if k else []
            ids += inserted + gw["token_ids"]
            loss += [0] * len(inserted) + [1] * len(gw["token_ids"])
            logp += [0.0] * len(inserted) + gw["logprobs"]
            text = tok.decode(gw["token_ids"])
            retokenized_differs |= (
                tok(text, add_special_tokens=False)["input_ids"] != gw["token_ids"]
            )
        n = int(rollout.completion_mask[i].sum())
        assert rollout.completion_ids[i, :n].tolist() == ids
        assert rollout.loss_mask[i, :n].tolist() == loss
        assert rollout.behaviour_logp is not None
        torch.testing.assert_close(rollout.behaviour_logp[i, :n], torch.tensor(logp))
    assert retokenized_differs  # the check above would catch a re-tokenized turn


def test_group_prompt_is_the_common_prefix(tiny: tuple[Any, Any]) -> None:
    engine = _engine(tiny, "tests.rollout.test_agent:varied_prompt_agent")
    rollout = _generate(engine, ["Hello"], temperature=0.0)
    tok = engine.tokenizer
    prompt = tok.decode(rollout.prompts.input_ids[0])
    assert prompt.endswith("Hello variant ")  # the episodes' first requests part after it
    for i in range(2):
        n = int(rollout.completion_mask[i].sum())
        ids, loss = rollout.completion_ids[i, :n], rollout.loss_mask[i, :n]
        assert tok.decode(ids[loss == 0]).startswith(str(i))  # the rest of its prompt, no loss
        assert int(loss.sum()) == 3 and rollout.turn_index[i, :n].max() == 1


def test_an_agent_error_names_the_episode(tiny: tuple[Any, Any]) -> None:
    engine = _engine(tiny, failing_agent, client="base_url")
    with pytest.raises(RuntimeError, match=r"episode c1-e0 \(row 0\): KeyError"):
        _generate(engine, ["x"])
    assert engine.backend.episodes == {}  # every episode closed and dropped


def test_unknown_options_are_named() -> None:
    from groupwise.rollout.agent import build_agent_engine
    from groupwise.rollout.engine import EngineContext

    ctx = EngineContext(torch.nn.Linear(1, 1), None, None, [0], options={"agnet": "m:f"})  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="unknown keys \\['agnet'\\]"):
        build_agent_engine(ctx)


def test_two_training_steps_with_an_openai_agent(tmp_path: Path) -> None:
    """``rollout.engine=agent`` end to end: the agent's episodes are scored (its returned reward
    through env_reward, a text reward on the decoded conversation) and trained."""
    SEEN.clear()
    overrides = tiny_overrides(tmp_path, bf16=False, max_completion_length=48)
    options = {"agent": "tests.rollout.test_agent:tool_agent", "max_turns": 3}
    overrides += ["rollout.engine=agent", f"rollout.engine_kwargs={json.dumps(options)}"]
    trainer = GRPOTrainer(
        load_config(overrides=overrides), reward_funcs=["env_reward", varied_reward]
    )
    before = [p.detach().clone() for p in trainer.policy.parameters()]
    trainer.train()
    assert trainer.step_count == 2
    after = list(trainer.policy.parameters())
    assert any(not torch.equal(a, b) for a, b in zip(before, after, strict=True))
    assert len(SEEN) % 4 == 0 and len(SEEN) >= 8, len(SEEN)  # groups of G = 4, 2 steps
    records = [
        json.loads(line)
        for line in (tmp_path / "run" / "completions.jsonl").read_text().splitlines()
    ]
    assert records and all(r["rewards"]["env_reward"] == 3.0 for r in records)
    assert any(t["role"] == "environment" for r in records for t in r["turns"])
    steps = [
        json.loads(line)
        for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
        if "step_time" in line
    ]
    assert len(steps) == 2
    for m in steps:  # three requests per episode, decoded in batches of several agents
        assert m["agent/requests_mean"] == 3.0 and m["agent/batch_rows_mean"] > 1.0
