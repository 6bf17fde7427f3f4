"""``groupwise export`` and what the end of a run writes into ``final/``: GGUF files that read
back as the model's tensors, that llama.cpp stops at ``<|im_end|>`` with and that groupwise
loads back as ``model.name``; the Ollama Modelfile; the model card with its own run's numbers."""

from __future__ import annotations

import copy
import shlex
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from groupwise import GRPOTrainer
from groupwise.config import config_to_dict, load_config
from groupwise.export.gguf import export_gguf, modelfile_text
from groupwise.models import load_base_model, tiny_random_model
from groupwise.models.gguf import write_model_gguf
from tests.models.test_gguf import _read, _values, unpermute
from tests.tests_helpers import tiny_overrides, varied_reward

CPU = torch.device("cpu")


def _load(name: str) -> tuple[Any, Any]:
    return load_base_model(name, seed=0, device=CPU, attn_implementation="eager")


def _logits(model: Any, tokenizer: Any) -> torch.Tensor:
    messages = [{"role": "user", "content": "What is 12 + 30?"}]
    text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    ids = tokenizer(text, add_special_tokens=False, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        return model(ids).logits[0]


def test_the_run_end_writes_the_ggufs_modelfiles_and_card(
    trained_run: tuple[Path, dict[str, Any]],
) -> None:
    run, _ = trained_run
    final = run / "final"
    for kind in ("f32", "bf16"):
        assert (final / f"model.{kind}.gguf").is_file()
        text = (final / f"model.{kind}.Modelfile").read_text()
        assert text.startswith(f"FROM ./model.{kind}.gguf\n")
    assert (final / "README.md").is_file()


def test_the_exported_tensors_are_the_final_models(
    trained_run: tuple[Path, dict[str, Any]],
) -> None:
    """Every tensor of ``model.f32.gguf`` is the final model's exactly once llama.cpp's q/k
    row permutation is undone, and ``model.bf16.gguf``'s is its bf16 rounding."""
    run, _ = trained_run
    model, _ = _load(str(run / "final"))
    state = model.state_dict()
    heads = {"attn_q": 4, "attn_k": 2}
    for kind, dtype in (("f32", torch.float32), ("bf16", torch.bfloat16)):
        tensors = _read(run / "final" / f"model.{kind}.gguf")
        assert len(tensors) == 20
        for name, tensor in tensors.items():
            source = _hf_name(name)
            want = state[source]
            got = _values(tensor).reshape(want.shape)
            part = name.split(".")[2] if name.startswith("blk.") else ""
            if part in heads:
                got = unpermute(got, heads[part])
            assert torch.equal(got, want.to(dtype) if want.dim() >= 2 else want), name


def _hf_name(gguf_name: str) -> str:
    fixed = {
        "token_embd.weight": "model.embed_tokens.weight",
        "output_norm.weight": "model.norm.weight",
    }
    if gguf_name in fixed:
        return fixed[gguf_name]
    _, layer, part, _ = gguf_name.split(".")
    hf = {
        "attn_q": "self_attn.q_proj",
        "attn_k": "self_attn.k_proj",
        "attn_v": "self_attn.v_proj",
        "attn_output": "self_attn.o_proj",
        "ffn_gate": "mlp.gate_proj",
        "ffn_up": "mlp.up_proj",
        "ffn_down": "mlp.down_proj",
        "attn_norm": "input_layernorm",
        "ffn_norm": "post_attention_layernorm",
    }[part]
    return f"model.layers.{layer}.{hf}.weight"


def test_the_gguf_loads_back_into_groupwise_with_the_final_directorys_logits(
    trained_run: tuple[Path, dict[str, Any]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``model.name=final/model.f32.gguf`` is the model of ``final/``: same logits (f32 holds
    every weight exactly; transformers undoes the permutation when it reads the file)."""
    monkeypatch.setenv("GROUPWISE_CACHE", str(tmp_path))
    run, _ = trained_run
    from_dir, tokenizer = _load(str(run / "final"))
    from_gguf, gguf_tokenizer = _load(str(run / "final" / "model.f32.gguf"))
    assert gguf_tokenizer.get_vocab() == tokenizer.get_vocab()
    want, got = _logits(from_dir, tokenizer), _logits(from_gguf, tokenizer)
    assert torch.allclose(got, want, atol=1e-5, rtol=0)


def test_the_card_names_its_own_runs_numbers(trained_run: tuple[Path, dict[str, Any]]) -> None:
    """The card's header is the Hub's; its numbers are this run's summary; its reproduce
    command, parsed back, is this run's config."""
    run, summary = trained_run
    card = (run / "final" / "README.md").read_text()
    head, meta_text, body = card.split("---\n", 2)
    meta = yaml.safe_load(meta_text)
    assert head == "" and meta["license"] == "unknown" and meta["library_name"] == "transformers"
    assert meta["tags"][:2] == ["groupwise", "grpo"]
    before, after = summary["eval_before"], summary["eval_after"]
    assert f"**{before:.1%} before, {after:.1%} after**" in body
    assert f"- steps: {summary['steps']}" in body
    assert f"- wall time: {summary['wall_time_s']:.0f} s" in body
    assert "`model.bf16.gguf`" in body and "CPU:" in body
    command = body.split("## Reproduce\n\n```\n")[1].split("\n```")[0]
    words = shlex.split(command)
    assert words[:2] == ["groupwise", "train"]
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert config_to_dict(load_config(overrides=words[2:])) == saved


def test_the_modelfile_speaks_chatml() -> None:
    _, tokenizer = tiny_random_model(seed=0)
    text = modelfile_text("model.q8_0.gguf", tokenizer)
    assert 'TEMPLATE """{{- if .System }}<|im_start|>system' in text
    assert 'SYSTEM """You are a helpful AI assistant named SmolLM' in text
    assert 'PARAMETER stop "<|im_end|>"' in text


def _eos_model() -> tuple[Any, Any]:
    """The tiny model made to answer ``<|im_end|>`` at once: every embedding's first coordinate
    is 10 (so the normalised hidden state's is large and positive), EOS's is 30 (tied: its
    logit beats every other by ~20 times that coordinate)."""
    model, tokenizer = tiny_random_model(seed=0)
    model = copy.deepcopy(model)
    with torch.no_grad():
        embed = model.model.embed_tokens.weight
        embed[:, 0] = 10.0
        embed[tokenizer.eos_token_id, 0] = 30.0
    return model, tokenizer


def test_llama_cpp_generation_stops_at_im_end(tmp_path: Path) -> None:
    """The exported EOS is ``<|im_end|>`` and llama.cpp ends a greedy reply on it."""
    pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed")
    from groupwise.models.gguf.llama import open_llama

    model, tokenizer = _eos_model()
    assert tokenizer.convert_ids_to_tokens(tokenizer.eos_token_id) == "<|im_end|>"
    assert int(_logits(model, tokenizer)[-1].argmax()) == tokenizer.eos_token_id
    path = write_model_gguf(tmp_path / "m.gguf", model, tokenizer, dtype="f32").path
    llm = open_llama(path, n_ctx=256, threads=1)
    messages = [{"role": "user", "content": "What is 12 + 30?"}]
    out = llm.create_chat_completion(messages, max_tokens=16, temperature=0)
    llm.close()
    assert out["choices"][0]["finish_reason"] == "stop"
    assert out["choices"][0]["message"]["content"] == ""


def test_a_lora_checkpoint_exports_merged_with_its_adapter(tmp_path: Path) -> None:
    """A LoRA run's checkpoint holds only the adapter: export loads the run's base, merges it
    (the same tensors as the run's merged final/) and writes the adapter as llama.cpp's."""
    overrides = tiny_overrides(
        tmp_path, save_final=True, save_steps=2, learning_rate=1e-2, **{"model.lora": True}
    )
    GRPOTrainer(load_config(overrides=overrides), reward_funcs=[varied_reward]).train()
    run = tmp_path / "run"
    checkpoint = run / "checkpoints" / "step-00000002"
    files = export_gguf(checkpoint, ["f32"], tmp_path / "out", log=None)
    assert [f.type for f in files] == ["f32", "lora"]
    assert files[1].path.name == "adapter.f32.gguf"
    exported = _read(files[0].path)
    final, _ = _load(str(run / "final"))
    want = final.state_dict()["model.layers.0.mlp.up_proj.weight"]
    got = _values(exported["blk.0.ffn_up.weight"]).reshape(want.shape)
    assert torch.allclose(got, want, atol=1e-6, rtol=0)
    base, _ = tiny_random_model(seed=0)
    assert not torch.allclose(want, base.state_dict()["model.layers.0.mlp.up_proj.weight"])
