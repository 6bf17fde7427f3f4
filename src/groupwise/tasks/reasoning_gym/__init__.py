"""The reasoning-gym pack: task ``reasoning_gym`` (:mod:`~groupwise.tasks.reasoning_gym.data`)
and its reward ``reasoning_gym_score`` (:mod:`~groupwise.tasks.reasoning_gym.rewards`), the
dataset's own verifier. Two modules, each imported on its own by the manifest: the reward is
registered before the tool rewards, the task after ``multiply``.
"""
