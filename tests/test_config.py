from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from groupwise.config import (
    Config,
    ConfigError,
    config_to_dict,
    field_docs,
    load_config,
    reference_markdown,
)


def test_defaults_are_valid_and_documented() -> None:
    config = load_config()
    assert config == Config()
    for section, cls in {
        "model": type(config.model),
        "rollout": type(config.rollout),
        "training": type(config.training),
        "algorithm": type(config.algorithm),
    }.items():
        docs = field_docs(cls)
        for name in config_to_dict(config)[section]:
            assert docs.get(name), f"{section}.{name} has no docstring"


def test_yaml_then_overrides(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(
        yaml.safe_dump({"algorithm": {"beta": 0.04, "loss_type": "grpo"}, "learning_rate": "1e-5"})
    )
    config = load_config(path, ["algorithm.beta=0.1", "num_generations=4", "epsilon_high=0.28"])
    assert config.algorithm.beta == 0.1
    assert config.algorithm.loss_type == "grpo"
    assert config.training.learning_rate == 1e-5
    assert config.rollout.num_generations == 4
    assert config.algorithm.epsilon_high == 0.28


def test_unknown_key_is_named() -> None:
    with pytest.raises(ConfigError, match="algorithm.betta"):
        load_config(overrides=["algorithm.betta=0.1"])
    with pytest.raises(ConfigError, match="'lerning_rate'"):
        load_config(overrides=["lerning_rate=0.1"])
    with pytest.raises(ConfigError, match="no section 'modle'"):
        load_config(overrides=["modle.name=x"])


def test_unknown_key_in_yaml_is_named(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("training:\n  max_stepz: 3\n")
    with pytest.raises(ConfigError, match=r"training\.max_stepz"):
        load_config(path)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("loss_type=ppo", "algorithm.loss_type: 'ppo' is not one of: grpo, dapo, dr_grpo"),
        ("max_steps=ten", "training.max_steps: expected an integer"),
        ("bf16=maybe", "training.bf16: 'maybe' is not true, false or 'auto'"),
        ("num_generations=1", "rollout.num_generations must be >= 2"),
        ("per_device_train_batch_size=12", "multiple of rollout.num_generations"),
        ("top_p=0", "rollout.top_p"),
        ("beta=-1", "algorithm.beta"),
        (
            "param_dtype=float16",
            "training.param_dtype: 'float16' is not one of: auto, float32, bfloat16",
        ),
    ],
)
def test_bad_values_are_named(override: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(overrides=[override])
    assert message in str(info.value)


def test_pure_bf16_needs_autocast() -> None:
    with pytest.raises(ConfigError, match="training.param_dtype=bfloat16 needs training.bf16=true"):
        load_config(overrides=["param_dtype=bfloat16", "bf16=false"])


def test_lora_merge_in_place_needs_lora_and_the_rollout_dtype() -> None:
    with pytest.raises(ConfigError, match="model.lora_merge_in_place=true needs model.lora=true"):
        load_config(overrides=["model.lora_merge_in_place=true"])
    with pytest.raises(ConfigError, match="set training.param_dtype=bfloat16"):
        load_config(
            overrides=[
                "model.lora_merge_in_place=true",
                "model.lora=true",
                "bf16=true",
                "param_dtype=float32",
            ]
        )
    config = load_config(
        overrides=["model.lora_merge_in_place=true", "model.lora=true", "param_dtype=bfloat16"]
    )
    assert config.model.lora_merge_in_place


def test_ambiguous_and_malformed_overrides() -> None:
    with pytest.raises(ConfigError, match="key=value"):
        load_config(overrides=["beta"])


def test_reward_weights_must_match_funcs() -> None:
    with pytest.raises(ConfigError, match="rewards.weights has 1 values"):
        load_config(overrides=["rewards.funcs=[answer_match, number_only]", "rewards.weights=[1]"])


def test_reference_lists_every_key() -> None:
    text = reference_markdown()
    for section, fields in config_to_dict(Config()).items():
        for name in fields:
            assert f"`{section}.{name}`" in text


def test_a_dotted_override_sets_one_key_of_a_mapping_field(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("rollout:\n  engine_kwargs: {environment: guess, env_kwargs: {high: 20}}\n")
    overrides = ["rollout.engine_kwargs.backend=llamacpp", "rollout.engine_kwargs.env_kwargs.low=3"]
    kwargs = load_config(path, overrides).rollout.engine_kwargs
    assert kwargs == {
        "environment": "guess",
        "env_kwargs": {"high": 20, "low": 3},
        "backend": "llamacpp",
    }
    with pytest.raises(
        ConfigError, match=r"rollout\.engine\.x: only a mapping field .*engine_kwargs"
    ):
        load_config(overrides=["rollout.engine.x=1"])
