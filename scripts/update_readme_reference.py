"""Rewrite the README's configuration reference from the config dataclasses.

    python scripts/update_readme_reference.py

Replaces everything between '## Configuration reference' (its two-line intro kept) and the next
'## ' heading with `groupwise config --reference`; tests/test_docs.py fails when it is stale.
"""

from __future__ import annotations

import re
from pathlib import Path

from groupwise.config import reference_markdown

README = Path(__file__).resolve().parents[1] / "README.md"
INTRO = (
    "Generated from the config dataclasses (`groupwise config --reference`); every key is also a\n"
    "`key=value` override.\n"
)


def main() -> None:
    text = README.read_text()
    pattern = re.compile(r"(## Configuration reference\n\n).*?(\n## )", re.DOTALL)
    new, count = pattern.subn(
        lambda m: m.group(1) + INTRO + "\n" + reference_markdown().strip() + "\n" + m.group(2),
        text,
    )
    if count != 1:
        raise SystemExit("README has no '## Configuration reference' section followed by '## '")
    README.write_text(new)


if __name__ == "__main__":
    main()
