"""Running reward functions: weights, per-function stats, and errors that name the culprit.

Reward functions may be plain or ``async def``. A :class:`RewardRunner` with more than one
function (or any async one) runs them concurrently: each sync function in a worker thread and
the async ones awaited together in one event loop, so a slow reward (a sandbox, a reward model,
a remote judge) does not hold up the others. Results are combined in the configured order.

A call that does not return within ``timeout`` seconds (``rewards.timeout_s``) raises
:class:`RewardError` naming the function. The batch then runs in a daemon thread and every sync
function in a daemon thread of its own, so the runner never waits for a hung call: the thread
is abandoned (Python cannot stop it) and the process can still exit.

Rewards are resolved by name (:func:`resolve_reward`) from two registries, each filled by a
decorator where the reward is defined (built-ins and user code alike): :data:`REWARDS`
(``@register_reward("name")``, functions usable as they are) and :data:`REWARD_FACTORIES`
(``@register_reward_factory("name")``). Keyword arguments for a reward come from
``rewards.kwargs.<name>``; *factories* (code sandboxes, reward models, the DAPO overlong
penalty) are built from those arguments plus, when their signature asks for them,
``max_completion_length`` (from ``rollout``) and ``unsafe_code_execution`` (from ``rewards``).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import importlib
import inspect
import math
import threading
import time
from collections.abc import (
    Awaitable,
    Callable,
    Collection,
    Coroutine,
    Iterator,
    Mapping,
    Sequence,
)
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

import torch

from groupwise.registry import Registry, UnknownNameError

if TYPE_CHECKING:
    from groupwise.config import RewardsConfig

RewardFunc = Callable[..., Sequence[float | None]]
AsyncRewardFunc = Callable[..., Awaitable[Sequence[float | None]]]
AnyRewardFunc = RewardFunc | AsyncRewardFunc
RewardFactory = Callable[..., AnyRewardFunc]

_T = TypeVar("_T")
_F = TypeVar("_F", bound=Callable[..., Any])
_RESERVED = ("prompts", "completions")


class RewardError(RuntimeError):
    """A reward function failed or returned something unusable; the message names it."""


class RewardTimeoutError(RewardError):
    """A reward function did not return within ``rewards.timeout_s``; the message names it."""


def reward_name(func: AnyRewardFunc) -> str:
    """The name a reward is logged under (``rewards/<name>/mean``)."""
    return str(getattr(func, "__name__", type(func).__name__))


def is_async_reward(func: AnyRewardFunc) -> bool:
    """True for ``async def`` functions (or objects whose ``__call__`` is one)."""
    if inspect.iscoroutinefunction(func):
        return True
    return inspect.iscoroutinefunction(getattr(func, "__call__", None))  # noqa: B004


REWARDS: Registry[AnyRewardFunc] = Registry("rewards.funcs", builtin=True)
"""Reward functions usable as they are, by name (``rewards.kwargs.<name>`` binds arguments)."""
REWARD_FACTORIES: Registry[RewardFactory] = Registry("rewards.funcs", builtin=True)
"""Rewards built by name from ``rewards.kwargs.<name>`` (and the run context); see the module
docstring. When a name is in both registries the factory is used."""


def register_reward(name: str, *, replace: bool = False) -> Callable[[_F], _F]:
    """Decorator adding a reward function ``f(prompts, completions, **columns)`` as ``name``.

    The name can then be given in ``rewards.funcs`` (and ``rewards.kwargs.<name>``);
    registering a taken name needs ``replace=True``.
    """

    def add(func: _F) -> _F:
        REWARDS.add(name, func, replace=replace)
        return func

    return add


def register_reward_factory(name: str, *, replace: bool = False) -> Callable[[_F], _F]:
    """Decorator adding a factory that builds a reward from ``rewards.kwargs.<name>``.

    The factory takes keyword arguments (plus ``max_completion_length`` and
    ``unsafe_code_execution`` when its signature names them) and returns a reward function.
    """

    def add(factory: _F) -> _F:
        REWARD_FACTORIES.add(name, factory, replace=replace)
        return factory

    return add


def builtin_reward_names() -> tuple[str, ...]:
    """Names of the rewards groupwise itself registers: plain ones, then factories."""
    entries: list[tuple[str, Callable[..., Any]]] = [(n, REWARDS.get(n)) for n in REWARDS]
    entries += [(n, REWARD_FACTORIES.get(n)) for n in REWARD_FACTORIES]
    return tuple(n for n, f in entries if getattr(f, "__module__", "").startswith("groupwise."))


def __getattr__(name: str) -> Any:
    if name == "BUILTIN_REWARDS":  # computed: the registries are filled on first lookup
        return builtin_reward_names()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


BUILTIN_REWARDS: tuple[str, ...]
"""Names of the built-in rewards (see :func:`builtin_reward_names`)."""


def resolve_reward(
    spec: str | AnyRewardFunc,
    kwargs: Mapping[str, Any] | None = None,
    *,
    context: Mapping[str, Any] | None = None,
) -> AnyRewardFunc:
    """A callable, a built-in name, or a ``module:function`` import path, with its arguments.

    ``kwargs`` (``rewards.kwargs.<name>``) are bound to the function's named keyword
    parameters, or passed to a factory built-in. ``context`` holds run settings
    (``max_completion_length``, ``unsafe_code_execution``) that a factory receives when its
    signature names them and ``kwargs`` does not set them. Without kwargs a plain built-in or
    import path resolves to the function object itself.
    """
    kwargs = dict(kwargs or {})
    label = spec if isinstance(spec, str) else reward_name(spec)
    if callable(spec):
        return bind_reward_kwargs(spec, kwargs, label)
    if spec in REWARD_FACTORIES:
        return _call_factory(spec, REWARD_FACTORIES.get(spec), kwargs, context or {})
    if spec in REWARDS:
        return bind_reward_kwargs(REWARDS.get(spec), kwargs, spec)
    if ":" not in spec:
        valid = ", ".join((*REWARDS.names(), *REWARD_FACTORIES.names()))
        raise UnknownNameError(
            f"rewards.funcs: unknown reward {spec!r}; valid: {valid}, "
            "or an import path 'module:function'"
        )
    module_name, _, attr = spec.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ValueError(f"rewards.funcs: cannot import module {module_name!r}: {exc}") from exc
    func = getattr(module, attr, None)
    if not callable(func):
        raise ValueError(f"rewards.funcs: {spec!r} is not a callable in {module_name}")
    return bind_reward_kwargs(func, kwargs, spec)


def _keyword_params(func: Callable[..., Any]) -> list[str]:
    """Names that ``func`` accepts as keywords (excluding ``prompts`` and ``completions``)."""
    try:
        params = inspect.signature(func).parameters.values()
    except (TypeError, ValueError):
        return []
    kinds = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    return [p.name for p in params if p.kind in kinds and p.name not in _RESERVED]


def bind_reward_kwargs(func: AnyRewardFunc, kwargs: Mapping[str, Any], label: str) -> AnyRewardFunc:
    """``func`` with ``kwargs`` bound (they override same-named dataset columns).

    Every key must be a named parameter of ``func``; the result keeps ``func``'s name and is
    async when ``func`` is.
    """
    if not kwargs:
        return func
    accepted = _keyword_params(func)
    for key in kwargs:
        if key not in accepted:
            raise ValueError(
                f"rewards.kwargs.{label}: reward {label!r} has no parameter {key!r}; "
                f"it accepts: {', '.join(accepted) or 'none'}"
            )
    bound_kwargs = dict(kwargs)
    target: Any = func
    if is_async_reward(func):

        async def bound_async(*args: Any, **call: Any) -> Sequence[float | None]:
            result: Sequence[float | None] = await target(*args, **{**call, **bound_kwargs})
            return result

        return functools.update_wrapper(bound_async, func)

    def bound(*args: Any, **call: Any) -> Sequence[float | None]:
        result: Sequence[float | None] = target(*args, **{**call, **bound_kwargs})
        return result

    return functools.update_wrapper(bound, func)


def _call_factory(
    name: str, factory: RewardFactory, kwargs: dict[str, Any], context: Mapping[str, Any]
) -> AnyRewardFunc:
    """Build a factory built-in, naming ``rewards.kwargs.<name>`` in every error."""
    accepted = _keyword_params(factory)
    for key in kwargs:
        if key not in accepted:
            raise ValueError(
                f"rewards.kwargs.{name}: reward {name!r} has no parameter {key!r}; "
                f"it accepts: {', '.join(accepted)}"
            )
    full = {k: v for k, v in context.items() if k in accepted and k not in kwargs}
    full.update(kwargs)
    params = inspect.signature(factory).parameters
    missing = [
        p.name
        for p in params.values()
        if p.default is inspect.Parameter.empty
        and p.kind is not p.VAR_KEYWORD
        and p.name not in full
    ]
    if missing:
        raise ValueError(
            f"rewards.kwargs.{name}: reward {name!r} needs {', '.join(missing)} "
            f"(e.g. rewards.kwargs: {{{name}: {{{missing[0]}: ...}}}})"
        )
    try:
        return factory(**full)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"rewards.kwargs.{name}: {exc}") from exc


def rewards_from_config(
    rewards: RewardsConfig,
    *,
    max_completion_length: int | None = None,
    defaults: Sequence[AnyRewardFunc] = (),
) -> list[AnyRewardFunc]:
    """The reward functions of a run: ``rewards.funcs`` with ``rewards.kwargs``, or ``defaults``.

    When ``rewards.funcs`` is None the task's default rewards are used; a default whose name
    is a built-in is rebuilt by name if ``rewards.kwargs`` names it, or if it is a factory
    (so ``unsafe_code_execution`` and ``max_completion_length`` reach it).
    """
    context: dict[str, Any] = {"unsafe_code_execution": rewards.unsafe_code_execution}
    if max_completion_length is not None:
        context["max_completion_length"] = max_completion_length
    all_kwargs = dict(rewards.kwargs or {})
    for key, value in all_kwargs.items():
        if not isinstance(value, Mapping):
            raise ValueError(
                f"rewards.kwargs.{key}: expected a mapping of arguments, got {value!r}"
            )
    if rewards.funcs:
        names = list(rewards.funcs)
        funcs = [resolve_reward(n, all_kwargs.get(n), context=context) for n in names]
    else:
        names = [reward_name(f) for f in defaults]
        funcs = [
            resolve_reward(n, all_kwargs.get(n), context=context)
            if n in all_kwargs or n in REWARD_FACTORIES
            else f
            for n, f in zip(names, defaults, strict=True)
        ]
    unused = sorted(set(all_kwargs) - set(names))
    if unused:
        raise ValueError(
            f"rewards.kwargs.{unused[0]}: no reward function named {unused[0]!r} is used "
            f"(rewards: {', '.join(names) or 'none'})"
        )
    return funcs


EXPECTED_SIGNATURE = "f(prompts, completions, **kwargs) -> list[float | None]"
CALL_KEYWORDS = ("completion_ids", "truncated")
"""Keywords a training step passes every reward function besides ``prompts``, ``completions``
and the dataset columns (``trainer_state`` too, when the function accepts it)."""
TRL_STYLE = "__groupwise_trl_style__"
COMPLETION_MESSAGES = "_completion_messages"
"""Reserved column an engine may add (the ``episodes`` engine does): each completion as the
chat messages of its conversation, what TRL-style functions (:func:`trl_reward`) get as their
``completions`` when the prompt is conversational; no function receives it as a column."""


class TrainerState:
    """What TRL hands reward functions as ``trainer_state``: ``global_step`` (steps finished so
    far, read from the trainer's counters once :meth:`bind` is called) and ``max_steps``."""

    def __init__(self, max_steps: int = 0) -> None:
        self.max_steps = max_steps
        self._counters: Any = None

    def bind(self, counters: Any, max_steps: int) -> None:
        """Follow ``counters.step`` (``groupwise.run.checkpoint.Counters``) from now on."""
        self._counters, self.max_steps = counters, max_steps

    @property
    def global_step(self) -> int:
        """Training steps finished (the step being scored is ``global_step + 1``)."""
        return int(self._counters.step) if self._counters is not None else 0

    def __repr__(self) -> str:
        return f"TrainerState(global_step={self.global_step}, max_steps={self.max_steps})"


def trl_reward(func: AnyRewardFunc) -> AnyRewardFunc:
    """``func`` called as TRL calls reward functions: for conversational prompts (lists of
    ``{"role", "content"}`` messages) each completion arrives as ``[{"role": "assistant",
    "content": text}]`` instead of the text; plain prompts keep string completions."""
    if getattr(func, TRL_STYLE, False):
        return func
    target: Any = func
    if is_async_reward(func):

        async def call_async(*args: Any, **kwargs: Any) -> Sequence[float | None]:
            result: Sequence[float | None] = await target(*args, **kwargs)
            return result

        wrapped: AnyRewardFunc = functools.update_wrapper(call_async, func)
    else:

        def call(*args: Any, **kwargs: Any) -> Sequence[float | None]:
            result: Sequence[float | None] = target(*args, **kwargs)
            return result

        wrapped = functools.update_wrapper(call, func)
    setattr(wrapped, TRL_STYLE, True)
    return wrapped


def accepts_keyword(func: Callable[..., Any], name: str) -> bool:
    """Whether ``func`` can be called with keyword ``name`` (a named parameter or ``**kwargs``)."""
    try:
        params = inspect.signature(func).parameters.values()
    except (TypeError, ValueError):
        return False
    kinds = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    return any(p.kind is p.VAR_KEYWORD or (p.name == name and p.kind in kinds) for p in params)


def check_signature(
    func: Callable[..., Any],
    passed: Collection[str] | None = None,
    *,
    kind: str = "reward function",
) -> None:
    """Reject a function that cannot be called as ``f(prompts=..., completions=..., **passed)``.

    ``passed``: the other keywords it will be given (dataset columns and, for rewards,
    :data:`CALL_KEYWORDS`); None = unknown, only ``prompts`` and ``completions`` are checked.
    The error names the function and the expected signature.
    """
    name = reward_name(func)
    try:
        params = inspect.signature(func).parameters
    except (TypeError, ValueError):
        return
    takes_kwargs = any(p.kind is p.VAR_KEYWORD for p in params.values())
    named = {n: p for n, p in params.items() if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    problem = None
    for needed in _RESERVED:
        if needed not in named and not takes_kwargs:
            problem = f"must accept keyword argument {needed!r}"
            break
    required = [
        p.name
        for p in params.values()
        if p.default is p.empty and p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)
    ]
    given = set(_RESERVED) | {"trainer_state"} | set(passed or ())
    if problem is None and passed is not None:
        lacking = [n for n in required if n not in given or n not in named]
        extra = sorted(k for k in set(passed) - set(named) if not takes_kwargs)
        columns = ", ".join(sorted(set(passed) - set(CALL_KEYWORDS))) or "none"
        if lacking:
            problem = (
                f"requires {lacking[0]!r}, which it will not be given (dataset columns: {columns})"
            )
        elif extra:
            problem = f"does not accept keyword {extra[0]!r}, which it will be given (add **kwargs)"
    if problem is not None:
        raise RewardError(f"{kind} {name!r} {problem}; expected signature: {EXPECTED_SIGNATURE}")


def check_task_functions(
    funcs: Sequence[AnyRewardFunc], task: Any, *, engine_adds_columns: bool = False
) -> None:
    """Check, before training, that every reward function can take what a step passes it (the
    training rows' columns plus :data:`CALL_KEYWORDS`) and ``task.correctness`` what evaluation
    passes it (the held-out rows' columns). ``engine_adds_columns``: the rollout engine may add
    columns (e.g. ``env_reward``), so only ``prompts`` and ``completions`` are checked."""

    def columns(rows: Sequence[Mapping[str, Any]]) -> set[str] | None:
        if engine_adds_columns or not rows:
            return None
        return {k for k in rows[0] if k != "prompt"}

    train = columns(task.train)
    for func in funcs:
        check_signature(func, None if train is None else train | set(CALL_KEYWORDS))
    if task.correctness is not None:
        check_signature(task.correctness, columns(task.eval), kind="correctness function")


def run_coroutine(coro: Coroutine[Any, Any, _T]) -> _T:
    """Run ``coro`` to completion, also when the calling thread already runs an event loop."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    with ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, coro).result()


def call_reward(func: AnyRewardFunc, **kwargs: Any) -> Any:
    """Call one reward function synchronously (an async one is run to completion)."""
    out = func(**kwargs)
    if inspect.isawaitable(out):
        return run_coroutine(_await(out))
    return out


async def _await(awaitable: Awaitable[_T]) -> _T:
    return await awaitable


def in_daemon_thread(fn: Callable[[], _T], name: str = "reward") -> concurrent.futures.Future[_T]:
    """Start ``fn()`` in a new daemon thread; its result (or exception) arrives in the future.

    Unlike a ``ThreadPoolExecutor`` worker, a daemon thread that never returns is not joined,
    neither by the caller nor at interpreter exit.
    """
    future: concurrent.futures.Future[_T] = concurrent.futures.Future()

    def run() -> None:
        try:
            future.set_result(fn())
        except BaseException as exc:  # handed to the waiting side
            future.set_exception(exc)

    threading.Thread(target=run, name=name, daemon=True).start()
    return future


def call_reward_within(func: AnyRewardFunc, timeout: float, **kwargs: Any) -> Any:
    """:func:`call_reward`, giving up after ``timeout`` s with :class:`RewardTimeoutError`
    (0 = no limit); the call is then left running in its daemon thread."""
    if timeout <= 0:
        return call_reward(func, **kwargs)
    name = reward_name(func)
    future = in_daemon_thread(functools.partial(call_reward, func, **kwargs), f"reward-{name}")
    done, _ = concurrent.futures.wait([future], timeout)
    if not done:
        raise RewardTimeoutError(
            f"reward function {name!r} did not return within {timeout} s (rewards.timeout_s)"
        )
    return future.result()


class _Calls:
    """The reward calls of one batch under way, and since when, as the waiting thread sees them
    while another thread runs the batch."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._running: dict[str, float] = {}
        self._outcome: tuple[list[Any] | None, BaseException | None] | None = None

    @contextmanager
    def running(self, name: str) -> Iterator[None]:
        """Mark the call of ``name`` as under way while the block runs."""
        with self._cond:
            self._running[name] = time.monotonic()
        try:
            yield
        finally:
            with self._cond:
                self._running.pop(name, None)
                self._cond.notify_all()

    def finish(self, outputs: list[Any] | None, error: BaseException | None = None) -> None:
        """The batch is done: its outputs, or the error that ended it."""
        with self._cond:
            self._outcome = (outputs, error)
            self._cond.notify_all()

    def wait(self, timeout: float) -> list[str]:
        """Block until the batch is done (returns []) or calls have run ``timeout`` s or more
        (returns their names, the longest-running first)."""
        with self._cond:
            while self._outcome is None:
                now = time.monotonic()
                overdue = [n for n, t in self._running.items() if now - t >= timeout]
                if overdue:
                    return overdue
                first = min(self._running.values(), default=now)
                self._cond.wait(first + timeout - now)
            return []

    def outputs(self) -> list[Any]:
        """The finished batch's outputs (re-raises what ended it early)."""
        assert self._outcome is not None
        outputs, error = self._outcome
        if error is not None:
            raise error
        assert outputs is not None
        return outputs


@dataclass
class RewardResult:
    """Rewards of one batch."""

    total: torch.Tensor
    """[B] weighted sum over functions (None entries count as 0 in the sum)."""
    per_func: dict[str, torch.Tensor]
    """name -> [B] raw rewards (NaN where the function returned None)."""


@dataclass
class _Failure:
    exc: Exception


class RewardRunner:
    """Calls each reward function on a batch and combines them with weights.

    ``concurrent`` (default) runs the functions of a batch at the same time when there are
    several or any is async; ``max_workers`` bounds the threads for sync functions (default:
    one per sync function). ``timeout``: seconds a call may take before :class:`RewardError`
    is raised (0 = no limit); the hung call is left running in its daemon thread.
    """

    def __init__(
        self,
        funcs: Sequence[AnyRewardFunc],
        weights: Sequence[float] | None = None,
        *,
        concurrent: bool = True,
        max_workers: int | None = None,
        timeout: float = 300.0,
    ) -> None:
        if not funcs:
            raise ValueError("rewards.funcs: at least one reward function is needed")
        if weights is not None and len(weights) != len(funcs):
            raise ValueError(
                f"rewards.weights has {len(weights)} values for {len(funcs)} reward functions"
            )
        if not timeout >= 0:
            raise ValueError(f"rewards.timeout_s must be >= 0 (0 = no limit), got {timeout}")
        for func in funcs:
            check_signature(func)
        self.funcs = list(funcs)
        self.state = TrainerState()
        """Passed as ``trainer_state`` to the functions that accept it (TRL's convention)."""
        self._wants_state = [accepts_keyword(f, "trainer_state") for f in self.funcs]
        self._trl_style = [bool(getattr(f, TRL_STYLE, False)) for f in self.funcs]
        self.weights = [float(w) for w in weights] if weights is not None else [1.0] * len(funcs)
        self.names = _unique_names(self.funcs)
        self.concurrent = concurrent
        self.max_workers = max_workers
        self.timeout = float(timeout)

    def __call__(
        self, prompts: Sequence[Any], completions: Sequence[str], **columns: Sequence[Any]
    ) -> RewardResult:
        per_func: dict[str, torch.Tensor] = {}
        total = torch.zeros(len(completions), dtype=torch.float32)
        outputs = self._call_all(prompts, completions, columns)
        for i, (name, func, weight, out) in enumerate(
            zip(self.names, self.funcs, self.weights, outputs, strict=True)
        ):
            if isinstance(out, _Failure):
                args = functools.partial(self.arguments, i)
                message = _describe_failure(
                    name, func, out.exc, prompts, completions, columns, self.timeout, args
                )
                raise RewardError(message) from out.exc
            values = self._check(name, out, prompts, completions)
            per_func[name] = values
            total += weight * torch.nan_to_num(values, nan=0.0)
        return RewardResult(total=total, per_func=per_func)

    def _call_all(
        self, prompts: Sequence[Any], completions: Sequence[str], columns: dict[str, Sequence[Any]]
    ) -> list[Any]:
        """Every function's raw output (or its exception); with a timeout, the batch runs in a
        daemon thread and this one only waits, so a hung call cannot hold it."""

        def arguments(i: int) -> dict[str, Any]:
            return self.arguments(i, prompts, completions, columns)

        calls = _Calls()
        if not self.timeout:
            return self._run_batch(arguments, calls)

        def run() -> None:
            try:
                calls.finish(self._run_batch(arguments, calls))
            except BaseException as exc:  # re-raised in the waiting thread
                calls.finish(None, exc)

        threading.Thread(target=run, name="reward-batch", daemon=True).start()
        overdue = calls.wait(self.timeout)
        if overdue:
            others = f" (also still running: {', '.join(overdue[1:])})" if overdue[1:] else ""
            raise RewardTimeoutError(
                f"reward function {overdue[0]!r} did not return within {self.timeout} s "
                f"(rewards.timeout_s) on a batch of {len(completions)} completions{others}; "
                "it is left running in a background thread and this step's update is not made. "
                "Make it return sooner (e.g. give its remote calls their own timeout) or raise "
                "rewards.timeout_s (0 = no limit)"
            )
        return calls.outputs()

    def arguments(
        self,
        index: int,
        prompts: Sequence[Any],
        completions: Sequence[str],
        columns: Mapping[str, Sequence[Any]],
    ) -> dict[str, Any]:
        """The keyword arguments of function ``index``: fresh lists (no shared mutation), the
        completions as chat messages where the function is TRL-style and the prompt a
        conversation (the conversation's messages of the :data:`COMPLETION_MESSAGES` column
        where an engine gives them, as TRL does for tool calls: the final answer is
        ``completions[i][-1]["content"]``; else one assistant message, the text), and
        ``trainer_state`` where the function accepts it."""
        args: dict[str, Any] = {k: list(v) for k, v in columns.items() if k != COMPLETION_MESSAGES}
        texts: list[Any] = list(completions)
        if self._trl_style[index]:
            messages = columns.get(COMPLETION_MESSAGES) or [None] * len(texts)
            texts = [
                (m or [{"role": "assistant", "content": t}]) if isinstance(p, list) else t
                for p, t, m in zip(prompts, completions, messages, strict=True)
            ]
        args.update(prompts=list(prompts), completions=texts)
        if self._wants_state[index]:
            args["trainer_state"] = self.state
        return args

    def _run_batch(self, arguments: Callable[[int], dict[str, Any]], calls: _Calls) -> list[Any]:
        """Call the functions one after another, or concurrently when useful."""
        parallel = len(self.funcs) > 1 or any(is_async_reward(f) for f in self.funcs)
        if not (self.concurrent and parallel):
            outputs: list[Any] = []
            for i, (name, func) in enumerate(zip(self.names, self.funcs, strict=True)):
                try:
                    with calls.running(name):
                        outputs.append(call_reward(func, **arguments(i)))
                except Exception as exc:
                    outputs.append(_Failure(exc))
            return outputs
        return run_coroutine(self._gather([arguments(i) for i in range(len(self.funcs))], calls))

    async def _gather(self, arguments: list[dict[str, Any]], calls: _Calls) -> list[Any]:
        """Sync functions in daemon threads (at most ``max_workers`` at once), async ones in this
        loop; all at once."""
        num_sync = sum(not is_async_reward(f) for f in self.funcs)
        slots = asyncio.Semaphore(max(1, min(self.max_workers or num_sync, num_sync)))

        def tracked(name: str, func: AnyRewardFunc, kwargs: dict[str, Any]) -> Any:
            with calls.running(name):
                return func(**kwargs)

        async def one(name: str, func: AnyRewardFunc, kwargs: dict[str, Any]) -> Any:
            try:
                if is_async_reward(func):
                    with calls.running(name):
                        out = await func(**kwargs)  # type: ignore[misc]
                else:
                    async with slots:
                        work = functools.partial(tracked, name, func, kwargs)
                        out = await asyncio.wrap_future(in_daemon_thread(work, f"reward-{name}"))
                if inspect.isawaitable(out):
                    with calls.running(name):
                        out = await out
                return out
            except Exception as exc:
                return _Failure(exc)

        jobs = [one(*job) for job in zip(self.names, self.funcs, arguments, strict=True)]
        return list(await asyncio.gather(*jobs))

    @staticmethod
    def _check(
        name: str, out: Any, prompts: Sequence[Any], completions: Sequence[str]
    ) -> torch.Tensor:
        """Validate one function's output and turn it into a [B] tensor (None -> NaN)."""
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


def _unique_names(funcs: Sequence[AnyRewardFunc]) -> list[str]:
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
    func: AnyRewardFunc,
    exc: Exception,
    prompts: Sequence[Any],
    completions: Sequence[str],
    columns: dict[str, Sequence[Any]],
    timeout: float = 0.0,
    arguments: Callable[..., dict[str, Any]] | None = None,
) -> str:
    """Name the function and, by calling it on single samples, the first sample that fails
    (each call given up after ``timeout`` s, which ends the search). ``arguments(prompts,
    completions, columns)`` builds the call (default: as given, no ``trainer_state``)."""
    head = f"reward function {name!r} raised {type(exc).__name__}: {exc}"
    for i in range(len(completions)):
        one = {k: [v[i]] for k, v in columns.items()}
        if arguments is None:
            kwargs = {**one, "prompts": [prompts[i]], "completions": [completions[i]]}
        else:
            kwargs = arguments([prompts[i]], [completions[i]], one)
        try:
            call_reward_within(func, timeout, **kwargs)
        except RewardTimeoutError:
            return f"{head} (batch of {len(completions)}; sample {i} alone did not return in time)"
        except Exception:
            return (
                f"{head} (on sample {i}: prompt {_short(prompts[i])}, "
                f"completion {_short(completions[i])})"
            )
    return f"{head} (batch of {len(completions)}; no single sample fails alone)"
