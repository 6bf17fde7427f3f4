"""Write the configuration reference, docs/configuration.md, from the config dataclasses.

    python scripts/update_readme_reference.py

Rewrites docs/configuration.md as a short header plus `groupwise config --reference`; the README
links there. tests/test_docs.py fails when the file is stale.
"""

from __future__ import annotations

from pathlib import Path

from groupwise.config import reference_markdown

REFERENCE = Path(__file__).resolve().parents[1] / "docs" / "configuration.md"
HEADER = (
    "# Configuration reference\n"
    "\n"
    "Generated from the config dataclasses (`groupwise config --reference`) by\n"
    "`python scripts/update_readme_reference.py`; do not edit by hand. Every key is also a\n"
    "`key=value` override (`groupwise train beta=0.04`); a bare name works when exactly one section\n"
    "has it. Back to the [README](../README.md).\n"
)


def main() -> None:
    REFERENCE.write_text(HEADER + "\n" + reference_markdown().strip() + "\n")


if __name__ == "__main__":
    main()
