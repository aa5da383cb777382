"""Test setup: four CPU devices (so sharding is tested for real), strict numerics."""

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402

jax.config.update("jax_num_cpu_devices", 4)

import numpy as np  # noqa: E402
import pytest  # noqa: E402


@pytest.fixture
def key():
    return jax.random.key(0)


@pytest.fixture
def rng():
    return np.random.default_rng(0)


def affine_mm(voxel=(2.0, 2.0, 2.0), origin=(-10.0, -12.0, -8.0)) -> np.ndarray:
    """A 4x4 voxel -> world affine with the given voxel sizes and origin."""
    a = np.diag([*voxel, 1.0])
    a[:3, 3] = origin
    return a
