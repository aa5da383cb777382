"""Report figures: |J| maps drawn over the anatomy they describe."""

from __future__ import annotations

import numpy as np

from longbrain_jax.report import jacobian_overlay


def test_jacobian_overlay_draws_each_map_over_its_baseline_and_hides_unchanged_and_masked_voxels():
    anatomy = np.linspace(0.0, 1.0, 20 * 24).reshape(20, 24)
    jac = np.ones((20, 24))
    jac[5:10, 5:10], jac[12:15, 12:15], jac[:, 22] = 1.4, 0.7, 1.3  # column 22 lies outside the mask
    mask = np.zeros((20, 24), bool)
    mask[:, :20] = True
    fig = jacobian_overlay([anatomy, anatomy], [[jac, jac], [jac]], ["a", "b"], [["+1 y", "+2 y"], ["+1 y"]], masks=[mask, mask])
    images = [ax.images for ax in fig.axes[:6]]  # a 2 x 3 grid, then the colour bar
    assert [len(i) for i in images] == [1, 2, 2, 1, 2, 0]  # the baseline alone, then anatomy + map; row b has one map
    np.testing.assert_allclose(images[1][0].get_array(), np.rot90(anatomy))
    overlay = images[1][1].get_array()
    np.testing.assert_array_equal(np.ma.getmaskarray(overlay), (np.abs(np.rot90(jac) - 1.0) < 0.01) | ~np.rot90(mask))
    np.testing.assert_allclose(overlay.data, np.rot90(jac))
    assert images[1][1].get_clim() == (0.5, 1.5) and images[1][1].get_cmap().name == "RdBu_r"
