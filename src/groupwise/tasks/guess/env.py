"""Built-in environment ``guess``: a number-guessing game that answers "higher" or "lower".

The environment holds a secret whole number in ``[low, high]`` (the dataset row's ``secret``
column) and answers each policy turn:

- exactly one distinct whole number in the message (digits, or a word up to "twenty"): ``"Correct!"`` (the episode ends),
  ``"Higher."`` or ``"Lower."``; a number outside the range is told so;
- no number, or several different numbers (a list of guesses in one turn): an error message;
  the turn counts as a guess, so listing candidates cannot beat the game.

The end reward (:meth:`GuessEnvironment.reward`, read by the ``env_reward`` reward function)
favours finishing in fewer guesses::

    reward = (max_guesses - guesses + 1) / max_guesses   if solved, else 0

so a first-guess solve scores 1, a solve at the last allowed guess ``1 / max_guesses``.
``max_guesses`` should equal the engine's ``max_turns`` (the engine ends the episode there).
The secret never appears in the conversation before it is guessed; the environment's words are
fixed strings, so nothing the policy writes can make it say "Correct!" except the number.
"""

from __future__ import annotations

import re

from groupwise.envs.base import ENVIRONMENTS, BaseEnvironment, EnvStep, Row

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


@ENVIRONMENTS.register("guess")
class GuessEnvironment(BaseEnvironment):
    """Says "Higher." / "Lower." / "Correct!" to each guess of the row's ``secret``."""

    def __init__(self, low: int = 1, high: int = 20, max_guesses: int = 6) -> None:
        if low >= high:
            raise ValueError(f"env_kwargs: low ({low}) must be below high ({high})")
        if max_guesses < 1:
            raise ValueError(f"env_kwargs.max_guesses must be at least 1, got {max_guesses}")
        self.low, self.high, self.max_guesses = low, high, max_guesses
        self.secret = low
        self.guesses = 0
        self.solved = False

    def reset(self, row: Row) -> str | None:
        """Take the secret from the row's ``secret`` column."""
        if "secret" not in row:
            raise ValueError("the guess environment needs a 'secret' column in every row")
        secret = int(row["secret"])
        if not self.low <= secret <= self.high:
            raise ValueError(f"secret {secret} is outside env_kwargs [{self.low}, {self.high}]")
        self.secret, self.guesses, self.solved = secret, 0, False
        return None

    def step(self, policy_message: str) -> EnvStep:
        """Answer one guess (see the module docstring)."""
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
        return EnvStep("Higher." if guess < self.secret else "Lower.")

    def reward(self) -> float:
        """``(max_guesses - guesses + 1) / max_guesses`` when solved, else 0."""
        if not self.solved:
            return 0.0
        return max(self.max_guesses - self.guesses + 1, 0) / self.max_guesses
