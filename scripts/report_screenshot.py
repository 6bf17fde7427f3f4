"""Open a run's report.html in headless Chromium: save a screenshot, report console messages.

    python scripts/report_screenshot.py RUN_DIR_OR_HTML [--out PNG] [--width 1280] [--height 2200]

Needs Chromium (Debian: ``apt-get install chromium``). Prints one JSON object,
``{"page": ..., "screenshot": ..., "console": [...]}``, and exits 1 when the page wrote
anything to the browser console (our report has no scripts, so any message is an error: a
script error, a resource that failed to load) or no screenshot was written, 2 when no
Chromium is found. The README's report screenshot is made with this script.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

# Flags for a root user on a machine without network or GPU: no sandbox (root), and no
# background connections (they would fail, noisily, on a closed network).
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
    "--enable-logging=stderr",
    "--v=0",
]
CONSOLE = re.compile(r":CONSOLE[:(]\d+\)?\] (.*)$")


def find_chromium() -> str | None:
    """The first Chromium or Chrome binary on PATH (or $CHROMIUM)."""
    candidates = [os.environ.get("CHROMIUM", ""), "chromium", "chromium-browser", "google-chrome"]
    for name in candidates:
        if name and shutil.which(name):
            return shutil.which(name)
    return None


def screenshot(page: Path, out: Path, width: int, height: int, browser: str) -> list[str]:
    """Render ``page`` to ``out`` (PNG); returns the console messages the page logged."""
    with tempfile.TemporaryDirectory(prefix="groupwise-chromium-") as profile:
        result = subprocess.run(
            [
                browser,
                *FLAGS,
                f"--user-data-dir={profile}",
                f"--window-size={width},{height}",
                f"--screenshot={out.resolve()}",
                page.resolve().as_uri(),
            ],
            capture_output=True,
            text=True,
            timeout=120,
        )
    messages = []
    for line in result.stderr.splitlines():
        match = CONSOLE.search(line)
        if match:
            messages.append(match.group(1))
    if result.returncode != 0:
        messages.append(f"chromium exited with {result.returncode}: {result.stderr[-500:]}")
    return messages


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("target", type=Path, help="a run directory or an HTML file")
    parser.add_argument("--out", type=Path, default=None, help="PNG path (default: next to it)")
    parser.add_argument("--width", type=int, default=1280)
    parser.add_argument("--height", type=int, default=2200)
    args = parser.parse_args(argv)
    page = args.target / "report.html" if args.target.is_dir() else args.target
    if not page.is_file():
        print(f"no such page: {page} (run `groupwise report RUN_DIR` first)", file=sys.stderr)
        return 1
    browser = find_chromium()
    if browser is None:
        print("no Chromium found: apt-get install chromium (or set $CHROMIUM)", file=sys.stderr)
        return 2
    out = args.out or page.with_name(page.stem + "-screenshot.png")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.unlink(missing_ok=True)
    console = screenshot(page, out, args.width, args.height, browser)
    print(json.dumps({"page": str(page), "screenshot": str(out), "console": console}, indent=1))
    ok = not console and out.is_file() and out.stat().st_size > 0
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
