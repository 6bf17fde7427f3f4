"""``python -m groupwise`` (also what ``torchrun -m groupwise`` runs); see ``groupwise.launch``."""

from groupwise.launch import entry

raise SystemExit(entry())
