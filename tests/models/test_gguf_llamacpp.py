"""GGUF files made for use elsewhere, checked in llama.cpp: quantized types through llama.cpp's
quantizer (the per-tensor types they really got, their logits), and a peft LoRA adapter as a
llama.cpp LoRA GGUF that changes llama.cpp's logits as the merged model's."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import torch

from groupwise.models import LoraSettings, apply_lora, tiny_random_model
from groupwise.models.gguf import write_model_gguf
from groupwise.models.gguf.lora import adapter_pairs, effective_alpha, write_lora_gguf
from groupwise.models.gguf.quantize import quantize_gguf, tensor_type_map, tensor_types

Q8_0, Q4_K_M = 7, 15  # llama.cpp's file types


@pytest.fixture(scope="module")
def tiny() -> tuple[Any, Any]:
    return tiny_random_model(seed=0)


def _llama(path: Path, lora: Path | None = None) -> Any:
    pytest.importorskip(
        "llama_cpp", reason="llama-cpp-python is not installed (setup.sh --llamacpp)"
    )
    from groupwise.models.gguf.llama import open_llama

    # float32 KV cache and no flash attention: only float32 sums differ from torch
    return open_llama(path, lora_path=lora, n_ctx=128, threads=1, exact=True, logits_all=True)


def _prompt_ids(tokenizer: Any) -> list[int]:
    messages = [{"role": "user", "content": "What is 12 + 30? Reply with only the number."}]
    text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def _llama_logits(llm: Any, ids: list[int]) -> torch.Tensor:
    llm.reset()
    llm.eval(ids)
    logits = torch.tensor(llm.scores[: len(ids)], dtype=torch.float32)
    llm.close()
    return logits


def _torch_logits(model: Any, ids: list[int]) -> torch.Tensor:
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0].float()


def test_quantized_files_report_the_types_their_tensors_got(
    tiny: tuple[Any, Any], tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    """q8_0 quantizes every matrix; q4_k_m asks for 4- and 6-bit k-quants, whose 256-blocks do
    not divide the tiny model's 64-wide rows, so llama.cpp falls back per tensor; norms stay
    F32. The report is read from the file, so it says so."""
    pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed")
    model, tokenizer = tiny
    f32 = write_model_gguf(tmp_path / "m.f32.gguf", model, tokenizer, dtype="f32").path
    q8 = quantize_gguf(f32, tmp_path / "m.q8_0.gguf", Q8_0, threads=1)
    assert tensor_types(q8) == {"Q8_0": 15, "F32": 5}
    capfd.readouterr()
    q4 = quantize_gguf(f32, tmp_path / "m.q4_k_m.gguf", Q4_K_M, threads=1)
    assert "blk.0" not in capfd.readouterr().err  # llama.cpp's per-tensor log kept out
    kinds = tensor_types(q4)
    assert sum(kinds.values()) == 20
    assert "Q4_K" not in kinds and "Q6_K" not in kinds  # 64 % 256 != 0: every one fell back
    assert tensor_type_map(q4)["blk.0.attn_norm.weight"] == "F32"
    assert q8.stat().st_size < f32.stat().st_size


def test_q8_0_logits_match_within_its_rounding(tiny: tuple[Any, Any], tmp_path: Path) -> None:
    """Q8_0 rounds each weight to 8 bits per block of 32 (and llama.cpp the activations it
    multiplies with to 8 bits too): the logits of a chat prompt stay within 15% of their std of
    the float32 model's (measured 7%) and agree on the argmax at most positions (measured: all)."""
    pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed")
    model, tokenizer = tiny
    f32 = write_model_gguf(tmp_path / "m.f32.gguf", model, tokenizer, dtype="f32").path
    q8 = quantize_gguf(f32, tmp_path / "m.q8_0.gguf", Q8_0, threads=1)
    ids = _prompt_ids(tokenizer)
    got, want = _llama_logits(_llama(q8), ids), _torch_logits(model, ids)
    assert (got - want).abs().max().item() < 0.15 * want.std().item()
    assert (got.argmax(-1) == want.argmax(-1)).float().mean().item() >= 0.8


def _trained_adapter(model: Any, directory: Path) -> Any:
    """A peft model over a copy of ``model`` with random, non-zero A and B, saved."""
    peft = apply_lora(
        copy.deepcopy(model), LoraSettings(r=4, alpha=8, dropout=0.0, target_modules="all-linear")
    )
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, param in peft.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.05)
    peft.save_pretrained(str(directory))
    return peft


def test_the_lora_adapter_changes_llama_cpps_logits_as_the_merged_model(
    tiny: tuple[Any, Any], tmp_path: Path
) -> None:
    """base GGUF + adapter GGUF in llama.cpp = the merged model in torch (float32, to 1e-4 of
    the logits' std; measured 2e-6), while the adapter moves them by far more (measured 4.5 std)."""
    model, tokenizer = tiny
    peft = _trained_adapter(model, tmp_path / "adapter")
    base = write_model_gguf(tmp_path / "base.gguf", model, tokenizer, dtype="f32").path
    adapter = write_lora_gguf(tmp_path / "adapter.gguf", model.config, tmp_path / "adapter")
    ids = _prompt_ids(tokenizer)
    got = _llama_logits(_llama(base, adapter), ids)
    merged = _torch_logits(copy.deepcopy(peft).merge_and_unload(), ids)
    plain = _torch_logits(model, ids)
    tolerance = 1e-4 * merged.std().item()
    assert (got - merged).abs().max().item() < tolerance
    assert (merged - plain).abs().max().item() > 100 * tolerance


def test_adapter_tensors_and_alpha(tiny: tuple[Any, Any], tmp_path: Path) -> None:
    """llama.cpp's names and shapes (``lora_a`` [r, in], ``lora_b`` [out, r]), the adapter
    keys, and rsLoRA's alpha written so that llama.cpp's alpha / r is peft's alpha / sqrt(r)."""
    import gguf

    model, _ = tiny
    _trained_adapter(model, tmp_path / "adapter")
    path = write_lora_gguf(tmp_path / "adapter.gguf", model.config, tmp_path / "adapter")
    reader = gguf.GGUFReader(str(path))
    assert reader.fields["general.type"].contents() == "adapter"
    assert reader.fields["adapter.type"].contents() == "lora"
    assert reader.fields["adapter.lora.alpha"].contents() == 8.0
    shapes = {t.name: [int(d) for d in reversed(t.shape)] for t in reader.tensors}
    assert shapes["blk.0.attn_q.weight.lora_a"] == [4, 64]
    assert shapes["blk.0.attn_k.weight.lora_b"] == [32, 4]  # 2 kv heads of 16
    assert len(shapes) == 2 * 7 * 2  # 7 Linears per layer, 2 layers, A and B
    assert effective_alpha({"lora_alpha": 8, "r": 4, "use_rslora": True}) == 16.0
    with pytest.raises(ValueError, match="not a LoRA"):
        adapter_pairs({"base_model.model.model.norm.weight": torch.ones(2)})
