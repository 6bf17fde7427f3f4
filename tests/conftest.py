"""Shared set-up: small, fast, deterministic runs on the CPU."""

from __future__ import annotations

import os

import torch

# two threads in all: one each when pytest-xdist runs two workers (scripts/test.sh)
torch.set_num_threads(max(1, 2 // int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))))
