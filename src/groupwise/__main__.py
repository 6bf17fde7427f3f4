"""``python -m groupwise`` (also what ``torchrun -m groupwise`` runs)."""

from groupwise.cli import main

raise SystemExit(main())
