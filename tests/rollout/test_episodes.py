"""The ``episodes`` engine: turns against a scripted environment, loss and turn masks, finished
episodes leaving the batch, KV reuse equal to re-prefilling, and one training step."""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from groupwise import GRPOTrainer, load_config
from groupwise.envs import ENVIRONMENTS, BaseEnvironment, EnvStep, env_reward, from_trl
from groupwise.models import tiny_random_model
from groupwise.rollout import RolloutRequest, SamplingParams, tokenize_prompts
from groupwise.rollout.episodes import EpisodeEngine, KVRunner
from groupwise.rollout.weights import SharedWeights
from tests.tests_helpers import TIMING_KEYS, tiny_overrides


@pytest.fixture(scope="module")
def tiny() -> tuple[Any, Any]:
    return tiny_random_model(seed=0)


class RowTurns(BaseEnvironment):
    """Ends after ``row["turns"]`` policy turns (default 3), answering ``ok <n>``."""

    def reset(self, row: Any) -> str | None:
        self.turns, self.n = int(row.get("turns", 3)), 0
        return None

    def step(self, policy_message: str) -> EnvStep:
        self.n += 1
        return EnvStep(None if self.n >= self.turns else f"ok {self.n}", self.n >= self.turns)

    def reward(self) -> float | None:
        return float(self.n)


@pytest.fixture(autouse=True)
def row_turns() -> Iterator[None]:
    ENVIRONMENTS.add("test_row_turns", RowTurns)
    yield
    ENVIRONMENTS.unregister("test_row_turns")


def _engine(tiny: tuple[Any, Any], **options: Any) -> EpisodeEngine:
    model, tokenizer = tiny
    options = {"environment": "test_row_turns", "max_tokens_per_turn": 4, **options}
    return EpisodeEngine(SharedWeights(model), tokenizer, [tokenizer.eos_token_id], **options)


def _run(engine: EpisodeEngine, prompts: list[str], temperature: float = 0.0, **kw: Any) -> Any:
    batch = tokenize_prompts(engine.tokenizer, prompts, torch.device("cpu"))
    sampling = SamplingParams(max_tokens=kw.pop("max_tokens", 64), temperature=temperature)
    gen = torch.Generator().manual_seed(0)
    return engine.generate(batch, RolloutRequest(kw.pop("group", 2), sampling, gen))


def test_turns_loss_mask_and_turn_index(tiny: tuple[Any, Any]) -> None:
    engine = _engine(tiny)
    rollout = _run(engine, ["a", "b c"], temperature=1.0)
    tok, eos = engine.tokenizer, engine.tokenizer.eos_token_id
    assert rollout.num_turns.tolist() == [5, 5, 5, 5]  # policy, ok 1, policy, ok 2, policy
    assert not rollout.truncated.any()
    for i in range(4):
        n = int(rollout.completion_mask[i].sum())
        ids, turn = rollout.completion_ids[i, :n], rollout.turn_index[i, :n]
        loss = rollout.loss_mask[i, :n]
        assert torch.equal(loss, (turn % 2 == 0).long())  # exactly the policy's segments
        for k in (1, 3):  # the environment's messages, each closing the cut policy turn
            want = [eos, *engine.format.message_ids(f"ok {(k + 1) // 2}", "user")]
            assert ids[turn == k].tolist() == want
            assert f"ok {(k + 1) // 2}" in tok.decode(want)
        assert (turn.diff() >= 0).all() and int(turn[-1]) == 4
        assert (rollout.entropy[i, :n][loss == 0] == 0).all()
    assert getattr(rollout, "columns")["env_reward"] == [3.0] * 4  # noqa: B009


def test_finished_episodes_leave_the_batch(
    tiny: tuple[Any, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    sizes: list[int] = []
    decode = KVRunner.decode

    def spy(self: KVRunner, budgets: Any, sampler: Any, draws: Any = None) -> Any:
        sizes.append(len(budgets))
        return decode(self, budgets, sampler, draws)

    monkeypatch.setattr(KVRunner, "decode", spy)
    engine = _engine(tiny)
    batch = tokenize_prompts(engine.tokenizer, ["x", "y"], torch.device("cpu"))
    request = RolloutRequest(2, SamplingParams(max_tokens=64, temperature=0.0))
    request.__dict__["rows"] = [{"prompt": "x", "turns": 1}, {"prompt": "y", "turns": 3}]
    rollout = engine.generate(batch, request)
    assert sizes == [4, 2, 2]  # the group of 1-turn episodes leaves after the first turn
    assert rollout.num_turns.tolist() == [1, 1, 5, 5]


def test_budget_and_max_turns_truncate(tiny: tuple[Any, Any]) -> None:
    rollout = _run(_engine(tiny, max_turns=2), ["a"])
    assert rollout.truncated.all() and rollout.num_turns.tolist() == [3, 3]
    rollout = _run(_engine(tiny, max_tokens=10), ["a"])
    assert rollout.truncated.all() and (rollout.completion_lengths <= 10).all()


def test_kv_reuse_equals_reprefill_under_greedy(tiny: tuple[Any, Any]) -> None:
    prompts = ["one", "two three four", "five six"]
    kv = _run(_engine(tiny, max_tokens_per_turn=5), prompts, group=2)
    fresh = _run(_engine(tiny, max_tokens_per_turn=5, kv_reuse=False), prompts, group=2)
    assert kv.num_turns.tolist() == [5] * 6
    for name in ("completion_ids", "completion_mask", "loss_mask", "turn_index", "truncated"):
        assert torch.equal(getattr(kv, name), getattr(fresh, name)), name


def _sampled(
    engine: EpisodeEngine, rows: list[dict[str, Any]], offset: int | None, total: int | None
) -> Any:
    """Two episodes per row sampled at temperature 1 with a fresh seed-0 generator, as rows
    ``offset:`` of a global batch of ``total`` episodes (None: torch.multinomial)."""
    batch = tokenize_prompts(engine.tokenizer, [r["prompt"] for r in rows], torch.device("cpu"))
    request = RolloutRequest(
        2,
        SamplingParams(max_tokens=64, temperature=1.0),
        torch.Generator().manual_seed(0),
        row_offset=offset or 0,
        total_rows=total,
        rows=rows,
    )
    return engine.generate(batch, request)


def test_rank_invariant_draws_split_batches_sample_what_one_batch_does(
    tiny: tuple[Any, Any],
) -> None:
    """Two "ranks" playing halves of a batch whose episodes take different numbers of turns
    (1 and 3) sample exactly the one-process episodes; without total_rows they do not."""
    rows = [{"prompt": "x y", "turns": 1}, {"prompt": "z w", "turns": 3}]
    engine = _engine(tiny)
    whole = _sampled(engine, rows, 0, 4)
    assert whole.num_turns.tolist() == [1, 1, 5, 5]
    halves = [_sampled(engine, rows[:1], 0, 4), _sampled(engine, rows[1:], 2, 4)]
    for i, half in enumerate(halves):
        mine = whole.completion_ids[2 * i : 2 * i + 2]
        width = half.completion_ids.shape[1]
        assert torch.equal(half.completion_ids, mine[:, :width])
        assert (mine[:, width:] == engine.tokenizer.pad_token_id).all()
    second = _sampled(engine, rows[1:], None, None).completion_ids
    assert not torch.equal(second, whole.completion_ids[2:, : second.shape[1]])  # control
    fresh = _sampled(_engine(tiny, kv_reuse=False), rows, 0, 4)  # the re-prefill runner
    assert torch.equal(fresh.completion_ids, whole.completion_ids)


class EarlyEos(torch.nn.Module):
    """The tiny model, but EOS wins after any input token divisible by 3: turns then end at
    different steps in different rows (masked holes in the KV cache)."""

    def __init__(self, model: Any, eos: int) -> None:
        super().__init__()
        self.model, self.eos, self.config = model, eos, model.config

    def forward(self, input_ids: torch.Tensor, **kwargs: Any) -> Any:
        out = self.model(input_ids=input_ids, **kwargs)
        boost = (input_ids[:, -out.logits.shape[1] :] % 3 == 0).float() * 100.0
        out.logits[..., self.eos] += boost
        return out


class Chatty(RowTurns):
    """Messages whose length depends on the reply: chunks of different lengths per row."""

    def step(self, policy_message: str) -> EnvStep:
        result = super().step(policy_message)
        if result.message is not None:
            result.message += " z" * (len(policy_message) % 4)
        return result


def test_kv_reuse_equals_reprefill_with_ragged_turns(tiny: tuple[Any, Any]) -> None:
    model, tokenizer = tiny
    ENVIRONMENTS.add("test_chatty", Chatty)
    try:
        early = EarlyEos(model, tokenizer.eos_token_id)
        outs = []
        for kv in (True, False):
            engine = _engine((early, tokenizer), environment="test_chatty", kv_reuse=kv)
            engine.max_tokens_per_turn = 6
            outs.append(_run(engine, ["one", "two three four", "five six"], group=2))
    finally:
        ENVIRONMENTS.unregister("test_chatty")
    kv, fresh = outs
    policy_turns = {  # (row, turn) -> tokens: turns ended at different steps in different rows
        (i, k): int(((kv.turn_index[i] == k) & (kv.completion_mask[i] == 1)).sum())
        for i in range(6)
        for k in range(5)
    }
    assert len({policy_turns[i, 0] for i in range(6)}) > 1, policy_turns
    assert len({policy_turns[i, 1] for i in range(6)}) > 1, policy_turns  # ragged chunks
    for name in ("completion_ids", "completion_mask", "loss_mask", "turn_index", "truncated"):
        assert torch.equal(getattr(kv, name), getattr(fresh, name)), name


class IncrementEnv:
    """TRL's documented example shape, unchanged."""

    def reset(self, target: int = 2, **kwargs: Any) -> str | None:
        self.counter, self.target = 0, target
        return f"Reach {target}."

    def get_reward(self) -> float:
        return float(self.counter == self.target)

    def increment(self, step: int) -> int:
        """Increment the counter.

        Args:
            step: Value to add to the counter.
        """
        self.counter += step
        return self.counter


def test_trl_shaped_environment_in_the_engine(tiny: tuple[Any, Any]) -> None:
    ENVIRONMENTS.add("test_increment", from_trl(IncrementEnv))
    try:
        engine = _engine(tiny, environment="test_increment")
        prompt = [{"role": "user", "content": "Count."}]
        batch = tokenize_prompts(engine.tokenizer, [prompt], torch.device("cpu"))
        request = RolloutRequest(2, SamplingParams(max_tokens=16, temperature=0.0))
        request.__dict__["rows"] = [{"prompt": prompt, "target": 3}]
        rollout = engine.generate(batch, request)
        text = engine.tokenizer.decode(rollout.prompts.input_ids[0])
        assert "Count.\nReach 3." in text and '"name": "increment"' in text  # tools described
        assert getattr(rollout, "columns")["env_reward"] == [0.0, 0.0]  # noqa: B009
    finally:
        ENVIRONMENTS.unregister("test_increment")


def test_each_episode_is_also_kept_as_chat_messages(tiny: tuple[Any, Any]) -> None:
    """The reserved messages column: per episode, each policy turn as an assistant message
    (its text as decoded for the environment) and each environment message appended after it,
    in order; a turn that is the last gets no environment message after it."""
    from groupwise.rewards.base import COMPLETION_MESSAGES

    engine = _engine(tiny)
    rollout = _run(engine, ["a"], temperature=1.0)
    conversations = getattr(rollout, "columns")[COMPLETION_MESSAGES]  # noqa: B009
    assert len(conversations) == 2
    for i, messages in enumerate(conversations):
        assert [m["role"] for m in messages] == ["assistant", "user"] * 2 + ["assistant"]
        assert [m["content"] for m in messages[1::2]] == ["ok 1", "ok 2"]
        n = int(rollout.completion_mask[i].sum())
        ids, turn = rollout.completion_ids[i, :n], rollout.turn_index[i, :n]
        for k, message in zip((0, 2, 4), messages[0::2], strict=True):
            policy = ids[(turn == k) & (rollout.loss_mask[i, :n] == 1)].tolist()
            assert message["content"] == engine.format.policy_text(policy)


def test_a_tool_turn_is_an_assistant_call_then_one_tool_message_per_call(
    tiny: tuple[Any, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """As TRL gives a tool-calling conversation: the calling turn's assistant message carries
    structured ``tool_calls`` (its call blocks out of the content), then the ``tool`` results."""
    from groupwise.rewards.base import COMPLETION_MESSAGES

    ENVIRONMENTS.add("test_increment", from_trl(IncrementEnv))
    call = '<tool_call>{"name": "increment", "arguments": {"step": 3}}</tool_call>'
    turns = iter([f"Let me count. {call}", "Done: 3"] * 2)
    try:
        engine = _engine(tiny, environment="test_increment", max_turns=2)
        monkeypatch.setattr(engine.format, "policy_text", lambda ids: next(turns))
        prompt = [{"role": "user", "content": "Count."}]
        batch = tokenize_prompts(engine.tokenizer, [prompt], torch.device("cpu"))
        request = RolloutRequest(1, SamplingParams(max_tokens=32, temperature=0.0))
        request.__dict__["rows"] = [{"prompt": prompt, "target": 3}]
        rollout = engine.generate(batch, request)
    finally:
        ENVIRONMENTS.unregister("test_increment")
    (messages,) = getattr(rollout, "columns")[COMPLETION_MESSAGES]  # noqa: B009
    function = {"name": "increment", "arguments": {"step": 3}}
    assert messages == [
        {
            "role": "assistant",
            "content": "Let me count.",
            "tool_calls": [{"type": "function", "function": function}],
        },
        {"role": "tool", "name": "increment", "content": "3"},
        {"role": "assistant", "content": "Done: 3"},
    ]


def test_trainer_step_with_the_episodes_engine(tmp_path: Path) -> None:
    overrides = tiny_overrides(tmp_path, max_steps=1, bf16=False, max_completion_length=24)
    options = {"environment": "counter", "max_tokens_per_turn": 4, "env_kwargs": {"turns": 2}}
    overrides += ["rollout.engine=episodes", f"rollout.engine_kwargs={json.dumps(options)}"]
    trainer = GRPOTrainer(load_config(overrides=overrides), reward_funcs=["length_penalty"])
    metrics = trainer.step()
    assert metrics["turns/mean"] > 1 and metrics["tokens/environment_mean"] > 0
    assert metrics["tools/calls_mean"] == 0.0 and metrics["time/environment"] >= 0.0
    assert env_reward([], [], env_reward=[0.5, None]) == [0.5, None]


def test_kill_and_resume_mid_multi_turn_run_equals_no_kill(tmp_path: Path) -> None:
    """fp32, tiny-random: a multi-turn run stopped after step 2 (checkpoint every step) and
    resumed gives the per-step metrics and final weights of the uninterrupted run."""

    class Crash(Exception):
        pass

    def crash_after_2(trainer: GRPOTrainer, metrics: dict[str, float]) -> None:
        if trainer.step_count == 2:
            raise Crash

    def config(run: Path, **extra: object) -> Any:
        overrides = tiny_overrides(
            run, max_steps=4, bf16=False, max_completion_length=24, save_steps=1, **extra
        )
        options = {"environment": "counter", "max_tokens_per_turn": 4, "env_kwargs": {"turns": 2}}
        overrides += ["rollout.engine=episodes", f"rollout.engine_kwargs={json.dumps(options)}"]
        return load_config(overrides=overrides)

    def metrics(run: Path) -> list[dict[str, Any]]:
        lines = (run / "run" / "metrics.jsonl").read_text().splitlines()
        rows = [json.loads(x) for x in lines]
        return [{k: v for k, v in r.items() if not k.startswith(TIMING_KEYS)} for r in rows]

    full = GRPOTrainer(config(tmp_path / "full"), reward_funcs=["length_penalty"])
    full.train()
    with pytest.raises(Crash):
        GRPOTrainer(
            config(tmp_path / "split"), reward_funcs=["length_penalty"], callbacks=[crash_after_2]
        ).train()
    resumed = GRPOTrainer(
        config(tmp_path / "split", resume="auto"), reward_funcs=["length_penalty"]
    )
    resumed.train()
    assert resumed.step_count == 4
    assert metrics(tmp_path / "split") == metrics(tmp_path / "full")
    for (name, a), b in zip(
        full.policy.named_parameters(), resumed.policy.parameters(), strict=True
    ):
        assert torch.equal(a, b), name


def test_episode_metrics_count_tool_calls_and_errors() -> None:
    from types import SimpleNamespace

    from groupwise.rollout.episodes import Episode, episode_metrics

    episodes = [
        Episode(SimpleNamespace(calls=[1, 2, 3], errors=1)),  # type: ignore[arg-type]
        Episode(SimpleNamespace(calls=[1], errors=1)),  # type: ignore[arg-type]
        Episode(SimpleNamespace()),  # type: ignore[arg-type]  # an environment without tools
    ]
    m = episode_metrics(episodes, 0.25)
    tools = {k: v for k, v in m.items() if not k.startswith("episodes/")}
    assert tools == {"tools/calls_mean": 4 / 3, "tools/error_rate": 0.5, "time/environment": 0.25}


def test_completions_jsonl_holds_whole_conversations_with_roles(tmp_path: Path) -> None:
    overrides = tiny_overrides(tmp_path, max_steps=1, bf16=False, max_completion_length=24)
    options = {"environment": "counter", "max_tokens_per_turn": 4, "env_kwargs": {"turns": 2}}
    overrides += ["rollout.engine=episodes", f"rollout.engine_kwargs={json.dumps(options)}"]
    GRPOTrainer(load_config(overrides=overrides), reward_funcs=["length_penalty"]).train()
    lines = (tmp_path / "run" / "completions.jsonl").read_text().splitlines()
    records = [json.loads(x) for x in lines]
    roles = [[t["role"] for t in r["turns"]] for r in records]
    assert all(r[0] == "assistant" for r in roles)
    assert any("environment" in r for r in roles)  # the counter answered
    for r in roles:  # turns alternate
        assert all(a != b for a, b in itertools.pairwise(r))
    assert any(
        "ok" in t["content"] for r in records for t in r["turns"] if t["role"] != "assistant"
    )


def test_multi_turn_tokens_and_log_probs_match_a_naive_forward(tiny: tuple[Any, Any]) -> None:
    """Greedy episodes decoded with the KV cache reused across turns: every policy token is the
    argmax of a plain forward over its whole conversation (no cache), and the training
    log-probs (groupwise.train.forward, shared prompt prefix) equal that forward's log-softmax."""
    from groupwise.train.forward import completion_logp

    model, _ = tiny
    rollout = _run(_engine(tiny, max_tokens_per_turn=5), ["one", "two three four"], group=2)
    with torch.no_grad():
        logp, _ = completion_logp(model.float(), rollout, compute_entropy=False)
    g = rollout.group_size
    for i in range(rollout.completion_ids.shape[0]):
        prompt = rollout.prompts.input_ids[i // g][rollout.prompts.attention_mask[i // g].bool()]
        n = int(rollout.completion_mask[i].sum())
        ids = rollout.completion_ids[i, :n]
        full = torch.cat([prompt, ids])[None]  # [1, Lp + n]
        with torch.no_grad():
            logits = model(input_ids=full).logits[0, prompt.numel() - 1 : -1].float()  # [n, V]
        naive = torch.log_softmax(logits, dim=-1).gather(1, ids[:, None])[:, 0]  # [n]
        policy = rollout.loss_mask[i, :n].bool()
        assert policy.any() and (~policy).any()  # both the policy's and the environment's
        assert torch.equal(logits.argmax(-1)[policy], ids[policy])  # greedy, cache reused
        torch.testing.assert_close(logp[i, :n], naive, atol=1e-5, rtol=1e-5)


class NeverEos(torch.nn.Module):
    """The tiny model, but EOS is never sampled: every turn runs to its budget."""

    def __init__(self, model: Any, eos: int) -> None:
        super().__init__()
        self.model, self.eos, self.config = model, eos, model.config

    def forward(self, input_ids: torch.Tensor, **kwargs: Any) -> Any:
        out = self.model(input_ids=input_ids, **kwargs)
        out.logits[..., self.eos] = float("-inf")
        return out


class Script(BaseEnvironment):
    """Answers ``ok`` until ``row["turns"]`` policy turns were played, then says done."""

    def reset(self, row: Any) -> str | None:
        self.turns, self.n = int(row["turns"]), 0
        return None

    def step(self, policy_message: str) -> EnvStep:
        self.n += 1
        return EnvStep("ok", done=self.n >= self.turns)


def _scripted(
    tiny: tuple[Any, Any], turns: list[int], max_tokens: int, **options: Any
) -> tuple[EpisodeEngine, Any]:
    """One greedy call of the ``Script`` environment on the never-EOS model, a row per entry
    of ``turns`` (G = 1)."""
    model, tokenizer = tiny
    ENVIRONMENTS.add("test_script", Script)
    try:
        options = {"environment": "test_script", "max_tokens": max_tokens, **options}
        weights = SharedWeights(NeverEos(model, tokenizer.eos_token_id))
        engine = EpisodeEngine(weights, tokenizer, [tokenizer.eos_token_id], **options)
        rows = [{"prompt": "p", "turns": t} for t in turns]
        batch = tokenize_prompts(tokenizer, ["p"] * len(rows), torch.device("cpu"))
        request = RolloutRequest(1, SamplingParams(max_tokens=999, temperature=0.0), rows=rows)
        return engine, engine.generate(batch, request)
    finally:
        ENVIRONMENTS.unregister("test_script")


def _policy_turns(rollout: Any, i: int) -> list[int]:
    """Row ``i``'s policy turns, by length in tokens."""
    n = int(rollout.completion_mask[i].sum())
    turn, policy = rollout.turn_index[i, :n], rollout.loss_mask[i, :n]
    return [int(((turn == k) & (policy == 1)).sum()) for k in range(0, int(turn.max()) + 1, 2)]


def test_the_turn_budget_defaults_to_the_episode_budget_over_max_turns(
    tiny: tuple[Any, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    engine, rollout = _scripted(tiny, [2], max_tokens=120, max_turns=4)
    assert engine.turn_budget(120) == 30 and _policy_turns(rollout, 0) == [30, 30]
    out = capsys.readouterr().out
    assert "episodes: max_tokens_per_turn=30 (120 // max_turns 4)" in out
    engine, rollout = _scripted(tiny, [2], max_tokens=120, max_turns=4, max_tokens_per_turn=7)
    assert engine.turn_budget(120) == 7 and _policy_turns(rollout, 0) == [7, 7]  # set wins
    assert "episodes: max_tokens_per_turn=7 (set)" in capsys.readouterr().out
    engine.max_tokens_per_turn, engine.max_turns = None, 5
    assert engine.turn_budget(3) == 1  # at least one token


def test_ended_by_metrics_on_a_scripted_environment(tiny: tuple[Any, Any]) -> None:
    """Turns of P = 4 tokens that never end in EOS (each is cut), an environment message of
    f tokens (the closing EOS and "ok" framed): the reasons follow from the budgets."""
    probe, _ = _scripted(tiny, [1], max_tokens=8, max_tokens_per_turn=4)
    f = 1 + len(probe.format.message_ids("ok", "user"))
    zero = {"env_done": 0.0, "max_turns": 0.0, "token_budget": 0.0, "no_room": 0.0}

    def ended(metrics: dict[str, float]) -> dict[str, float]:
        return {k.split("/")[-1]: v for k, v in metrics.items() if k.startswith("episodes/ended/")}

    # budget 100: row 1 is done after a turn; row 2 plays max_turns = 3 turns (4 + f + 4 + f + 4)
    _, r = _scripted(tiny, [1, 9], max_tokens=100, max_turns=3, max_tokens_per_turn=4)
    assert ended(r.metrics) == {**zero, "env_done": 0.5, "max_turns": 0.5}
    assert r.metrics["episodes/turns_cut"] == 1.0 and r.truncated.tolist() == [False, True]
    # budget 2P + f: the second turn reaches it (cut by the budget, not the turn cap)
    _, r = _scripted(tiny, [9], max_tokens=8 + f, max_turns=3, max_tokens_per_turn=4)
    assert ended(r.metrics) == {**zero, "token_budget": 1.0}
    assert r.metrics["episodes/turns_cut"] == 0.5 and _policy_turns(r, 0) == [4, 4]
    # budget P + f: the environment's message leaves no room for a reply
    _, r = _scripted(tiny, [9], max_tokens=4 + f, max_turns=3, max_tokens_per_turn=4)
    assert ended(r.metrics) == {**zero, "no_room": 1.0}
    assert r.metrics["episodes/turns_cut"] == 1.0 and int(r.completion_mask.sum()) == 4


def test_a_string_prompt_row_is_a_chat_turn(
    tiny: tuple[Any, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    """A row's string prompt goes in as one user message of the chat template; prompts given
    only as token ids (no rows) stay as they are."""
    engine = _engine(tiny)
    tokenizer = engine.tokenizer
    batch = tokenize_prompts(tokenizer, ["Hello there"], torch.device("cpu"))
    sampling = SamplingParams(max_tokens=16, temperature=0.0)
    rows = [{"prompt": "Hello there", "turns": 1}]
    rollout = engine.generate(batch, RolloutRequest(2, sampling, rows=rows))
    chat = [{"role": "user", "content": "Hello there"}]
    want = tokenizer.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)
    assert tokenizer.decode(rollout.prompts.input_ids[0]) == want
    assert "a string prompt goes in as one user message" in capsys.readouterr().out
    raw = engine.generate(batch, RolloutRequest(2, sampling))
    assert torch.equal(raw.prompts.input_ids, batch.input_ids)
    assert capsys.readouterr().out == ""  # each line once
