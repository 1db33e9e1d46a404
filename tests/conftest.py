"""Test-wide settings: float64 JAX, seeded randomness, a headless matplotlib backend."""

from __future__ import annotations

import os

import jax
import numpy as np
import pytest

os.environ.setdefault("MPLBACKEND", "Agg")
jax.config.update("jax_enable_x64", True)


@pytest.fixture
def rng() -> np.random.Generator:
    """A seeded generator so every random test is reproducible."""
    return np.random.default_rng(20261124)
