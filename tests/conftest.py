"""Shared fixtures. Each stage's session fixtures (tiny trained checkpoints) live in tests/fixtures/<stage>.py,
so later stages' tests reuse one tiny run instead of training their own."""

import os

import pytest
import torch

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))

pytest_plugins = [
    "tests.fixtures.subject",
    "tests.fixtures.stages",
    "tests.fixtures.a2m",
]


def requires_gpu():
    """Skip marker for tests that need CUDA (calls torch.cuda.is_available(), unlike a bare attribute)."""
    return pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
