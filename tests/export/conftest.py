"""A finished 2-step tiny-random run with ``training.export_gguf``, shared by the export tests."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from groupwise import GRPOTrainer
from groupwise.config import load_config
from tests.tests_helpers import tiny_overrides


@pytest.fixture(scope="package")
def trained_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    """(run directory, summary) of a run that exported f32 and bf16 GGUF files at its end."""
    root = tmp_path_factory.mktemp("export")
    overrides = tiny_overrides(
        root,
        save_final=True,
        **{"eval.before": True, "eval.after": True, "training.export_gguf": "[f32, bf16]"},
    )
    summary = GRPOTrainer(load_config(overrides=overrides)).train()
    return root / "run", summary
