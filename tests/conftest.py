"""Shared test settings: deterministic hypothesis runs and a thread count CI can honour."""

from __future__ import annotations

import os

import torch
from hypothesis import HealthCheck, settings

# CI runs on 2 cores; more threads only add contention and run-to-run noise.
torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "2")))

# Derandomized so a red CI run reproduces locally; no deadline because shared machines stall.
settings.register_profile(
    "bnbook",
    derandomize=True,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.load_profile("bnbook")
