"""Saving models and resumable checkpoints so that nothing half-written is ever left behind.

Every directory is written under a temporary name beside its target, flushed, and renamed into
place; an existing target is moved aside first and removed only after the new one is in place.
A checkpoint (``RUN_DIR/checkpoints/step-XXXXXXXX``) holds the policy (or adapter), the
optimizer, the scheduler, every RNG state, the data position and the counters: what a resumed
run needs to take exactly the steps the uninterrupted run would have taken. A step is one
rollout and its mu updates inside one call, so no rollout is ever buffered across a checkpoint.

A write that fails (a full disk, a quota) removes its temporary directory and raises; a full disk
raises :class:`groupwise.run.io.DiskFullError` naming the path and the checkpoint that stays the
resume point (the directories are written by :func:`groupwise.run.io.atomic_directory`).
Resuming with ``resume=auto`` takes the newest checkpoint whose files are all there and readable
(:func:`latest_valid_checkpoint`), passing over damaged newer ones and saying why.
"""

from __future__ import annotations

import json
import re
import shutil
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from groupwise.distributed import is_sharded, load_full_model_state
from groupwise.models import is_peft
from groupwise.run.io import atomic_directory


def _quiet_saves() -> None:
    """No per-shard progress bars from transformers in our logs."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()


def save_pretrained_atomic(
    policy: nn.Module,
    tokenizer: Any,
    target: Path,
    model_state: dict[str, torch.Tensor] | None = None,
) -> Path:
    """Write a model that ``AutoModelForCausalLM.from_pretrained(target)`` loads.

    Full fine-tuning: the model in float32 with its tokenizer. LoRA: the merged model, plus
    the adapter alone in ``target/adapter`` (loadable with ``peft.PeftModel.from_pretrained``).
    ``model_state``: the full weights to write instead of the policy's own (FSDP-sharded).
    """
    target = Path(target)
    _quiet_saves()
    kept = "the model that was there is intact" if target.exists() else "nothing was replaced"

    def disk_full() -> str:
        return (
            f"no space left on device while writing the model to {target}; {kept}, and so are "
            "the run's checkpoints; free space and save again (a run's final model: run again "
            "with training.resume=auto)"
        )

    with atomic_directory(target, disk_full) as tmp:
        if is_peft(policy):
            policy.save_pretrained(str(tmp / "adapter"))  # type: ignore[operator]
            merged = _merged_copy(policy)
            merged.save_pretrained(str(tmp))
        else:
            policy.save_pretrained(str(tmp), state_dict=model_state)  # type: ignore[operator]
        tokenizer.save_pretrained(str(tmp))
    return target


def _merged_copy(policy: nn.Module) -> Any:
    """A plain transformers model with the LoRA deltas merged in (the policy is left as is)."""
    import copy

    clone = copy.deepcopy(policy)
    merged = clone.merge_and_unload()  # type: ignore[operator]
    merged.config.use_cache = True
    return merged


# ---------------------------------------------------------------------------- resumable checkpoints
CHECKPOINTS = "checkpoints"
"""Subdirectory of the run directory holding ``step-XXXXXXXX`` checkpoints."""
INFO_FILE = "checkpoint.json"
"""Written last inside a checkpoint: its step and the run's config."""
STATE_FILE = "trainer_state.pt"
"""Optimizer, scheduler, RNG states, data position and counters (``torch.save``)."""
_NAME = re.compile(r"^step-(\d{8})$")


def list_checkpoints(run_dir: Path) -> list[Path]:
    """The run's complete checkpoints, oldest first (half-written ones are never listed)."""
    root = Path(run_dir) / CHECKPOINTS
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if _NAME.match(p.name) and (p / INFO_FILE).is_file()]
    return sorted(found, key=lambda p: int(p.name.split("-")[1]))


def latest_checkpoint(run_dir: Path) -> Path | None:
    """The newest complete checkpoint of the run, or None (its files are not checked: see
    :func:`latest_valid_checkpoint`)."""
    found = list_checkpoints(run_dir)
    return found[-1] if found else None


def latest_valid_checkpoint(
    run_dir: Path, on_skip: Callable[[Path, str], None] | None = None
) -> Path | None:
    """The newest checkpoint :func:`checkpoint_problem` finds nothing wrong with, or None.

    Every ``step-XXXXXXXX`` directory counts, with or without ``checkpoint.json``;
    ``on_skip(path, why)`` is called for each newer one passed over.
    """
    root = Path(run_dir) / CHECKPOINTS
    found = [p for p in root.iterdir() if _NAME.match(p.name)] if root.is_dir() else []
    for path in sorted(found, key=lambda p: p.name, reverse=True):
        problem = checkpoint_problem(path)
        if problem is None:
            return path
        if on_skip is not None:
            on_skip(path, problem)
    return None


def checkpoint_problem(path: Path) -> str | None:
    """Why the checkpoint ``path`` cannot be resumed from, or None when it can.

    Cheap checks (no weights or optimizer state are loaded): ``checkpoint.json`` parses and
    holds the step and config; ``trainer_state.pt`` is a whole zip archive whose pickle reads
    back (CRC-checked); every weights file is there and as long as its header says.
    """
    path = Path(path)
    try:
        info = json.loads((path / INFO_FILE).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return f"{INFO_FILE} is missing"
    except (OSError, ValueError) as exc:
        return f"{INFO_FILE} is unreadable ({exc})"
    if not (isinstance(info, dict) and isinstance(info.get("step"), int)):
        return f"{INFO_FILE} does not hold the checkpoint's step"
    if not isinstance(info.get("config"), dict):
        return f"{INFO_FILE} does not hold the run's config"
    if not (path / STATE_FILE).is_file():
        return f"{STATE_FILE} is missing"
    try:
        with zipfile.ZipFile(path / STATE_FILE) as archive:
            pickles = [n for n in archive.namelist() if n.endswith("data.pkl")]
            if not pickles:
                return f"{STATE_FILE} is truncated or unreadable (no data.pkl in it)"
            archive.read(pickles[0])
    except (OSError, zipfile.BadZipFile, zipfile.LargeZipFile, EOFError) as exc:
        return f"{STATE_FILE} is truncated or unreadable ({exc})"
    return _weights_problem(path)


def _weights_problem(path: Path) -> str | None:
    """What is wrong with a checkpoint's ``model/`` or ``adapter/`` weights, or None."""
    sub = "adapter" if (path / "adapter").is_dir() else "model"
    files = sorted((path / sub).glob("*.safetensors"))
    if not files:
        return f"the model weights are missing (no {sub}/*.safetensors)"
    index = path / sub / "model.safetensors.index.json"
    try:
        shards = (
            set(json.loads(index.read_text())["weight_map"].values()) if index.is_file() else ()
        )
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        return f"{sub}/{index.name} is unreadable ({exc})"
    missing = sorted(name for name in shards if not (path / sub / name).is_file())
    if missing:
        return f"the model weights are incomplete ({sub}/{missing[0]} is missing)"
    for file in files:
        problem = _safetensors_problem(file)
        if problem is not None:
            return f"{sub}/{file.name} {problem}"
    return None


def _safetensors_problem(file: Path) -> str | None:
    """Whether a ``.safetensors`` file is cut short: its header gives every tensor's extent."""
    try:
        size = file.stat().st_size
        with open(file, "rb") as f:
            header_size = int.from_bytes(f.read(8), "little")
            if not 0 < header_size <= size - 8:
                return f"is truncated or unreadable ({size} bytes)"
            header = json.loads(f.read(header_size))
        ends = [v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"]
    except (OSError, ValueError, KeyError, TypeError, IndexError, AttributeError) as exc:
        return f"is unreadable ({exc})"
    needed = 8 + header_size + max(ends, default=0)
    return f"is truncated ({size} of {needed} bytes)" if size < needed else None


def save_checkpoint(
    run_dir: Path,
    step: int,
    policy: nn.Module,
    tokenizer: Any,
    state: dict[str, Any],
    config: dict[str, Any],
    keep: int,
    model_state: dict[str, torch.Tensor] | None = None,
) -> Path:
    """Write ``run_dir/checkpoints/step-<step>`` atomically; keep the newest ``keep`` (0 = all).

    Layout: ``model/`` (full fine-tuning: what ``from_pretrained`` loads) or ``adapter/``
    (LoRA: what ``PeftModel.from_pretrained`` loads), ``trainer_state.pt`` and, last,
    ``checkpoint.json``. Everything goes to a temporary directory that is flushed to disk and
    renamed into place, so a kill at any moment leaves the previous checkpoints intact.
    ``model_state``: the full weights to write instead of the policy's own (FSDP-sharded).
    """
    root = Path(run_dir) / CHECKPOINTS
    root.mkdir(parents=True, exist_ok=True)
    for stale in root.glob(".step-*.tmp-*"):  # left by a process killed while saving
        shutil.rmtree(stale, ignore_errors=True)
    target = root / f"step-{step:08d}"
    _quiet_saves()

    def disk_full() -> str:
        previous = latest_valid_checkpoint(run_dir)
        kept = (
            f"the previous checkpoint {previous} is intact"
            if previous is not None
            else "there is no earlier checkpoint"
        )
        return (
            f"no space left on device while writing checkpoint {target}; {kept}; "
            "free space and resume with training.resume=auto"
        )

    # flushed to disk before the rename; the same step saved again: the old one goes only after
    with atomic_directory(target, disk_full, durable=True) as tmp:
        if is_peft(policy):
            policy.save_pretrained(str(tmp / "adapter"))  # type: ignore[operator]
        else:
            policy.save_pretrained(str(tmp / "model"), state_dict=model_state)  # type: ignore[operator]
            tokenizer.save_pretrained(str(tmp / "model"))
        torch.save(state, tmp / STATE_FILE)
        info = {"step": step, "config": config}
        (tmp / INFO_FILE).write_text(json.dumps(info, indent=1, default=str), encoding="utf-8")
    if keep > 0:
        for old in list_checkpoints(run_dir)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    return target


def read_checkpoint_info(path: Path) -> dict[str, Any]:
    """The step and config recorded in a checkpoint (``checkpoint.json``)."""
    info_path = Path(path) / INFO_FILE
    if not info_path.is_file():
        raise FileNotFoundError(
            f"{path} is not a complete groupwise checkpoint (no {INFO_FILE}); "
            f"checkpoints live in RUN_DIR/{CHECKPOINTS}/step-XXXXXXXX"
        )
    info: dict[str, Any] = json.loads(info_path.read_text(encoding="utf-8"))
    return info


def load_trainer_state(path: Path) -> dict[str, Any]:
    """The ``trainer_state.pt`` of a checkpoint (our own file: unpickled with full trust)."""
    state: dict[str, Any] = torch.load(Path(path) / STATE_FILE, weights_only=False)
    return state


def load_policy_weights(policy: nn.Module, path: Path) -> None:
    """Load a checkpoint's weights into ``policy`` (same architecture, same LoRA settings).

    Every trainable parameter must be found in the checkpoint, or this raises naming them.
    """
    from safetensors.torch import load_file

    path = Path(path)
    if is_peft(policy):
        from peft import set_peft_model_state_dict

        files = sorted((path / "adapter").glob("*.safetensors"))
        if not files:
            raise FileNotFoundError(f"{path}/adapter has no adapter weights (.safetensors)")
        result: Any = set_peft_model_state_dict(policy, load_file(str(files[0])))
        missing = [k for k in result.missing_keys if "lora_" in k]
    else:
        files = sorted((path / "model").glob("*.safetensors"))
        if not files:
            raise FileNotFoundError(f"{path}/model has no weights (.safetensors)")
        weights: dict[str, torch.Tensor] = {}
        for file in files:
            weights.update(load_file(str(file)))
        tied = _tied_names(policy)
        if is_sharded(policy):  # FSDP: every rank reads the file and keeps its shard
            missing = [k for k in load_full_model_state(policy, weights) if k not in tied]
        else:
            result = policy.load_state_dict(weights, strict=False)
            missing = [k for k in result.missing_keys if k not in tied]
    if missing:
        raise ValueError(f"checkpoint {path} lacks weights for: {', '.join(missing[:10])}")


def _tied_names(model: nn.Module) -> set[str]:
    """Parameter names that share storage with an earlier parameter (tied embeddings)."""
    seen: dict[int, str] = {}
    tied: set[str] = set()
    for name, param in model.named_parameters(remove_duplicate=False):
        local = param.to_local() if hasattr(param, "to_local") else param  # FSDP DTensor
        key = local.data_ptr()
        if key in seen:
            tied.add(name)
        else:
            seen[key] = name
    return tied


@dataclass
class Counters:
    """What the steps advance and a checkpoint keeps."""

    step: int = 0
    num_tokens: int = 0
    skipped_updates: int = 0
    nonfinite_in_a_row: int = 0
