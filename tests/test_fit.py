"""Cohort fitting: sampling, vmapped == looped, sharded == unsharded, resume == uninterrupted, divergence."""

import dataclasses
import json

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from click.testing import CliRunner

from longbrain_jax.cli import main
from longbrain_jax.engine import sharding
from longbrain_jax.engine.training import init_state
from longbrain_jax.errors import InputError
from longbrain_jax.fit import StageConfig, fit_cohort, flat_weights, load_fit, scan_roles
from longbrain_jax.fit.sampling import prepare_subjects, sample_points
from longbrain_jax.fit.train import Sampling, finetune_block
from longbrain_jax.inr import INRConfig
from longbrain_jax.inr import spatiotemporal as st
from tests.helpers import SHAPE, TINY, blob_cohort


def _chunk(cohort, roles):
    times = np.where(roles > 0, (cohort.ages - 62.5) / 12.5, 0).astype(np.float32)
    return prepare_subjects(cohort.volumes, times, roles == 1, threshold=-0.9)


def test_scan_roles_hold_out_middle_and_last():
    mask = np.array([[1, 1, 0, 0, 0], [1, 1, 1, 0, 0], [1, 1, 1, 1, 0], [1, 1, 1, 1, 1]], bool)
    roles = scan_roles(mask, "interpolation_extrapolation")
    np.testing.assert_array_equal(roles, [[1, 1, 0, 0, 0], [1, 1, 3, 0, 0], [1, 2, 1, 3, 0], [1, 1, 2, 1, 3]])
    np.testing.assert_array_equal(scan_roles(mask, "none"), mask.astype(np.int8))


def test_shared_pool_without_the_longest_subject(tmp_path):
    """Regression (issue 18): a theta* pool holding no subject with the cohort's most scans.

    blob_cohort(3) has 2, 3 and 4 scans; with seed 1 the pool of one subject is subject 0
    (`np.random.default_rng(1).permutation(3)[0] == 0`), so the pool's scans end one slot
    before the cohort's. This raised an IndexError in `_shared_init`.
    """
    cfg = dataclasses.replace(TINY, seed=1, shared_pool=1, holdout="extrapolation")
    result = fit_cohort(blob_cohort(3), tmp_path / "fit", cfg)
    assert np.isfinite(result.psnr[result.roles == 1]).all()


def test_sampling_draws_foreground_and_only_training_scans(key):
    cohort = blob_cohort(3)
    roles = scan_roles(cohort.mask, "extrapolation")
    data = _chunk(cohort, roles)
    i = 2  # four scans, the last held out
    one = jax.tree_util.tree_map(lambda x: jnp.asarray(x[i]), data)
    coords, scan, values, weights = jax.jit(sample_points, static_argnums=(2, 3, 4))(key, one, SHAPE, 4000, 0.9)
    assert set(np.unique(np.asarray(scan))) <= set(np.flatnonzero(roles[i] == 1))
    assert float(jnp.mean(values > -0.9)) > 0.88  # 90% foreground + the background share of uniform draws
    assert float(jnp.min(coords)) >= -1.0 - 1e-6 and float(jnp.max(coords)) <= 1.0 + 1e-6
    # the value at a sampled point is the voxel at its coordinates
    idx = np.rint((np.asarray(coords) + 1) / 2 * (np.array(SHAPE) - 1)).astype(int)
    np.testing.assert_array_equal(np.asarray(values), cohort.volumes[i][np.asarray(scan), idx[:, 0], idx[:, 1]])
    assert float(jnp.min(weights)) == 1.0
    empty = one._replace(num_train=jnp.int32(0), num_foreground=jnp.int32(0))
    assert float(jnp.max(sample_points(key, empty, SHAPE, 10, 0.9)[3])) == 0.0


def _states(theta, n, stage):
    stacked = jax.tree_util.tree_map(lambda x: jnp.broadcast_to(x, (n, *x.shape)), theta)
    return jax.vmap(lambda p: init_state(p, stage.optimizer()))(stacked)


def test_vmapped_fit_equals_per_subject_loop(key):
    cohort = blob_cohort(4)
    data = _chunk(cohort, scan_roles(cohort.mask, "none"))
    cfg, stage = TINY.inr, TINY.finetune
    sampling = Sampling(SHAPE, stage.num_points(int(np.prod(SHAPE)), 4), 0.9)
    theta = st.init(key, cfg)
    run = lambda state, d, ids: finetune_block(state, d, ids, jnp.int32(3), jnp.int32(0), num_steps=5, cfg=cfg, sampling=sampling, stage=stage)  # noqa: E731
    together = run(_states(theta, 4, stage), jax.tree_util.tree_map(jnp.asarray, data), jnp.arange(4, dtype=jnp.int32))
    for i in range(4):
        alone = run(_states(theta, 1, stage), jax.tree_util.tree_map(lambda x, i=i: jnp.asarray(x[i : i + 1]), data), jnp.array([i], jnp.int32))
        chex.assert_trees_all_close(_row(alone.params, 0), _row(together.params, i), atol=1e-5, rtol=1e-5)
    assert bool(jnp.all(together.alive)) and float(jnp.max(together.loss)) < 1.0


def test_a_diverging_subject_is_reported_and_leaves_the_others_alone(key):
    cohort = blob_cohort(4)
    data = _chunk(cohort, scan_roles(cohort.mask, "none"))
    broken = data._replace(volumes=data.volumes.copy())
    broken.volumes[1, 0, :] = np.nan
    cfg, stage = TINY.inr, TINY.finetune
    sampling = Sampling(SHAPE, stage.num_points(int(np.prod(SHAPE)), 4), 0.9)
    theta = st.init(key, cfg)
    ids = jnp.arange(4, dtype=jnp.int32)
    run = lambda d: finetune_block(_states(theta, 4, stage), jax.tree_util.tree_map(jnp.asarray, d), ids, jnp.int32(0), jnp.int32(0), num_steps=4, cfg=cfg, sampling=sampling, stage=stage)  # noqa: E731
    clean, bad = run(data), run(broken)
    assert np.asarray(bad.alive).tolist() == [True, False, True, True]
    assert int(bad.diverged_at[1]) == 0 and np.isnan(float(bad.loss[1]))
    chex.assert_trees_all_equal(_row(clean.params, [0, 2, 3]), _row(bad.params, [0, 2, 3]))
    # its parameters stay the last finite ones (here: theta*, it failed at the first step)
    chex.assert_trees_all_equal(theta, _row(bad.params, 1))


def _row(tree, i):
    """Row(s) `i` of every leaf of a stacked parameter tree."""
    return jax.tree_util.tree_map(lambda x: np.asarray(x)[i], tree)


def _params_close(a, b, atol=1e-5):
    chex.assert_trees_all_close(a, b, atol=atol, rtol=1e-5)


def test_sharded_over_four_devices_equals_one_device(tmp_path):
    assert jax.device_count() >= 4, "conftest provides 4 CPU devices"
    cohort = blob_cohort(6)
    one = fit_cohort(cohort, tmp_path / "one", TINY, mesh=sharding.subject_mesh(jax.devices()[:1]))
    four = fit_cohort(cohort, tmp_path / "four", TINY, mesh=sharding.subject_mesh(jax.devices()[:4]))
    _params_close(one.params, four.params)
    np.testing.assert_allclose(one.psnr, four.psnr, atol=1e-3)


def test_resumed_run_ends_where_an_uninterrupted_run_does(tmp_path):
    cohort = blob_cohort(6)
    cfg = dataclasses.replace(TINY, chunk_size=2)
    full = fit_cohort(cohort, tmp_path / "full", cfg)

    class Killed(Exception):
        pass

    for stop in ({"stage": "shared", "step": 4}, {"stage": "finetune", "chunk": 1, "step": 10}):
        out = tmp_path / f"killed-{stop['stage']}"

        def kill(event, stop=stop):
            if all(event.get(k) == v for k, v in stop.items()):
                raise Killed

        with pytest.raises(Killed):
            fit_cohort(cohort, out, cfg, progress=kill)
        assert not (out / "params").exists()
        resumed = fit_cohort(cohort, out, cfg, resume=True)
        _params_close(full.params, resumed.params, atol=0)
        np.testing.assert_array_equal(full.psnr, resumed.psnr)
    with pytest.raises(InputError, match="already completed"):
        fit_cohort(cohort, out, cfg, resume=True)
    with pytest.raises(InputError, match="another configuration"):
        fit_cohort(cohort, tmp_path / "full", dataclasses.replace(cfg, seed=1), resume=True)
    with pytest.raises(InputError, match="already exists"):
        fit_cohort(cohort, tmp_path / "full", cfg)


def test_outputs_round_trip_and_weight_table(tmp_path):
    cohort = blob_cohort(5)
    result = fit_cohort(cohort, tmp_path / "fit", dataclasses.replace(TINY, holdout="extrapolation"))
    fitted = load_fit(tmp_path / "fit")
    _params_close(result.params, fitted.params, atol=0)
    assert fitted.subject_ids == cohort.subject_ids and fitted.groups == cohort.groups
    weights = np.load(tmp_path / "fit" / "weights.npz")
    for g in st.GROUPS:
        assert weights[g].shape == (5, st.num_params(st.parameter_groups(jax.tree_util.tree_map(lambda x: x[0], result.params))[g]))
        np.testing.assert_array_equal(weights[g], flat_weights(result.params, g))
    lines = (tmp_path / "fit" / "metrics.tsv").read_text().splitlines()
    assert len(lines) == 1 + int(cohort.mask.sum()) and any("\textrapolation\t" in line for line in lines)
    assert (tmp_path / "fit" / "figures" / "reconstruction.png").stat().st_size > 0


def test_tiny_cohort_reaches_stated_psnr(tmp_path):
    cohort = blob_cohort(4)
    # WIRE layers as in the paper; half the points from the background, which covers most of these tiny images
    inr = dataclasses.replace(TINY.inr, width=32, w0=10.0, spatial_activation="wire", combined_activation="wire")
    cfg = dataclasses.replace(
        TINY, inr=inr, foreground_fraction=0.5, finetune=StageConfig(steps=300, learning_rate=2e-3, sample_fraction=0.3),
        steps_per_call=50, checkpoint_every=100,
    )  # fmt: skip
    result = fit_cohort(cohort, tmp_path / "fit", cfg)
    assert result.median("psnr", "train") >= 35.0, result.psnr
    assert result.median("ssim", "train") >= 0.9, result.ssim


@pytest.mark.slow  # a whole command
def test_fit_cli_on_a_bids_dataset(tmp_path):
    from longbrain_jax.io import write_bids

    write_bids(blob_cohort(4), tmp_path / "bids")
    args = ["fit", str(tmp_path / "bids"), str(tmp_path / "out"), "--width", "8", "--stream-layers", "2", "--combined-layers", "1",
            "--shared-steps", "4", "--steps", "10", "--fraction", "0.3", "--shared-fraction", "0.3", "--chunk-size", "4",
            "--holdout", "extrapolation", "--reconstruct-ages", "80", "--quiet"]  # fmt: skip
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    assert "median PSNR train" in result.output
    assert (tmp_path / "out" / "reconstructions" / "sub-00" / "anat" / "sub-00_desc-inr080p0_T1w.nii.gz").exists()
    again = CliRunner().invoke(main, args)
    assert again.exit_code == 2 and "already exists" in again.output
    # a rerun from the run's config.json, with no option repeated, reproduces the run
    rerun = CliRunner().invoke(main, ["fit", str(tmp_path / "bids"), str(tmp_path / "rerun"), "--config", str(tmp_path / "out"), "--quiet"])
    assert rerun.exit_code == 0, rerun.output
    recorded = [json.loads((tmp_path / d / "config.json").read_text())["config"] for d in ("out", "rerun")]
    assert recorded[0] == recorded[1]
    first, second = (np.load(tmp_path / d / "weights.npz") for d in ("out", "rerun"))
    for group in ("P_space", "P_time", "P_com"):
        np.testing.assert_array_equal(first[group], second[group])
    # options given beside --config override it
    changed = CliRunner().invoke(main, ["fit", str(tmp_path / "bids"), str(tmp_path / "changed"), "--config", str(tmp_path / "out" / "config.json"),
                                        "--steps", "2", "--quiet"])  # fmt: skip
    assert changed.exit_code == 0, changed.output
    changed_cfg = json.loads((tmp_path / "changed" / "config.json").read_text())["config"]
    assert changed_cfg["finetune"]["steps"] == 2 and changed_cfg["inr"]["width"] == 8 and changed_cfg["holdout"] == "extrapolation"
    wrong = CliRunner().invoke(main, ["fit", str(tmp_path / "bids"), str(tmp_path / "w"), "--config", str(tmp_path / "bids" / "participants.tsv")])
    assert wrong.exit_code == 2 and "participants.tsv" in wrong.output
    missing = CliRunner().invoke(main, ["fit", str(tmp_path / "nope"), str(tmp_path / "o2")])
    assert missing.exit_code == 2 and "dataset folder not found" in missing.output


def test_time_curvature_is_zero_on_a_straight_trajectory_and_sees_relu_kinks(key):
    from longbrain_jax.fit.train import time_curvature

    cfg = INRConfig(ndim=2, width=4, stream_layers=1, combined_layers=0, spatial_activation="sine", temporal_activation="relu")
    params = st.init(key, cfg)
    cohort = blob_cohort(1)
    data = jax.tree_util.tree_map(lambda x: jnp.asarray(x[0]), _chunk(cohort, scan_roles(cohort.mask, "none")))
    coords = jnp.zeros((64, 2))
    sampling = Sampling(SHAPE, 64, 0.9, time_curvature=1.0, time_step=0.2, time_horizon=1.0)
    # every ReLU unit active over the whole time range: the output is linear in t
    w = jnp.abs(params["time"]["input"]["w"])
    straight = dict(params, time={"input": {"w": w, "b": jnp.full_like(params["time"]["input"]["b"], 10.0)}, "hidden": []})
    assert float(time_curvature(straight, coords, data, key, cfg, sampling)) < 1e-6
    # a unit switching on inside the range bends the trajectory: the second difference sees the kink
    bent = dict(params, time={"input": {"w": w, "b": -w[0] * float(data.times[0] + 0.3)}, "hidden": []})
    assert float(time_curvature(bent, coords, data, key, cfg, sampling)) > 1e-2
    # the penalty enters the loss only with a positive weight
    from longbrain_jax.fit.train import sampled_loss

    plain = sampled_loss(bent, data, key, cfg, sampling._replace(time_curvature=0.0))
    assert float(sampled_loss(bent, data, key, cfg, sampling)) > float(plain)
    with pytest.raises(ValueError, match="time_curvature"):
        dataclasses.replace(TINY, time_curvature=-1.0)


def test_a_small_cohorts_run_resumes_on_the_mesh_it_was_saved_on(tmp_path, monkeypatch):
    """2 subjects train on 2 of the 4 devices; a run recorded before the mesh size was (its plan has no
    "devices": it used all 4) resumes on all 4, and a run needing more devices than there are is refused."""
    import json

    from longbrain_jax.engine import rundir

    cohort = blob_cohort(2)

    class Killed(Exception):
        pass

    def kill(event):
        if event.get("stage") == "finetune" and event.get("step") == 10:
            raise Killed

    out = tmp_path / "old"
    with pytest.raises(Killed):  # as the code before the mesh size was recorded: every device
        fit_cohort(cohort, out, TINY, mesh=sharding.subject_mesh(jax.devices()[:4]), progress=kill)
    plan = json.loads((out / "work" / "plan.json").read_text())
    assert "devices" not in plan and plan["chunk"] == 4
    resumed = fit_cohort(cohort, out, TINY, resume=True)  # restores (4, ...) checkpoints: no shape error
    assert np.isfinite(resumed.loss).all() and (resumed.diverged_at < 0).all()

    fresh = tmp_path / "fresh"
    with pytest.raises(Killed):
        fit_cohort(cohort, fresh, TINY, progress=kill)
    assert json.loads((fresh / "work" / "plan.json").read_text())["devices"] == 2
    monkeypatch.setattr(rundir.jax, "devices", lambda: jax.local_devices()[:1])
    with pytest.raises(InputError, match="sharded over 2 devices and this machine has 1"):
        fit_cohort(cohort, fresh, TINY, resume=True)
