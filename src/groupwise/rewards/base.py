"""Running reward functions: weights, per-function stats, and errors that name the culprit."""

from __future__ import annotations

import importlib
import inspect
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

RewardFunc = Callable[..., Sequence[float | None]]


class RewardError(RuntimeError):
    """A reward function failed or returned something unusable; the message names it."""


def reward_name(func: RewardFunc) -> str:
    """The name a reward is logged under (``rewards/<name>/mean``)."""
    return str(getattr(func, "__name__", type(func).__name__))


def _builtin_rewards() -> dict[str, RewardFunc]:
    from groupwise.rewards import answer

    return {
        "answer_match": answer.answer_match,
        "exact_match": answer.exact_match,
        "number_only": answer.number_only,
    }


BUILTIN_REWARDS: tuple[str, ...] = ("answer_match", "exact_match", "number_only")


def resolve_reward(spec: str | RewardFunc) -> RewardFunc:
    """A callable, a built-in name, or a ``module:function`` import path."""
    if callable(spec):
        return spec
    builtins = _builtin_rewards()
    if spec in builtins:
        return builtins[spec]
    if ":" not in spec:
        raise ValueError(
            f"rewards.funcs: unknown reward {spec!r}; built-ins: {', '.join(builtins)}, "
            "or give an import path 'module:function'"
        )
    module_name, _, attr = spec.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ValueError(f"rewards.funcs: cannot import module {module_name!r}: {exc}") from exc
    func = getattr(module, attr, None)
    if not callable(func):
        raise ValueError(f"rewards.funcs: {spec!r} is not a callable in {module_name}")
    return func


def check_signature(func: RewardFunc) -> None:
    """Reject functions that cannot be called as ``f(prompts=..., completions=..., **columns)``."""
    name = reward_name(func)
    try:
        sig = inspect.signature(func)
    except (TypeError, ValueError):
        return
    params = sig.parameters
    takes_kwargs = any(p.kind is p.VAR_KEYWORD for p in params.values())
    for needed in ("prompts", "completions"):
        if needed not in params and not takes_kwargs:
            raise RewardError(
                f"reward function {name!r} must accept keyword argument {needed!r} "
                "(signature: f(prompts, completions, **kwargs) -> list[float | None])"
            )


@dataclass
class RewardResult:
    """Rewards of one batch."""

    total: torch.Tensor
    """[B] weighted sum over functions (None entries count as 0 in the sum)."""
    per_func: dict[str, torch.Tensor]
    """name -> [B] raw rewards (NaN where the function returned None)."""


class RewardRunner:
    """Calls each reward function on a batch and combines them with weights."""

    def __init__(self, funcs: Sequence[RewardFunc], weights: Sequence[float] | None = None) -> None:
        if not funcs:
            raise ValueError("rewards.funcs: at least one reward function is needed")
        if weights is not None and len(weights) != len(funcs):
            raise ValueError(
                f"rewards.weights has {len(weights)} values for {len(funcs)} reward functions"
            )
        for func in funcs:
            check_signature(func)
        self.funcs = list(funcs)
        self.weights = [float(w) for w in weights] if weights is not None else [1.0] * len(funcs)
        self.names = _unique_names(self.funcs)

    def __call__(
        self, prompts: Sequence[Any], completions: Sequence[str], **columns: Sequence[Any]
    ) -> RewardResult:
        per_func: dict[str, torch.Tensor] = {}
        total = torch.zeros(len(completions), dtype=torch.float32)
        for name, func, weight in zip(self.names, self.funcs, self.weights, strict=True):
            values = self._call_one(name, func, prompts, completions, columns)
            per_func[name] = values
            total += weight * torch.nan_to_num(values, nan=0.0)
        return RewardResult(total=total, per_func=per_func)

    def _call_one(
        self,
        name: str,
        func: RewardFunc,
        prompts: Sequence[Any],
        completions: Sequence[str],
        columns: dict[str, Sequence[Any]],
    ) -> torch.Tensor:
        try:
            out = func(prompts=list(prompts), completions=list(completions), **columns)
        except Exception as exc:
            message = _describe_failure(name, func, exc, prompts, completions, columns)
            raise RewardError(message) from exc
        if not isinstance(out, (list, tuple)) and not hasattr(out, "__len__"):
            raise RewardError(
                f"reward function {name!r} returned {type(out).__name__}; "
                f"expected a list of {len(completions)} floats"
            )
        if len(out) != len(completions):
            raise RewardError(
                f"reward function {name!r} returned {len(out)} values for "
                f"{len(completions)} completions (one float or None per completion)"
            )
        values = []
        for i, value in enumerate(out):
            if value is None:
                values.append(math.nan)
                continue
            try:
                number = float(value)
            except (TypeError, ValueError):
                raise RewardError(
                    f"reward function {name!r} returned {value!r} for completion {i}; "
                    "expected a float or None"
                ) from None
            if not math.isfinite(number):
                raise RewardError(
                    f"reward function {name!r} returned {number} for completion {i} "
                    f"(prompt {_short(prompts[i])}); rewards must be finite or None"
                )
            values.append(number)
        return torch.tensor(values, dtype=torch.float32)


def _unique_names(funcs: Sequence[RewardFunc]) -> list[str]:
    names: list[str] = []
    for func in funcs:
        base = reward_name(func)
        name, k = base, 2
        while name in names:
            name, k = f"{base}_{k}", k + 1
        names.append(name)
    return names


def _short(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _describe_failure(
    name: str,
    func: RewardFunc,
    exc: Exception,
    prompts: Sequence[Any],
    completions: Sequence[str],
    columns: dict[str, Sequence[Any]],
) -> str:
    """Name the function and, by calling it on single samples, the first sample that fails."""
    head = f"reward function {name!r} raised {type(exc).__name__}: {exc}"
    for i in range(len(completions)):
        one = {k: [v[i]] for k, v in columns.items()}
        try:
            func(prompts=[prompts[i]], completions=[completions[i]], **one)
        except Exception:
            return (
                f"{head} (on sample {i}: prompt {_short(prompts[i])}, "
                f"completion {_short(completions[i])})"
            )
    return f"{head} (batch of {len(completions)}; no single sample fails alone)"
