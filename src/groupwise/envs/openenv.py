"""OpenEnv environments as groupwise environments (``pip install 'groupwise[openenv]'``).

OpenEnv (``openenv-core``) environments follow a Gym-like API: ``reset(**kwargs)`` and
``step(action)`` return an ``Observation`` (a pydantic model with ``done``, ``reward`` and the
environment's own fields); ``state`` describes the episode. They run in this process (an
``openenv.core.Environment`` subclass) or behind OpenEnv's server (its FastAPI app, reached
with its WebSocket client ``GenericEnvClient``, or a typed ``EnvClient`` of the environment).
:func:`from_openenv` adapts either to the :class:`~groupwise.envs.base.Environment` protocol,
one OpenEnv environment (or client session) per episode:

* ``reset(row)`` calls OpenEnv's ``reset(**reset_kwargs, **{c: row[c] for c in row_kwargs})``
  and returns the observation's text, appended to the prompt (with ``row_kwargs`` such as a
  seed column, the G episodes of a row start from the same state, as a group must);
* ``step(text)`` turns the policy's reply into an action with ``parse_action(text)``, calls
  OpenEnv's ``step`` and returns ``EnvStep(observation text, done, reward)``: the observation
  is the next message of the conversation (role ``role``, default ``"user"``), ``done`` ends
  the episode, the step's ``reward`` is kept as a per-turn reward;
* ``reward()`` (the ``env_reward`` column) is the sum of the step rewards
  (``reward="last"``: the last one; None when OpenEnv gave none).

**Text to action** (``parse_action``, explicit): the default, :func:`text_action`, reads the
reply as the action's JSON object when it is one (``{"guess": "crane"}``, also inside a
```` ``` ```` fence), else puts the stripped text into the action's one required field (the
text-action case: a chat message, a guess, a command). The action class comes from
``action=`` or the environment's ``Environment[ActT, ObsT, StateT]`` base. A reply that is no
valid action is answered with ``error: <why>`` (the episode goes on, counted in ``errors``).

**Observation to text** (``format_observation``): it receives the observation's fields (without
``done``, ``reward`` and ``metadata``) as a dict; the default, :func:`observation_text`, gives a
lone string field as is, else the fields as JSON.

Registered as the environment ``openenv``, its ``env_kwargs`` being :func:`from_openenv`'s
arguments (classes and functions as ``"module:attribute"`` import paths)::

    rollout.engine=episodes
    rollout.engine_kwargs={"environment": "openenv", "env_kwargs": {"env": "my_pkg.env:EchoEnv"}}
"""

from __future__ import annotations

import json
import typing
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from groupwise.envs.base import ENVIRONMENTS, Environment, EnvironmentFactory, EnvStep, Row
from groupwise.envs.extras import import_object, require

_EXTRA = "openenv"
_NOT_FIELDS = {"done", "reward", "metadata"}

Outcome = tuple[dict[str, Any], float | None, bool]
"""An OpenEnv result as (observation fields, reward, done)."""


def observation_text(fields: Mapping[str, Any]) -> str:
    """The default text of an observation: its one string field, else its fields as JSON."""
    if len(fields) == 1:
        (value,) = fields.values()
        if isinstance(value, str):
            return value
    return json.dumps(dict(fields), ensure_ascii=False, default=str)


def _fields(observation: Any) -> dict[str, Any]:
    """The observation's own fields (a pydantic Observation or a client's dict)."""
    if hasattr(observation, "model_dump"):
        observation = observation.model_dump()
    if not isinstance(observation, Mapping):
        return {"observation": observation}
    return {k: v for k, v in observation.items() if k not in _NOT_FIELDS}


def _strip_fence(text: str) -> str:
    text = text.strip()
    if text.startswith("```") and text.endswith("```") and "\n" in text:
        text = "\n".join(text.splitlines()[1:-1]).strip()
    return text


def text_action(action_cls: Any | None) -> Callable[[str], Any]:
    """The default ``parse_action`` for ``action_cls`` (an OpenEnv ``Action`` subclass).

    A reply that is a JSON object (optionally fenced) is validated as the action; any other
    reply fills the action's one required field (its fields other than ``metadata``: the one
    without a default, else the only one). Without a class (a generic client) the JSON
    object is sent as is.
    """
    field = _text_field(action_cls) if action_cls is not None else None

    def parse(text: str) -> Any:
        body = _strip_fence(text)
        if body.startswith("{"):
            try:
                data = json.loads(body)
            except json.JSONDecodeError:
                data = None
            if isinstance(data, dict):
                return data if action_cls is None else action_cls.model_validate(data)
        if action_cls is None:
            raise ValueError('reply with the action as a JSON object, e.g. {"field": "value"}')
        if field is None:
            raise ValueError(f"reply with a {action_cls.__name__} as a JSON object")
        return action_cls(**{field: text.strip()})

    return parse


def _text_field(action_cls: type) -> str | None:
    """The action field a plain-text reply fills (None when there is no single one)."""
    fields = {k: f for k, f in getattr(action_cls, "model_fields", {}).items() if k != "metadata"}
    required = [k for k, f in fields.items() if f.is_required()]
    if len(required) == 1:
        return required[0]
    return next(iter(fields)) if len(fields) == 1 and not required else None


def action_type(env: Any) -> type | None:
    """The ``ActT`` of an ``Environment[ActT, ObsT, StateT]`` subclass instance, if declared."""
    from openenv.core import Action
    from openenv.core import Environment as OpenEnvBase

    todo = list(getattr(type(env), "__orig_bases__", ()))
    for klass in type(env).__mro__:
        todo.extend(getattr(klass, "__orig_bases__", ()))
    for base in todo:
        origin = typing.get_origin(base)
        args = typing.get_args(base)
        if isinstance(origin, type) and issubclass(origin, OpenEnvBase) and args:
            first = args[0]
            if isinstance(first, type) and issubclass(first, Action):
                return first
    return None


class _InProcess:
    """An OpenEnv ``Environment`` instance, called directly."""

    def __init__(self, env: Any) -> None:
        self.env = env

    def reset(self, **kwargs: Any) -> Outcome:
        obs = self.env.reset(**kwargs)
        return _fields(obs), obs.reward, bool(obs.done)

    def step(self, action: Any) -> Outcome:
        obs = self.env.step(action)
        return _fields(obs), obs.reward, bool(obs.done)

    def close(self) -> None:
        self.env.close()


class _Client:
    """An OpenEnv client session (``EnvClient``, used through its ``sync()`` wrapper)."""

    def __init__(self, client: Any) -> None:
        self.client = client.sync() if hasattr(client, "sync") else client
        self.open = False

    def _outcome(self, result: Any) -> Outcome:
        return _fields(result.observation), result.reward, bool(result.done)

    def reset(self, **kwargs: Any) -> Outcome:
        if not self.open:
            self.client.connect()
            self.open = True
        return self._outcome(self.client.reset(**kwargs))

    def step(self, action: Any) -> Outcome:
        return self._outcome(self.client.step(action))

    def close(self) -> None:
        if self.open:
            self.open = False
            self.client.close()


class OpenEnvEnvironment:
    """One episode against one OpenEnv environment or client session (see the module doc)."""

    def __init__(
        self,
        backend: _InProcess | _Client,
        parse_action: Callable[[str], Any],
        *,
        format_observation: Callable[[Mapping[str, Any]], str] = observation_text,
        reset_kwargs: Mapping[str, Any] | None = None,
        row_kwargs: Sequence[str] = (),
        reward: str = "sum",
        role: str = "user",
    ) -> None:
        if reward not in ("sum", "last"):
            raise ValueError(f"openenv: reward must be 'sum' or 'last', got {reward!r}")
        self.backend = backend
        self.parse_action = parse_action
        self.format_observation = format_observation
        self.reset_kwargs = dict(reset_kwargs or {})
        self.row_kwargs = list(row_kwargs)
        self.reward_mode = reward
        self.role = role
        self.rewards: list[float] = []
        self.errors = 0  # replies that were no valid action
        self.done = False

    def reset(self, row: Row) -> str | None:
        """OpenEnv's ``reset``; its observation's text is appended to the prompt."""
        missing = [c for c in self.row_kwargs if c not in row]
        if missing:
            raise ValueError(f"openenv: row_kwargs {missing} are not columns of the row")
        kwargs = self.reset_kwargs | {c: row[c] for c in self.row_kwargs}
        self.rewards, self.errors, self.done = [], 0, False
        fields, _, _ = self.backend.reset(**kwargs)
        return self.format_observation(fields) or None

    def step(self, policy_message: str) -> EnvStep:
        """Parse the reply into an action and step; an invalid one is answered with its error."""
        try:
            action = self.parse_action(policy_message)
        except Exception as exc:
            self.errors += 1
            return EnvStep(f"error: not a valid action ({type(exc).__name__}: {exc})")
        fields, reward, done = self.backend.step(action)
        if reward is not None:
            self.rewards.append(float(reward))
        if done:
            self.finish()
        text = self.format_observation(fields) or None
        return EnvStep(text, done=done, reward=None if reward is None else float(reward))

    def reward(self) -> float | None:
        """The sum (or last) of the step rewards; None when there was none. Ends the episode."""
        self.finish()
        if not self.rewards:
            return None
        return self.rewards[-1] if self.reward_mode == "last" else sum(self.rewards)

    def finish(self) -> None:
        """Close the environment or client session (once)."""
        if not self.done:
            self.done = True
            self.backend.close()


def from_openenv(
    env: Callable[[], Any] | None = None,
    *,
    base_url: str | None = None,
    client: Callable[[], Any] | None = None,
    action: type | None = None,
    parse_action: Callable[[str], Any] | None = None,
    format_observation: Callable[[Mapping[str, Any]], str] | None = None,
    reset_kwargs: Mapping[str, Any] | None = None,
    row_kwargs: Sequence[str] = (),
    reward: str = "sum",
    role: str = "user",
) -> EnvironmentFactory:
    """An environment factory for an OpenEnv environment; give exactly one of

    * ``env``: an ``openenv.core.Environment`` subclass (or a no-argument function building
      one instance): one instance per episode, in this process;
    * ``base_url``: an OpenEnv server (``http://host:port``): one ``GenericEnvClient``
      session per episode (the server must allow as many concurrent sessions as the
      episodes of a batch: ``max_concurrent_envs``);
    * ``client``: a no-argument function returning an OpenEnv ``EnvClient`` (or its
      ``sync()`` wrapper), e.g. the environment's typed client class bound to a URL.

    ``action``: the action class (inferred from ``env``'s ``Environment[ActT, ...]`` base when
    not given); ``parse_action(text) -> action`` (default :func:`text_action`);
    ``format_observation(fields) -> str`` (default :func:`observation_text`);
    ``reset_kwargs``: fixed arguments of ``reset``; ``row_kwargs``: row columns passed to
    ``reset`` by name; ``reward``: ``"sum"`` or ``"last"`` of the step rewards;
    ``role``: the chat role of the observations.
    """
    require("openenv.core", _EXTRA, "the openenv environment")
    given = [name for name, v in (("env", env), ("base_url", base_url), ("client", client)) if v]
    if len(given) != 1:
        raise ValueError(f"openenv: give exactly one of env, base_url, client (got {given})")
    if env is not None and not callable(env):
        raise TypeError(
            f"openenv: env must be an Environment class or a function building one (one "
            f"instance per episode), got {type(env).__name__}"
        )
    options: dict[str, Any] = {
        "format_observation": format_observation or observation_text,
        "reset_kwargs": reset_kwargs,
        "row_kwargs": row_kwargs,
        "reward": reward,
        "role": role,
    }

    def build(**_: Any) -> Environment:
        backend: _InProcess | _Client
        if env is not None:
            instance = env()
            backend = _InProcess(instance)
            action_cls = action or action_type(instance)
        else:
            if base_url is not None:
                from openenv import GenericEnvClient

                backend = _Client(GenericEnvClient(base_url=base_url))
            else:
                assert client is not None
                backend = _Client(client())
            action_cls = action
        parse = parse_action or text_action(action_cls)
        return OpenEnvEnvironment(backend, parse, **options)

    build.__name__ = "openenv_environment"
    return build


@ENVIRONMENTS.register("openenv")
def openenv_environment(**kwargs: Any) -> Environment:
    """The ``openenv`` environment: :func:`from_openenv` with ``env_kwargs`` (``env``,
    ``client``, ``action``, ``parse_action`` and ``format_observation`` may be
    ``"module:attribute"`` import paths)."""
    for key in ("env", "client", "action", "parse_action", "format_observation"):
        if key in kwargs:
            kwargs[key] = import_object(kwargs[key], f"env_kwargs.{key}")
    return from_openenv(**kwargs)()
