"""groupwise: GRPO (Group Relative Policy Optimization) for Hugging Face causal language models.

from groupwise import GRPOTrainer, load_config

def brevity(prompts, completions, **columns):
    return [1.0 if len(c) < 20 else 0.0 for c in completions]

config = load_config(overrides=["max_steps=10", "model.name=tiny-random"])
summary = GRPOTrainer(config, reward_funcs=["answer_match", brevity]).train()
"""

from groupwise.compat.trl import GRPOConfig
from groupwise.config import Config, ConfigError, load_config
from groupwise.data import Row, Task
from groupwise.train.trainer import GRPOTrainer

__version__ = "0.1.0"
__all__ = [
    "Config",
    "ConfigError",
    "GRPOConfig",
    "GRPOTrainer",
    "Row",
    "Task",
    "__version__",
    "load_config",
]
