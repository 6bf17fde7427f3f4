"""The code pack: tasks ``humaneval`` and ``mbpp`` (:mod:`~groupwise.tasks.code.benchmarks`) and
the generated ``functions`` (:mod:`~groupwise.tasks.code.functions`).

Their rows carry a ``tests`` column that the generic sandboxed rewards ``code_tests`` and
``code_pass`` (:mod:`groupwise.rewards.code`) run; no pack-specific reward.
"""
