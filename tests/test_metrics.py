import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from skimage.metrics import structural_similarity

from longbrain_jax import metrics
from tests.helpers import affine_mm


@pytest.mark.parametrize("shape", [(32, 28), (16, 18, 14)])
def test_ssim_agrees_with_scikit_image(rng, shape):
    x = rng.random(shape).astype(np.float32)
    y = (0.7 * x + 0.3 * rng.random(shape)).astype(np.float32)
    ours = float(jax.jit(metrics.ssim, static_argnums=(2,))(jnp.asarray(x), jnp.asarray(y), 1.0))
    assert abs(ours - structural_similarity(x, y, data_range=1.0)) < 1e-3
    assert float(metrics.ssim(jnp.asarray(x), jnp.asarray(x), 1.0)) == pytest.approx(1.0, abs=1e-5)


def test_psnr_mse_mae_known_values():
    x = jnp.zeros((4, 4))
    y = jnp.full((4, 4), 0.1)
    assert float(metrics.mse(x, y)) == pytest.approx(0.01)
    assert float(metrics.mae(x, y)) == pytest.approx(0.1)
    assert float(metrics.psnr(x, y, 1.0)) == pytest.approx(20.0, abs=1e-4)


def test_masked_metrics_ignore_padding():
    x = jnp.zeros((4, 4))
    y = jnp.zeros((4, 4)).at[0].set(100.0)  # garbage in the padded row
    mask = jnp.ones((4, 4), bool).at[0].set(False)
    assert float(metrics.mse(x, y, mask)) == 0.0
    assert float(metrics.mae(x, y, mask)) == 0.0


def test_ncc_global_and_local(rng):
    x = jnp.asarray(rng.random((12, 12)), jnp.float32)
    assert float(metrics.ncc(x, 3 * x + 2)) == pytest.approx(1.0, abs=1e-5)
    assert float(metrics.ncc(x, -x)) == pytest.approx(-1.0, abs=1e-5)
    assert float(metrics.local_ncc(x, 2 * x + 1, window=5)) == pytest.approx(1.0, abs=1e-3)
    noise = jnp.asarray(rng.random((12, 12)), jnp.float32)
    assert abs(float(metrics.local_ncc(x, noise, window=5))) < 0.3


def test_dice_per_label():
    a = jnp.array([[1, 1, 2, 0], [1, 1, 2, 0]])
    b = jnp.array([[1, 0, 2, 2], [1, 0, 2, 2]])
    d = metrics.dice(a, b, [1, 2, 3])
    np.testing.assert_allclose(d[:2], [2 * 2 / (4 + 2), 2 * 2 / (2 + 4)], rtol=1e-6)
    assert np.isnan(d[2])
    # a structure of several labels is their union; counts summed over scans pool the Dice
    union = float(metrics.dice(a, b, [(1, 2)])[0])
    assert union == pytest.approx(2 * 4 / (6 + 6))
    counts = metrics.overlap_counts(a[:1], b[:1], [1, (1, 2)]) + metrics.overlap_counts(a[1:], b[1:], [1, (1, 2)])
    np.testing.assert_allclose(metrics.dice_from_counts(counts), metrics.dice(a, b, [1, (1, 2)]), rtol=1e-6)


def test_regional_volumes_use_the_affine():
    labels = jnp.zeros((4, 4, 4), jnp.int32).at[:2, :2, :2].set(17).at[3, 3, 3].set(4)
    vol = metrics.regional_volumes(labels, affine_mm((2.0, 1.5, 1.0)), [17, 4, 99])
    np.testing.assert_allclose(vol, [8 * 3.0, 3.0, 0.0])


def test_folding_fraction():
    jac = jnp.array([[1.0, 0.5], [-0.1, 0.0]])
    assert float(metrics.folding_fraction(jac)) == pytest.approx(0.5)
    assert float(metrics.folding_fraction(jac, jac > -0.05)) == pytest.approx(1 / 3)


def test_monotone_fraction():
    times = jnp.array([0.0, 1.0, 2.5, 4.0])
    grow = jnp.stack([jnp.full((3, 3), 1.0 + 0.1 * t) for t in times])
    assert float(metrics.monotone_fraction(grow, times)) == 1.0
    reverse = grow.at[2, 0, 0].set(0.9)  # one voxel shrinks then grows
    assert float(metrics.monotone_fraction(reverse, times)) == pytest.approx(8 / 9)
    assert float(metrics.monotone_fraction(reverse, times, mask=jnp.ones((3, 3), bool).at[0, 0].set(False))) == 1.0
    # a voxel that does not change, up to float noise, keeps its sign at the benchmarks' tolerance; a reversal does not
    still = jnp.ones((4, 3, 3)).at[:, 1, 1].set(jnp.array([1.0, 1.00005, 0.99995, 1.00002]))
    assert float(metrics.monotone_fraction(still, times)) == pytest.approx(8 / 9)
    assert float(metrics.monotone_fraction(still, times, tol=metrics.MONOTONE_TOL)) == 1.0
    assert float(metrics.monotone_fraction(reverse, times, tol=metrics.MONOTONE_TOL)) == pytest.approx(8 / 9)


def test_region_stats(rng):
    values = rng.random((6, 6))
    labels = np.zeros((6, 6), int)
    labels[:3] = 5
    s = metrics.region_stats(values, labels, [5, 0, 7])
    assert s["mean"][0] == pytest.approx(values[:3].mean())
    assert s["median"][1] == pytest.approx(np.median(values[3:]))
    assert s["count"].tolist() == [18, 18, 0] and np.isnan(s["mean"][2])


def test_classification_metrics(rng):
    y = np.array([0, 0, 0, 1, 1, 1, 1, 1])
    p = np.array([0, 1, 0, 1, 1, 0, 1, 1])
    np.testing.assert_array_equal(metrics.confusion_matrix(y, p), [[2, 1], [1, 4]])
    assert metrics.accuracy(y, p) == pytest.approx(6 / 8)
    assert metrics.balanced_accuracy(y, p) == pytest.approx((2 / 3 + 4 / 5) / 2)
    score = rng.random(8).round(1)  # ties on purpose
    pairs = [(s1 > s0) + 0.5 * (s1 == s0) for s1, s0 in itertools.product(score[y == 1], score[y == 0])]
    assert metrics.roc_auc(y, score) == pytest.approx(np.mean(pairs))
    assert metrics.roc_auc(y, y.astype(float)) == 1.0
    with pytest.raises(ValueError, match="both classes"):
        metrics.roc_auc(np.ones(3), np.ones(3))
