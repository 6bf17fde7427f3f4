"""What ``groupwise export`` and ``groupwise chat`` are pointed at, and the model it loads as.

A target is

- a **run directory** (``config.yaml`` and ``final/``): the final policy (under LoRA the merged
  model, and ``final/adapter``), the run's config;
- a **checkpoint** (``RUN/checkpoints/step-N``, with ``checkpoint.json``): ``model/`` of a full
  run, or ``adapter/`` of a LoRA run (loaded onto the run's base model and merged);
- a **model directory** (``config.json``; a run's ``final/`` is read as its run);
- for ``chat`` also a ``.gguf`` file or a preset name (loaded as ``model.name`` is).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import nn


@dataclass
class ExportTarget:
    """A resolved target."""

    kind: str
    """``run``, ``checkpoint``, ``model`` (a directory), ``gguf`` or ``name`` (a preset)."""
    path: Path
    """What was given."""
    model_dir: Path | None
    """A transformers directory with the whole (merged) model; None: load :attr:`base_model`
    (and merge :attr:`adapter_dir` into it)."""
    adapter_dir: Path | None = None
    """The peft adapter of a LoRA run, if any."""
    run_config: dict[str, Any] | None = None
    """The run's config as saved (None for a bare model)."""
    run_dir: Path | None = None
    """The run directory, when the target belongs to a run."""

    @property
    def base_model(self) -> str | None:
        """The run's ``model.name`` (the model it started from)."""
        model = (self.run_config or {}).get("model") or {}
        name = model.get("name")
        return str(name) if name else None

    @property
    def seed(self) -> int:
        """The run's ``training.seed`` (what the ``tiny-random`` preset is built from)."""
        return int(((self.run_config or {}).get("training") or {}).get("seed", 0) or 0)

    @property
    def default_out_dir(self) -> Path:
        """Where exports go without ``--out``: the model's own directory."""
        if self.kind == "run" and self.run_dir is not None:
            return self.run_dir / "final"
        if self.kind in ("checkpoint", "model"):
            return self.path
        return Path.cwd()

    def source_gguf(self) -> Path | None:
        """The GGUF file the run's model came from (its tokenizer and metadata are kept)."""
        from groupwise.models import source_gguf

        if self.kind == "gguf":
            return self.path
        return source_gguf(self.base_model) if self.base_model else None


def _read_yaml(path: Path) -> dict[str, Any]:
    data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    return data if isinstance(data, dict) else {}


def resolve_target(target: str | Path) -> ExportTarget:
    """The :class:`ExportTarget` of a path or name; a path that is none of the kinds raises
    ``FileNotFoundError`` saying what was expected."""
    from groupwise.models import PRESETS

    path = Path(target).expanduser()
    if path.is_file() and path.suffix == ".gguf":
        return ExportTarget("gguf", path, None)
    if (path / "checkpoint.json").is_file():
        info = json.loads((path / "checkpoint.json").read_text(encoding="utf-8"))
        model = path / "model"
        adapter = path / "adapter"
        return ExportTarget(
            "checkpoint",
            path,
            model if (model / "config.json").is_file() else None,
            adapter if adapter.is_dir() else None,
            info.get("config"),
            path.parent.parent,
        )
    if path.name == "final" and (path.parent / "config.yaml").is_file():
        path = path.parent
    if (path / "config.yaml").is_file() and (path / "final").is_dir():
        final = path / "final"
        if not (final / "config.json").is_file():
            raise FileNotFoundError(f"{final} holds no model (no config.json)")
        adapter = final / "adapter"
        run_config = _read_yaml(path / "config.yaml")
        return ExportTarget(
            "run", path, final, adapter if adapter.is_dir() else None, run_config, path
        )
    if (path / "config.json").is_file():
        adapter = path / "adapter"
        return ExportTarget("model", path, path, adapter if adapter.is_dir() else None)
    if str(target) in PRESETS:
        return ExportTarget("name", Path(str(target)), None, run_config=_preset(str(target)))
    hint = ""
    if (path / "config.yaml").is_file():
        hint = (
            f"; the run has no final/ (training.save_final=false, or it has not ended): "
            f"give one of its checkpoints, {path}/checkpoints/step-XXXXXXXX"
        )
    raise FileNotFoundError(
        f"{target}: not a run directory (config.yaml and final/), a checkpoint "
        f"(checkpoint.json), a model directory (config.json), a .gguf file or a preset "
        f"({', '.join(PRESETS)}){hint}"
    )


def _preset(name: str) -> dict[str, Any]:
    return {"model": {"name": name}}


def load_target_model(
    target: ExportTarget,
    *,
    dtype: torch.dtype = torch.float32,
    attn_implementation: str = "sdpa",
) -> tuple[nn.Module, Any]:
    """The target's model (LoRA merged, a plain transformers model, eval mode, on CPU) and
    its tokenizer."""
    from groupwise.models import load_base_model

    cpu = torch.device("cpu")
    if target.model_dir is not None:
        name = str(target.model_dir)
    elif target.kind == "gguf":
        name = str(target.path)
    elif target.base_model is not None:
        name = target.base_model
    else:
        raise FileNotFoundError(f"{target.path}: no model to load")
    model, tokenizer = load_base_model(
        name, seed=target.seed, device=cpu, attn_implementation=attn_implementation, dtype=dtype
    )
    if target.model_dir is None and target.adapter_dir is not None:
        from peft import PeftModel

        wrapped = PeftModel.from_pretrained(model, str(target.adapter_dir))
        model = wrapped.merge_and_unload()
    return model.eval(), tokenizer
