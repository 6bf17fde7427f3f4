"""The guessing-game pack: task ``guess`` and environment ``guess``, one game in one place.

The game: the environment holds a secret whole number in ``[low, high]`` (default
:data:`LOW` .. :data:`HIGH`; the row's ``secret`` column, which the policy never sees) and
answers each policy turn:

- exactly one distinct whole number in the message (digits, or a word up to "twenty"):
  ``"Correct!"`` (the episode ends), ``"Higher."`` or ``"Lower."``; a number outside the range
  is told so;
- no number, or several different numbers (a list of guesses in one turn): an error message;
  the turn counts as a guess, so listing candidates cannot beat the game.

The end reward (:meth:`GuessEnvironment.reward`, read by the ``env_reward`` reward function,
the task's default) favours finishing in fewer guesses::

    reward = (max_guesses - guesses + 1) / max_guesses   if solved, else 0

so a first-guess solve scores 1, a solve at the last allowed guess ``1 / max_guesses``. With
``env_kwargs.progress`` an unsolved game scores how far its answers narrowed the range, from
-0.5 to 0 (:meth:`GuessEnvironment.reward`), so the policy is paid for halving before it wins.
With ``say_range`` each answer also states the range left ("Lower. It is from 1 to 49.").
Held-out correctness (``env_solved``) is whether the game was solved.

Limits, stated in a config three times because three parts read them: the range goes in
``data.params`` (the task writes it into the rules) and in ``env_kwargs`` (the environment
checks guesses against it; the two must match, the environment refuses a secret outside its
range); ``max_guesses`` (default :data:`MAX_GUESSES`) should equal the engine's ``max_turns``
(the engine ends the episode there). Used with ``rollout.engine=episodes`` and
``rollout.engine_kwargs={environment: guess, ...}`` (see examples/guess.yaml).

Rows: the prompt states the rules (optionally after one demo game); training rows draw secrets
uniformly with the task seed. The held-out set is every secret of the range once
(``eval_size`` caps it), so held-out success is exact for a greedy policy: no secret is
favoured. The secrets are shared with training by construction (a game has few); what is
measured is the strategy, not memory of a secret, since the prompt is the same for all. The
secret never appears in the conversation before it is guessed; the environment's words are
fixed strings, so nothing the policy writes can make it say "Correct!" except the number.
"""

from __future__ import annotations

import math
import random
import re

from groupwise.data.tasks import Task, register_task
from groupwise.envs.base import ENVIRONMENTS, BaseEnvironment, EnvStep, Row
from groupwise.rewards.environment import env_reward, env_solved

LOW = 1
"""Default lowest secret (``data.params.low``, ``env_kwargs.low``)."""
HIGH = 20
"""Default highest secret (``data.params.high``, ``env_kwargs.high``)."""
MAX_GUESSES = 6
"""Default ``env_kwargs.max_guesses``: the guesses the end reward counts down from."""

SYSTEM = (
    "We are playing a guessing game. I am thinking of a whole number from {low} to {high}. "
    "Each turn, reply with one number only. I will answer Higher, Lower or Correct. "
    "Find my number in as few guesses as possible."
)
USER = "Guess my number. Reply with only the number."


@register_task("guess")
def guess_task(
    *,
    train_size: int,
    eval_size: int,
    seed: int,
    low: int = LOW,
    high: int = HIGH,
    demo: bool = True,
    say_range: bool = False,
    system_prompt: str | None = None,
) -> Task:
    """Rows ``{"prompt": [messages], "secret": int}``; see the module docstring.

    ``low``/``high``: the range (as in the environment's ``env_kwargs``); ``demo``: the
    prompt shows one finished game (three guesses: the middle, lower, higher) before the real
    one, for the reply format; ``say_range``: the demo's answers state the range left, as the
    environment's ``env_kwargs.say_range`` does (set both alike); ``system_prompt`` replaces the rules text (``{low}`` and
    ``{high}`` are filled in).
    """
    if low + 3 > high:
        raise ValueError(f"data.params.low ({low}) must be at least 3 below high ({high})")
    system = (system_prompt or SYSTEM).format(low=low, high=high)
    prompt = [{"role": "system", "content": system}, *_demo(low, high, demo, say_range)]
    prompt.append({"role": "user", "content": ("Correct! New game. " if demo else "") + USER})
    rng = random.Random(seed)
    train = [{"prompt": prompt, "secret": rng.randint(low, high)} for _ in range(train_size)]
    secrets = list(range(low, high + 1))
    random.Random(seed + 1).shuffle(secrets)
    held = [{"prompt": prompt, "secret": s} for s in secrets[:eval_size]]
    return Task("guess", train, held, reward_funcs=[env_reward], correctness=env_solved)


def _demo(low: int, high: int, demo: bool, say_range: bool) -> list[dict[str, str]]:
    """One game as chat messages up to its winning guess (none if ``demo`` is false): the
    middle, then lower, then between; the answers are the environment's own."""
    if not demo:
        return []
    mid = (low + high) // 2
    quarter = (low + mid) // 2
    third = (quarter + mid) // 2
    env = GuessEnvironment(low, high, say_range=say_range)
    env.reset({"secret": third})
    messages = [{"role": "user", "content": USER}]
    for guess in (mid, quarter, third):
        messages.append({"role": "assistant", "content": str(guess)})
        step = env.step(str(guess))
        if not step.done:  # the winning guess's "Correct!" opens the real game's message
            messages.append({"role": "user", "content": str(step.message)})
    return messages


_WORDS = [
    "zero",
    "one",
    "two",
    "three",
    "four",
    "five",
    "six",
    "seven",
    "eight",
    "nine",
    "ten",
    "eleven",
    "twelve",
    "thirteen",
    "fourteen",
    "fifteen",
    "sixteen",
    "seventeen",
    "eighteen",
    "nineteen",
    "twenty",
]
_NUMBER = re.compile(r"\d+|\b(?:" + "|".join(_WORDS) + r")\b", re.IGNORECASE)


def parse_guess(message: str) -> int | str | None:
    """The one number guessed in ``message`` (digits, or a word from zero to twenty); None
    without a number; ``"many"`` when the message holds several different numbers."""
    found = _NUMBER.findall(message)
    numbers = {int(m) if m.isdigit() else _WORDS.index(m.lower()) for m in found}
    if not numbers:
        return None
    if len(numbers) > 1:
        return "many"
    return numbers.pop()


def range_text(low: int, high: int) -> str:
    """How ``say_range`` states the range left: "It is from 51 to 100." (one number: "It is
    51.")."""
    return f"It is {low}." if low == high else f"It is from {low} to {high}."


@ENVIRONMENTS.register("guess")
class GuessEnvironment(BaseEnvironment):
    """Says "Higher." / "Lower." / "Correct!" to each guess of the row's ``secret``."""

    def __init__(
        self,
        low: int = LOW,
        high: int = HIGH,
        max_guesses: int = MAX_GUESSES,
        say_range: bool = False,
        progress: bool = False,
    ) -> None:
        if low >= high:
            raise ValueError(f"env_kwargs: low ({low}) must be below high ({high})")
        if max_guesses < 1:
            raise ValueError(f"env_kwargs.max_guesses must be at least 1, got {max_guesses}")
        self.low, self.high, self.max_guesses = low, high, max_guesses
        self.say_range, self.progress = say_range, progress
        self.secret = low
        self.guesses = 0
        self.solved = False
        self.interval = (low, high)

    def reset(self, row: Row) -> str | None:
        """Take the secret from the row's ``secret`` column."""
        if "secret" not in row:
            raise ValueError("the guess environment needs a 'secret' column in every row")
        secret = int(row["secret"])
        if not self.low <= secret <= self.high:
            raise ValueError(f"secret {secret} is outside env_kwargs [{self.low}, {self.high}]")
        self.secret, self.guesses, self.solved = secret, 0, False
        self.interval = (self.low, self.high)
        return None

    def step(self, policy_message: str) -> EnvStep:
        """Answer one guess (the rules are in the module docstring)."""
        self.guesses += 1
        guess = parse_guess(policy_message)
        if guess is None:
            return EnvStep(f"Please guess one whole number from {self.low} to {self.high}.")
        if guess == "many":
            return EnvStep("One number per guess, please. Guess again.")
        assert isinstance(guess, int)
        if not self.low <= guess <= self.high:
            return EnvStep(f"My number is from {self.low} to {self.high}. Guess again.")
        if guess == self.secret:
            self.solved = True
            return EnvStep("Correct!", done=True)
        return EnvStep(self._direction(guess))

    def _direction(self, guess: int) -> str:
        """The answer "Higher." or "Lower."; with ``say_range``, also the range the answers leave
        ("Higher. It is from 51 to 100.")."""
        lo, hi = self.interval
        lo, hi = (max(lo, guess + 1), hi) if guess < self.secret else (lo, min(hi, guess - 1))
        self.interval = (lo, hi)
        word = "Higher." if guess < self.secret else "Lower."
        return f"{word} {range_text(lo, hi)}" if self.say_range else word

    def reward(self) -> float:
        """``(max_guesses - guesses + 1) / max_guesses`` when solved, else 0; with ``progress``
        an unsolved game scores ``-0.5 * log(left) / log(size)`` instead (``left``: the secrets
        the answers still allow, ``size``: the range's), from -0.5 (nothing learned) to 0
        (narrowed to one number, not said): a dense signal for halving the range, which only
        truthful answers to real guesses narrow; a won game always scores more (> 0)."""
        if not self.solved:
            if not self.progress:
                return 0.0
            lo, hi = self.interval
            return -0.5 * math.log(hi - lo + 1) / math.log(self.high - self.low + 1)
        return max(self.max_guesses - self.guesses + 1, 0) / self.max_guesses
