"""An OpenEnv environment trained with groupwise (``pip install 'groupwise[openenv]'``).

The environment is written as any OpenEnv environment is (``reset``/``step``/``state``, pydantic
action and observation); groupwise plays it in this process or, with ``--server``, through
OpenEnv's own FastAPI server and WebSocket client on 127.0.0.1. The game: write the word the
environment names in capital letters; a wrong reply is told what went wrong and gets one more
try (reward 1 on the first try, 0.5 on the second).

    python examples/openenv_env.py                 # in process
    python examples/openenv_env.py --server        # behind OpenEnv's server
    python examples/openenv_env.py --seed 1 --max-steps 10 --threads 1
"""

import argparse
import json
import random
import socket
import threading
import time
from typing import Any

from openenv.core import Action, Environment, Observation, State

from groupwise import GRPOTrainer, load_config
from groupwise.data import Task
from groupwise.envs import ENVIRONMENTS
from groupwise.envs.openenv import from_openenv
from groupwise.rewards.environment import env_solved

WORDS = [
    "apple",
    "river",
    "stone",
    "cloud",
    "tiger",
    "garden",
    "window",
    "silver",
    "orange",
    "pencil",
    "candle",
    "forest",
    "rocket",
    "basket",
    "planet",
    "summer",
    "winter",
    "bridge",
    "castle",
    "dragon",
    "yellow",
    "guitar",
    "pillow",
    "mirror",
    "button",
    "spider",
    "turtle",
    "rabbit",
    "violin",
    "jacket",
    "carpet",
    "ladder",
    "anchor",
    "marble",
    "meadow",
    "island",
]
TRAIN, HELD_OUT = WORDS[:30], WORDS[30:]


class WordAction(Action):
    """The policy's reply."""

    text: str


class WordObservation(Observation):
    """What the environment says."""

    text: str


class CapitalsEnv(Environment[WordAction, WordObservation, State]):
    """Names a word (the row's ``word``); the reply must be that word in capitals, two tries."""

    SUPPORTS_CONCURRENT_SESSIONS = True

    def __init__(self) -> None:
        super().__init__()
        self._state = State(step_count=0)
        self.word = WORDS[0]

    def reset(
        self, seed: int | None = None, episode_id: str | None = None, **kwargs: Any
    ) -> WordObservation:
        self._state = State(episode_id=episode_id, step_count=0)
        self.word = str(kwargs.get("word", WORDS[(seed or 0) % len(WORDS)]))
        return WordObservation(text=f"Write the word {self.word} in capital letters.")

    def step(
        self, action: WordAction, timeout_s: float | None = None, **kwargs: Any
    ) -> WordObservation:
        self._state.step_count += 1
        reply = action.text.strip().strip(".!\"'")
        if reply == self.word.upper():
            return WordObservation(text="Correct.", done=True, reward=1.0 / self._state.step_count)
        last = self._state.step_count >= 2
        why = "Every letter must be a capital" if reply.upper() == self.word.upper() else "No"
        text = f"{why}. Reply with only the word {self.word} in capital letters."
        return WordObservation(text=text, done=last, reward=0.0)

    @property
    def state(self) -> State:
        return self._state


def serve() -> str:
    """OpenEnv's FastAPI app for CapitalsEnv on 127.0.0.1 (a free port), in a thread."""
    import uvicorn
    from openenv.core import create_fastapi_app

    app = create_fastapi_app(CapitalsEnv, WordAction, WordObservation, max_concurrent_envs=128)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    # "critical": openenv-core 0.3.0's server logs a traceback for every session its client closes
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="critical")
    server = uvicorn.Server(config)
    threading.Thread(target=server.run, daemon=True).start()
    while not server.started:
        time.sleep(0.05)
    return f"http://127.0.0.1:{port}"


def rows(words: list[str], n: int, seed: int) -> list[dict[str, Any]]:
    system = "You are a helpful assistant. Follow the instruction exactly."
    rng = random.Random(seed)
    picked = [rng.choice(words) for _ in range(n)] if n else words
    return [{"prompt": [{"role": "system", "content": system}], "word": w} for w in picked]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--server", action="store_true", help="through OpenEnv's server")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-steps", type=int, default=10)
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--output-dir", default=None)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: one per core)")
    args = parser.parse_args()

    if args.server:  # one WebSocket session per episode, against the served environment
        factory = from_openenv(base_url=serve(), action=WordAction, row_kwargs=["word"])
    else:  # one CapitalsEnv per episode, in this process
        factory = from_openenv(CapitalsEnv, row_kwargs=["word"])
    ENVIRONMENTS.register("capitals", replace=True)(factory)

    engine = {"environment": "capitals", "max_turns": 2, "max_tokens_per_turn": 12}
    config = load_config(
        overrides=[
            f"model.name={args.model}",
            "rollout.engine=episodes",
            f"rollout.engine_kwargs={json.dumps(engine)}",
            "rollout.num_generations=8",
            "rollout.max_completion_length=64",
            "rewards.funcs=[env_reward]",
            "algorithm.loss_type=dapo",
            f"training.max_steps={args.max_steps}",
            "training.per_device_train_batch_size=64",
            "training.learning_rate=5e-5",
            f"training.seed={args.seed}",
            f"training.num_threads={args.threads}",
            f"training.output_dir={args.output_dir or f'runs/openenv-seed{args.seed}'}",
            "training.save_final=false",
            "training.log_completions_steps=1",
            "eval.before=true",
            "eval.after=true",
            "eval.max_new_tokens=64",
        ]
    )
    task = Task(
        "capitals", rows(TRAIN, 512, args.seed), rows(HELD_OUT, 0, 0), correctness=env_solved
    )
    GRPOTrainer(config, task=task).train()


if __name__ == "__main__":
    main()
