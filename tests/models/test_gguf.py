"""GGUF files of the policy: tensor names, rotary permutation, types, in-place updates; and,
with llama-cpp-python installed, that llama.cpp loads them and computes the torch model's
logits."""

from __future__ import annotations

import copy
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


def unpermute(weight: torch.Tensor, heads: int) -> torch.Tensor:
    """The inverse of :func:`rope_permute`: llama.cpp's interleaved rows back to HF's halves."""
    half = weight.shape[0] // heads // 2
    rest = weight.shape[1:]
    return weight.reshape(heads, half, 2, *rest).transpose(1, 2).reshape(weight.shape)


def test_rope_permute_interleaves_the_halves_of_each_head() -> None:
    rows = torch.arange(8.0)[:, None]  # 2 heads of dim 4: halves (0, 1 | 2, 3), (4, 5 | 6, 7)
    assert rope_permute(rows, 2).squeeze(1).tolist() == [0, 2, 1, 3, 4, 6, 5, 7]


@pytest.mark.parametrize("dtype", ["f32", "bf16", "f16"])
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
    want = {"bf16": torch.bfloat16, "f16": torch.float16, "f32": torch.float32}[dtype]
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
    with pytest.raises(ValueError, match="q4_0"):
        write_model_gguf(tmp_path / "m.gguf", model, dtype="q4_0")


# ----------------------------------------------------------------- loaded by llama.cpp
def _runtime(path: Path, exact: bool) -> Any:
    pytest.importorskip(
        "llama_cpp", reason="llama-cpp-python is not installed (setup.sh --llamacpp)"
    )
    from groupwise.rollout.llamacpp import LlamaRuntime

    return LlamaRuntime(path, 2, exact=exact)


def _prompt_ids(tokenizer: Any) -> list[int]:
    messages = [{"role": "user", "content": "What is 12 + 30? Reply with only the number."}]
    text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def _llama_logits(rt: Any, ids: list[int]) -> torch.Tensor:
    rt.context(len(ids), 1, len(ids))
    rt.decode(ids, range(len(ids)), [0] * len(ids), [True] * len(ids))
    return rt.logits(range(len(ids)))  # [L, V]


def test_every_tensor_reads_back_as_the_models_after_undoing_the_rope_permutation(
    tiny: tuple[Any, Any], tmp_path: Path
) -> None:
    """Read with the gguf package and un-permuted, every tensor is the model's: f32 exactly,
    bf16 and f16 as torch rounds them (vectors stay float32 in every type)."""
    model, _ = tiny
    state = model.state_dict()
    for dtype, kind in (("f32", torch.float32), ("bf16", torch.bfloat16), ("f16", torch.float16)):
        file = write_model_gguf(tmp_path / f"m.{dtype}.gguf", model, None, dtype=dtype)
        tensors = _read(file.path)
        for slot in file.slots:
            got = _values(tensors[slot.name]).reshape(slot.shape)
            if slot.heads:
                got = unpermute(got, slot.heads)
            source = state[slot.source]
            expected = source.to(kind) if source.dim() >= 2 else source
            assert torch.equal(got, expected), (dtype, slot.name)


def test_the_input_gguf_keeps_its_tokenizer_and_general_keys(
    tiny: tuple[Any, Any], tmp_path: Path
) -> None:
    """A model that came from a GGUF file is written with that file's tokenizer keys (byte for
    byte) and its general keys (the licence ...); given metadata wins over them."""
    import gguf

    from groupwise.models import smollm2_gguf_path

    model, tokenizer = tiny
    source = smollm2_gguf_path()
    path = tmp_path / "m.gguf"
    meta = {"general.name": "trained"}
    write_model_gguf(path, model, tokenizer, dtype="f32", metadata=meta, source=source)
    src, out = gguf.GGUFReader(str(source)).fields, gguf.GGUFReader(str(path)).fields
    for key in (
        "tokenizer.ggml.tokens",
        "tokenizer.ggml.merges",
        "tokenizer.chat_template",
        "tokenizer.ggml.pre",
        "tokenizer.ggml.eos_token_id",
        "general.license",
    ):
        assert out[key].contents() == src[key].contents(), key
    assert out["general.name"].contents() == "trained"
    assert out["general.file_type"].contents() == 0  # f32: the file's own, not the source's
    assert "general.quantization_version" not in out


@pytest.mark.parametrize("dtype", ["f32", "bf16", "f16"])
def test_llama_cpp_computes_the_torch_models_logits(
    tiny: tuple[Any, Any], tmp_path: Path, dtype: str
) -> None:
    """Every position's logits of a chat prompt, llama.cpp against torch in float32.

    f32 file (float32 cache, no flash attention): only the order of float32 sums differs;
    measured max |diff| 5e-7 against logits of std 0.16, bound 1e-5. bf16 file (f16 cache,
    flash attention as llama.cpp picks it), against torch on the same bf16-rounded weights in
    float32: llama.cpp also rounds each matmul's input activations to bf16 (relative 2^-9) and
    attention's K, V and Q to f16; measured 1.4% of the logits' std, bound 5%, and the same
    argmax at every position. f16 file: the same, against the f16-rounded weights (10 mantissa
    bits, rounding 8 times finer than bf16).
    """
    model, tokenizer = tiny
    file = write_model_gguf(tmp_path / "m.gguf", model, tokenizer, dtype=dtype)
    rt = _runtime(file.path, exact=dtype == "f32")
    ids = _prompt_ids(tokenizer)
    got = _llama_logits(rt, ids)
    kind = {"f32": torch.float32, "bf16": torch.bfloat16, "f16": torch.float16}[dtype]
    ref_model = model if dtype == "f32" else copy.deepcopy(model).to(kind).float()
    with torch.no_grad():
        want = ref_model(torch.tensor([ids])).logits[0].float()
    diff = (got - want).abs().max().item()
    if dtype == "f32":
        assert diff < 1e-5
    else:
        assert diff < 0.05 * want.std().item()
        assert torch.equal(got.argmax(-1), want.argmax(-1))
    rt.close()


def test_llama_cpp_reads_the_vocabulary_and_chat_template(
    tiny: tuple[Any, Any], tmp_path: Path
) -> None:
    """The written tokenizer is llama.cpp's too: same ids for text with special tokens,
    digits and spaces; the chat template is the tokenizer's."""
    model, tokenizer = tiny
    file = write_model_gguf(tmp_path / "m.gguf", model, tokenizer, dtype="bf16")
    rt = _runtime(file.path, exact=False)
    lib = rt.lib
    vocab = lib.llama_model_get_vocab(rt.model)
    for text in ["<|im_start|>user\nWhat is 1234 + 56?<|im_end|>\n", "  two  spaces, émigré"]:
        raw = text.encode()
        out = (lib.llama_token * 256)()
        n = lib.llama_tokenize(vocab, raw, len(raw), out, 256, False, True)
        assert list(out[:n]) == tokenizer(text, add_special_tokens=False)["input_ids"], text
    template = lib.llama_model_chat_template(rt.model, None)
    assert template is not None and template.decode() == tokenizer.chat_template
    rt.close()
