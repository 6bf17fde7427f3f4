"""What the end of a run writes into ``final/`` besides the model: the GGUF files of
``training.export_gguf`` and the model card. Checked when the run starts (an unknown type, or a
quantized one without llama-cpp-python, fails before any step), written after ``summary.json``
(the card states its numbers). A failure here never loses the finished run: it is reported
with the command that does it again."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

from groupwise.config import Config, ConfigError
from groupwise.export.formats import gguf_types


def check_exports(config: Config) -> None:
    """Refuse, before training, an export the end of the run could not write."""
    wanted = gguf_types(config.training.export_gguf)
    quantized = [t.name for t in wanted if t.quantized]
    if quantized and importlib.util.find_spec("llama_cpp") is None:
        raise ConfigError(
            f"training.export_gguf: {', '.join(quantized)} need llama-cpp-python (pip install "
            "'groupwise[llamacpp]'); f32, bf16 and f16 need nothing more"
        )


def finish_final(run_dir: Path, export_types: list[str]) -> None:
    """Export ``export_types`` into ``run_dir/final``, then write its model card."""
    from groupwise.export.card import write_model_card

    if export_types:
        try:
            from groupwise.export.gguf import export_gguf

            export_gguf(run_dir, export_types)
        except Exception as exc:  # the trained model is saved: say how to export it again
            types = ",".join(export_types)
            print(
                f"groupwise: could not export GGUF ({exc}); run: groupwise export {run_dir} "
                f"--gguf --type {types}",
                file=sys.stderr,
            )
    try:
        print(f"model card: {write_model_card(run_dir)}", flush=True)
    except Exception as exc:
        print(f"groupwise: could not write the model card: {exc}", file=sys.stderr)
