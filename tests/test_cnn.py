"""The project's convolution: strided layers on the CPU through space-to-depth, equal to XLA's own."""

import flax.linen as nn
import jax
import numpy as np
import pytest

from longbrain_jax import cnn

CASES = [  # (input shape N *s C, kernel size, strides, padding)
    ((2, 9, 10, 3), 3, (2, 2), "SAME"),
    ((1, 11, 8, 7, 2), 4, (2, 2, 2), "SAME"),
    ((1, 12, 9, 10, 2), 3, (2, 1, 3), "VALID"),
    ((1, 12, 9, 2), 3, (2, 2), ((1, 0), (2, 2))),
    ((1, 5, 7, 1), 5, (3, 2), "SAME"),  # a kernel wider than a block; an input shorter than two blocks
]


@pytest.mark.parametrize("shape,k,strides,padding", CASES)
def test_space_to_depth_equals_xla_convolution_and_its_gradient(shape, k, strides, padding):
    d = len(shape) - 2
    x = jax.random.normal(jax.random.key(0), shape)
    w = jax.random.normal(jax.random.key(1), (k,) * d + (shape[-1], 5))
    spec = ("NHWC", "HWIO", "NHWC") if d == 2 else ("NDHWC", "DHWIO", "NDHWC")
    numbers = jax.lax.conv_dimension_numbers(x.shape, w.shape, spec)
    ours = lambda x, w: cnn.conv_general_dilated(x, w, strides, padding, dimension_numbers=numbers)  # noqa: E731
    xla = lambda x, w: jax.lax.conv_general_dilated(x, w, strides, padding, dimension_numbers=numbers)  # noqa: E731
    pads = jax.lax.padtype_to_pads(shape[1:-1], (k,) * d, strides, padding) if isinstance(padding, str) else padding
    expected = xla(x, w)
    direct = cnn.space_to_depth_conv(x, w, strides, pads)
    assert direct.shape == expected.shape
    np.testing.assert_allclose(direct, expected, atol=2e-5)
    np.testing.assert_allclose(ours(x, w), expected, atol=2e-5)
    cotangent = jax.random.normal(jax.random.key(2), expected.shape)
    for got, want in zip(jax.vjp(ours, x, w)[1](cotangent), jax.vjp(xla, x, w)[1](cotangent), strict=True):
        np.testing.assert_allclose(got, want, atol=5e-5)


def test_conv_module_matches_flax_conv_with_the_same_parameters():
    x = jax.random.normal(jax.random.key(0), (2, 7, 8, 9, 1))
    ours, theirs = cnn.Conv(4, (3, 3, 3), strides=(2, 2, 2)), nn.Conv(4, (3, 3, 3), strides=(2, 2, 2))
    params = ours.init(jax.random.key(1), x)
    np.testing.assert_allclose(ours.apply(params, x), theirs.apply(params, x), atol=1e-5)
    # grouped (and unstrided) convolutions are XLA's own
    grouped, x2 = cnn.Conv(4, (3, 3), strides=(2, 2), feature_group_count=2), jax.random.normal(jax.random.key(3), (1, 6, 6, 2))
    p2 = grouped.init(jax.random.key(4), x2)
    np.testing.assert_allclose(grouped.apply(p2, x2), nn.Conv(4, (3, 3), strides=(2, 2), feature_group_count=2).apply(p2, x2), atol=1e-6)
