"""Generic text penalties: repeated word n-grams and replies outside a length range.

Words are ``\\w+`` runs. Both are plain rewards in (-1, 0], meant to sit next to a judge in
``rewards.funcs`` (e.g. examples/dialogue.yaml) and keep it from being paid by a reply that
repeats itself or runs on.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from groupwise.rewards.base import register_reward

_WORD = re.compile(r"\w+", re.UNICODE)


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
