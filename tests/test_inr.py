"""INR layers and the spatiotemporal INR: values, initialisation, gradients."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from longbrain_jax.inr import INRConfig, layers
from longbrain_jax.inr import spatiotemporal as st

SMALL = INRConfig(ndim=3, width=16, stream_layers=3, combined_layers=2)


def test_fast_sine_matches_numpy_and_its_derivative_is_cosine():
    x = jnp.linspace(-100.0, 100.0, 20001)
    assert float(jnp.max(jnp.abs(layers.sin(x) - np.sin(np.asarray(x, np.float64))))) < 1e-5
    assert float(jnp.max(jnp.abs(layers.cos(x) - np.cos(np.asarray(x, np.float64))))) < 1e-5
    grad = jax.jit(jax.vmap(jax.grad(layers.sin)))(x)
    assert float(jnp.max(jnp.abs(grad - jnp.cos(x)))) < 1e-5


def test_siren_initialisation_bounds(key):
    first = layers.init_layer(key, 3, 64, "sine", w0=30.0, first=True)
    hidden = layers.init_layer(key, 64, 64, "sine", w0=30.0)
    assert float(jnp.max(jnp.abs(first["w"]))) <= 1 / 3
    assert float(jnp.max(jnp.abs(hidden["w"]))) <= np.sqrt(6 / 64) / 30
    # Sitzmann's argument: arcsine-distributed inputs give w0 * (h W) a standard deviation of 1
    h = jax.random.uniform(jax.random.key(1), (4096, 64), minval=-1, maxval=1)
    pre = 30.0 * (jnp.sin(jnp.pi * h) @ hidden["w"])
    assert 0.8 < float(jnp.std(pre)) < 1.2


def test_wire_layer_is_a_real_gabor_wavelet(key):
    p = layers.init_layer(key, 4, 5, "wire")
    h = jax.random.normal(jax.random.key(2), (7, 4))
    expected = np.cos(10 * (h @ p["freq"]["w"] + p["freq"]["b"])) * np.exp(-((10 * (h @ p["scale"]["w"] + p["scale"]["b"])) ** 2))
    np.testing.assert_allclose(layers.apply_layer(p, h, "wire", w0=10, s0=10), expected, atol=1e-5)


def test_unknown_layer_kind_is_rejected(key):
    with pytest.raises(ValueError, match="unknown layer kind"):
        layers.init_layer(key, 2, 2, "tanh")
    with pytest.raises(ValueError, match="spatial_activation"):
        INRConfig(spatial_activation="tanh")


def test_paper_parameter_groups_have_the_reported_sizes(key):
    params = jax.eval_shape(lambda: st.init(key, INRConfig()))
    sizes = {g: st.num_params(v) for g, v in st.parameter_groups(params).items()}
    assert round(sizes["P_space"] / 1e6, 2) == 2.10
    assert round(sizes["P_time"] / 1e6, 2) == 1.05
    assert sizes["P_com"] == 3 * 2 * (512 * 512 + 512)  # the default: 3 hidden combined WIRE layers, a linear output
    published = jax.eval_shape(lambda: st.init(key, INRConfig.published()))
    groups = {g: st.num_params(v) for g, v in st.parameter_groups(published).items()}
    assert groups["P_com"] == 1_050_624 and groups["P_space"] == sizes["P_space"] and groups["P_time"] == sizes["P_time"]  # as the paper reports
    assert published["output"]["freq"]["w"].shape == (512, 1)  # a WIRE output layer, outside every group


def test_the_published_inr_has_a_wire_output_and_isotropic_coordinates(key):
    cfg = INRConfig.published(ndim=2, width=8, stream_layers=2)
    params = st.init(key, cfg)
    h = jax.random.normal(jax.random.key(1), (5, 8))
    combined = h
    for p in params["combined"]:
        combined = 0.5 * (combined + layers.apply_layer(p, combined, "wire", 10, 10))
    out = params["output"]
    wire = np.cos(10 * (combined @ out["freq"]["w"] + out["freq"]["b"])) * np.exp(-((10 * (combined @ out["scale"]["w"] + out["scale"]["b"])) ** 2))
    np.testing.assert_allclose(st.head(params, h, cfg), wire[:, 0], atol=1e-5)
    # isotropic: (index - centre) / longest axis; the authors' mapping of a 4 x 8 grid
    shape = (4, 8)
    index = np.stack(np.meshgrid(np.arange(4), np.arange(8), indexing="ij"), -1).astype(np.float32)
    authors = (index - (np.array(shape) - 1) / 2) / max(shape)
    from longbrain_jax import grid

    np.testing.assert_allclose(st.network_coordinates(grid.normalised_grid(shape), shape, cfg), authors, atol=1e-6)
    np.testing.assert_allclose(st.network_coordinates(grid.normalised_grid(shape), shape, INRConfig(ndim=2)), grid.normalised_grid(shape))


def test_apply_indexed_equals_apply(key):
    params = st.init(key, SMALL)
    coords = jax.random.uniform(jax.random.key(1), (50, 3), minval=-1, maxval=1)
    times = jnp.array([-0.8, 0.1, 0.9])
    index = jax.random.randint(jax.random.key(2), (50,), 0, 3)
    np.testing.assert_allclose(
        st.apply_indexed(params, coords, times, index, SMALL), st.apply(params, coords, times[index], SMALL), atol=1e-6
    )


@pytest.mark.parametrize("kinds", [("wire", "relu", "wire"), ("sine", "sine", "sine")])
def test_inr_gradients_match_finite_differences(key, kinds):
    cfg = INRConfig(ndim=2, width=8, stream_layers=2, combined_layers=1, spatial_activation=kinds[0],
                    temporal_activation=kinds[1], combined_activation=kinds[2], w0=3.0, s0=1.0)  # fmt: skip
    params = st.init(key, cfg)
    coords = jax.random.uniform(jax.random.key(1), (6, 2), minval=-1, maxval=1)
    t = jnp.linspace(-1, 1, 6)
    target = jnp.linspace(-0.5, 0.5, 6)
    loss = lambda p, x: jnp.mean((st.apply(p, x, t, cfg) - target) ** 2)  # noqa: E731
    check_grads(loss, (params, coords), order=1, modes=["rev"], eps=1e-2, atol=2e-2, rtol=2e-2)
    check_grads(jax.jit(loss), (params, coords), order=1, modes=["fwd"], eps=1e-2, atol=2e-2, rtol=2e-2)


def test_fourier_features_are_fixed(key):
    cfg = INRConfig(ndim=2, width=8, stream_layers=2, combined_layers=1, fourier_features=6)
    params = st.init(key, cfg)
    grads = jax.grad(lambda p: jnp.sum(st.apply(p, jnp.ones((3, 2)) * 0.3, jnp.zeros(3), cfg)))(params)
    assert float(jnp.max(jnp.abs(grads["fourier"]["B"]))) == 0.0
    assert float(jnp.max(jnp.abs(grads["space"]["input"]["freq"]["w"]))) > 0.0
