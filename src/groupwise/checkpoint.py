"""Saving models so that nothing half-written is ever left where a reader looks.

Every directory is written under a temporary name beside its target and renamed into place; an
existing target is moved aside first and removed only after the new one is in place.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

from torch import nn

from groupwise.models import is_peft


def replace_dir(tmp: Path, target: Path) -> None:
    """Move the finished directory ``tmp`` to ``target`` (replacing an older one)."""
    old = target.with_name(f".{target.name}.old-{os.getpid()}")
    if target.exists():
        os.replace(target, old)
    os.replace(tmp, target)
    if old.exists():
        shutil.rmtree(old, ignore_errors=True)


def save_pretrained_atomic(policy: nn.Module, tokenizer: Any, target: Path) -> Path:
    """Write a model that ``AutoModelForCausalLM.from_pretrained(target)`` loads.

    Full fine-tuning: the model in float32 with its tokenizer. LoRA: the merged model, plus
    the adapter alone in ``target/adapter`` (loadable with ``peft.PeftModel.from_pretrained``).
    """
    target = Path(target)
    tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    if is_peft(policy):
        policy.save_pretrained(str(tmp / "adapter"))  # type: ignore[operator]
        merged = _merged_copy(policy)
        merged.save_pretrained(str(tmp))
    else:
        policy.save_pretrained(str(tmp))  # type: ignore[operator]
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
