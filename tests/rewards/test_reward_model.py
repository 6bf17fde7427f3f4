"""The ``reward_model`` reward: batched, deterministic scores of rendered conversations from a
local sequence-classification model."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from groupwise.config import RewardsConfig
from groupwise.rewards import RewardRunner, resolve_reward, rewards_from_config
from groupwise.rewards.reward_model import make_tiny_reward_model, render_conversation, reward_model

CHAT = [{"role": "user", "content": "How do I keep basil alive?"}]
REPLIES = [
    "Water it when the soil is dry and give it plenty of sun.",
    "basil basil basil basil",
    "",
    "Put it on a sunny windowsill.",
]


@pytest.fixture(scope="module")
def tiny_rm(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_reward_model(tmp_path_factory.mktemp("rm") / "tiny", seed=0)


def test_scores_are_batched_deterministic_and_text_dependent(tiny_rm: Path) -> None:
    batched = reward_model(str(tiny_rm), batch_size=8)
    single = reward_model(str(tiny_rm), batch_size=1)
    prompts = [CHAT] * len(REPLIES)
    scores = batched(prompts, REPLIES)
    assert len(scores) == 4 and all(math.isfinite(s) for s in scores)
    assert scores == pytest.approx(single(prompts, REPLIES), abs=1e-4)
    assert scores == pytest.approx(batched(prompts, REPLIES), abs=1e-6)
    assert len({round(s, 6) for s in scores}) == 4
    assert batched.__name__ == "reward_model"


def test_text_prompt_is_one_user_message(tiny_rm: Path) -> None:
    reward = reward_model(str(tiny_rm))
    as_text = reward(["How do I keep basil alive?"], [REPLIES[0]])
    as_chat = reward([CHAT], [REPLIES[0]])
    assert as_text == pytest.approx(as_chat, abs=1e-6)


def test_render_conversation_with_and_without_template(tiny_rm: Path) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_rm)
    text = render_conversation(tokenizer, CHAT, "Sun.")
    assert "How do I keep basil alive?" in text and text.rstrip().endswith("Sun.<|im_end|>")
    tokenizer.chat_template = None
    assert render_conversation(tokenizer, "Q: hi\nA:", " hello") == "Q: hi\nA: hello"
    assert render_conversation(tokenizer, CHAT, "Sun.") == (
        "user: How do I keep basil alive?\n\nassistant: Sun."
    )


def test_classifier_labels_probability_and_errors(tmp_path: Path, tiny_rm: Path) -> None:
    make_tiny_reward_model(tmp_path / "two", num_labels=2)
    with pytest.raises(ValueError, match="has 2 labels; choose one with rewards.kwargs"):
        reward_model(str(tmp_path / "two"))
    probs = reward_model(str(tmp_path / "two"), label_index=1, probability=True)(
        [CHAT] * 2, REPLIES[:2]
    )
    assert all(0.0 < p < 1.0 for p in probs)
    with pytest.raises(ValueError, match="label_index 5 is out of range"):
        reward_model(str(tmp_path / "two"), label_index=5)
    with pytest.raises(
        ValueError, match=r"rewards.kwargs.reward_model: path: .* \(no config.json\)"
    ):
        resolve_reward("reward_model", {"path": str(tmp_path / "missing")})
    with pytest.raises(ValueError, match="reward 'reward_model' needs path"):
        resolve_reward("reward_model")


def test_reward_model_from_config_in_a_runner(tiny_rm: Path) -> None:
    config = RewardsConfig(
        funcs=["reward_model", "repetition_penalty"],
        kwargs={"reward_model": {"path": str(tiny_rm), "batch_size": 2}},
    )
    funcs = rewards_from_config(config, max_completion_length=32)
    result = RewardRunner(funcs)([CHAT] * 4, REPLIES)
    assert set(result.per_func) == {"reward_model", "repetition_penalty"}
    assert result.per_func["repetition_penalty"].tolist()[1] == pytest.approx(-0.5)
