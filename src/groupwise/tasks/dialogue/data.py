"""Built-in dialogue task: open-ended conversational requests, judged by sentiment.

Prompts are built from :data:`TEMPLATES` x :data:`SUBJECTS` (10 x 36 = 360, no downloads),
e.g. "What do you think of rainy days?" or "Describe your morning commute.". Many subjects are
everyday chores and annoyances, so a cheerful reply is not the obvious one and the judge has
room to move. The split is by subject: the subjects are shuffled with the task seed and whole
subjects are held out (every template of them), so held-out prompts share no subject with the
training prompts, and the held-out score measures a tone learned in general, not per topic.

Correctness is the ``sentiment`` reward (VADER compound mapped to [0, 1], see
:mod:`groupwise.rewards.dialogue`): the held-out "accuracy" the trainer reports is the mean judge
score of the greedy answers, a number in [0, 1] rather than a share of right answers.
"""

from __future__ import annotations

import math
import random

from groupwise.data.tasks import Row, Task, register_task
from groupwise.rewards.base import RewardFunc, bind_reward_kwargs
from groupwise.rewards.dialogue import SENTIMENT_TARGETS, SENTIMENT_UNITS, sentiment, vader_compound

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
    :func:`groupwise.rewards.dialogue.sentiment`); ``system_prompt`` opens every chat.
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
