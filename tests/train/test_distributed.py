"""torch.distributed: 2 CPU processes (gloo) take the same steps as 1 process with the same batch.

The 2-process runs are real ``torchrun`` launches (``python -m torch.distributed.run``) of
``python -m groupwise train``. Per-device batch semantics: 2 ranks with
``per_device_train_batch_size=8, gradient_accumulation_steps=1`` (2 prompts x G=4 each) make the
same global batch as 1 process with ``gradient_accumulation_steps=2`` (4 prompts, 2 micro-batches).
Sampling draws are indexed by the global row, so both sample the same completions.

Tolerance: fp32 throughout (bf16=false). The two differ only in summation order (gradients
all-reduced over ranks vs accumulated in one process; prompts padded to a per-rank vs a global
width), ~1e-7 relative in the gradients. Adam divides by sqrt(v), which can blow a 1e-7
relative gradient difference up for parameters whose gradient is ~0, so weights are compared
with atol=2e-5 (lr = 1e-3, 3 steps move weights by up to 3e-3: a real mistake, e.g. a missing
factor of 2, shows at ~1e-3) and the logged metrics with rtol=1e-4. Measured on this machine
(torch 2.13, 2 CPU processes, gloo): the final weights of ddp, fsdp and the resumed runs were
bitwise equal to the 1-process run (grad_norm within 7e-8 relative under fsdp).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from groupwise.config import ConfigError, load_config
from groupwise.distributed import (
    all_gather_cat,
    all_reduce_floats,
    all_reduce_sum,
    broadcast_object,
    is_main,
    rank_slice,
    world_size,
    wrap_policy,
)
from groupwise.rollout import generate, sample_next, tokenize_prompts
from tests.tests_helpers import tiny_overrides

ROOT = Path(__file__).resolve().parents[2]
STEPS = 3


def _overrides(out: Path, **extra: object) -> list[str]:
    base: dict[str, object] = {
        "max_steps": STEPS,
        "bf16": False,
        "num_threads": 1,
        "per_device_train_batch_size": 8,
        "gradient_accumulation_steps": 2,
        "rewards.funcs": "[tests.tests_helpers:varied_reward]",
        "save_final": True,
        "log_completions": True,
        "device": "cpu",
        "lr_scheduler_type": "constant",  # the resume test grows max_steps from 2 to 3
        # the one-process reference samples the way N processes do (on by itself when N > 1)
        "rollout.rank_invariant_sampling": True,
    }
    base.update(extra)
    return tiny_overrides(out, **base)


def _run(out: Path, nproc: int, **extra: object) -> subprocess.CompletedProcess[str]:
    """``groupwise train`` in 1 process, or under torchrun with ``nproc`` processes."""
    launcher = [sys.executable]
    if nproc > 1:
        launcher += ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"]
    cmd = [*launcher, "-m", "groupwise", "train", *_overrides(out, **extra)]
    env = dict(os.environ, PYTHONPATH=f"{ROOT}{os.pathsep}{ROOT / 'src'}")
    env["OMP_NUM_THREADS"] = "1"
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, (
        f"exit {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    )
    return proc


def _weights(model_dir: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    out: dict[str, torch.Tensor] = {}
    for file in sorted(model_dir.glob("*.safetensors")):
        out.update(load_file(str(file)))
    return out


def _metrics(run: Path) -> list[dict[str, float]]:
    return [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]


def _assert_same_run(got: Path, want: Path) -> None:
    """Same logged losses/rewards per step and the same final weights (see the tolerances)."""
    a, b = _metrics(got), _metrics(want)
    assert [m["step"] for m in a] == [m["step"] for m in b] == list(range(1, STEPS + 1))
    for key in ("loss", "reward", "reward_std", "completions/mean_length", "grad_norm"):
        assert [m[key] for m in a] == pytest.approx([m[key] for m in b], rel=1e-4, abs=1e-6), key
    assert any(m["loss"] != 0 for m in a)
    assert [m["num_tokens"] for m in a] == [m["num_tokens"] for m in b]
    wa, wb = _weights(got / "final"), _weights(want / "final")
    assert wa.keys() == wb.keys()
    for name in wa:
        torch.testing.assert_close(wa[name], wb[name], atol=2e-5, rtol=0, msg=name)
    lines = (got / "completions.jsonl").read_text().splitlines()
    assert len(lines) == STEPS * 16  # every rank's completions, written once (by rank 0)


@pytest.fixture(scope="module")
def single_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The reference: 1 process, 4 prompts x G=4 per step in 2 micro-batches."""
    out = tmp_path_factory.mktemp("single")
    _run(out, 1)
    return out / "run"


def test_ddp_two_processes_match_one(tmp_path: Path, single_run: Path) -> None:
    proc = _run(tmp_path, 2, strategy="ddp", gradient_accumulation_steps=1)
    _assert_same_run(tmp_path / "run", single_run)
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["world_size"] == 2
    assert proc.stdout.count("wall time:") == 1  # rank 0 alone prints the summary


@pytest.mark.slow
def test_fsdp_two_processes_match_one(tmp_path: Path, single_run: Path) -> None:
    _run(tmp_path, 2, strategy="fsdp", gradient_accumulation_steps=1)
    _assert_same_run(tmp_path / "run", single_run)


@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_two_process_resume_matches_uninterrupted(
    tmp_path: Path, single_run: Path, strategy: str
) -> None:
    """Checkpoint at step 2 (2 processes), resume to step 3: same as the 1-process run."""
    extra = {"strategy": strategy, "gradient_accumulation_steps": 1, "save_steps": 1}
    _run(tmp_path, 2, max_steps=STEPS - 1, save_final=False, **extra)
    assert (tmp_path / "run" / "checkpoints" / f"step-{STEPS - 1:08d}").is_dir()
    proc = _run(tmp_path, 2, resume="auto", **extra)
    assert f"resumed from {tmp_path / 'run' / 'checkpoints'}" in proc.stdout
    _assert_same_run(tmp_path / "run", single_run)


# ---------------------------------------------------------------------------- single-process parts
def test_helpers_are_identities_in_one_process() -> None:
    t = torch.arange(4.0)
    assert world_size() == 1 and is_main()
    assert all_reduce_sum(t) is t and all_gather_cat(t) is t
    assert all_reduce_floats({"a": 1.5}, {"a": "sum"}) == {"a": 1.5}
    assert broadcast_object({"x": 1}) == {"x": 1}
    assert rank_slice(6) == slice(0, 6)
    module = torch.nn.Linear(2, 2)
    assert wrap_policy(module, "fsdp", torch.device("cpu")) is module


def test_sampling_depends_on_the_global_row_only() -> None:
    """Two halves generated with ``row_offset`` equal the whole batch generated at once."""
    from groupwise.models import tiny_random_model

    model, tokenizer = tiny_random_model(0)
    model.config.use_cache = True
    prompts = ["a", "bb bb", "ccc", "d d d d d"]
    kwargs = dict(
        group_size=3,
        max_completion_length=6,
        eos_token_ids=[tokenizer.eos_token_id],
        pad_token_id=tokenizer.pad_token_id,
        temperature=1.0,
        top_k=50,
    )
    whole = generate(
        model,
        tokenize_prompts(tokenizer, prompts, torch.device("cpu")),
        generator=torch.Generator().manual_seed(3),
        total_rows=12,
        **kwargs,  # type: ignore[arg-type]
    )
    for half in (0, 1):
        part = generate(
            model,
            tokenize_prompts(tokenizer, prompts[2 * half : 2 * half + 2], torch.device("cpu")),
            generator=torch.Generator().manual_seed(3),
            row_offset=6 * half,
            total_rows=12,
            **kwargs,  # type: ignore[arg-type]
        )
        rows = slice(6 * half, 6 * half + 6)
        for got, want, mask in zip(
            part.completion_ids,
            whole.completion_ids[rows],
            whole.completion_mask[rows],
            strict=True,
        ):
            assert got[: int(mask.sum())].tolist() == want[mask.bool()].tolist()


def test_inverse_cdf_sampling_follows_the_distribution() -> None:
    logits = torch.tensor([[0.0, 1.0, 2.0, -1e9]]).repeat(20000, 1)
    uniform = torch.rand(20000, generator=torch.Generator().manual_seed(0))
    tokens = sample_next(logits, temperature=1.0, uniform=uniform)
    freq = torch.bincount(tokens, minlength=4).float() / 20000
    torch.testing.assert_close(freq, torch.softmax(logits[0], -1), atol=0.015, rtol=0)
    edge = sample_next(logits[:2], temperature=1.0, uniform=torch.tensor([0.0, 1.0 - 2**-24]))
    assert edge.tolist() == [0, 2]  # never the zero-probability token


def test_pure_bf16_is_refused_with_several_processes(tmp_path: Path) -> None:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    cmd += ["-m", "groupwise", "train", *_overrides(tmp_path, param_dtype="bfloat16", bf16=True)]
    env = dict(os.environ, PYTHONPATH=f"{ROOT}{os.pathsep}{ROOT / 'src'}")
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode != 0
    assert "training.param_dtype=bfloat16 is single-process only" in proc.stderr + proc.stdout


def test_fsdp_with_lora_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"training.strategy=fsdp"):
        load_config(overrides=tiny_overrides(tmp_path, strategy="fsdp", **{"model.lora": True}))


def test_gradient_checkpointing_gives_the_same_logp_and_gradients() -> None:
    """The cache-free forward used under gradient checkpointing == the shared-prefix forward."""
    from groupwise.models import enable_gradient_checkpointing, tiny_random_model
    from groupwise.train.forward import completion_logp

    model, tokenizer = tiny_random_model(0)
    prompts = tokenize_prompts(tokenizer, ["a", "bb bb b"], torch.device("cpu"))
    model.config.use_cache = True
    with torch.no_grad():
        rollout = generate(
            model,
            prompts,
            group_size=2,
            max_completion_length=5,
            eos_token_ids=[tokenizer.eos_token_id],
            pad_token_id=tokenizer.pad_token_id,
            generator=torch.Generator().manual_seed(0),
        )
    model.config.use_cache = False
    model.train()
    results = []
    for checkpointing in (False, True):
        if checkpointing:
            enable_gradient_checkpointing(model)
        model.zero_grad()
        logp, _ = completion_logp(model, rollout, prefix_cache=not checkpointing)
        logp.sum().backward()
        grads = [p.grad.clone() for p in model.parameters() if p.grad is not None]
        results.append((logp.detach(), grads))
    torch.testing.assert_close(results[0][0], results[1][0], atol=1e-5, rtol=1e-5)
    for a, b in zip(results[0][1], results[1][1], strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)
