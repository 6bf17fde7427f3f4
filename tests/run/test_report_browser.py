"""The report in a real browser: headless Chromium renders it with no console messages.

Slow (a browser start per test) and skipped where no Chromium is installed
(``apt-get install chromium``). ``scripts/report_screenshot.py`` is the tool under test; the
README's screenshot is made with it.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from groupwise.run.report import write_report
from tests.run.test_report import PNG_MAGIC, _completion, make_run

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "report_screenshot.py"

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not any(shutil.which(b) for b in ("chromium", "chromium-browser", "google-chrome")),
        reason="no Chromium installed (apt-get install chromium)",
    ),
]


def _shoot(target: Path, out: Path) -> tuple[int, dict[str, object]]:
    result = subprocess.run(
        [sys.executable, str(SCRIPT), str(target), "--out", str(out), "--height", "1200"],
        capture_output=True,
        text=True,
        timeout=180,
    )
    return result.returncode, json.loads(result.stdout) if result.stdout else {}


def test_report_renders_without_console_messages(tmp_path: Path) -> None:
    run = make_run(tmp_path, steps=6)
    # a completion that would log to the console if the report failed to escape it
    hostile = _completion(6, "<script>console.error('unescaped completion')</script>", -1.0)
    with open(run / "completions.jsonl", "a", encoding="utf-8") as handle:
        handle.write(json.dumps(hostile) + "\n")
    write_report(run)
    out = tmp_path / "shot.png"
    code, info = _shoot(run, out)
    assert code == 0, info
    assert info["console"] == []
    assert out.read_bytes()[:8] == PNG_MAGIC and out.stat().st_size > 10_000


def test_a_page_with_a_script_error_is_caught(tmp_path: Path) -> None:
    page = tmp_path / "broken.html"
    page.write_text("<html><body><script>throw new Error('boom')</script></body></html>")
    code, info = _shoot(page, tmp_path / "broken.png")
    assert code == 1
    assert any("boom" in str(message) for message in info["console"])  # type: ignore[union-attr]
