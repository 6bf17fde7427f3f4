"""The run plan: each rule, the plan as a whole, plan.json, the resume path, and that nothing
else resolves an ``auto`` setting."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest
import torch

import groupwise.models.plan as plan_module
from groupwise.config import ConfigError, load_config
from groupwise.models.plan import (
    PLAN_FILE,
    RunPlan,
    check_plan,
    decide_activation_memory,
    decide_attn_implementation,
    decide_compile_optimizer,
    decide_fused_kernels,
    decide_reference_on_disk,
    decide_rollout_engine,
    decide_rollout_weights,
    load_plan,
    plan_lines,
    resolve_plan,
    run_plan,
)
from groupwise.run.directory import RunDirectory, resumed_plan_file

CPU, CUDA = torch.device("cpu"), torch.device("cuda")
SRC = Path(__file__).resolve().parents[2] / "src" / "groupwise"


def _rates(monkeypatch: pytest.MonkeyPatch, fp32: float, bf16: float) -> None:
    """The CPU probe measures these rates (GFLOP/s)."""
    rates = {"float32_gflops": fp32, "bfloat16_gflops": bf16}

    def measure(probe: object = None, cache_file: object = None) -> tuple[dict, str]:
        return dict(rates), "probe"

    monkeypatch.setattr(plan_module, "measure_cpu", measure)


def test_reference_on_disk_rule() -> None:
    assert decide_reference_on_disk("auto", CPU) is True
    assert decide_reference_on_disk("auto", CUDA) is False
    assert decide_reference_on_disk(False, CPU) is False
    assert decide_reference_on_disk(True, CUDA) is True  # explicit (check_plan refuses it)


def test_fused_kernels_rule() -> None:
    assert decide_fused_kernels("auto", CPU, "bfloat16") is True
    assert decide_fused_kernels("auto", CPU, "float32") is False
    assert decide_fused_kernels("auto", CUDA, "bfloat16") is False
    assert decide_fused_kernels(True, CUDA, "float32") is True
    assert decide_fused_kernels(False, CPU, "bfloat16") is False


def test_compile_optimizer_rule(monkeypatch: pytest.MonkeyPatch) -> None:
    """auto: pure bf16 weights on CPU with a C++ compiler on PATH; never for float32 weights
    (torch's AdamW, nothing to compile)."""
    monkeypatch.delenv("CXX", raising=False)
    found = {"g++"}
    monkeypatch.setattr(plan_module.shutil, "which", lambda name: name if name in found else None)
    assert decide_compile_optimizer("auto", CPU, "bfloat16") is True
    assert decide_compile_optimizer("auto", CPU, "float32") is False
    assert decide_compile_optimizer("auto", CUDA, "bfloat16") is False
    assert decide_compile_optimizer(True, CPU, "float32") is False
    assert decide_compile_optimizer(False, CPU, "bfloat16") is False
    found.clear()  # no compiler: eager
    assert decide_compile_optimizer("auto", CPU, "bfloat16") is False
    assert decide_compile_optimizer(True, CPU, "bfloat16") is True  # asked for: tried
    monkeypatch.setenv("CXX", "my-cxx")
    found.add("my-cxx")
    assert decide_compile_optimizer("auto", CPU, "bfloat16") is True


@pytest.mark.parametrize(
    ("field", "read_as"),
    [("compile_optimizer", False), ("activation_memory", None)],  # eager; the hard 512
)
def test_a_plan_saved_before_a_decision_was_planned_reads_as_those_runs_ran(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, field: str, read_as: object
) -> None:
    _rates(monkeypatch, 200.0, 800.0)
    data = resolve_plan(load_config(), CPU).as_dict()
    del data[field]
    (tmp_path / PLAN_FILE).write_text(json.dumps(data))
    assert getattr(load_plan(tmp_path / PLAN_FILE), field) is read_as


def test_activation_memory_rule(monkeypatch: pytest.MonkeyPatch) -> None:
    """auto: a quarter of the memory available at the start; an integer budget: none."""
    assert decide_activation_memory("auto", CPU, available=8_000_000_000) == 2_000_000_000
    assert decide_activation_memory(512, CPU, available=8_000_000_000) is None
    assert decide_activation_memory(0, CPU, available=8_000_000_000) is None
    monkeypatch.setattr(plan_module, "available_memory", lambda device: None)
    assert decide_activation_memory("auto", CPU) is None  # unreadable: 512 tokens (batch.py)
    monkeypatch.undo()
    if not torch.cuda.is_available():  # a GPU's plan resolved on a machine without one
        assert decide_activation_memory("auto", CUDA) is None
    free = plan_module.available_memory(CPU)  # this machine's MemAvailable
    assert free is not None and 0 < free < 2**50
    config = load_config()
    monkeypatch.setattr(plan_module, "available_memory", lambda device: 6_000_000_000)
    assert resolve_plan(config, CPU).activation_memory == 1_500_000_000
    set_512 = load_config(overrides=["training.max_tokens_per_microbatch=512"])
    assert resolve_plan(set_512, CPU).activation_memory is None


def test_attention_rule() -> None:
    assert decide_attn_implementation("auto", CPU) == "grouped"
    assert decide_attn_implementation("auto", CUDA) == "sdpa"
    assert decide_attn_implementation("eager", CPU) == "eager"


def test_rollout_engine_rule() -> None:
    engine, why = decide_rollout_engine("auto", CPU, bf16=True)
    assert engine == "local" and "measured faster than llamacpp" in why
    engine, why = decide_rollout_engine("auto", CPU, bf16=False)
    assert engine == "local" and "not been measured" in why
    engine, why = decide_rollout_engine("auto", CUDA, bf16=True)
    assert engine == "local" and "rollout.engine=vllm" in why
    assert decide_rollout_engine("llamacpp", CPU, bf16=True) == (
        "llamacpp",
        "rollout.engine=llamacpp",
    )


def test_the_default_config_plans_the_engine_and_a_named_one_is_kept(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _rates(monkeypatch, 200.0, 800.0)
    assert load_config().rollout.engine == "auto"
    assert resolve_plan(load_config(), CPU).rollout_engine == "local"
    named = load_config(overrides=["rollout.engine=replay"])
    assert resolve_plan(named, CPU).rollout_engine == "replay"


def test_a_plan_saved_before_the_engine_was_planned_reads_as_local(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _rates(monkeypatch, 200.0, 800.0)
    data = resolve_plan(load_config(), CPU).as_dict()
    del data["rollout_engine"], data["rollout_engine_reason"]
    (tmp_path / PLAN_FILE).write_text(json.dumps(data))
    assert load_plan(tmp_path / PLAN_FILE).rollout_engine == "local"


@pytest.mark.parametrize(
    ("lora", "param_dtype", "bf16", "rollout_copy", "in_place", "world", "want"),
    [
        (False, "bfloat16", True, True, False, 1, "shared"),  # pure bf16: the policy decodes
        (False, "float32", True, True, False, 1, "copy"),  # float32 masters, a bf16 copy
        (False, "float32", False, True, False, 1, "shared"),  # float32 compute, float32 weights
        (False, "float32", False, True, False, 2, "copy"),  # DDP/FSDP: a full copy per rank
        (True, "bfloat16", True, True, True, 1, "merge_in_place"),
        (True, "bfloat16", True, False, False, 1, "adapters"),
        (True, "float32", True, True, False, 1, "copy"),
        (True, "float32", False, True, False, 1, "copy"),  # LoRA: a merged copy
    ],
)
def test_rollout_weights_rule(
    lora: bool,
    param_dtype: str,
    bf16: bool,
    rollout_copy: bool,
    in_place: bool,
    world: int,
    want: str,
) -> None:
    got = decide_rollout_weights(
        lora=lora,
        param_dtype=param_dtype,
        bf16=bf16,
        lora_rollout_copy=rollout_copy,
        merge_in_place=in_place,
        world_size=world,
    )
    assert got == want


def test_the_plan_of_a_bf16_cpu_and_of_an_avx2_one(monkeypatch: pytest.MonkeyPatch) -> None:
    _rates(monkeypatch, 200.0, 800.0)  # native bf16
    full = resolve_plan(load_config(overrides=["algorithm.beta=0.04"]), CPU)
    assert (full.bf16, full.param_dtype, full.rollout_weights) == (True, "bfloat16", "shared")
    assert full.fused_kernels and full.reference_on_disk and not full.merge_in_place
    assert (full.device, full.world_size, full.attn_implementation) == ("cpu", 1, "grouped")
    assert full.probe == {"float32_gflops": 200.0, "bfloat16_gflops": 800.0}
    lora = resolve_plan(load_config(overrides=["model.lora=true"]), CPU)
    assert (lora.merge_in_place, lora.param_dtype, lora.rollout_weights) == (
        True,
        "bfloat16",
        "merge_in_place",
    )
    two = resolve_plan(load_config(overrides=["model.lora=true"]), CPU, world_size=2)
    assert (two.merge_in_place, two.param_dtype, two.rollout_weights) == (False, "float32", "copy")
    _rates(monkeypatch, 40.0, 0.9)  # emulated bf16 (AVX2)
    avx2 = resolve_plan(load_config(), CPU)
    assert (avx2.bf16, avx2.param_dtype, avx2.rollout_weights) == (False, "float32", "shared")
    avx2_ddp = resolve_plan(load_config(), CPU, world_size=2)
    assert (avx2_ddp.param_dtype, avx2_ddp.rollout_weights) == ("float32", "copy")
    assert not avx2.fused_kernels and avx2.reference_on_disk
    assert avx2.precision.as_dict() == {
        "bf16": False,
        "setting": "auto",
        "reason": avx2.bf16_reason,
        "probe": {"float32_gflops": 40.0, "bfloat16_gflops": 0.9},
        "param_dtype": "float32",
        "param_reason": "auto -> float32 (float32 compute)",
    }


def test_a_plan_the_run_cannot_train_with_is_refused() -> None:
    pure = resolve_plan(load_config(overrides=["training.bf16=true"]), CPU)
    assert pure.param_dtype == "bfloat16"
    check_plan(pure)
    with pytest.raises(ConfigError, match="single-process only"):
        check_plan(RunPlan(**dict(pure.as_dict(), world_size=2)))
    merged = RunPlan(**dict(pure.as_dict(), merge_in_place=True))
    with pytest.raises(ConfigError, match="model.lora_merge_in_place=true keeps"):
        check_plan(RunPlan(**dict(merged.as_dict(), device="cuda")))
    with pytest.raises(ConfigError, match="must be in the rollout dtype"):
        check_plan(RunPlan(**dict(merged.as_dict(), param_dtype="float32")))


def test_the_log_lines(monkeypatch: pytest.MonkeyPatch) -> None:
    config = load_config(
        overrides=[
            "training.bf16=true",
            "algorithm.beta=0.04",
            "training.compile_optimizer=true",
            "rollout.native_kernels=true",
            "training.native_kernels=true",
        ]
    )
    monkeypatch.setattr(plan_module, "available_memory", lambda device: 6_000_000_000)
    lines = plan_lines(resolve_plan(config, CPU), config)
    assert lines == [
        "precision: bf16 compute (training.bf16=true was set explicitly)",
        "precision: bfloat16 weights (auto -> bfloat16 (native bf16 on this CPU, one process: "
        "pure bf16 training))",
        "memory: reference mapped from disk",
        "memory: fused RMSNorm / SwiGLU / softmax kernels (training.fused_kernels)",
        "speed: the bf16 AdamW step compiled (training.compile_optimizer)",
        "speed: decoding through groupwise's C++ kernels (rollout.native_kernels)",
        "speed: log-probs and RMSNorms through groupwise's C++ kernels (training.native_kernels)",
        "memory: activations of a forward/backward within 1.5 GB (training.max_tokens_per_"
        "microbatch=auto: long groups whole where they fit)",
    ]


def test_plan_json_is_written_and_read_back(tmp_path: Path) -> None:
    config = load_config(overrides=[f"output_dir={tmp_path}", "training.bf16=false"])
    plan = resolve_plan(config, CPU)
    RunDirectory(config, plan.precision, plan).start(0)
    assert json.loads((tmp_path / PLAN_FILE).read_text()) == plan.as_dict()
    assert load_plan(tmp_path / PLAN_FILE) == plan
    (tmp_path / PLAN_FILE).write_text(json.dumps({"bf16": True}))
    with pytest.raises(ConfigError, match="is not a run plan"):
        load_plan(tmp_path / PLAN_FILE)


def test_the_plan_file_a_resume_reads(tmp_path: Path) -> None:
    run = tmp_path / "run"
    step = run / "checkpoints" / "step-00000002"
    step.mkdir(parents=True)
    (step / "checkpoint.json").write_text("{}")
    fresh = load_config(overrides=[f"output_dir={run}"])
    auto = load_config(overrides=[f"output_dir={run}", "resume=auto"])
    other = load_config(overrides=[f"output_dir={tmp_path / 'new'}", f"resume={step}"])
    assert resumed_plan_file(auto) is None  # a run saved without plan.json: resolved afresh
    (run / PLAN_FILE).write_text("{}")
    assert resumed_plan_file(fresh) is None
    assert resumed_plan_file(auto) == run / PLAN_FILE
    assert resumed_plan_file(other) == run / PLAN_FILE


def test_a_resume_uses_the_saved_plan_and_names_what_differs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    config = load_config()
    _rates(monkeypatch, 200.0, 800.0)  # the machine the run started on
    monkeypatch.setattr(plan_module, "available_memory", lambda device: 6_000_000_000)
    started = resolve_plan(config, CPU)
    (tmp_path / PLAN_FILE).write_text(json.dumps(started.as_dict()))
    _rates(monkeypatch, 40.0, 0.9)  # another CPU's probe
    plan = run_plan(config, CPU, 1, tmp_path / PLAN_FILE)
    assert plan == started
    out, err = capsys.readouterr()
    assert "training.bf16: true -> false (probe on" in err
    assert "training.param_dtype: bfloat16 -> float32 (auto -> float32" in err
    assert "training.fused_kernels: true -> false" in err
    assert "rollout weights" not in err  # the policy decodes itself under either precision
    assert "model.reference_on_disk" not in err  # the same here
    assert out.count("precision: ") == 2 and "bf16 compute" in out  # the saved plan, once
    assert run_plan(config, CPU, 1) == resolve_plan(config, CPU)  # no plan.json: afresh
    assert "auto would choose differently" not in capsys.readouterr().err


def test_nothing_else_resolves_an_auto_setting() -> None:
    """Only the plan compares a setting with 'auto', besides these: config validation of
    explicit values, the device (resolved before the plan, which records it), the attention
    kernel of ``load_base_model`` called outside a run, ``training.resume``, the mismatch
    correction's ``auto`` (on when a batch carries the engine's log-probs: a property of the
    data, not of the machine), the llama.cpp engine's file dtype (that of the rollout
    weights the plan chose) and the episodes engine's tool-call format (what the tokenizer's
    chat template renders: a property of the model, not of the machine)."""
    allowed = {
        ("config.py", "'auto' not in (t.bf16, t.param_dtype)"),
        ("distributed.py", "device_name == 'auto'"),
        ("models/loading.py", "name == 'auto'"),
        ("models/loading.py", "attn_implementation == 'auto'"),
        ("run/directory.py", "t.resume == 'auto'"),
        ("rollout/llamacpp.py", "dtype == 'auto'"),
        ("rollout/chat.py", "self.format_name == 'auto'"),
        ("rollout/chat.py", "self.format_name != 'auto'"),
        ("rollout/chat.py", "tool_format != 'auto'"),
    }
    found, callers = set(), set()
    removed = {"choose_strategy", "resolve_memory_levers", "run_merge_in_place", "run_precision"}
    for path in SRC.rglob("*.py"):
        name = path.relative_to(SRC).as_posix()
        if name == "models/plan.py":
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Compare) and any(
                isinstance(c, ast.Constant) and c.value == "auto"
                for c in [node.left, *node.comparators]
            ):
                found.add((name, ast.unparse(node)))
            if isinstance(node, ast.Call):
                called = ast.unparse(node.func).rpartition(".")[2]
                if called in removed or called.startswith("decide_"):
                    callers.add((name, called))
    assert found == allowed
    assert callers == set()  # the decisions are taken by the plan alone
