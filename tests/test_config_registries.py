"""The config's Literal choices are exactly the names registered in groupwise.core."""

from __future__ import annotations

import inspect
import typing

import pytest

from groupwise.config import AlgorithmConfig, ConfigError, load_config
from groupwise.core import (
    ADVANTAGE_SCALINGS,
    AGGREGATIONS,
    CORRECTIONS,
    IMPORTANCE_RATIOS,
    KL_ESTIMATORS,
    OBJECTIVES,
    policy_loss,
)
from groupwise.registry import Registry

REGISTRY_OF_FIELD: dict[str, Registry[typing.Any]] = {
    "loss_type": AGGREGATIONS,
    "kl_estimator": KL_ESTIMATORS,
    "scale_rewards": ADVANTAGE_SCALINGS,
    "importance_sampling_level": IMPORTANCE_RATIOS,
    "objective": OBJECTIVES,
    "vllm_importance_sampling_mode": CORRECTIONS,
}


@pytest.mark.parametrize("name", sorted(REGISTRY_OF_FIELD))
def test_literal_equals_registry_names(name: str) -> None:
    registry = REGISTRY_OF_FIELD[name]
    annotation = typing.get_type_hints(AlgorithmConfig)[name]
    assert typing.get_origin(annotation) is typing.Literal
    assert typing.get_args(annotation) == registry.names(), (
        f"algorithm.{name}: the config Literal and {registry.key}'s registered names differ"
    )
    assert registry.key == f"algorithm.{name}"
    assert getattr(AlgorithmConfig(), name) in registry


def test_defaults_match_policy_loss() -> None:
    params = inspect.signature(policy_loss).parameters
    a = AlgorithmConfig()
    assert params["objective"].default == a.objective == "clip"
    assert params["sapo_temperature_pos"].default == a.sapo_temperature_pos == 1.0
    assert params["sapo_temperature_neg"].default == a.sapo_temperature_neg == 1.05
    assert params["loss_type"].default == a.loss_type
    assert params["kl_estimator"].default == a.kl_estimator
    assert params["importance_sampling_level"].default == a.importance_sampling_level
    assert params["entropy_mask"].default is None and a.top_entropy_quantile == 1.0


def test_new_fields_load_and_validate() -> None:
    config = load_config(
        overrides=[
            "algorithm.objective=sapo",
            "sapo_temperature_pos=0.9",
            "sapo_temperature_neg=1.2",
            "top_entropy_quantile=0.2",
        ]
    )
    a = config.algorithm
    assert (a.objective, a.sapo_temperature_pos, a.sapo_temperature_neg) == ("sapo", 0.9, 1.2)
    assert a.top_entropy_quantile == 0.2
    assert load_config(overrides=["top_entropy_quantile=1"]).algorithm.top_entropy_quantile == 1.0
    with pytest.raises(ConfigError, match="algorithm.objective: 'ppo' is not one of: clip, cispo"):
        load_config(overrides=["algorithm.objective=ppo"])
    for bad in ("0", "-0.1", "1.5"):
        with pytest.raises(
            ConfigError, match=r"algorithm.top_entropy_quantile must be in \(0, 1\]"
        ):
            load_config(overrides=[f"top_entropy_quantile={bad}"])
    with pytest.raises(ConfigError, match="algorithm.sapo_temperature_pos and _neg must be > 0"):
        load_config(overrides=["sapo_temperature_neg=0"])


def test_correction_keys_load_and_validate() -> None:
    a = AlgorithmConfig()
    assert a.vllm_importance_sampling_correction == "auto"  # off unless the engine reports
    assert (a.vllm_importance_sampling_clip_min, a.vllm_importance_sampling_clip_max) == (None, 3.0)
    config = load_config(
        overrides=[
            "vllm_importance_sampling_correction=true",
            "vllm_importance_sampling_mode=token_mask",
            "vllm_importance_sampling_clip_min=0.5",
            "vllm_importance_sampling_clip_max=null",
        ]
    )
    c = config.algorithm
    assert c.vllm_importance_sampling_correction is True
    assert c.vllm_importance_sampling_mode == "token_mask"
    assert (c.vllm_importance_sampling_clip_min, c.vllm_importance_sampling_clip_max) == (0.5, None)
    with pytest.raises(ConfigError, match="clip_min \\(3.0\\) must be less than"):
        load_config(overrides=["vllm_importance_sampling_clip_min=3"])
    with pytest.raises(ConfigError, match="token_truncate needs"):
        load_config(
            overrides=[
                "vllm_importance_sampling_mode=token_truncate",
                "vllm_importance_sampling_clip_max=null",
            ]
        )
    with pytest.raises(ConfigError, match="vllm_importance_sampling_mode: 'tis' is not one of"):
        load_config(overrides=["vllm_importance_sampling_mode=tis"])
