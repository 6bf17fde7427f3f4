"""``groupwise export``: a trained policy as GGUF files llama.cpp, Ollama and LM Studio load.

For each asked type (:data:`groupwise.export.formats.GGUF_TYPES`) the policy (LoRA merged) is
written as ``model.<type>.gguf``: ``f32``/``bf16``/``f16`` by groupwise's writer, quantized
types by llama.cpp's quantizer from an ``f32`` file written once. A model that came from a GGUF
file keeps that file's tokenizer and ``general.*`` keys; the name, a description and the base
model are added. A LoRA run also gets its adapter as ``adapter.f32.gguf`` (llama.cpp's LoRA
layout, for ``--lora`` over the base model's GGUF). Beside every model GGUF an Ollama
``model.<type>.Modelfile`` (``ollama create NAME -f model.<type>.Modelfile``).

Every file is written under a temporary name and renamed. :class:`ExportedFile` reports, per
file, the seconds it took, its bytes and the tensor types it really holds (k-quants fall back
per tensor where rows do not divide into 256-blocks).
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from groupwise.export.formats import GGUFType, gguf_types
from groupwise.export.target import ExportTarget, load_target_model, resolve_target
from groupwise.models.gguf.quantize import LlamaCppMissingError
from groupwise.run.io import write_text_atomic

__all__ = ["ExportedFile", "LlamaCppMissingError", "export_gguf", "write_modelfile"]


@dataclass
class ExportedFile:
    """One written GGUF file."""

    type: str
    """The export type (``q8_0``) or ``lora`` for the adapter."""
    path: Path
    seconds: float
    """Wall seconds to write it (for a quantized type: the quantizer's share, plus the shared
    f32 file's writing when it was written for it)."""
    bytes: int
    tensor_types: dict[str, int] = field(default_factory=dict)
    """How many tensors of each GGML type the file holds."""
    modelfile: Path | None = None
    """The Ollama Modelfile beside it."""

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready fields."""
        out = asdict(self)
        out["path"] = str(self.path)
        out["modelfile"] = str(self.modelfile) if self.modelfile else None
        return out

    def line(self) -> str:
        """One line for the console."""
        kinds = ", ".join(f"{n} {k}" for k, n in self.tensor_types.items())
        return (
            f"{self.path} ({self.type}): {self.bytes / 1e6:.1f} MB in {self.seconds:.1f} s; "
            f"tensors: {kinds}"
        )


def gguf_metadata(target: ExportTarget, source: Path | None) -> dict[str, Any]:
    """``general.*`` keys that say what the file is: its name, how it was trained, its base."""
    from groupwise.models.gguf.source import SourceFields

    run = target.run_config or {}
    base = target.base_model or (target.model_dir.name if target.model_dir else "model")
    base_name = base
    if source is not None:
        base_name = SourceFields.read(source).value("general.name") or base
    task = (run.get("data") or {}).get("task")
    meta: dict[str, Any] = {"general.tags": ["groupwise", "grpo"]}
    if target.run_config is not None:
        meta["general.name"] = f"{base_name} (GRPO, groupwise)"
        steps = (run.get("training") or {}).get("max_steps")
        meta["general.description"] = (
            f"{base_name} trained with GRPO by groupwise on the task {task!r} ({steps} steps)"
        )
        meta["general.base_model.0.name"] = str(base_name)
    return meta


def export_gguf(
    target: str | Path | ExportTarget,
    types: Sequence[str],
    out_dir: str | Path | None = None,
    *,
    threads: int = 0,
    log: Any = print,
) -> list[ExportedFile]:
    """Export ``target`` (a run directory, checkpoint or model directory) as each of ``types``
    into ``out_dir`` (default: :attr:`ExportTarget.default_out_dir`); returns the files,
    the adapter's last for a LoRA run. ``log`` gets one line per file (None: silent)."""
    resolved = target if isinstance(target, ExportTarget) else resolve_target(target)
    if resolved.kind == "gguf":
        raise ValueError(f"{resolved.path} is already a GGUF file")
    wanted = gguf_types(types, "--type")
    if not wanted:
        raise ValueError("no GGUF type to export; give --type (valid: f32, bf16, f16, ...)")
    out = Path(out_dir) if out_dir is not None else resolved.default_out_dir
    out.mkdir(parents=True, exist_ok=True)
    model, tokenizer = load_target_model(resolved)
    source = resolved.source_gguf()
    meta = gguf_metadata(resolved, source)
    files = write_types(model, tokenizer, wanted, out, source, meta, threads)
    if resolved.adapter_dir is not None:
        files.append(_export_adapter(resolved, model, out, meta))
    for file in files:
        if file.type != "lora":
            file.modelfile = write_modelfile(file.path, tokenizer)
        if log is not None:
            log(file.line())
    return files


def write_types(
    model: nn.Module,
    tokenizer: Any,
    wanted: Sequence[GGUFType],
    out: Path,
    source: Path | None,
    metadata: dict[str, Any],
    threads: int = 0,
) -> list[ExportedFile]:
    """``model.<type>.gguf`` for each type; quantized types from one temporary f32 file."""
    from groupwise.models.gguf import model_state_dict, write_gguf
    from groupwise.models.gguf.quantize import quantize_gguf, tensor_types

    config, state = model.config, model_state_dict(model)
    files: list[ExportedFile] = []
    with tempfile.TemporaryDirectory(dir=out, prefix=".export-") as scratch:
        base: tuple[Path, float] | None = None
        for kind in wanted:
            path = out / f"model.{kind.name}.gguf"
            start = time.perf_counter()
            if not kind.quantized:
                write_gguf(
                    path,
                    config,
                    state,
                    tokenizer,
                    dtype=kind.written,
                    metadata=metadata,
                    source=source,
                )
            else:
                if base is None:  # the quantizer's input, written once for all quantized types
                    f32 = Path(scratch) / "model.f32.gguf"
                    write_gguf(
                        f32, config, state, tokenizer, dtype="f32", metadata=metadata, source=source
                    )
                    base = (f32, time.perf_counter() - start)
                    start = time.perf_counter()
                assert kind.llama_ftype is not None
                quantize_gguf(base[0], path, kind.llama_ftype, threads)
            seconds = time.perf_counter() - start + (base[1] if kind.quantized and base else 0.0)
            files.append(
                ExportedFile(kind.name, path, seconds, path.stat().st_size, tensor_types(path))
            )
    return files


def _export_adapter(
    target: ExportTarget, model: nn.Module, out: Path, meta: dict[str, Any]
) -> ExportedFile:
    from groupwise.models.gguf.lora import write_lora_gguf
    from groupwise.models.gguf.quantize import tensor_types

    assert target.adapter_dir is not None
    start = time.perf_counter()
    path = write_lora_gguf(
        out / "adapter.f32.gguf",
        model.config,
        target.adapter_dir,
        metadata={k: v for k, v in meta.items() if k != "general.description"},
    )
    seconds = time.perf_counter() - start
    return ExportedFile("lora", path, seconds, path.stat().st_size, tensor_types(path))


# ---------------------------------------------------------------------------- Ollama
CHATML_TEMPLATE = """{{- if .System }}<|im_start|>system
{{ .System }}<|im_end|>
{{ end }}{{- range .Messages }}<|im_start|>{{ .Role }}
{{ .Content }}<|im_end|>
{{ end }}<|im_start|>assistant
"""
"""ChatML in Ollama's Go-template syntax: the system message, each message, the reply's head."""


def default_system_prompt(tokenizer: Any) -> str | None:
    """The system message the chat template adds when a conversation has none (SmolLM2's
    "You are a helpful AI assistant named SmolLM, ..."), read by rendering one user turn."""
    template = getattr(tokenizer, "chat_template", None)
    if not isinstance(template, str) or "<|im_start|>" not in template:
        return None
    marker = "\x00user\x00"
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": marker}], tokenize=False, add_generation_prompt=False
    )
    head = "<|im_start|>system\n"
    if not text.startswith(head):
        return None
    system, _, _ = text[len(head) :].partition("<|im_end|>")
    return system or None


def modelfile_text(gguf_name: str, tokenizer: Any) -> str:
    """An Ollama Modelfile for ``gguf_name`` (beside it): ChatML models get the template in
    Ollama's syntax, their default system message and ``<|im_end|>`` as the stop; other
    templates are left to Ollama to read from the GGUF. Greedy (temperature 0), as
    groupwise evaluates."""
    lines = [f"FROM ./{gguf_name}"]
    template = getattr(tokenizer, "chat_template", None)
    if isinstance(template, str) and "<|im_start|>" in template:
        lines.append(f'TEMPLATE """{CHATML_TEMPLATE}"""')
        system = default_system_prompt(tokenizer)
        if system:
            lines.append(f'SYSTEM """{system}"""')
        lines.append('PARAMETER stop "<|im_end|>"')
        lines.append('PARAMETER stop "<|im_start|>"')
    elif tokenizer.eos_token:
        lines.append(f'PARAMETER stop "{tokenizer.eos_token}"')
    lines.append("PARAMETER temperature 0")
    return "\n".join(lines) + "\n"


def write_modelfile(gguf_path: Path, tokenizer: Any) -> Path:
    """Write ``<name>.Modelfile`` beside ``gguf_path`` (atomically)."""
    path = gguf_path.with_suffix(".Modelfile")
    write_text_atomic(path, modelfile_text(gguf_path.name, tokenizer))
    return path
