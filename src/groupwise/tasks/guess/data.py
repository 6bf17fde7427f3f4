"""Built-in task ``guess``: find a secret number, told "higher" or "lower" after each guess.

A multi-turn game for the ``episodes`` engine with the ``guess`` environment
(:mod:`groupwise.tasks.guess.env`): the prompt states the rules; every row carries a ``secret`` in
``[low, high]`` that the environment holds and the policy never sees. Fewer guesses score more
(the environment's end reward, the ``env_reward`` reward function); held-out correctness
(:func:`~groupwise.rewards.environment.env_solved`) is whether the game was solved within the
engine's ``max_turns``.

Training rows draw secrets uniformly with the task seed. The held-out set is every secret of
the range once (``eval_size`` caps it), so held-out success is exact for a greedy policy: no
secret is favoured. The secrets are shared with training by construction (a game has few);
what is measured is the strategy, not memory of a secret, since the prompt is the same for all.
"""

from __future__ import annotations

import random

from groupwise.data.tasks import Task, register_task
from groupwise.rewards.environment import env_reward, env_solved

SYSTEM = (
    "We are playing a guessing game. I am thinking of a whole number from {low} to {high}. "
    "Each turn, reply with one number only. I will answer Higher, Lower or Correct. "
    "Find my number in as few guesses as possible."
)
USER = "Guess my number. Reply with only the number."
DEMO = (("{mid}", "Lower."), ("{quarter}", "Higher."), ("{third}", None))


@register_task("guess")
def guess_task(
    *,
    train_size: int,
    eval_size: int,
    seed: int,
    low: int = 1,
    high: int = 20,
    demo: bool = True,
    system_prompt: str | None = None,
) -> Task:
    """Rows ``{"prompt": [messages], "secret": int}``; see the module docstring.

    ``low``/``high`` must match the environment's ``env_kwargs`` (its range); ``demo``: the
    prompt shows one finished game (three guesses: the middle, lower, higher) before the real
    one, for the reply format; ``system_prompt`` replaces the rules text (``{low}`` and
    ``{high}`` are filled in).
    """
    if low + 3 > high:
        raise ValueError(f"data.params.low ({low}) must be at least 3 below high ({high})")
    system = (system_prompt or SYSTEM).format(low=low, high=high)
    prompt = [{"role": "system", "content": system}, *_demo(low, high, demo)]
    prompt.append({"role": "user", "content": ("Correct! New game. " if demo else "") + USER})
    rng = random.Random(seed)
    train = [{"prompt": prompt, "secret": rng.randint(low, high)} for _ in range(train_size)]
    secrets = list(range(low, high + 1))
    random.Random(seed + 1).shuffle(secrets)
    held = [{"prompt": prompt, "secret": s} for s in secrets[:eval_size]]
    return Task("guess", train, held, reward_funcs=[env_reward], correctness=env_solved)


def _demo(low: int, high: int, demo: bool) -> list[dict[str, str]]:
    """One game as chat messages up to its winning guess (none if ``demo`` is false)."""
    if not demo:
        return []
    mid = (low + high) // 2
    quarter = (low + mid) // 2
    numbers = {"mid": mid, "quarter": quarter, "third": (quarter + mid) // 2}
    messages = [{"role": "user", "content": USER}]
    for guess, answer in DEMO:
        messages.append({"role": "assistant", "content": guess.format(**numbers)})
        if answer is not None:  # the last guess's "Correct!" opens the real game's message
            messages.append({"role": "user", "content": answer})
    return messages
