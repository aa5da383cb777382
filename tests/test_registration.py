"""Registration core: exact Jacobians, the monotonic loss, the vmapped cohort program."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from longbrain_jax.registration import (
    DisplacementConfig,
    LossConfig,
    RegistrationConfig,
    monotonic_penalty,
    subject_loss,
)
from longbrain_jax.registration import network as net
from longbrain_jax.registration.train import init_states, registration_block, sample_patches

CFG = DisplacementConfig(ndim=3, width=8, hidden_layers=2, time_features=4, w0=5.0, output_scale=1.0)


def test_paper_widths():
    assert DisplacementConfig().widths() == [(3, 256), (320, 320), (384, 384), (448, 448), (512, 512), (576, 3)]


def test_jacobian_and_its_time_derivative_match_finite_differences(key):
    params = net.init(key, CFG)
    x, t = jnp.array([0.2, -0.3, 0.5]), jnp.array(1.5)
    with jax.enable_x64(True):
        p64 = jax.tree_util.tree_map(lambda a: a.astype(jnp.float64), params)
        x64, t64, h = x.astype(jnp.float64), t.astype(jnp.float64), 1e-5
        u = lambda xx, tt: net.displacement(p64, xx, tt, CFG)  # noqa: E731
        fd = jnp.stack([(u(x64 + h * e, t64) - u(x64 - h * e, t64)) / (2 * h) for e in jnp.eye(3)], axis=1)
        np.testing.assert_allclose(net.spatial_jacobian(p64, x64, t64, CFG), jnp.eye(3) + fd, rtol=1e-6, atol=1e-8)
        det, rate = net.jacobian_determinant_rate(p64, x64, t64, CFG)
        det_fd = (net.jacobian_determinant(p64, x64, t64 + h, CFG) - net.jacobian_determinant(p64, x64, t64 - h, CFG)) / (2 * h)
        np.testing.assert_allclose(rate, det_fd, rtol=1e-5, atol=1e-9)
        np.testing.assert_allclose(det, jnp.linalg.det(jnp.eye(3) + fd), rtol=1e-6)
        vel_fd = (u(x64, t64 + h) - u(x64, t64 - h)) / (2 * h)
        np.testing.assert_allclose(net.velocity(p64, x64, t64, CFG), vel_fd, rtol=1e-5, atol=1e-9)


def test_monotonic_penalty_is_zero_only_without_sign_changes():
    shrinking = -jnp.array([[0.1, 0.2], [0.3, 0.1], [0.2, 0.4]])  # (times, points), one sign per point
    assert float(jnp.max(monotonic_penalty(shrinking))) == 0.0
    reversing = jnp.array([[-0.1, 0.2], [0.3, 0.1], [-0.2, 0.4]])
    penalty = monotonic_penalty(reversing)
    np.testing.assert_allclose(penalty, [0.3, 0.0], atol=1e-7)  # min(0.3, 0.3); point 2 only grows


def _toy_subject(key, shape=(10, 12, 8)):
    base = jax.random.normal(key, shape)
    volumes = jnp.stack([base, jnp.roll(base, 1, 0), jnp.roll(base, 2, 0), jnp.zeros(shape)])
    return volumes, jnp.array([0.0, 1.0, 2.5, 0.0]), jnp.array([True, True, True, False])


def test_loss_terms_are_finite_and_padding_is_ignored(key):
    params = net.init(key, CFG)
    volumes, times, observed = _toy_subject(key)
    patches = sample_patches(key, volumes.shape[1:], 2, 3)
    loss_and_grad = jax.jit(jax.value_and_grad(lambda p, v: subject_loss(p, v, times, observed, patches, key, CFG, LossConfig()).total))
    total, grads = loss_and_grad(params, volumes)
    assert np.isfinite(float(total))
    chex.assert_tree_all_finite(grads)
    garbage = volumes.at[3].set(1e3 * jax.random.normal(key, volumes.shape[1:]))  # the padding slot
    np.testing.assert_allclose(loss_and_grad(params, garbage)[0], total, rtol=1e-6)


def test_curvature_term_is_the_mean_squared_second_difference_in_time(key):
    import pytest

    params = net.init(key, CFG)
    volumes, times, observed = _toy_subject(key)
    patches = sample_patches(key, volumes.shape[1:], 2, 3)
    loss = LossConfig(extra_times=0, curvature=0.5, curvature_step_years=1.5, regulariser_points=10**6)
    loss_terms = jax.jit(subject_loss, static_argnames=("cfg", "loss"))
    terms = loss_terms(params, volumes, times, observed, patches, key, cfg=CFG, loss=loss)
    points = patches.reshape(-1, 3)
    u = lambda t: jax.vmap(lambda x: net.displacement(params, x, jnp.asarray(t), CFG))(points)  # noqa: E731
    second = [jnp.mean(jnp.sum(((u(t - 1.5) - 2 * u(t) + u(t + 1.5)) / 1.5**2) ** 2, -1)) for t in times[:3]]
    np.testing.assert_allclose(terms.curvature, np.mean(second), rtol=1e-4)
    others = terms.ncc + 100.0 * terms.identity + 0.1 * terms.spatial + 0.01 * terms.temporal + 0.001 * terms.monotonic
    np.testing.assert_allclose(terms.total, others + 0.5 * terms.curvature, rtol=1e-5)
    # a field that does not change in t has no curvature
    still = jax.tree_util.tree_map(jnp.zeros_like, params["time"])
    flat = loss_terms(dict(params, time=still), volumes, times, observed, patches, key, cfg=CFG, loss=loss)
    assert float(flat.curvature) < 1e-10 < float(terms.curvature)
    with pytest.raises(ValueError, match="curvature_step_years"):
        LossConfig(curvature_step_years=0.0)


@pytest.mark.slow  # minutes of compiling on 2 CPU cores
def test_vmapped_registration_equals_per_subject_loop(key):
    cfg = RegistrationConfig(network=CFG, steps=3, learning_rate=1e-3, patches=2, patch_size=4)
    subjects = [_toy_subject(k) for k in jax.random.split(key, 3)]
    vols, times, obs = (jnp.stack(a) for a in zip(*subjects, strict=True))
    run = lambda s, v, t, o, ids: registration_block(s, v, t, o, ids, jnp.int32(0), jnp.int32(0), num_steps=3, cfg=cfg)  # noqa: E731
    together = run(init_states(cfg, 3), vols, times, obs, jnp.arange(3, dtype=jnp.int32))
    for i in range(3):
        alone = run(init_states(cfg, 1), vols[i : i + 1], times[i : i + 1], obs[i : i + 1], jnp.array([i], jnp.int32))
        row = lambda tree, k: jax.tree_util.tree_map(lambda x: x[k], tree)  # noqa: E731
        chex.assert_trees_all_close(row(alone.params, 0), row(together.params, i), atol=1e-5, rtol=1e-4)
    assert bool(jnp.all(together.alive))


def test_patches_are_voxel_centres_inside_the_image(key):
    patches = sample_patches(key, (10, 12, 8), 5, 4)
    assert patches.shape == (5, 64, 3)
    assert float(jnp.min(patches)) >= -1 - 1e-6 and float(jnp.max(patches)) <= 1 + 1e-6


@pytest.mark.optimised  # runs compiled programs more than it compiles them
@pytest.mark.slow  # minutes of compiling on 2 CPU cores
def test_a_known_2d_deformation_is_recovered():
    from longbrain_jax import grid
    from longbrain_jax.registration import register

    shape = (32, 32)
    x = grid.normalised_grid(shape)
    r = jnp.linalg.norm(x, axis=-1)
    base = grid.gaussian_smooth(jnp.cos(6 * x[..., 0]) * jnp.sin(5 * x[..., 1]) + (r < 0.5).astype(jnp.float32), 1.0)
    contraction = -0.12 * x * jnp.exp(-((r[..., None] / 0.6) ** 2))  # a smooth shrinking of the centre
    times = jnp.array([0.0, 1.0, 2.0, 3.0])
    # follow-up at t is the baseline pushed through the flow; the true phi_t undoes it
    scans = jnp.stack([grid.warp(base, t * contraction) for t in times])
    truth = [grid.invert_displacement(t * contraction) for t in times]
    cfg = RegistrationConfig(
        network=DisplacementConfig(ndim=2, width=32, hidden_layers=2, time_features=8, w0=3.0),
        # 64 regulariser points: 600 steps in 43 s instead of 109 s at 256 (one core), the same |J| to 1e-3
        loss=LossConfig(regulariser_points=64), steps=600, learning_rate=2e-3, patches=16, patch_size=9, tissue_patches=False,
    )  # fmt: skip
    state = register(np.asarray(scans)[None], np.asarray(times)[None], np.ones((1, 4), bool), cfg)
    params = jax.tree_util.tree_map(lambda a: a[0], state.params)
    inner = (jnp.abs(x[..., 0]) < 0.8) & (jnp.abs(x[..., 1]) < 0.8)
    points = x.reshape(-1, 2)
    for k in range(1, 4):
        det = jax.vmap(lambda q, t=times[k]: net.jacobian_determinant(params, q, t, cfg.network))(points).reshape(shape)
        true_det = grid.jacobian_determinant(truth[k])
        error = float(jnp.mean(jnp.abs(det - true_det)[inner]))
        change = float(jnp.mean(jnp.abs(true_det - 1)[inner]))
        assert error < 0.35 * change, (k, error, change)  # |J| recovered to within 35% of the true change
        assert float(jnp.min(det)) > 0  # no folding


@pytest.mark.slow  # a whole command
def test_register_cli_writes_fields_and_refuses_to_overwrite(tmp_path):
    from click.testing import CliRunner

    from longbrain_jax.cli import main
    from longbrain_jax.config import read_config
    from longbrain_jax.io import load_displacement, load_image, write_bids
    from longbrain_jax.registration import RegistrationConfig
    from longbrain_jax.registration.train import PRESETS
    from tests.helpers import blob_cohort

    cohort = blob_cohort(3)
    cohort = type(cohort)(**{**cohort.__dict__, "labels": (cohort.volumes > -0.5).astype(np.int32) * 17})
    write_bids(cohort, tmp_path / "bids")
    args = ["register", str(tmp_path / "bids"), str(tmp_path / "reg"), "--preset", "cpu-3mm", "--width", "8", "--hidden-layers", "1",
            "--time-features", "4", "--w0", "3", "--steps", "4", "--patches", "2", "--patch-size", "4", "--extra-ages", "80", "--quiet"]  # fmt: skip
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    cfg = read_config(RegistrationConfig, tmp_path / "reg" / "config.json")  # the preset, with the options given beside it
    preset = PRESETS["cpu-3mm"]
    assert (cfg.network.width, cfg.steps, cfg.patch_size) == (8, 4, 4) and cfg.network.ndim == 2
    assert (cfg.learning_rate, cfg.loss, cfg.network.time_scale) == (preset.learning_rate, preset.loss, preset.network.time_scale)
    anat = tmp_path / "reg" / "sub-00" / "anat"
    jac, affine = load_image(anat / "sub-00_ses-0_desc-jacdet.nii.gz")
    assert jac.shape == cohort.spatial_shape and np.all(jac > 0)
    np.testing.assert_allclose(affine, cohort.affines[0])
    disp, _ = load_displacement(anat / "sub-00_age-080p0_desc-xfm.nii.gz")
    assert disp.shape[-1] == 3  # world (mm) vectors; a 2D slice has a zero z component
    assert (anat / "sub-00_age-080p0_dseg.nii.gz").exists()
    lines = (tmp_path / "reg" / "trajectories.tsv").read_text().splitlines()
    assert lines[0].startswith("participant_id\twhen") and any("hippocampus" in line for line in lines[1:])
    again = CliRunner().invoke(main, args)
    assert again.exit_code == 2 and "already exists" in again.output


@pytest.mark.slow  # minutes of compiling on 2 CPU cores
def test_evaluation_against_the_simulators_truth(tmp_path):
    from longbrain_jax.cohort import scan_roles
    from longbrain_jax.io import LoadConfig, read_bids, scan_bids
    from longbrain_jax.registration.cohort import register_cohort
    from longbrain_jax.registration.evaluate import STRUCTURES, evaluate_against_truth, score_fields, summarise
    from longbrain_jax.registration.pairwise import register_pairwise
    from longbrain_jax.simulate import SimulationConfig, simulate_cohort
    from longbrain_jax.simulate.simulator import PIPELINE

    bids = simulate_cohort(tmp_path / "bids", SimulationConfig(num_subjects=2, resolution_mm=4.0, ndim=2, chunk_size=2, regular_ages=(50.0, 58.0, 67.0, 75.0), sampling="regular"))
    cfg = RegistrationConfig(network=DisplacementConfig(ndim=2, width=8, hidden_layers=1, time_features=4, w0=3.0),
                             steps=4, patches=2, patch_size=4, steps_per_call=2, checkpoint_every=2, holdout="interpolation_extrapolation")  # fmt: skip
    register_cohort(scan_bids(bids), tmp_path / "reg", cfg)
    rows = evaluate_against_truth(tmp_path / "reg", bids, cfg)
    assert len(rows) == 2 * 3 and {r["role"] for r in rows} == {"train", "interpolation", "extrapolation"}
    for r in rows:
        for s in STRUCTURES:
            assert 0.0 <= r[f"dice_{s}"] <= 1.0 and r[f"jac_error_{s}"] >= 0.0
        assert 0.0 <= r["monotone"] <= 1.0 and r["folding"] == 0.0
    summary = summarise(rows)
    assert summary["extrapolation"]["n"] == 2 and summary["interpolation"]["n"] == 2
    assert 0.0 < summary["extrapolation"]["dice_truth"] <= 1.0
    # the pairwise baseline is scored the same way, from the same training scans
    cohort = read_bids(bids, LoadConfig(label_pipeline=PIPELINE))
    times = np.where(cohort.mask, cohort.ages - cohort.ages[:, :1], 0).astype(np.float32)
    pairs = register_pairwise(cohort.volumes, times, scan_roles(cohort.mask, cfg.holdout) == 1, cfg)
    assert [len(t) for t in pairs.times] == [1, 1]  # 4 scans, 2 held out: one training follow-up each
    pair_rows = score_fields(pairs.field, cohort, bids, cfg.holdout)
    assert [(r["session"], r["role"]) for r in pair_rows] == [(r["session"], r["role"]) for r in rows]
    # the simulator's own field scored as a registration: no |J| error, every structure's change recovered
    from longbrain_jax.grid import displacement_from_world
    from longbrain_jax.io import load_displacement, load_image
    from longbrain_jax.io.bids import derivative_path

    def truth(i, t):
        sid, years = cohort.subject_ids[i], cohort.ages[i] - cohort.ages[i, 0]
        j = int(np.argmin(np.abs(years - t)))
        if j == 0 or abs(years[j] - t) > 1e-4:  # between scans: no truth on disk, identity
            return jnp.zeros(cohort.spatial_shape + (2,)), jnp.ones(cohort.spatial_shape)
        det, _ = load_image(derivative_path(bids, sid, cohort.session_ids[i][j], "jacdet", PIPELINE))
        u_mm, affine = load_displacement(derivative_path(bids, sid, cohort.session_ids[i][j], "truth", PIPELINE, suffix="xfm"))
        return displacement_from_world(jnp.asarray(u_mm), affine), jnp.asarray(det)

    for r in score_fields(truth, cohort, bids, cfg.holdout):
        for s in STRUCTURES:
            assert r[f"jac_error_{s}"] < 1e-6 and abs(r[f"volume_change_{s}"] - r[f"true_volume_change_{s}"]) < 1e-6
        assert r["true_volume_change_lateral_ventricles"] > 0.0 > r["true_volume_change_hippocampus"]  # aging: ventricles grow
    assert all(np.isfinite(r["volume_change_lateral_ventricles"]) for r in rows)


def test_pairwise_fields_are_linear_in_time_between_and_after_the_known_ones(rng):
    from longbrain_jax.registration.pairwise import PairwiseFields

    c = rng.normal(size=(5, 6, 2)).astype(np.float32)
    fields = PairwiseFields([np.stack([2.0 * c, 5.0 * c])], [np.array([2.0, 5.0])])
    for t in (0.0, 1.0, 2.0, 3.5, 5.0, 8.0):  # baseline, interpolation, known, extrapolation
        np.testing.assert_allclose(fields.at(0, t), t * c, rtol=1e-5, atol=1e-6)
    u, det = fields.field(0, 3.0)
    assert u.shape == (5, 6, 2) and det.shape == (5, 6)
