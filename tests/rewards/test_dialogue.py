from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest

from groupwise.config import RewardsConfig
from groupwise.rewards import RewardRunner, resolve_reward, rewards_from_config
from groupwise.rewards.dialogue import (
    length_penalty,
    make_tiny_reward_model,
    render_conversation,
    repetition_penalty,
    reward_model,
    sentence_split,
    sentiment,
    vader_compound,
)

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


@pytest.mark.parametrize(
    ("text", "n", "expected"),
    [
        ("the cat sat on the mat", 3, 0.0),
        ("a b c a b c a b c", 3, -4 / 7),
        ("yes yes yes yes", 1, -0.75),
        ("Yes, YES! yes.", 1, -2 / 3),
        ("too short", 3, 0.0),
        ("", 3, 0.0),
    ],
)
def test_repetition_penalty(text: str, n: int, expected: float) -> None:
    assert repetition_penalty(["p"], [text], ngram_size=n) == [pytest.approx(expected)]


def test_length_penalty() -> None:
    texts = ["", "one two", "one two three four five", " ".join(["w"] * 15), " ".join(["w"] * 40)]
    got = length_penalty(["p"] * 5, texts, min_words=5, max_words=10)
    assert got == pytest.approx([-1.0, -0.6, 0.0, -0.5, -1.0])
    with pytest.raises(ValueError, match="min_words <= max_words"):
        length_penalty(["p"], ["x"], min_words=5, max_words=2)


# ---------------------------------------------------------------------------- sentiment (VADER)
POSITIVE = "I love rainy days, they are wonderful and cozy."
NEUTRAL = "The bus leaves at eight and arrives at nine."
NEGATIVE = "I hate rainy days, they are awful and miserable."


@pytest.fixture
def vader() -> None:
    pytest.importorskip("vaderSentiment")


def test_sentiment_orders_positive_neutral_negative(vader: None) -> None:
    pos, neu, neg = sentiment(["p"] * 3, [POSITIVE, NEUTRAL, NEGATIVE])
    assert pos > neu > neg
    assert pos > 0.5 > neg
    assert neu == pytest.approx(0.5)  # no word with a valence: the middle of the scale
    assert sentiment(["p"], [""]) == [pytest.approx(0.5)]
    assert all(0.0 <= s <= 1.0 for s in (pos, neu, neg))


def test_sentiment_negation_flips(vader: None) -> None:
    plain, negated = sentiment(["p"] * 2, ["The food was good.", "The food was not good."])
    assert plain > 0.5 > negated
    bad, not_bad = sentiment(["p"] * 2, ["The film was bad.", "The film was not bad."])
    assert not_bad > bad


def test_sentiment_target_negative_inverts(vader: None) -> None:
    texts = [POSITIVE, NEUTRAL, NEGATIVE, "The food was not good."]
    positive = sentiment(["p"] * 4, texts)
    negative = sentiment(["p"] * 4, texts, target="negative")
    assert negative == pytest.approx([1.0 - s for s in positive])
    assert negative[2] > negative[1] > negative[0]


def test_sentiment_unit_sentence_averages_sentences(vader: None) -> None:
    text = f"{POSITIVE} {NEUTRAL}\n{NEGATIVE}"
    assert sentence_split(text) == [POSITIVE, NEUTRAL, NEGATIVE]
    per_sentence = sentiment(["p"] * 3, [POSITIVE, NEUTRAL, NEGATIVE])
    (averaged,) = sentiment(["p"], [text], unit="sentence")
    assert averaged == pytest.approx(sum(per_sentence) / 3)
    # one cheerful sentence among neutral ones: the whole text reads as positive as that
    # sentence, the per-sentence mean much less so
    diluted = f"{POSITIVE} {NEUTRAL} {NEUTRAL}"
    (whole,) = sentiment(["p"], [diluted])
    (mean,) = sentiment(["p"], [diluted], unit="sentence")
    assert whole > mean > 0.5


def test_sentiment_scores_only_the_completion(vader: None) -> None:
    a = sentiment([NEGATIVE], [NEUTRAL])
    b = sentiment([POSITIVE], [NEUTRAL])
    assert a == b


def test_sentiment_bad_arguments_name_the_key(vader: None) -> None:
    with pytest.raises(ValueError, match=r"rewards.kwargs.sentiment.target: 'happy' is not one"):
        sentiment(["p"], ["hi"], target="happy")
    with pytest.raises(ValueError, match=r"rewards.kwargs.sentiment.unit: 'word' is not one"):
        sentiment(["p"], ["hi"], unit="word")


def test_sentiment_missing_package_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "vaderSentiment", None)
    monkeypatch.setitem(sys.modules, "vaderSentiment.vaderSentiment", None)
    vader_compound.cache_clear()
    try:
        with pytest.raises(ImportError, match=r"pip install 'groupwise\[dialogue\]'"):
            sentiment(["p"], ["hi"])
    finally:
        vader_compound.cache_clear()


def test_sentiment_from_config_with_penalties(vader: None) -> None:
    config = RewardsConfig(
        funcs=["sentiment", "repetition_penalty", "length_penalty"],
        weights=[1.0, 0.5, 0.5],
        kwargs={"sentiment": {"target": "negative"}, "length_penalty": {"min_words": 3}},
    )
    funcs = rewards_from_config(config, max_completion_length=32)
    completions = [POSITIVE, NEGATIVE, "awful awful awful awful awful awful"]
    result = RewardRunner(funcs)([CHAT] * 3, completions)
    judged = result.per_func["sentiment"].tolist()
    assert judged[1] > judged[0]  # target negative: the negative reply wins
    assert result.per_func["repetition_penalty"].tolist()[2] < 0
    # the stacked-word reply is judged the most negative yet loses to the varied one in total
    assert judged[2] > judged[1]
    assert result.total.tolist()[2] < result.total.tolist()[1]


def test_on_topic_counts_the_subjects_content_words() -> None:
    from groupwise.rewards.dialogue import on_topic

    completions = [
        "Rainy days are lovely.",  # both words ("days" is 4 letters)
        "I love the rain.",  # "rain" is not "rainy"'s 5-letter stem: 0 of 2
        "I am so happy to help!",  # off topic
        "Movies in black and white are classics.",  # 2 of black, white, movie(s)
        "anything",  # the subject has no content word: 1.0
    ]
    subjects = [
        "rainy days",
        "rainy days",
        "your morning commute",
        "old black-and-white films",
        "a",
    ]
    assert on_topic(["p"] * 5, completions, subject=subjects) == [1.0, 0.0, 0.0, 2 / 3, 1.0]
