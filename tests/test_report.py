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


def test_weight_embedding_separates_groups_that_differ_and_ignores_weights_that_do_not_vary():
    from longbrain_jax.report import weight_embedding

    rng = np.random.default_rng(0)
    groups = ["healthy"] * 5 + ["dementia"] * 5
    x = rng.normal(size=(10, 6))
    x[5:, :3] += 10.0  # the groups differ along three weights
    x[:, 5] = 3.0  # a weight left where the shared initialisation put it
    fig = weight_embedding({"P_time": x, "P_space": rng.normal(size=(10, 1))}, groups)
    left = fig.axes[0]
    assert left.get_title() == "P_time: 6 weights (5 vary)" and fig.axes[1].get_title() == "P_space: 1 weights (1 vary)"
    healthy, dementia = (c.get_offsets() for c in left.collections)
    assert len(healthy) == len(dementia) == 5
    assert min(dementia[:, 0].min(), healthy[:, 0].min()) < 0 < max(dementia[:, 0].max(), healthy[:, 0].max())
    gap = abs(dementia[:, 0].mean() - healthy[:, 0].mean())
    assert gap > 2.0 * max(dementia[:, 0].std(), healthy[:, 0].std())  # PC 1 is the direction the groups differ along


def test_markdown_table_keeps_pipes_inside_their_cells():
    import re

    from longbrain_jax.report.markdown import markdown_table

    text = markdown_table(["subject", "ventricle |J|", "group"], [("sub-01", 1.02, "MCI|AD"), ("sub-02", float("nan"), "CN")])
    lines = text.splitlines()
    cells = [re.split(r"(?<!\\)\|", line)[1:-1] for line in lines]  # GitHub splits a row at unescaped pipes
    assert {len(c) for c in cells} == {3}
    assert cells[0][1].strip() == r"ventricle \|J\|" and cells[2][2].strip() == r"MCI\|AD" and cells[3][1].strip() == "-"
