"""The dialogue pack: task ``dialogue_prompts`` and its rewards ``sentiment`` and ``on_topic``.

Prompts are built from :data:`TEMPLATES` x :data:`SUBJECTS` (10 x 36 = 360, no downloads),
e.g. "What do you think of rainy days?" or "Describe your morning commute.". Many subjects are
everyday chores and annoyances, so a cheerful reply is not the obvious one and the judge has
room to move. The split is by subject: the subjects are shuffled with the task seed and whole
subjects are held out (every template of them), so held-out prompts share no subject with the
training prompts, and the held-out score measures a tone learned in general, not per topic.

``sentiment`` is an offline judge: VADER (Hutto & Gilbert 2014, the ``vaderSentiment`` package,
whose lexicon ships inside the wheel; ``pip install 'groupwise[dialogue]'``). What it measures is
the lexicon valence of the words of the completion, rule-adjusted for negation ("not good"),
intensifiers and dampeners ("very", "slightly"), "but" clauses, ALL-CAPS, exclamation marks and
emoticons, normalised to a compound score in [-1, 1] and mapped here to [0, 1]. What it does not
measure: helpfulness, truth, relevance to the prompt or fluency. It can be gamed: a reply that
stacks positive words ("great, wonderful, amazing!!!") scores near 1 whatever it says. The
repetition and length penalties of examples/dialogue.yaml (:mod:`groupwise.rewards.text`)
counter that only partly (varied positive words are not repeated n-grams), and ``on_topic``
(the share of the subject's words the reply mentions) guards against replies that drift off
the question; read the samples, not just the score.

Correctness is the ``sentiment`` judge: the held-out "accuracy" the trainer reports is the mean
judge score of the greedy answers, a number in [0, 1] rather than a share of right answers.
"""

from __future__ import annotations

import functools
import math
import random
import re
from collections.abc import Callable, Sequence
from typing import Any

from groupwise.data.tasks import Row, Task, register_task
from groupwise.rewards.base import RewardFunc, bind_reward_kwargs, register_reward

SENTIMENT_TARGETS = ("positive", "negative")
"""Values of ``target``: which end of the valence scale scores 1."""
SENTIMENT_UNITS = ("completion", "sentence")
"""Values of ``unit``: the whole completion as one text, or the mean over its sentences."""
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+|\n+")


@functools.lru_cache(maxsize=1)
def vader_compound() -> Callable[[str], float]:
    """VADER's compound score of a text, in [-1, 1] (the analyzer is built once per process).

    Raises ``ImportError`` naming the extra to install when ``vaderSentiment`` is missing.
    """
    try:
        from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer
    except ImportError as exc:
        raise ImportError(
            "the sentiment reward needs the 'vaderSentiment' package: "
            "pip install 'groupwise[dialogue]' (or pip install vadersentiment)"
        ) from exc
    analyzer = SentimentIntensityAnalyzer()

    def compound(text: str) -> float:
        return float(analyzer.polarity_scores(text)["compound"])

    return compound


def sentence_split(text: str) -> list[str]:
    """Sentences of ``text``: split after ``.``, ``!`` or ``?`` followed by space, and at line
    breaks; empty pieces are dropped."""
    return [piece.strip() for piece in _SENTENCE_END.split(text) if piece.strip()]


def sentiment_score(text: str, *, target: str = "positive", unit: str = "completion") -> float:
    """One text's score in [0, 1]: ``(c + 1) / 2`` for the VADER compound ``c`` (``target``
    positive) or ``(1 - c) / 2`` (negative); text without words of valence scores 0.5.

    ``unit`` "completion" scores the text as a whole; "sentence" averages the compound over
    its sentences (VADER's advice for paragraphs; less quick to saturate than the whole text).
    """
    if target not in SENTIMENT_TARGETS:
        raise ValueError(
            f"rewards.kwargs.sentiment.target: {target!r} is not one of: "
            f"{', '.join(SENTIMENT_TARGETS)}"
        )
    if unit not in SENTIMENT_UNITS:
        raise ValueError(
            f"rewards.kwargs.sentiment.unit: {unit!r} is not one of: {', '.join(SENTIMENT_UNITS)}"
        )
    compound = vader_compound()
    if unit == "completion":
        value = compound(text)
    else:
        sentences = sentence_split(text)
        value = sum(map(compound, sentences)) / len(sentences) if sentences else 0.0
    return (1.0 + value) / 2.0 if target == "positive" else (1.0 - value) / 2.0


@register_reward("sentiment")
def sentiment(
    prompts: Sequence[Any],
    completions: Sequence[str],
    *,
    target: str = "positive",
    unit: str = "completion",
    **_: Any,
) -> list[float]:
    """The VADER sentiment judge (see the module docstring), in [0, 1] per completion.

    Only the completion is scored, never the prompt. ``target``: "positive" (1 = most
    positive) or "negative" (1 = most negative). ``unit``: "completion" (the whole text, the
    default) or "sentence" (mean over sentences).
    """
    return [sentiment_score(text, target=target, unit=unit) for text in completions]


_LOWER_WORD = re.compile(r"[a-z]+")
_STOP = frozenset(
    ["the", "your", "you", "and", "for", "with", "from", "that", "this", "about", "into", "after"]
)


def content_words(text: str) -> set[str]:
    """Lower-case words of ``text`` of 4+ letters that are not stop words, each cut to its
    first 5 letters (a crude stem: "rainy" matches "rain", "movies" "movie")."""
    return {w[:5] for w in _LOWER_WORD.findall(text.lower()) if len(w) >= 4 and w not in _STOP}


@register_reward("on_topic")
def on_topic(
    prompts: Sequence[Any], completions: Sequence[str], subject: Sequence[str], **_: Any
) -> list[float]:
    """Share of the ``subject`` column's content words (:func:`content_words`) that the
    completion mentions, in [0, 1]: a guard against answers that drift off the question (a
    judge of tone alone pays a cheerful reply about anything). 1.0 for a subject without
    content words."""
    out = []
    for text, topic in zip(completions, subject, strict=True):
        wanted = content_words(str(topic))
        got = content_words(text)
        out.append(len(wanted & got) / len(wanted) if wanted else 1.0)
    return out


TEMPLATES: tuple[str, ...] = (
    "Tell me about {subject}.",
    "What do you think of {subject}?",
    "Describe {subject} in a few sentences.",
    "How do you feel about {subject}?",
    "Write a short message to a friend about {subject}.",
    "Give me your honest opinion of {subject}.",
    "Share a short story about {subject}.",
    "What is the first thing that comes to mind about {subject}?",
    "Chat with me for a moment about {subject}.",
    "If you had to sum up {subject} in two sentences, what would you say?",
)
"""Request shapes; ``{subject}`` is a noun phrase from :data:`SUBJECTS`."""

SUBJECTS: tuple[str, ...] = (
    "your weekend",
    "rainy days",
    "your morning commute",
    "Monday mornings",
    "public transport",
    "cooking dinner after work",
    "the winter months",
    "the town you grew up in",
    "learning a new language",
    "doing the laundry",
    "traffic jams",
    "waiting in line at the post office",
    "airports",
    "homework",
    "noisy neighbours",
    "a long meeting",
    "old black-and-white movies",
    "spicy food",
    "getting up early",
    "gardening",
    "social media",
    "cleaning the kitchen",
    "a power cut",
    "a delayed train",
    "camping in the rain",
    "moving house",
    "a job interview",
    "filling in tax forms",
    "a visit to the dentist",
    "cold coffee",
    "losing your keys",
    "a quiet evening at home",
    "running in the park",
    "a crowded bus",
    "grocery shopping",
    "a phone that keeps crashing",
)
"""Everyday topics, neutral to mildly unpleasant."""


def dialogue_prompts(system_prompt: str | None = None) -> list[Row]:
    """Every prompt row, subject-major: ``prompt`` (a chat) and ``subject`` columns."""
    rows = []
    for subject in SUBJECTS:
        for template in TEMPLATES:
            messages = [{"role": "user", "content": template.format(subject=subject)}]
            if system_prompt:
                messages.insert(0, {"role": "system", "content": system_prompt})
            rows.append({"prompt": messages, "subject": subject})
    return rows


def _judge(target: str, unit: str) -> RewardFunc:
    """The sentiment reward with ``target`` and ``unit`` bound (keeps the name ``sentiment``)."""
    if target not in SENTIMENT_TARGETS:
        raise ValueError(
            f"data.params.target: {target!r} is not one of: {', '.join(SENTIMENT_TARGETS)}"
        )
    if unit not in SENTIMENT_UNITS:
        raise ValueError(f"data.params.unit: {unit!r} is not one of: {', '.join(SENTIMENT_UNITS)}")
    vader_compound()  # fail now, before a model is loaded, if vaderSentiment is missing
    judge = bind_reward_kwargs(sentiment, {"target": target, "unit": unit}, "sentiment")
    return judge  # type: ignore[return-value]


@register_task("dialogue_prompts")
def dialogue_task(
    *,
    train_size: int,
    eval_size: int,
    seed: int,
    target: str = "positive",
    unit: str = "completion",
    system_prompt: str | None = None,
) -> Task:
    """Conversational requests with whole subjects held out; correctness = the sentiment judge.

    ``eval_size`` held-out prompts come from the first ``ceil(eval_size / len(TEMPLATES))``
    subjects of a seeded shuffle; training takes up to ``train_size`` prompts of the other
    subjects (also shuffled). ``target`` and ``unit`` are the judge's (see
    :func:`sentiment`); ``system_prompt`` opens every chat.
    """
    if eval_size < 1:
        raise ValueError(f"data.eval_size must be >= 1, got {eval_size}")
    held_subjects = math.ceil(eval_size / len(TEMPLATES))
    if held_subjects >= len(SUBJECTS):
        raise ValueError(
            f"data.eval_size: {eval_size} held-out prompts would take {held_subjects} of the "
            f"{len(SUBJECTS)} subjects and leave none for training; at most "
            f"{(len(SUBJECTS) - 1) * len(TEMPLATES)}"
        )
    judge = _judge(target, unit)
    subjects = list(SUBJECTS)
    rng = random.Random(seed)
    rng.shuffle(subjects)
    held = set(subjects[:held_subjects])
    rows = dialogue_prompts(system_prompt)
    rng.shuffle(rows)
    held_out = [r for r in rows if r["subject"] in held][:eval_size]
    train = [r for r in rows if r["subject"] not in held][:train_size]
    return Task(
        name="dialogue_prompts",
        train=train,
        eval=held_out,
        reward_funcs=[judge],
        correctness=judge,
        eval_metric="judge score",
    )
