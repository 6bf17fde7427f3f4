"""Model helpers: the file-backed reference policy, casting a model's weights."""

from __future__ import annotations

import copy
import mmap
import os
from pathlib import Path

import pytest
import torch

from groupwise.models import (
    MappedWeights,
    ReferencePolicy,
    load_base_model,
    make_rollout_model,
    tiny_random_model,
)
from groupwise.models.loading import cast_weights, publish_dir


def _resident_kb(address: int, nbytes: int) -> int:
    """Resident kB of the mapping that starts at ``address`` (from /proc/self/smaps)."""
    lines = Path("/proc/self/smaps").read_text().splitlines()
    for i, line in enumerate(lines):
        head = line.split()[0]
        if "-" in head and not head.endswith(":"):
            start, end = (int(x, 16) for x in head.split("-"))
            if start <= address < end:
                for other in lines[i + 1 :]:
                    if other.startswith("Rss:"):
                        return int(other.split()[1])
    raise AssertionError(f"no mapping at {address:#x}")


def test_file_backed_reference_gives_the_same_logits_and_releases_its_pages(
    tmp_path: Path,
) -> None:
    policy, _ = load_base_model("tiny-random", seed=0, device=torch.device("cpu"))
    ids = torch.tensor([[5, 6, 7, 8, 9, 10]])
    in_memory = ReferencePolicy(policy, torch.bfloat16)
    on_disk = ReferencePolicy(policy, torch.bfloat16, tmp_path)
    assert list(tmp_path.iterdir()) == []  # the file is unlinked at once
    with torch.no_grad():
        want = in_memory.context()[0](input_ids=ids).logits
        model = on_disk.context()[0]
        got = model(input_ids=ids).logits
        assert torch.equal(got, want)
        mapped = on_disk._mapped
        assert mapped is not None
        params = list(model.parameters())
        base = mapped.storage.data_ptr()
        assert all(base <= p.data_ptr() < base + mapped.nbytes for p in params)
        assert model.get_output_embeddings().weight is model.get_input_embeddings().weight  # tied
        if os.path.exists("/proc/self/smaps"):
            assert _resident_kb(base, mapped.nbytes) * 1024 >= 0.9 * mapped.nbytes  # just read
            on_disk.release()
            assert _resident_kb(base, mapped.nbytes) == 0
        assert torch.equal(model(input_ids=ids).logits, want)  # read back from the page cache
    policy.requires_grad_(True)
    try:
        MappedWeights(policy, tmp_path)
    except ValueError as err:
        assert "frozen CPU parameters" in str(err)
    else:
        raise AssertionError("trainable parameters were mapped")


def test_release_pages_zeroes_whole_pages_only() -> None:
    from groupwise.models import release_pages

    t = torch.ones(3 * 4096 + 100, dtype=torch.uint8)
    released = release_pages(t)
    if released == 0:  # no madvise on this platform
        return
    page = mmap.PAGESIZE
    start = t.data_ptr()
    first = -(-start // page) * page - start  # offset of the first whole page inside t
    last = (start + t.numel()) // page * page - start
    assert released == last - first >= 2 * page
    assert bool((t[first:last] == 0).all())  # the whole pages read as zeros now
    assert bool((t[:first] == 1).all()) and bool((t[last:] == 1).all())  # the edges are kept


def _floating_buffers(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: b for n, b in model.named_buffers() if b.is_floating_point()}


def test_cast_weights_leaves_rope_frequencies_as_from_pretrained_does(tmp_path: Path) -> None:
    """A float32 model cast to bf16 equals the same files loaded in bf16: the parameters in
    bf16, RoPE's computed inv_freq still float32 (a plain ``.to(bf16)`` rounds it)."""
    model, tokenizer = tiny_random_model(0)
    model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    cpu = torch.device("cpu")
    loaded, _ = load_base_model(str(tmp_path), seed=0, device=cpu, dtype=torch.bfloat16)
    full, _ = load_base_model(str(tmp_path), seed=0, device=cpu)
    expected = _floating_buffers(loaded)
    assert any("inv_freq" in n for n in expected)
    assert all(b.dtype == torch.float32 for n, b in expected.items() if "inv_freq" in n)

    copies = {
        "cast_weights": cast_weights(copy.deepcopy(full), torch.bfloat16),
        "make_rollout_model": make_rollout_model(full, torch.bfloat16),
        "ReferencePolicy": ReferencePolicy(full, torch.bfloat16).model,
    }
    ids = torch.tensor([[1, 5, 9, 13, 17, 21, 25, 29]])
    with torch.no_grad():
        want = loaded(ids).logits
    for name, other in copies.items():
        assert other is not None
        got = _floating_buffers(other)
        assert got.keys() == expected.keys(), name
        for key, buffer in expected.items():
            assert got[key].dtype == buffer.dtype, (name, key)
            assert torch.equal(got[key], buffer), (name, key)
        for (key, p), q in zip(loaded.named_parameters(), other.parameters(), strict=True):
            assert q.dtype == torch.bfloat16 and torch.equal(p, q), (name, key)
        with torch.no_grad():
            assert torch.equal(other(ids).logits, want), name


def test_a_directory_published_first_by_another_process_is_kept(tmp_path: Path) -> None:
    """Two processes converting the same model at once: the second rename meets a non-empty
    directory; the first's copy stays and the second's temporary directory goes."""
    out = tmp_path / "model"
    mine = tmp_path / ".model.tmp-1"
    mine.mkdir()
    (mine / "config.json").write_text("mine")
    publish_dir(mine, out, "config.json")
    assert (out / "config.json").read_text() == "mine" and not mine.exists()
    theirs = tmp_path / ".model.tmp-2"
    theirs.mkdir()
    (theirs / "config.json").write_text("theirs")
    publish_dir(theirs, out, "config.json")
    assert (out / "config.json").read_text() == "mine" and not theirs.exists()
    # a non-empty directory that is not a finished copy is an error, not silently kept
    stray = tmp_path / "stray"
    stray.mkdir()
    (stray / "half").write_text("")
    late = tmp_path / ".stray.tmp-3"
    late.mkdir()
    (late / "config.json").write_text("")
    with pytest.raises(OSError):
        publish_dir(late, stray, "config.json")
