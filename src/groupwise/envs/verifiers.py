"""verifiers environments as groupwise environments (``pip install 'groupwise[verifiers]'``).

verifiers 0.4 (``import verifiers.v1 as vf``) splits an environment into a *taskset* (a
``vf.Taskset`` whose ``load()`` yields ``vf.Task`` objects, e.g. one per row of a
``datasets.Dataset``), the *task* (its data, its ``toolsets()`` of ``@vf.tool`` methods and its
rubric: the ``@vf.reward(weight=...)`` and ``@vf.metric`` methods, scored on the ``vf.Trace``)
and an *env* (a ``vf.Env`` whose ``run(task, agents)`` is the control flow of an episode: it
opens ``agents.<seat>.interaction(task)`` and talks to the model with ``turn(message)``, each
turn returning the model's reply as a ``vf.Segment``). The pre-0.4 names map onto these:
``SingleTurnEnv`` is a taskset played by ``vf.SingleAgentEnv`` without tools, ``ToolEnv`` the
same with a toolset, ``MultiTurnEnv``'s ``env_response`` / ``is_completed`` are the messages a
``run()`` sends with ``turn`` and the point where it returns, and ``Rubric`` is the task's
reward methods.

verifiers itself drives the model through an OpenAI-compatible client from a *harness* program
in a runtime (a subprocess or container, its calls intercepted by a proxy). This adapter does
not: it plays the model's side in this process, so the ``episodes`` engine decodes every turn
with the policy (its tokens, log-probs and KV cache, as for any environment):

* :func:`verifiers_rows`: the taskset's tasks as groupwise rows (a
  ``groupwise.data.Task(name, train=rows, eval=[])`` for ``GRPOTrainer(config, task=...)``):
  ``prompt`` (the task's system prompt and prompt as chat messages), the task data's own
  fields as columns (e.g. ``answer``) and ``verifiers_task`` (the task class and its data as
  JSON, from which each episode rebuilds the task);
* :class:`VerifiersEnvironment` runs the env's ``run(task, agents)`` (default: the
  single-agent case, ``agents.agent.run(task)``) in a thread of its own, with stand-in agents
  whose ``interaction(task).turn(message)`` hands ``message`` to the engine as the next
  environment message and returns the policy's reply. ``agent.run(task)`` is the tool loop:
  the task's toolsets' ``@vf.tool`` methods are groupwise tools (named
  ``<toolset>_<tool>`` as verifiers advertises them; called in this process, not as MCP
  servers), described in the prompt and run on ``<tool_call>`` blocks
  (:class:`~groupwise.envs.tools.ToolEnvironment`); it ends at the first reply without a
  call. The task's ``@vf.stop`` predicates end the exchange as in verifiers.
* When the interaction closes (``run`` returned, or the engine ended the episode: ``max_turns``
  or the token budget; the pending ``turn`` then returns a terminated segment), the task
  scores the trace (``task.score``): ``reward()`` (the ``env_reward`` column) is
  ``trace.reward``, the weighted sum of the rubric's rewards; ``columns()`` adds
  ``verifiers_rewards`` and ``verifiers_metrics`` (name -> value per episode), which
  :func:`verifiers_score` turns into reward functions named after the components (weight 0:
  logged as ``rewards/<name>/mean`` without changing the reward).

The policy plays one seat: an env whose ``run`` opens a second interaction (e.g.
``user-sim``'s modelled user) is refused. Envs and harnesses that only talk to an OpenAI client
(``bash``, ``codex``...) are served by ``rollout.engine=agent`` (the policy behind groupwise's
OpenAI-compatible endpoint, :mod:`groupwise.rollout.server`), not by this adapter.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import threading
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from typing import Any

from groupwise.envs.base import ENVIRONMENTS, Environment, EnvironmentFactory, EnvStep, Row
from groupwise.envs.extras import import_object, require
from groupwise.envs.schema import Tool
from groupwise.envs.tools import ToolCall, ToolEnvironment

_EXTRA = "verifiers"
_PURPOSE = "the verifiers environment"
_BASE_FIELDS = {
    "idx", "id", "name", "description", "prompt", "system_prompt", "image", "workdir",
    "agent_user", "skills", "network_allow", "network_block", "artifacts",
    "artifact_max_bytes", "timeout", "resources",
}  # fmt: skip
"""``vf.TaskData``'s own fields: not copied to row columns."""


def _vf() -> Any:
    return require("verifiers.v1", _EXTRA, _PURPOSE)


def _path(obj: Any) -> str:
    return f"{obj.__module__}:{obj.__qualname__}"


def _content(content: Any) -> str:
    if isinstance(content, str) or content is None:
        return content or ""
    from verifiers.v1.types import content_text

    return str(content_text(content))


def prompt_messages(data: Any) -> list[dict[str, str]]:
    """A task's ``system_prompt`` and ``prompt`` as chat messages."""
    messages = [{"role": "system", "content": data.system_prompt}] if data.system_prompt else []
    if isinstance(data.prompt, str):
        messages.append({"role": "user", "content": data.prompt})
    for message in data.prompt if isinstance(data.prompt, list) else ():
        messages.append({"role": message.role, "content": _content(message.content)})
    return messages


def verifiers_rows(taskset: Any) -> list[Row]:
    """One groupwise row per task of ``taskset`` (a ``vf.Taskset`` or any iterable of
    ``vf.Task``): ``prompt``, the data's own fields, ``verifiers_task``."""
    _vf()
    rows: list[Row] = []
    for task in taskset:
        data = task.data.model_dump(mode="json", exclude_none=True)
        extra = {k: v for k, v in data.items() if k not in _BASE_FIELDS}
        spec = {"type": _path(type(task)), "data": data}
        rows.append({"prompt": prompt_messages(task.data), **extra, "verifiers_task": spec})
    return rows


def _task(row: Row, config: Any) -> Any:
    """The ``vf.Task`` a row was made from (its ``verifiers_task`` column)."""
    spec = row.get("verifiers_task")
    if not isinstance(spec, Mapping):
        raise ValueError(
            "the verifiers environment needs rows made by groupwise.envs.verifiers."
            "verifiers_rows (a 'verifiers_task' column); this row has none"
        )
    task_cls = import_object(spec["type"], "verifiers_task.type")
    data = task_cls.data_type().model_validate(spec["data"])
    return task_cls(data, config)


def _tools(toolsets: Sequence[Any]) -> list[Tool]:
    """The toolsets' ``@vf.tool`` methods as groupwise tools, named as verifiers does."""
    from verifiers.v1.utils.decorators import discover_decorated

    tools: list[Tool] = []
    for toolset in toolsets:
        prefix = toolset.server_name
        for fn in discover_decorated(toolset, "tool"):
            name = getattr(fn, "tool_name", None) or fn.__name__
            tools.append(Tool.from_function(fn, name=f"{prefix}_{name}" if prefix else name))
    return tools


class _Interaction:
    """Stand-in for ``vf.Interaction``: the caller is the run's user, the policy answers."""

    def __init__(self, episode: VerifiersEnvironment, task: Any, trace: Any) -> None:
        self.episode, self.task, self.trace = episode, task, trace
        self.over = False

    def _add(self, message: Any, sampled: bool) -> None:
        from verifiers.v1.graph import MessageNode

        parent = len(self.trace.nodes) - 1 if self.trace.nodes else None
        self.trace.nodes.append(MessageNode(parent=parent, message=message, sampled=sampled))

    async def turn(self, message: Any = None, *, role: str = "user") -> Any:
        """Send ``message`` (None: the policy speaks first) and return the policy's reply."""
        vf = _vf()
        if self.over:
            return vf.Segment([], terminated=True)
        text = message if isinstance(message, str) or message is None else _content(message)
        if text is not None:
            if role == "tool":
                self._add(vf.ToolMessage(tool_call_id="call", content=text), False)
            else:
                self._add(vf.UserMessage(content=text), False)
        reply = await asyncio.to_thread(self.episode.exchange, text, role)
        if reply is None:  # the engine ended the episode
            self.over = True
            self.trace.stop("groupwise_episode_end")
            return vf.Segment([], terminated=True)
        answer = vf.AssistantMessage(content=reply)
        self._add(answer, True)
        self.over = self._stopped()
        return vf.Segment([answer])

    def _stopped(self) -> bool:
        from verifiers.v1.utils.decorators import invoke

        for fn in self.task.hooks("stop"):
            if invoke(fn, {"trace": self.trace, "task": self.task.data}):
                self.trace.stop(fn.__name__)
                return True
        return False


class _Seat:
    """Stand-in for ``vf.Agent``: the seat the policy plays."""

    def __init__(self, episode: VerifiersEnvironment, name: str) -> None:
        self.episode, self.name = episode, name
        self.trainable = True

    @contextlib.asynccontextmanager
    async def interaction(self, task: Any) -> AsyncIterator[_Interaction]:
        """Open the exchange; on leaving it the task scores the trace."""
        from verifiers.v1.trace import AgentInfo, TraceTask

        vf = _vf()
        if self.episode.trace is not None:
            raise RuntimeError(
                "the verifiers environment: the policy plays one seat, but the env opened a "
                f"second interaction (seat {self.name!r})"
            )
        task_info = TraceTask(type=type(task).__name__, data=task.data, key=task.key)
        agent = AgentInfo(config=vf.AgentConfig(), name=self.name)
        trace = self.episode.trace = vf.Trace(task=task_info, agent=agent)
        interaction = _Interaction(self.episode, task, trace)
        kinds = {"system": vf.SystemMessage, "user": vf.UserMessage}
        for message in prompt_messages(task.data):  # the prompt: the trace's first nodes
            kind = kinds.get(message["role"], vf.AssistantMessage)
            interaction._add(kind(content=message["content"]), False)
        try:
            yield interaction
        finally:
            trace.is_completed = trace.ok = True
            await task.score(trace)

    async def run(self, task: Any) -> Any:
        """The single-agent run: the policy answers, its tool calls run, until a reply
        without one."""
        async with self.interaction(task) as exchange:
            segment = await exchange.turn()
            tools = self.episode.tool_env
            while not segment.terminated and tools.tools:
                result = tools.step(segment.last_reply)
                if result.done:
                    break
                segment = await exchange.turn(result.message, role="tool")
        return exchange.trace


class _Agents:
    """Stand-in for ``vf.Agents``: every seat name is the policy's seat."""

    def __init__(self, episode: VerifiersEnvironment) -> None:
        self._episode = episode

    def __getattr__(self, name: str) -> _Seat:
        if name.startswith("_"):
            raise AttributeError(name)
        return _Seat(self._episode, name)


class VerifiersEnvironment:
    """One episode of a verifiers task, its env's ``run`` in a thread (see the module doc).

    The engine and the episode's thread hand each other one message at a time: the env's
    ``turn(message)`` puts ``(message, role)`` for the engine and waits for the policy's reply
    (None: the engine ended the episode); the thread's end puts None.
    """

    role = "user"

    def __init__(
        self,
        env: type | None = None,
        *,
        env_config: Any = None,
        task_config: Any = None,
        timeout: float = 120.0,
        **tool_options: Any,
    ) -> None:
        _vf()
        self.env_cls, self.env_config, self.task_config = env, env_config, task_config
        self.timeout = timeout
        self.tool_options = tool_options
        self.tool_env = ToolEnvironment([], **tool_options)
        self.trace: Any = None
        self.error: BaseException | None = None
        self.thread: threading.Thread | None = None
        self.ended = False
        self.to_env: queue.Queue[str | None] = queue.Queue()
        self.to_engine: queue.Queue[tuple[str | None, str] | None] = queue.Queue()

    @property
    def tools(self) -> Sequence[Tool]:
        """The task's toolsets' tools (known after ``reset``)."""
        return self.tool_env.tools

    @property
    def calls(self) -> list[ToolCall]:
        """The episode's tool calls."""
        return self.tool_env.calls

    @property
    def errors(self) -> int:
        """The episode's error results."""
        return self.tool_env.errors

    @property
    def failures(self) -> int:
        """The episode's failed calls."""
        return self.tool_env.failures

    def reset(self, row: Row) -> str | None:
        """Start the env's run for the row's task; its first message (if any) is returned."""
        task = _task(row, self.task_config)
        self.thread = threading.Thread(target=self._main, args=(task,), daemon=True)
        self.thread.start()
        return self._next()

    def step(self, policy_message: str) -> EnvStep:
        """Hand the reply to the waiting ``turn``; the env's next message, or done."""
        if self.ended:
            return EnvStep(None, done=True)
        self.to_env.put(policy_message)
        message = self._next()
        return EnvStep(None, done=True) if self.ended else EnvStep(message)

    def exchange(self, message: str | None, role: str) -> str | None:
        """(In the episode's thread) send the env's message, wait for the policy's reply."""
        self.to_engine.put((message, role))
        return self.to_env.get()

    def _next(self) -> str | None:
        try:
            event = self.to_engine.get(timeout=self.timeout)
        except queue.Empty:
            raise TimeoutError(
                f"the verifiers environment: {self._name()} sent nothing for {self.timeout:g} s "
                "(env_kwargs.timeout)"
            ) from None
        if event is not None:
            self.role = event[1]
            return event[0]
        self.ended = True
        if self.thread is not None:
            self.thread.join()
        if self.error is not None:
            raise RuntimeError(
                f"the verifiers environment: {self._name()} raised "
                f"{type(self.error).__name__}: {self.error}"
            ) from self.error
        return None

    def _name(self) -> str:
        return self.env_cls.__name__ if self.env_cls is not None else "the single-agent run"

    def _main(self, task: Any) -> None:
        try:
            asyncio.run(self._episode(task))
        except BaseException as exc:
            self.error = exc
        finally:
            self.to_engine.put(None)

    async def _episode(self, task: Any) -> None:
        vf = _vf()
        toolsets = type(task).toolsets(task.config)
        for toolset in toolsets:
            await toolset.setup()
            await toolset.setup_task(task)
        self.tool_env = ToolEnvironment(_tools(toolsets), **self.tool_options)
        agents = _Agents(self)
        if self.env_cls is None:
            await agents.agent.run(task)
            return
        env: Any = object.__new__(self.env_cls)  # its run/setup/finalize, not its loaders
        env.config = self.env_config or env_config_type(self.env_cls)()
        await env.setup(agents)
        await env.run(task, agents)
        if self.trace is None:
            raise RuntimeError(f"{self.env_cls.__name__}.run() opened no interaction")
        from verifiers.v1.episode import EnvInfo

        episode = vf.Episode(env=EnvInfo(id=env.config.id), task=self.trace.task)
        episode.traces.append(self.trace)
        await env.finalize(task, episode)

    def finish(self) -> None:
        """End the episode (a waiting ``turn`` gets a terminated segment); wait for scoring."""
        while not self.ended and self.thread is not None:
            self.to_env.put(None)
            self._next()

    def reward(self) -> float | None:
        """``trace.reward``: the weighted sum of the rubric's rewards (None: none scored)."""
        self.finish()
        scored = self.trace is not None and any(r is not None for r in self.trace.rewards.values())
        return float(self.trace.reward) if scored else None

    def columns(self) -> dict[str, Any]:
        """``verifiers_rewards`` and ``verifiers_metrics``: this episode's components."""
        self.finish()
        trace = self.trace
        rewards = {} if trace is None else trace.rewards
        return {
            "verifiers_rewards": {k: r.score for k, r in rewards.items() if r is not None},
            "verifiers_metrics": {} if trace is None else dict(trace.metrics),
        }


def env_config_type(env_cls: type) -> type:
    """The ``vf.EnvConfig`` subclass a ``vf.Env`` subclass declares (``Env[Config]``)."""
    from verifiers.v1.utils.generic import concrete_type

    vf = _vf()
    return concrete_type(env_cls, vf.EnvConfig, origin=vf.Env) or vf.EnvConfig


def from_verifiers(env: type | None = None, **options: Any) -> EnvironmentFactory:
    """An environment factory for verifiers tasks (rows of :func:`verifiers_rows`): ``env``
    a ``vf.Env`` subclass (its ``run`` drives the episode; default the single-agent run),
    ``options`` those of :class:`VerifiersEnvironment` (``env_config``, ``task_config``,
    ``timeout``: seconds the engine waits for the env's next message; other options go to
    the tool loop's :class:`~groupwise.envs.tools.ToolEnvironment`, e.g. ``max_chars``)."""
    _vf()

    def build(**_: Any) -> Environment:
        return VerifiersEnvironment(env, **options)

    build.__name__ = "verifiers_environment"
    return build


@ENVIRONMENTS.register("verifiers")
def verifiers_environment(
    env: Any = None, env_config: Mapping[str, Any] | None = None, **options: Any
) -> Environment:
    """The ``verifiers`` environment: ``env`` a ``vf.Env`` subclass or its import path,
    ``env_config`` the fields of its config, ``options`` those of :class:`VerifiersEnvironment`."""
    _vf()
    env_cls = None if env is None else import_object(env, "env_kwargs.env")
    config = None
    if env_config is not None:
        if env_cls is None:
            raise ValueError("the verifiers environment: env_config needs env_kwargs.env")
        config = env_config_type(env_cls)(**env_config)
    return VerifiersEnvironment(env_cls, env_config=config, **options)


def verifiers_score(name: str, *, metric: bool = False) -> Callable[..., list[float | None]]:
    """A reward function giving the rubric component ``name`` of each episode (a
    ``@vf.metric`` with ``metric=True``), named ``verifiers_<name>``: with weight 0 in
    ``rewards.weights`` it is logged as ``rewards/verifiers_<name>/mean``."""
    column = "verifiers_metrics" if metric else "verifiers_rewards"

    def score(
        prompts: Sequence[Any], completions: Sequence[str], **columns: Any
    ) -> list[float | None]:
        values = columns.get(column)
        if values is None:
            raise ValueError(
                f"verifiers_score: no {column!r} column; the verifiers environment fills it"
            )
        return [None if v.get(name) is None else float(v[name]) for v in values]

    score.__name__ = f"verifiers_{name}"
    return score
