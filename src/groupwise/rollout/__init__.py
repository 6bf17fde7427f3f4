"""Rollouts: prompts in, groups of completions (or episodes) out, through one engine interface.

- :mod:`~groupwise.rollout.records`: ``PromptBatch``, ``Rollout`` (with per-token loss masks and
  turn indices for conversations), group slicing and concatenation.
- :mod:`~groupwise.rollout.engine`: the ``RolloutEngine`` protocol, ``SamplingParams`` and the
  ``ENGINES`` registry (``rollout.engine``).
- :mod:`~groupwise.rollout.local`: the default engine, decoding in-process
  (:mod:`~groupwise.rollout.decode`, :mod:`~groupwise.rollout.sampling`) on the weights of a
  :mod:`~groupwise.rollout.weights` strategy.
- :mod:`~groupwise.rollout.replay`: recorded completions, for tests and reward re-runs.
"""

from groupwise.rollout.decode import _finish, generate
from groupwise.rollout.engine import (
    ENGINES,
    EngineContext,
    RolloutEngine,
    RolloutRequest,
    SamplingParams,
    build_engine,
)
from groupwise.rollout.records import (
    PromptBatch,
    Rollout,
    concat_rollouts,
    group_rows,
    render_prompt,
    select_groups,
    split_groups,
    take_groups,
    tokenize_prompts,
    used_width,
)
from groupwise.rollout.sampling import (
    CDF_BLOCK,
    inverse_cdf_sample,
    sample_next,
    sample_with_entropy,
)

__all__ = [
    "CDF_BLOCK",
    "ENGINES",
    "EngineContext",
    "PromptBatch",
    "Rollout",
    "RolloutEngine",
    "RolloutRequest",
    "SamplingParams",
    "_finish",
    "build_engine",
    "concat_rollouts",
    "generate",
    "group_rows",
    "inverse_cdf_sample",
    "render_prompt",
    "sample_next",
    "sample_with_entropy",
    "select_groups",
    "split_groups",
    "take_groups",
    "tokenize_prompts",
    "used_width",
]
