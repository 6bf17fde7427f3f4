"""The dialogue pack: reproducible prompts, a subject-disjoint held-out set, the sentiment judge
(VADER) as reward and correctness, and the ``on_topic`` guard."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest

from groupwise.config import RewardsConfig, load_config
from groupwise.data import build_task
from groupwise.data.tasks import Task
from groupwise.rewards import RewardRunner, rewards_from_config
from groupwise.rollout.records import row_columns
from groupwise.tasks.dialogue import (
    SUBJECTS,
    TEMPLATES,
    dialogue_prompts,
    on_topic,
    sentence_split,
    sentiment,
    vader_compound,
)

CHAT = [{"role": "user", "content": "How do I keep basil alive?"}]


@pytest.fixture
def vader() -> None:
    pytest.importorskip("vaderSentiment")


# -------------------------------------------------------------------------------- the prompts
EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "dialogue.yaml"


def _task(eval_size: int = 64, seed: int = 1234, **params: Any) -> Task:
    return build_task(
        "dialogue_prompts", train_size=10_000, eval_size=eval_size, seed=seed, params=params
    )


def _text(row: dict[str, Any]) -> str:
    return str(row["prompt"][-1]["content"])


def test_prompts_are_templates_times_subjects_all_distinct() -> None:
    rows = dialogue_prompts()
    assert len(rows) == len(TEMPLATES) * len(SUBJECTS) >= 200
    assert len({_text(r) for r in rows}) == len(rows)
    assert all(r["subject"] in _text(r) for r in rows)
    assert all(r["prompt"][0]["role"] == "user" for r in rows)
    assert "Describe your morning commute in a few sentences." in {_text(r) for r in rows}


def test_split_is_seeded_disjoint_by_subject_and_sized(vader: None) -> None:
    task = _task()
    assert len(task.eval) == 64
    assert len(task.train) + len(task.eval) <= len(TEMPLATES) * len(SUBJECTS)
    held_subjects = {r["subject"] for r in task.eval}
    assert not held_subjects & {r["subject"] for r in task.train}
    assert not {_text(r) for r in task.eval} & {_text(r) for r in task.train}
    # every prompt of a subject not held out is available for training
    assert len(task.train) == len(TEMPLATES) * (len(SUBJECTS) - len(held_subjects))
    again = _task()
    assert [_text(r) for r in again.eval] == [_text(r) for r in task.eval]
    assert [_text(r) for r in again.train] == [_text(r) for r in task.train]
    other = _task(seed=1235)
    assert {r["subject"] for r in other.eval} != held_subjects


def test_sizes_and_limits(vader: None) -> None:
    assert len(_task(eval_size=50).eval) == 50
    small = build_task("dialogue_prompts", train_size=7, eval_size=10, seed=0, params={})
    assert len(small.train) == 7 and len(small.eval) == 10
    most = (len(SUBJECTS) - 1) * len(TEMPLATES)
    assert len(_task(eval_size=most).eval) == most
    with pytest.raises(ValueError, match="data.eval_size: .* leave none for training"):
        _task(eval_size=most + 1)
    with pytest.raises(ValueError, match="data.params.target: 'happy' is not one of"):
        _task(target="happy")
    with pytest.raises(ValueError, match="data.params: bad parameters"):
        _task(temperature=1.0)


def test_system_prompt_opens_every_chat(vader: None) -> None:
    task = _task(system_prompt="Be kind.")
    assert all(r["prompt"][0] == {"role": "system", "content": "Be kind."} for r in task.eval)


def test_correctness_is_the_sentiment_judge_in_unit_range(vader: None) -> None:
    task = _task(eval_size=10)
    assert task.correctness is not None and task.correctness.__name__ == "sentiment"
    rows = task.eval[:3]
    replies = ["What a lovely, happy topic!", "It is on Tuesday.", "That is terrible and sad."]
    prompts = [r["prompt"] for r in rows]
    scores = task.correctness(prompts=prompts, completions=replies, **row_columns(rows))
    assert all(0.0 <= s <= 1.0 for s in scores)
    assert scores[0] > scores[1] > scores[2]
    flipped = _task(eval_size=10, target="negative").correctness
    assert flipped is not None
    inverse = flipped(prompts=prompts, completions=replies, **row_columns(rows))
    assert inverse == pytest.approx([1.0 - s for s in scores])


def test_default_reward_is_the_judge_and_keeps_the_task_target(vader: None) -> None:
    task = _task(eval_size=10, target="negative")
    (reward,) = rewards_from_config(RewardsConfig(), defaults=task.reward_funcs)
    low, high = reward(["p"] * 2, ["I love it, wonderful!", "I hate it, awful!"])
    assert high > 0.5 > low


def test_the_example_config_builds_its_task_and_rewards(vader: None) -> None:
    config = load_config(EXAMPLE)
    d = config.data
    task = build_task(
        d.task, train_size=d.train_size, eval_size=d.eval_size, seed=d.seed, params=d.params
    )
    assert len(task.eval) >= 50 and task.correctness is not None
    funcs = rewards_from_config(config.rewards, max_completion_length=64)
    names = [f.__name__ for f in funcs]
    assert names == ["sentiment", "on_topic", "repetition_penalty", "length_penalty"]
    # the held-out judge and the training reward agree on the target
    reply = ["I hate this, it is awful."]
    assert funcs[0](["p"], reply) == task.correctness(prompts=["p"], completions=reply)


# ------------------------------------------------------------------------ the sentiment judge
POSITIVE = "I love rainy days, they are wonderful and cozy."
NEUTRAL = "The bus leaves at eight and arrives at nine."
NEGATIVE = "I hate rainy days, they are awful and miserable."


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
