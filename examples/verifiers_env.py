"""A verifiers 0.4 environment trained with groupwise (``pip install 'groupwise[verifiers]'``).

The taskset, rubric and multi-turn env are written as for verifiers (``vf.Taskset`` over an
in-memory ``datasets.Dataset``, ``@vf.reward`` functions, an ``vf.Env`` whose ``run`` answers a
wrong reply with a hint, as the old ``MultiTurnEnv.env_response`` did); groupwise plays the env
with the policy in its one seat and trains on the rubric's reward. The task: add two numbers;
after a wrong answer the env says whether the sum is higher or lower, two more tries.

    python examples/verifiers_env.py
    python examples/verifiers_env.py --seed 1 --max-steps 10 --threads 1
"""

import argparse
import json
import random
import re
from collections.abc import Iterator
from typing import Any

import datasets
import verifiers.v1 as vf

from groupwise import GRPOTrainer, load_config
from groupwise.data import Task
from groupwise.envs.verifiers import verifiers_rows, verifiers_score


def sums(n: int, seed: int) -> datasets.Dataset:
    rng = random.Random(seed)
    pairs = [(rng.randint(2, 20), rng.randint(1, 9)) for _ in range(n)]
    return datasets.Dataset.from_dict(
        {
            "question": [f"What is {a} + {b}?" for a, b in pairs],
            "answer": [str(a + b) for a, b in pairs],
        }
    )


class SumData(vf.TaskData):
    """A question's answer, beside verifiers' own fields."""

    answer: str = ""


class SumTask(vf.Task[SumData]):
    """The rubric: the last reply's last number is the answer (weight 1)."""

    @vf.reward(weight=1.0)
    async def correct(self, task: SumData, trace: Any) -> float:
        return float(last_number(trace.last_reply) == task.answer)

    @vf.metric
    async def replies(self, trace: Any) -> float:
        return float(trace.num_turns)


def last_number(text: str) -> str | None:
    numbers = re.findall(r"\d+", text)
    return numbers[-1] if numbers else None


class SumTaskset(vf.Taskset[SumTask, vf.TasksetConfig]):
    """Rows of a dataset as tasks (``--seed``-free: train and held-out sets are fixed)."""

    data: datasets.Dataset = sums(0, 0)

    def load(self) -> Iterator[SumTask]:
        system = "You are good at arithmetic. Answer briefly."
        for row in self.data:
            data = SumData(prompt=row["question"], answer=row["answer"], system_prompt=system)
            yield SumTask(data, self.config.task)


class HintEnvConfig(vf.EnvConfig):
    """The seat and how many tries."""

    player: vf.AgentConfig = vf.AgentConfig()
    tries: int = 3


class HintEnv(vf.Env[HintEnvConfig]):
    """Multi-turn: a wrong sum is answered "Higher." or "Lower." until the tries are used."""

    async def run(self, task: Any, agents: Any) -> None:
        async with agents.player.interaction(task) as exchange:
            segment = await exchange.turn()
            for _ in range(self.config.tries - 1):
                guess = last_number(segment.last_reply)
                if segment.terminated or guess == task.data.answer:
                    break
                if guess is None:
                    hint = "Say the sum as a number."
                else:
                    hint = "Higher." if int(guess) < int(task.data.answer) else "Lower."
                segment = await exchange.turn(f"{hint} Try again.")


def rows(n: int, seed: int) -> list[dict[str, Any]]:
    SumTaskset.data = sums(n, seed)
    return verifiers_rows(SumTaskset(vf.TasksetConfig()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-steps", type=int, default=10)
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--output-dir", default=None)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: one per core)")
    args = parser.parse_args()

    engine = {
        "environment": "verifiers",
        "env_kwargs": {"env": "__main__:HintEnv"},
        "max_turns": 3,
        "max_tokens_per_turn": 24,
    }
    config = load_config(
        overrides=[
            f"model.name={args.model}",
            "rollout.engine=episodes",
            f"rollout.engine_kwargs={json.dumps(engine)}",
            "rollout.num_generations=8",
            "rollout.max_completion_length=96",
            "rewards.weights=[1.0, 0.0]",
            "algorithm.loss_type=dapo",
            f"training.max_steps={args.max_steps}",
            "training.per_device_train_batch_size=64",
            "training.learning_rate=5e-5",
            f"training.seed={args.seed}",
            f"training.num_threads={args.threads}",
            f"training.output_dir={args.output_dir or f'runs/verifiers-seed{args.seed}'}",
            "training.save_final=false",
            "training.log_completions_steps=1",
            "eval.before=true",
            "eval.after=true",
            "eval.max_new_tokens=96",
        ]
    )
    solved = verifiers_score("correct")
    task = Task("sums", rows(512, 1), rows(50, 2), correctness=solved)
    rewards = ["env_reward", verifiers_score("replies", metric=True)]
    GRPOTrainer(config, rewards, task=task).train()


if __name__ == "__main__":
    main()
