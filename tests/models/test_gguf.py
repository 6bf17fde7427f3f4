"""GGUF files of the policy: tensor names, rotary permutation, types, in-place updates; and,
with llama-cpp-python installed, that llama.cpp loads them and computes the torch model's
logits."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from groupwise.models import tiny_random_model
from groupwise.models.gguf import rope_permute, write_gguf, write_model_gguf


@pytest.fixture(scope="module")
def tiny() -> tuple[Any, Any]:
    return tiny_random_model(seed=0)


def _read(path: Path) -> dict[str, Any]:
    import gguf

    return {t.name: t for t in gguf.GGUFReader(str(path)).tensors}


def _values(tensor: Any) -> torch.Tensor:
    data = torch.from_numpy(tensor.data.copy())
    if int(tensor.tensor_type) == 30:  # BF16, stored as raw bytes
        return data.view(torch.bfloat16).reshape(*reversed([int(d) for d in tensor.shape]))
    return data


def test_rope_permute_interleaves_the_halves_of_each_head() -> None:
    rows = torch.arange(8.0)[:, None]  # 2 heads of dim 4: halves (0, 1 | 2, 3), (4, 5 | 6, 7)
    assert rope_permute(rows, 2).squeeze(1).tolist() == [0, 2, 1, 3, 4, 6, 5, 7]


@pytest.mark.parametrize("dtype", ["f32", "bf16"])
def test_tensors_names_offsets_and_update(
    tiny: tuple[Any, Any], tmp_path: Path, dtype: str
) -> None:
    model, _ = tiny
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    file = write_model_gguf(tmp_path / "m.gguf", model, None, dtype=dtype)
    tensors = _read(file.path)
    assert "output.weight" not in tensors  # tied: llama.cpp reuses token_embd
    assert {s.name for s in file.slots} == set(tensors)
    assert all(s.offset == tensors[s.name].data_offset for s in file.slots)
    want = torch.bfloat16 if dtype == "bf16" else torch.float32
    q = state["model.layers.1.self_attn.q_proj.weight"]
    k = state["model.layers.1.self_attn.k_proj.weight"]
    assert torch.equal(_values(tensors["blk.1.attn_q.weight"]), rope_permute(q, 4).to(want))
    assert torch.equal(_values(tensors["blk.1.attn_k.weight"]), rope_permute(k, 2).to(want))
    norm = _values(tensors["blk.0.attn_norm.weight"])
    assert norm.dtype == torch.float32  # vectors stay float32
    changed = {key: value * 2 + 1 for key, value in state.items()}
    file.update(changed)
    again = _read(file.path)
    embed = changed["model.embed_tokens.weight"].to(want)
    assert torch.equal(_values(again["token_embd.weight"]), embed)
    new_k = rope_permute(changed["model.layers.1.self_attn.k_proj.weight"], 2).to(want)
    assert torch.equal(_values(again["blk.1.attn_k.weight"]), new_k)


def test_update_refuses_a_state_dict_of_another_model(
    tiny: tuple[Any, Any], tmp_path: Path
) -> None:
    model, _ = tiny
    file = write_model_gguf(tmp_path / "m.gguf", model, None, dtype="f32")
    state = dict(model.state_dict())
    del state["model.norm.weight"]
    with pytest.raises(KeyError, match=r"model\.norm\.weight"):
        file.update(state)
    state = {k: v[:1] if k.endswith("q_proj.weight") else v for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match="shape"):
        file.update(state)


def test_unsupported_models_are_named(tiny: tuple[Any, Any], tmp_path: Path) -> None:
    model, _ = tiny
    config = type(model.config).from_dict(model.config.to_dict())
    config.model_type = "gpt2"
    with pytest.raises(ValueError, match="gpt2"):
        write_gguf(tmp_path / "m.gguf", config, model.state_dict())
    with pytest.raises(ValueError, match="f16"):
        write_model_gguf(tmp_path / "m.gguf", model, dtype="f16")
