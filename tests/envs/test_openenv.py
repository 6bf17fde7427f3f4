"""OpenEnv environments through :mod:`groupwise.envs.openenv`: an environment defined here, run
in this process and behind OpenEnv's own server (its FastAPI app on 127.0.0.1, reached with its
WebSocket client), then trained for two steps with the tiny-random model."""

from __future__ import annotations

import json
import socket
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from groupwise import GRPOTrainer, load_config
from groupwise.envs import ENVIRONMENTS, EnvStep
from groupwise.envs.extras import require
from tests.tests_helpers import tiny_overrides

openenv_core = pytest.importorskip(
    "openenv.core", reason="openenv-core is not installed: pip install 'groupwise[openenv]'"
)
from openenv.core import Action, Environment, Observation, State  # noqa: E402

from groupwise.envs.openenv import (  # noqa: E402
    from_openenv,
    observation_text,
    text_action,
)

WORDS = ("apple", "river", "stone", "cloud")


class WordAction(Action):
    """The policy's reply: a word."""

    word: str


class WordObservation(Observation):
    """What the environment says."""

    text: str


class WordEnv(Environment[WordAction, WordObservation, State]):
    """Say the word: reward 1 and done when the reply holds it, else a hint; two tries."""

    SUPPORTS_CONCURRENT_SESSIONS = True

    def __init__(self) -> None:
        super().__init__()
        self._state = State(step_count=0)
        self.target = WORDS[0]

    def reset(
        self, seed: int | None = None, episode_id: str | None = None, **kwargs: Any
    ) -> WordObservation:
        self._state = State(episode_id=episode_id, step_count=0)
        self.target = WORDS[(seed or 0) % len(WORDS)]
        return WordObservation(text=f"Say the word {self.target}.")

    def step(
        self, action: WordAction, timeout_s: float | None = None, **kwargs: Any
    ) -> WordObservation:
        self._state.step_count += 1
        hit = self.target in action.word.lower()
        done = hit or self._state.step_count >= 2
        text = "yes" if hit else f"no, say {self.target}"
        return WordObservation(text=text, done=done, reward=float(hit))

    @property
    def state(self) -> State:
        return self._state


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    """OpenEnv's FastAPI app for WordEnv, served by uvicorn on 127.0.0.1 in a thread."""
    import uvicorn
    from openenv.core import create_fastapi_app

    app = create_fastapi_app(WordEnv, WordAction, WordObservation, max_concurrent_envs=64)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning")
    srv = uvicorn.Server(config)
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not srv.started:
        assert time.monotonic() < deadline, "the OpenEnv server did not start"
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        srv.should_exit = True
        thread.join(timeout=10)


def test_text_to_action_and_observation_to_text() -> None:
    parse = text_action(WordAction)
    assert parse(" crane \n") == WordAction(word="crane")
    assert parse('{"word": "crane"}') == WordAction(word="crane")
    assert parse('```json\n{"word": "x"}\n```') == WordAction(word="x")
    with pytest.raises(ValueError):
        parse('{"guess": "x"}')  # a JSON object is the action: unknown field
    assert observation_text({"text": "hi"}) == "hi"
    assert json.loads(observation_text({"a": 1, "b": "x"})) == {"a": 1, "b": "x"}
    with pytest.raises(ValueError, match="JSON object"):
        text_action(None)("crane")  # a generic client without an action class


def play(env: Any) -> list[EnvStep]:
    """A miss, an invalid action, then the word."""
    return [env.step("banana"), env.step('{"guess": 1}'), env.step("RIVER!")]


def test_in_process_environment() -> None:
    env = from_openenv(WordEnv, row_kwargs=["seed"])()
    assert env.reset({"prompt": "p", "seed": 1}) == "Say the word river."
    miss, invalid, hit = play(env)
    assert miss == EnvStep("no, say river", done=False, reward=0.0)
    assert invalid.message.startswith("error: not a valid action") and not invalid.done
    assert hit == EnvStep("yes", done=True, reward=1.0)
    assert env.reward() == 1.0 and env.errors == 1
    last = from_openenv(WordEnv, reward="last")()
    last.reset({"prompt": "p"})
    assert last.step("banana").reward == 0.0 and last.reward() == 0.0


def test_client_against_openenv_server(server: str) -> None:
    env = from_openenv(base_url=server, action=WordAction, row_kwargs=["seed"])()
    assert env.reset({"prompt": "p", "seed": 1}) == "Say the word river."
    miss, invalid, hit = play(env)
    assert miss == EnvStep("no, say river", done=False, reward=0.0)
    assert invalid.message.startswith("error: not a valid action")
    assert hit == EnvStep("yes", done=True, reward=1.0)
    assert env.reward() == 1.0 and not env.backend.open  # the session is closed


def test_registered_by_name_with_import_paths() -> None:
    env = ENVIRONMENTS.get("openenv")(env="tests.envs.test_openenv:WordEnv")
    assert env.reset({"prompt": "p"}) == "Say the word apple."
    with pytest.raises(ValueError, match="exactly one of env, base_url, client"):
        from_openenv()
    with pytest.raises(TypeError, match="one instance per episode"):
        from_openenv(WordEnv())  # type: ignore[arg-type]


def test_a_missing_package_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "openenv.core", None)
    with pytest.raises(ImportError, match=r"groupwise\[openenv\]"):
        require("openenv.core", "openenv", "the openenv environment")
    with pytest.raises(ImportError, match=r"groupwise\[openenv\]"):
        from_openenv(WordEnv)


@pytest.mark.parametrize("where", ["in_process", "server"])
def test_trains_two_steps(where: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    if where == "server":
        env_kwargs: dict[str, Any] = {
            "base_url": request.getfixturevalue("server"),
            "action": "tests.envs.test_openenv:WordAction",
        }
    else:
        env_kwargs = {"env": "tests.envs.test_openenv:WordEnv"}
    options = {"environment": "openenv", "env_kwargs": env_kwargs, "max_tokens_per_turn": 4}
    overrides = tiny_overrides(
        tmp_path,
        max_completion_length=24,
        **{"rewards.funcs": "[env_reward]", "rollout.engine": "episodes"},
    )
    overrides.append(f"rollout.engine_kwargs={json.dumps(options)}")
    trainer = GRPOTrainer(load_config(overrides=overrides))
    for _ in range(2):
        metrics = trainer.step()
        assert 0.0 <= metrics["rewards/env_reward/mean"] <= 1.0
        assert 1.0 <= metrics["turns/mean"] <= 3.0  # two replies at most, the hint between
    assert trainer.step_count == 2
