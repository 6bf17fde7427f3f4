"""Saving models and resumable checkpoints so that nothing half-written is ever left behind.

Every directory is written under a temporary name beside its target, flushed, and renamed into
place; an existing target is moved aside first and removed only after the new one is in place.
A checkpoint (``RUN_DIR/checkpoints/step-XXXXXXXX``) holds the policy (or adapter), the
optimizer, the scheduler, every RNG state, the data position and the counters: what a resumed
run needs to take exactly the steps the uninterrupted run would have taken. A step is one
rollout and its mu updates inside one call, so no rollout is ever buffered across a checkpoint.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path
from typing import Any

import torch
from torch import nn

from groupwise.distributed import is_sharded, load_full_model_state
from groupwise.models import is_peft


def _quiet_saves() -> None:
    """No per-shard progress bars from transformers in our logs."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()


def replace_dir(tmp: Path, target: Path) -> None:
    """Move the finished directory ``tmp`` to ``target`` (replacing an older one)."""
    old = target.with_name(f".{target.name}.old-{os.getpid()}")
    if target.exists():
        os.replace(target, old)
    os.replace(tmp, target)
    if old.exists():
        shutil.rmtree(old, ignore_errors=True)


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
    tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    _quiet_saves()
    if is_peft(policy):
        policy.save_pretrained(str(tmp / "adapter"))  # type: ignore[operator]
        merged = _merged_copy(policy)
        merged.save_pretrained(str(tmp))
    else:
        policy.save_pretrained(str(tmp), state_dict=model_state)  # type: ignore[operator]
    tokenizer.save_pretrained(str(tmp))
    replace_dir(tmp, target)
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


def fsync_tree(root: Path) -> None:
    """Flush every file under ``root``, then the directories, to disk."""
    for dirpath, _dirnames, filenames in os.walk(root):
        for name in filenames:
            fd = os.open(os.path.join(dirpath, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        fsync_dir(Path(dirpath))


def fsync_dir(path: Path) -> None:
    """Flush a directory entry (a rename inside it) to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def list_checkpoints(run_dir: Path) -> list[Path]:
    """The run's complete checkpoints, oldest first (half-written ones are never listed)."""
    root = Path(run_dir) / CHECKPOINTS
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if _NAME.match(p.name) and (p / INFO_FILE).is_file()]
    return sorted(found, key=lambda p: int(p.name.split("-")[1]))


def latest_checkpoint(run_dir: Path) -> Path | None:
    """The newest complete checkpoint of the run, or None."""
    found = list_checkpoints(run_dir)
    return found[-1] if found else None


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
    tmp = root / f".{target.name}.tmp-{os.getpid()}"
    tmp.mkdir()
    _quiet_saves()
    if is_peft(policy):
        policy.save_pretrained(str(tmp / "adapter"))  # type: ignore[operator]
    else:
        policy.save_pretrained(str(tmp / "model"), state_dict=model_state)  # type: ignore[operator]
        tokenizer.save_pretrained(str(tmp / "model"))
    torch.save(state, tmp / STATE_FILE)
    info = {"step": step, "config": config}
    (tmp / INFO_FILE).write_text(json.dumps(info, indent=1, default=str), encoding="utf-8")
    fsync_tree(tmp)
    if target.exists():  # the same step saved again (a resumed run's final save)
        shutil.rmtree(target)
    os.replace(tmp, target)
    fsync_dir(root)
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
