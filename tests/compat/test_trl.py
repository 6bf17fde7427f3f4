"""TRL's interface: GRPOConfig maps onto the nested Config; GRPOTrainer(model=..., args=...)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest
import torch

from groupwise import GRPOTrainer
from groupwise.compat.trl import DIRECT, UNSUPPORTED, GRPOConfig, lora_settings, to_task
from groupwise.config import Config, ConfigError, config_to_dict


def _value(config: Config, key: str) -> Any:
    section, _, name = key.partition(".")
    return getattr(getattr(config, section), name)


def test_defaults_are_groupwise_defaults() -> None:
    args = GRPOConfig()
    assert args.learning_rate == 1e-6 and args.seed == 42  # TRL's, shown as documentation
    assert args.fields_set == frozenset()
    assert config_to_dict(args.to_config()) == config_to_dict(Config())


SAMPLE = {
    "output_dir": "runs/trl",
    "overwrite_output_dir": True,
    "per_device_train_batch_size": 16,
    "gradient_accumulation_steps": 3,
    "learning_rate": 3e-6,
    "lr_scheduler_type": "cosine",
    "warmup_steps": 7,
    "weight_decay": 0.1,
    "adam_beta1": 0.8,
    "adam_beta2": 0.95,
    "max_grad_norm": 0.5,
    "seed": 7,
    "gradient_checkpointing": True,
    "logging_steps": 3,
    "save_steps": 11,
    "log_completions": False,
    "per_device_eval_batch_size": 5,
    "num_generations": 4,
    "max_completion_length": 99,
    "temperature": 0.7,
    "top_p": 0.9,
    "top_k": 20,
    "beta": 0.04,
    "num_iterations": 2,
    "epsilon": 0.1,
    "importance_sampling_level": "sequence",
    "mask_truncated_completions": True,
    "top_entropy_quantile": 0.2,
    "entropy_coef": 0.01,
    "use_adaptive_entropy": True,
    "entropy_coef_min": 0.001,
    "entropy_coef_max": 0.5,
    "entropy_coef_delta": 0.002,
    "entropy_target": 0.5,
    "sapo_temperature_pos": 0.9,
    "sapo_temperature_neg": 1.2,
    "vllm_importance_sampling_correction": False,
    "vllm_importance_sampling_mode": "token_mask",
    "reward_weights": [1.0, 0.5],
}


def test_each_direct_field_lands_on_its_key() -> None:
    assert set(SAMPLE) == set(DIRECT)
    config = GRPOConfig(**SAMPLE).to_config()
    for name, key in DIRECT.items():
        assert _value(config, key) == SAMPLE[name], (name, key)
    untouched = config_to_dict(Config())
    assert config_to_dict(config)["model"] == untouched["model"]


def test_entropy_bonus_fields_map_to_the_algorithm_config() -> None:
    args = GRPOConfig(entropy_coef=0.01, use_adaptive_entropy=True, entropy_target=0.5)
    a = args.to_config().algorithm
    assert (a.entropy_coef, a.use_adaptive_entropy, a.entropy_target) == (0.01, True, 0.5)
    # the fields left unset keep groupwise's defaults (TRL's own: 0, 1, 0.005)
    assert (a.entropy_coef_min, a.entropy_coef_max, a.entropy_coef_delta) == (0.0, 1.0, 0.005)
    with pytest.raises(ConfigError, match="entropy_coef_min"):
        GRPOConfig(entropy_coef_min=0.5, entropy_coef_max=0.1).to_config()


def test_only_the_fields_set_override_even_at_trl_defaults() -> None:
    config = GRPOConfig(learning_rate=1e-6, max_steps=5).to_config()  # 1e-6 is TRL's default
    assert config.training.learning_rate == 1e-6 and config.training.max_steps == 5
    assert config.training.seed == Config().training.seed  # not TRL's 42
    args = GRPOConfig()
    args.beta = 0.1  # assigned after construction: also counts as set
    assert args.to_config().algorithm.beta == 0.1


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        ({"scale_rewards": False}, {"algorithm.scale_rewards": "none"}),
        ({"scale_rewards": True}, {"algorithm.scale_rewards": "group"}),
        ({"loss_type": "grpo"}, {"algorithm.loss_type": "grpo", "algorithm.objective": "clip"}),
        (
            {"loss_type": "cispo", "epsilon_high": 5.0},
            {
                "algorithm.objective": "cispo",
                "algorithm.loss_type": "dapo",
                "algorithm.epsilon_high": 4.0,
            },
        ),
        ({"loss_type": "sapo"}, {"algorithm.objective": "sapo", "algorithm.loss_type": "grpo"}),
        ({"epsilon_high": 0.28}, {"algorithm.epsilon_high": 0.28}),
        ({"save_strategy": "no"}, {"training.save_steps": 0}),
        ({"save_total_limit": None}, {"training.save_total_limit": 0}),
        ({"report_to": "none"}, {"training.report_to": []}),
        ({"report_to": "tensorboard"}, {"training.report_to": ["tensorboard"]}),
        ({"resume_from_checkpoint": True}, {"training.resume": "auto"}),
        ({"use_cpu": True}, {"training.device": "cpu"}),
        ({"disable_tqdm": True}, {"training.progress": False}),
        ({"bf16": False}, {"training.bf16": False}),
        ({"eval_strategy": "steps", "eval_steps": 4}, {"eval.every_steps": 4}),
        ({"eval_strategy": "no"}, {"eval.before": False, "eval.after": False}),
        ({"max_steps": 3, "warmup_ratio": 0.5, "num_iterations": 2}, {"training.warmup_steps": 3}),
        (
            {"vllm_importance_sampling_clip_min": 0.5, "vllm_importance_sampling_clip_max": None},
            {
                "algorithm.vllm_importance_sampling_clip_min": 0.5,
                "algorithm.vllm_importance_sampling_clip_max": None,  # None: no upper bound
            },
        ),
        (
            {"vllm_importance_sampling_cap": 2.0},
            {"algorithm.vllm_importance_sampling_clip_max": 2.0},
        ),
        (
            {"vllm_importance_sampling_correction": True},
            {"algorithm.vllm_importance_sampling_correction": True},
        ),
    ],
)
def test_converted_fields(kwargs: dict[str, Any], expected: dict[str, Any]) -> None:
    config = GRPOConfig(**kwargs).to_config()
    for key, value in expected.items():
        assert _value(config, key) == value, key


@pytest.mark.parametrize(
    ("dtype", "param_dtype"),
    [
        (torch.bfloat16, "bfloat16"),
        ("bfloat16", "bfloat16"),
        (torch.float32, "float32"),
        ("float32", "float32"),
        ("auto", "auto"),
    ],
)
def test_model_init_dtype_is_the_weights_dtype(dtype: Any, param_dtype: str) -> None:
    config = GRPOConfig(model_init_kwargs={"dtype": dtype}).to_config()
    assert config.training.param_dtype == param_dtype
    config = GRPOConfig(model_init_kwargs={"torch_dtype": dtype}).to_config()  # older name
    assert config.training.param_dtype == param_dtype


def test_model_init_kwargs_that_do_not_map_are_refused_by_name() -> None:
    config = GRPOConfig(model_init_kwargs={"attn_implementation": "eager"}).to_config()
    assert config.model.attn_implementation == "eager"
    with pytest.raises(ConfigError, match=r"model_init_kwargs\['dtype'\].*torch.bfloat16"):
        GRPOConfig(model_init_kwargs={"dtype": torch.float16}).to_config()
    with pytest.raises(ConfigError, match=r"model_init_kwargs\['device_map'\].*dtype"):
        GRPOConfig(model_init_kwargs={"device_map": "auto"}).to_config()


def test_epochs_become_steps_from_the_dataset_size() -> None:
    args = GRPOConfig(num_train_epochs=2, per_device_train_batch_size=8, num_generations=4)
    assert args.to_config(train_rows=10).training.max_steps == 10  # 2 prompts per step
    with pytest.raises(ConfigError, match="num_train_epochs needs train_dataset"):
        args.to_config()


@pytest.mark.parametrize("name", sorted(UNSUPPORTED))
def test_unsupported_fields_fail_naming_the_field(name: str) -> None:
    default = getattr(GRPOConfig(), name)
    GRPOConfig(**{name: default}).to_config()  # the default is fine
    other: Any = {bool: not default, float: 0.123, int: 3, str: "x"}.get(type(default), 1)
    with pytest.raises(ConfigError, match=f"GRPOConfig.{name}="):
        GRPOConfig(**{name: other}).to_config()


def test_unsupported_loss_type_and_unknown_keyword() -> None:
    with pytest.raises(ConfigError, match="loss_type='bnpo'"):
        GRPOConfig(loss_type="bnpo").to_config()
    with pytest.raises(TypeError, match="'learning_rat'.*'learning_rate'"):
        GRPOConfig(learning_rat=1e-5)  # type: ignore[call-arg]
    with pytest.raises(ConfigError, match="training.lr_scheduler_type"):
        GRPOConfig(lr_scheduler_type="polynomial").to_config()


def test_every_field_has_a_docstring() -> None:
    from groupwise.config import field_docs

    docs = field_docs(GRPOConfig)
    assert [f.name for f in dataclasses.fields(GRPOConfig) if not docs.get(f.name)] == []


def test_peft_lora_config_sets_model_lora_keys() -> None:
    from peft import LoraConfig

    keys = lora_settings(LoraConfig(r=8, lora_alpha=16, target_modules=["v_proj", "q_proj"]))
    assert keys == {
        "lora": True,
        "lora_r": 8,
        "lora_alpha": 16,
        "lora_dropout": 0.0,
        "lora_target_modules": ["q_proj", "v_proj"],
    }
    with pytest.raises(ConfigError, match="peft_config.use_dora"):
        lora_settings(LoraConfig(r=8, use_dora=True))


def test_datasets_become_tasks() -> None:
    from datasets import Dataset

    rows = [{"prompt": f"q{i}", "answer": str(i)} for i in range(4)]
    task = to_task(Dataset.from_list(rows), rows[:2], Config())
    assert task.train == rows and task.eval == rows[:2] and task.correctness is None
    assert to_task("arithmetic", None, Config()).correctness is not None
    with pytest.raises(ValueError, match="row 0 has no 'prompt'"):
        to_task([{"question": "x"}], None, Config())


def test_a_trl_style_run_trains_on_conversational_prompts(tmp_path: Path) -> None:
    seen: dict[str, Any] = {}

    def brevity(completions: list[Any], **kwargs: Any) -> list[float]:
        seen.update(completion=completions[0], kwargs=kwargs)
        seen.setdefault("steps", []).append(kwargs["trainer_state"].global_step)
        return [float(len(c[0]["content"])) for c in completions]

    dataset = [
        {"prompt": [{"role": "user", "content": f"Say {i}."}], "answer": str(i)} for i in range(8)
    ]
    args = GRPOConfig(
        output_dir=str(tmp_path / "run"),
        max_steps=2,
        num_generations=4,
        per_device_train_batch_size=8,
        max_completion_length=6,
        learning_rate=1e-3,
        save_strategy="no",
        disable_tqdm=True,
        report_to="none",
        gradient_checkpointing=False,
        bf16=False,
    )
    trainer = GRPOTrainer(
        model="tiny-random",
        reward_funcs=[
            lambda completions, **kw: [float(len(c[0]["content"])) for c in completions],
            brevity,
        ],
        args=args,
        train_dataset=dataset,
    )
    trainer.config.training.report = False
    summary = trainer.train()
    assert summary["steps"] == 2
    assert seen["completion"][0]["role"] == "assistant"
    assert seen["steps"] == [0, 1]  # global_step: steps finished when the batch is scored
    assert set(seen["kwargs"]) >= {"prompts", "answer", "completion_ids", "truncated"}
    metrics = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").open()]
    assert "rewards/brevity/mean" in metrics[-1]


def test_a_built_model_with_peft_config_trains(tmp_path: Path) -> None:
    from peft import LoraConfig

    from groupwise.models import tiny_random_model

    model, tokenizer = tiny_random_model(seed=0)
    args = GRPOConfig(
        output_dir=str(tmp_path / "run"),
        max_steps=1,
        num_generations=4,
        per_device_train_batch_size=8,
        max_completion_length=4,
        save_strategy="no",
        disable_tqdm=True,
        gradient_checkpointing=False,
        bf16=False,
    )
    trainer = GRPOTrainer(
        model,
        lambda completions, **kw: [float(len(c)) for c in completions],  # plain prompts: text
        args=args,
        train_dataset=[{"prompt": f"Count to {i}:"} for i in range(4)],
        processing_class=tokenizer,
        peft_config=LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]),
    )
    trainer.config.training.report = False
    assert trainer.config.model.lora and trainer.config.model.lora_r == 4
    assert trainer.train()["steps"] == 1


def test_a_config_refuses_trl_arguments(tmp_path: Path) -> None:
    with pytest.raises(TypeError, match="'train_dataset' is an argument of TRL's call"):
        GRPOTrainer(Config(), train_dataset=[{"prompt": "x"}])


def test_a_built_model_is_trained_in_place(tmp_path: Path) -> None:
    """TRL trains the model object it is given: so does groupwise (no copy through a disk)."""
    import torch

    from groupwise.models import tiny_random_model

    model, tokenizer = tiny_random_model(seed=0)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    args = GRPOConfig(
        output_dir=str(tmp_path / "run"),
        max_steps=2,
        num_generations=4,
        per_device_train_batch_size=8,
        max_completion_length=4,
        learning_rate=1e-3,
        save_strategy="no",
        bf16=False,
    )
    trainer = GRPOTrainer(
        model=model,
        reward_funcs=lambda completions, **kw: [float(len(c)) for c in completions],
        args=args,
        train_dataset=[{"prompt": f"Count to {i}:"} for i in range(4)],
        processing_class=tokenizer,
    )
    trainer.config.training.report = False
    assert trainer.policy is model and trainer.tokenizer is tokenizer
    assert trainer.train()["model"] == "in-memory model"
    changed = [n for n, p in model.named_parameters() if not torch.equal(p.float(), before[n])]
    assert changed, "the user's model object was not trained"


def test_an_eval_dataset_without_correctness_is_scored_by_the_rewards(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """TRL evaluates eval_dataset with the reward functions: so does groupwise."""

    def length(completions: list[str], **kwargs: Any) -> list[float]:
        return [float(len(c)) for c in completions]

    args = GRPOConfig(
        output_dir=str(tmp_path / "run"),
        max_steps=1,
        num_generations=4,
        per_device_train_batch_size=8,
        max_completion_length=4,
        save_strategy="no",
        bf16=False,
    )
    trainer = GRPOTrainer(
        model="tiny-random",
        reward_funcs=length,
        args=args,
        train_dataset=[{"prompt": f"Count to {i}:"} for i in range(4)],
        eval_dataset=[{"prompt": f"Say {i}:"} for i in range(3)],
    )
    trainer.config.training.report = False
    trainer.config.eval.max_new_tokens = 4
    summary = trainer.train()
    samples = [json.loads(x) for x in (tmp_path / "run" / "eval_samples.jsonl").open()]
    before = [s for s in samples if s["label"] == "before"]
    assert [s["score"] for s in before] == [float(len(s["completion"])) for s in before]
    assert summary["eval_before"] == pytest.approx(sum(s["score"] for s in before) / 3)
    assert "held-out greedy reward (before): " in capsys.readouterr().out
