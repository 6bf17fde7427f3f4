"""``env_reward``: the environment's own end-of-episode reward, as a reward function."""

from groupwise.envs.base import env_reward
from groupwise.rewards.base import register_reward

register_reward("env_reward")(env_reward)

__all__ = ["env_reward"]
