"""The records a run writes one JSON line each and reads back: :class:`CompletionRecord`
(``completions.jsonl``: every completion of every training step) and :class:`EvalSample`
(``eval_samples.jsonl``: every held-out answer of every evaluation).

The training step builds the completion records, :class:`groupwise.run.logger.RunLogger`
writes ``to_json()`` of each (and builds the held-out samples), and the readers (the HTML
report, the live view, the trackers' text) use the fields. ``to_json`` gives the keys in the
file's order, so a line reads back and writes again byte for byte (:func:`read_records`).

``from_json`` checks a line read back:

- a key every line has is required: a missing one raises :class:`RecordError`;
- a key only some lines have takes its documented default when missing (``turns`` of a
  completion: None; ``step`` of a held-out sample: None, for files written before it was kept);
- an unknown key, or a value of the wrong type, raises :class:`RecordError`.

The error names the file and line (``where``), the key and what was expected.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeAlias, TypeVar

from groupwise.run.io import read_jsonl

Prompt: TypeAlias = "str | list[dict[str, Any]]"
"""A row's prompt: text, or chat messages ``{"role", "content"}``."""

COMPLETIONS = "completions.jsonl"
"""The file of :class:`CompletionRecord` lines in the run directory."""
EVAL_SAMPLES = "eval_samples.jsonl"
"""The file of :class:`EvalSample` lines in the run directory."""


class RecordError(ValueError):
    """A line read back from a run's records lacks a key, has an unknown one or a value of the
    wrong type; the message names the file and line, the key and what was expected."""


@dataclass
class CompletionRecord:
    """One completion of one training step: a line of ``completions.jsonl``."""

    step: int
    """The step (1-based) whose rollout sampled the completion."""
    prompt: Prompt
    """The row's prompt, as the task gave it."""
    completion: str
    """The decoded completion (special tokens skipped); an episode's whole text after the
    prompt, environment turns included."""
    rewards: dict[str, float | None]
    """Each reward function's value by name; None where it gave None or a non-finite value."""
    reward: float
    """The weighted sum of the reward functions' values, the reward the advantages use."""
    advantage: float
    """The completion's group-relative advantage."""
    truncated: bool
    """Whether the completion was cut at ``rollout.max_completion_length`` (no end of text)."""
    turns: list[dict[str, str]] | None = None
    """An episode's conversation as turns ``{"role", "content"}`` (``assistant`` for the
    policy's tokens, ``environment`` for inserted ones); None for a single-turn completion,
    whose line then has no ``turns`` key."""

    def to_json(self) -> dict[str, Any]:
        """The JSON line's object, keys in the file's order (``turns`` only when set)."""
        out: dict[str, Any] = {
            "step": self.step,
            "prompt": self.prompt,
            "completion": self.completion,
            "rewards": self.rewards,
            "reward": self.reward,
            "advantage": self.advantage,
            "truncated": self.truncated,
        }
        if self.turns is not None:
            out["turns"] = self.turns
        return out

    @classmethod
    def from_json(cls, data: Mapping[str, Any], where: str = COMPLETIONS) -> CompletionRecord:
        """The record of one line's object; raises :class:`RecordError` (see the module)."""
        line = _Line(data, where, cls.__name__)
        line.check_keys(required=_COMPLETION_KEYS, optional=("turns",))
        turns = data.get("turns")
        return cls(
            step=line.integer("step"),
            prompt=line.prompt("prompt"),
            completion=line.text("completion"),
            rewards=line.rewards("rewards"),
            reward=line.number("reward"),
            advantage=line.number("advantage"),
            truncated=line.flag("truncated"),
            turns=None if turns is None else line.turns("turns"),
        )

    def transcript(self) -> str:
        """The completion as a reader sees it: an episode's turns one ``[role] text`` line
        each, else the completion text."""
        if self.turns:
            return "\n".join(f"[{t['role']}] {t['content']}" for t in self.turns)
        return self.completion


_COMPLETION_KEYS = (
    "step",
    "prompt",
    "completion",
    "rewards",
    "reward",
    "advantage",
    "truncated",
)


@dataclass
class EvalSample:
    """One held-out answer of one evaluation: a line of ``eval_samples.jsonl``."""

    label: str
    """Which evaluation: ``"before"``, ``"step N"`` or ``"after"``."""
    step: int | None
    """Steps taken when it ran (a resumed run drops the lines after its checkpoint); None for
    a line written before this was kept, which then has no ``step`` key."""
    index: int
    """The row's position in the held-out set."""
    prompt: Prompt
    """The held-out row's prompt."""
    completion: str
    """The greedy answer."""
    score: float
    """The task's correctness of the answer (1.0 = correct for an accuracy)."""

    def to_json(self) -> dict[str, Any]:
        """The JSON line's object, keys in the file's order (``step`` only when known)."""
        out: dict[str, Any] = {"label": self.label}
        if self.step is not None:
            out["step"] = self.step
        out.update(
            index=self.index, prompt=self.prompt, completion=self.completion, score=self.score
        )
        return out

    @classmethod
    def from_json(cls, data: Mapping[str, Any], where: str = EVAL_SAMPLES) -> EvalSample:
        """The sample of one line's object; raises :class:`RecordError` (see the module)."""
        line = _Line(data, where, cls.__name__)
        line.check_keys(
            required=("label", "index", "prompt", "completion", "score"), optional=("step",)
        )
        return cls(
            label=line.text("label"),
            step=None if data.get("step") is None else line.integer("step"),
            index=line.integer("index"),
            prompt=line.prompt("prompt"),
            completion=line.text("completion"),
            score=line.number("score"),
        )


R = TypeVar("R", CompletionRecord, EvalSample)


def read_records(path: Path, kind: type[R]) -> Iterator[R]:
    """The records of a JSON-lines file, in order (a missing file: none).

    Lines are read by :func:`groupwise.run.io.read_jsonl` (a torn last line is skipped) and
    checked by ``kind.from_json``, whose :class:`RecordError` names ``path:line``.
    """
    for number, data in read_jsonl(path):
        yield kind.from_json(data, where=f"{path}:{number}")


class _Line:
    """Typed access to the keys of one line's object, with errors naming where it is."""

    def __init__(self, data: Mapping[str, Any], where: str, kind: str) -> None:
        if not isinstance(data, Mapping):
            raise RecordError(f"{where}: a {kind} is a JSON object, got {type(data).__name__}")
        self.data, self.where, self.kind = data, where, kind

    def fail(self, key: str, expected: str) -> RecordError:
        value = self.data[key]
        return RecordError(
            f"{self.where}: {self.kind} key {key!r} must be {expected}, "
            f"got {type(value).__name__} {value!r:.80}"
        )

    def check_keys(self, required: tuple[str, ...], optional: tuple[str, ...]) -> None:
        missing = [k for k in required if k not in self.data]
        if missing:
            raise RecordError(f"{self.where}: {self.kind} lacks the key {missing[0]!r}")
        unknown = [k for k in self.data if k not in required and k not in optional]
        if unknown:
            known = ", ".join((*required, *optional))
            raise RecordError(
                f"{self.where}: {self.kind} has an unknown key {unknown[0]!r} (known: {known})"
            )

    def integer(self, key: str) -> int:
        value = self.data[key]
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.fail(key, "an integer")
        return value

    def number(self, key: str) -> float:
        value = self.data[key]
        if not _is_number(value):
            raise self.fail(key, "a number")
        number: float = value  # an int stays an int: the line writes back as it was
        return number

    def flag(self, key: str) -> bool:
        value = self.data[key]
        if not isinstance(value, bool):
            raise self.fail(key, "true or false")
        return value

    def text(self, key: str) -> str:
        value = self.data[key]
        if not isinstance(value, str):
            raise self.fail(key, "a string")
        return value

    def prompt(self, key: str) -> Prompt:
        value = self.data[key]
        if isinstance(value, str):
            return value
        if isinstance(value, list) and all(isinstance(m, dict) for m in value):
            return value
        raise self.fail(key, "a string or a list of messages")

    def rewards(self, key: str) -> dict[str, float | None]:
        value = self.data[key]
        if not isinstance(value, dict) or not all(
            v is None or _is_number(v) for v in value.values()
        ):
            raise self.fail(key, "an object of numbers or nulls by reward function")
        return value

    def turns(self, key: str) -> list[dict[str, str]]:
        value = self.data[key]
        if not isinstance(value, list) or not all(
            isinstance(t, dict)
            and set(t) == {"role", "content"}
            and all(isinstance(x, str) for x in t.values())
            for t in value
        ):
            raise self.fail(key, 'a list of {"role", "content"} strings')
        return value


def _is_number(value: Any) -> bool:
    """An int or a float (NaN and infinities included), not a bool."""
    return not isinstance(value, bool) and isinstance(value, int | float)


__all__ = [
    "COMPLETIONS",
    "EVAL_SAMPLES",
    "CompletionRecord",
    "EvalSample",
    "Prompt",
    "RecordError",
    "read_records",
]
