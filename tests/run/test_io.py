"""The run's file I/O: atomic files and directories, JSON lines appended, read back and cut."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pytest
import torch

from groupwise.run.io import (
    DiskFullError,
    JSONLError,
    append_jsonl,
    atomic_directory,
    read_jsonl,
    truncate_jsonl,
    write_bytes_atomic,
    write_json_atomic,
    write_text_atomic,
)


def _leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name.startswith("."))


def test_atomic_writes_replace_the_file_and_leave_no_temporary(tmp_path: Path) -> None:
    path = tmp_path / "out.bin"
    write_bytes_atomic(path, b"\x00old")
    write_bytes_atomic(path, b"\x00new")
    assert path.read_bytes() == b"\x00new"
    write_text_atomic(tmp_path / "out.txt", "a\nb é\n")
    assert (tmp_path / "out.txt").read_bytes() == "a\nb é\n".encode()
    write_json_atomic(tmp_path / "out.json", {"b": torch.tensor([1, 2]), "a": tmp_path})
    text = (tmp_path / "out.json").read_text(encoding="utf-8")
    assert text == json.dumps({"b": [1, 2], "a": str(tmp_path)}, indent=2) + "\n"
    assert _leftovers(tmp_path) == []


def test_an_atomic_write_gets_a_plain_files_permissions(tmp_path: Path) -> None:
    (tmp_path / "plain").write_text("x")
    write_text_atomic(tmp_path / "atomic", "x")
    mode = (tmp_path / "atomic").stat().st_mode & 0o777
    assert mode == (tmp_path / "plain").stat().st_mode & 0o777


def test_a_failed_atomic_write_keeps_the_old_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "summary.json"
    write_json_atomic(path, {"steps": 1})

    def no_space(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", no_space)
    with pytest.raises(OSError, match="No space"):
        write_json_atomic(path, {"steps": 2})
    assert json.loads(path.read_text()) == {"steps": 1}
    assert _leftovers(tmp_path) == []


def test_append_jsonl_writes_every_record_or_none(tmp_path: Path) -> None:
    path = tmp_path / "log.jsonl"
    append_jsonl(path, {"step": 1, "x": 0.1})
    append_jsonl(path, {"step": 2}, {"step": 3, "t": torch.tensor(1.5)})
    assert path.read_text() == '{"step": 1, "x": 0.1}\n{"step": 2}\n{"step": 3, "t": 1.5}\n'
    with pytest.raises(TypeError):
        append_jsonl(path, {"step": 4}, {"step": 5, "bad": object()}, default=None)
    assert path.read_text().count("\n") == 3


def test_read_jsonl_skips_blank_lines_and_a_torn_last_line(tmp_path: Path) -> None:
    path = tmp_path / "log.jsonl"
    path.write_text('{"step": 1}\n\n{"step": 2, "r": NaN}\n{"step": 3, "comp')
    read = list(read_jsonl(path))
    assert [(n, r["step"]) for n, r in read] == [(1, 1), (3, 2)]
    assert math.isnan(read[1][1]["r"])
    path.write_text('{"step": 1}\n{"step": 2}')  # whole, only without its newline yet
    assert [r["step"] for _, r in read_jsonl(path)] == [1, 2]
    assert list(read_jsonl(tmp_path / "missing.jsonl")) == []


@pytest.mark.parametrize("damaged", ['{"step": 2, "comp', "[1, 2]", '"text"'])
def test_read_jsonl_names_a_damaged_line(tmp_path: Path, damaged: str) -> None:
    path = tmp_path / "log.jsonl"
    path.write_text(f'{{"step": 1}}\n{damaged}\n{{"step": 3}}\n')
    with pytest.raises(JSONLError, match=r"log\.jsonl:2: not a JSON object"):
        list(read_jsonl(path))


def test_truncate_jsonl_keeps_lines_byte_for_byte(tmp_path: Path) -> None:
    path = tmp_path / "metrics.jsonl"
    lines = ['{"step": 1, "lr": 1e-05, "kl": NaN}', '{"step": 2, "x": 0.30000000000000004}']
    path.write_text("\n".join([*lines, '{"step": 3}', "[1]", '{"step": 4, "x"']))
    assert truncate_jsonl(path, 2) == 3
    assert path.read_text() == "".join(line + "\n" for line in lines)
    assert truncate_jsonl(path, 2) == 0 and truncate_jsonl(tmp_path / "none.jsonl", 1) == 0
    assert _leftovers(tmp_path) == []


def test_atomic_directory_replaces_the_target_only_when_whole(tmp_path: Path) -> None:
    target = tmp_path / "model"
    with atomic_directory(target, lambda: "full", durable=True) as tmp:
        assert tmp.parent == tmp_path and tmp.name.startswith(".model.tmp-")
        (tmp / "weights").write_text("v1")
    assert (target / "weights").read_text() == "v1"
    with pytest.raises(RuntimeError, match="boom"), atomic_directory(target, str) as tmp:
        (tmp / "weights").write_text("half")
        raise RuntimeError("boom")
    assert (target / "weights").read_text() == "v1"
    assert [p.name for p in tmp_path.iterdir()] == ["model"]


def test_atomic_directory_turns_a_full_disk_into_disk_full_error(tmp_path: Path) -> None:
    target = tmp_path / "checkpoint"
    message = f"no space left writing {target}"
    with pytest.raises(DiskFullError) as info, atomic_directory(target, lambda: message):
        raise OSError(28, "No space left on device")
    assert str(info.value) == message
    assert info.value.errno == 28
    assert list(tmp_path.iterdir()) == []
