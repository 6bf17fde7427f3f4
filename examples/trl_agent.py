"""A TRL agent script; only the import says groupwise.

The agent looks up made-up vault codes (no model knows them, so only a tool call gets them
right) and answers with the code; the reward reads the final assistant message.

    python examples/trl_agent.py                  # environment_factory=VaultEnv
    python examples/trl_agent.py --mode tools     # tools=[code]
    python examples/trl_agent.py --mode dict      # {"vaults": VaultEnv, "phones": PhoneEnv}
    python examples/trl_agent.py --seed 1 --max-steps 15 --threads 1
"""

import argparse
import random

import torch
from datasets import Dataset

from groupwise import GRPOConfig, GRPOTrainer  # was: from trl import GRPOConfig, GRPOTrainer

NAMES = ["Amber", "Birch", "Cedar", "Delta", "Ember", "Fable", "Garnet", "Harbor", "Indigo"]
CODES = {name: str(random.Random(name).randint(1000, 9999)) for name in NAMES}
PHONES = {name: str(random.Random(name + "phone").randint(100, 999)) for name in NAMES}


def code(vault: str) -> str:
    """The access code of a vault.

    Args:
        vault: The vault's name, e.g. "Amber".
    """
    return CODES.get(vault.strip().title(), "no such vault")


class VaultEnv:
    """One vault per episode: the policy looks its code up."""

    def reset(self, **kwargs):
        self.lookups = 0

    def code(self, vault: str) -> str:
        """The access code of a vault.

        Args:
            vault: The vault's name, e.g. "Amber".
        """
        self.lookups += 1
        return code(vault)


class PhoneEnv:
    """A second environment: made-up phone extensions."""

    def reset(self, **kwargs):
        self.lookups = 0

    def phone(self, name: str) -> str:
        """The phone extension of a person.

        Args:
            name: The person's name, e.g. "Amber".
        """
        self.lookups += 1
        return PHONES.get(name.strip().title(), "no such person")


def says_answer(completions, answer, **kwargs):
    """1 when the final assistant message states the answer."""
    return [float(a in c[-1]["content"]) for c, a in zip(completions, answer, strict=True)]


def row(question, answer, environment, mode):
    row = {"prompt": [{"role": "user", "content": question}], "answer": answer}
    return {**row, "environment": environment} if mode == "dict" else row


def dataset(mode):
    rows = []
    for name in NAMES[1:]:  # Amber is the docstrings' example
        q = f'What is the code for vault "{name}"? Use the code tool.'
        rows.append(row(q, CODES[name], "vaults", mode))
        if mode == "dict":
            q = f'What is the phone for name "{name}"? Use the phone tool.'
            rows.append(row(q, PHONES[name], "phones", mode))
    return Dataset.from_list(rows)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mode", choices=["factory", "tools", "dict"], default="factory")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-steps", type=int, default=20)
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--output-dir", default=None)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    agent = {
        "factory": {"environment_factory": VaultEnv},
        "tools": {"tools": [code]},
        "dict": {"environment_factory": {"vaults": VaultEnv, "phones": PhoneEnv}},
    }[args.mode]
    training_args = GRPOConfig(
        output_dir=args.output_dir or f"runs/trl-agent-{args.mode}-seed{args.seed}",
        max_steps=args.max_steps,
        seed=args.seed,
        learning_rate=2e-5,
        num_generations=8,
        per_device_train_batch_size=64,
        max_completion_length=96,
        temperature=0.7,
        max_tool_calling_iterations=2,
        log_completions=True,
        save_strategy="no",
    )
    trainer = GRPOTrainer(
        model=args.model,
        reward_funcs=says_answer,
        args=training_args,
        train_dataset=dataset(args.mode),
        **agent,
    )
    trainer.train()


if __name__ == "__main__":
    main()
