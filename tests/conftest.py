"""Shared set-up: small, fast, deterministic runs on the CPU."""

from __future__ import annotations

import torch

torch.set_num_threads(2)
