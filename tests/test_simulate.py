"""The simulator against its own promises, measured on the files it writes."""

import dataclasses
import filecmp

import jax
import jax.numpy as jnp
import nibabel as nib
import numpy as np
import pytest
from click.testing import CliRunner

from longbrain_jax import grid, metrics
from longbrain_jax.atlas import REGIONS
from longbrain_jax.cli import main
from longbrain_jax.io import LoadConfig, load_displacement, load_image, read_bids, write_bids
from longbrain_jax.io.bids import derivative_path
from longbrain_jax.simulate import SimulationConfig, read_volumes, simulate_cohort
from longbrain_jax.simulate.atrophy import (
    aging_maps,
    aging_profile,
    build_aging_flow,
    calibrated_velocity,
    region_log_rates,
    solve_poisson_dirichlet,
)
from longbrain_jax.simulate.brain_age import BrainAgeConfig, brain_age, brain_age_rate, sample_drift
from longbrain_jax.simulate.template import load_template

# Tolerances on the log-volume change since baseline, relative to the prescribed change,
# at the test's 4 mm (see benchmarks/RESULTS.md for the 2 mm figures):
PV_TOLERANCE = 0.15  # exact partial volumes, every scan
LABEL_MEAN_TOLERANCE = 0.40  # label-map counts (4 mm voxels), mean over scans
CHECKED = ("hippocampus", "lateral_ventricles", "cortical_gm", "cerebral_wm")


@pytest.fixture(scope="module")
def cohort_dir(tmp_path_factory):
    cfg = SimulationConfig(num_subjects=3, resolution_mm=4.0, sampling="regular", paired=True, chunk_size=3, seed=3)
    return simulate_cohort(tmp_path_factory.mktemp("sim") / "bids", cfg), cfg


def test_template_is_real_aligned_anatomy():
    t = load_template(4.0, 3)
    wm = t.t1[np.isin(t.labels, REGIONS["cerebral_wm"])].mean()
    ventricles = t.t1[np.isin(t.labels, REGIONS["lateral_ventricles"])].mean()
    assert 0.9 < wm < 1.1 and ventricles < 0.6 * wm  # ventricle labels sit on dark CSF
    assert all(np.isin(t.labels, ids).any() for ids in REGIONS.values())
    np.testing.assert_allclose(t.fractions.sum(0), 1.0, atol=1e-5)
    s = load_template(4.0, 2)
    assert s.ndim == 2 and np.isin(s.labels, REGIONS["hippocampus"]).any() and np.isin(s.labels, REGIONS["lateral_ventricles"]).any()


def test_brain_age_model_matches_the_paper_and_its_own_rate(key):
    cfg = BrainAgeConfig()
    n = 2000
    keys = jax.random.split(key, n)
    gap = {}
    for dementia in (False, True):
        params = jax.vmap(lambda k: sample_drift(k, jnp.asarray(dementia), cfg))(keys)  # noqa: B023
        ba80 = jax.vmap(lambda p: brain_age(p, 80.0))(params)
        gap[dementia] = np.asarray(ba80) - 80.0
        one = jax.tree.map(lambda x: x[0], params)
        np.testing.assert_allclose(brain_age(one, 50.0), 50.0, atol=1e-4)  # BA(t0) = t0
        ages = jnp.linspace(50.0, 80.0, 3001)
        rate = np.asarray(brain_age_rate(one, ages), np.float64)
        assert rate.min() > 0  # brain age never runs backwards
        steps = (rate[1:] + rate[:-1]) / 2 * np.diff(np.asarray(ages, np.float64))
        trapezoid = 50.0 + np.concatenate([[0.0], np.cumsum(steps)])  # float64 accumulation
        np.testing.assert_allclose(brain_age(one, ages), trapezoid, atol=1e-3)  # closed form = integral
    # dementia-like brain age exceeds age by 5-10 years at 80 (the documented t_end choice)
    assert 5.0 < np.median(gap[True]) < 10.0 and np.mean((gap[True] > 5) & (gap[True] < 10)) > 0.9
    assert abs(np.median(gap[False])) < 0.5 and np.percentile(np.abs(gap[False]), 95) < 2.0


def test_poisson_solver_inverts_the_discrete_laplacian(rng):
    rhs = rng.standard_normal((9, 8, 7))
    h = (0.5, 0.3, 0.25)
    psi = solve_poisson_dirichlet(rhs, h).astype(np.float64)
    padded = np.pad(psi, 1)
    lap = sum(
        (np.roll(padded, -1, a) - 2 * padded + np.roll(padded, 1, a))[1:-1, 1:-1, 1:-1] / h[a] ** 2 for a in range(3)
    )
    np.testing.assert_allclose(lap, rhs, atol=1e-4)


def test_calibrated_velocity_meets_each_region_mean_divergence():
    t = load_template(4.0, 3)
    names = ("hippocampus", "lateral_ventricles", "cerebral_wm")
    weights = np.stack([np.isin(t.labels, REGIONS[n]).astype(np.float32) for n in names])
    targets = np.array([-0.01, 0.03, -0.003])
    v = calibrated_velocity(weights, targets)
    sp = [2.0 / (n - 1) for n in t.shape]
    div = sum(np.gradient(v[..., i], sp[i], axis=i) for i in range(3))
    for w, target in zip(weights, targets, strict=True):
        assert (div * w).sum() / w.sum() == pytest.approx(target, rel=1e-3)


def test_aging_flow_is_monotone_invertible_and_never_folds():
    t = load_template(4.0, 2)
    rates = region_log_rates()
    names = [n for n in rates if np.isin(t.labels, REGIONS[n]).any()]
    weights = np.stack([np.isin(t.labels, REGIONS[n]).astype(np.float32) for n in names])
    flow = build_aging_flow(weights, np.array([rates[n] for n in names]), g_max=30.0, step=2.0)
    vent = np.isin(t.labels, REGIONS["lateral_ventricles"])
    jacs = []
    for g in (0.0, 7.3, 15.0, 29.0):
        forward, inverse = aging_maps(flow, jnp.float32(g))
        jac = np.asarray(grid.jacobian_determinant(forward))
        assert jac.min() > 0
        np.testing.assert_allclose(grid.compose(inverse, forward), 0.0, atol=0.25 * 2 / (t.shape[0] - 1))  # 1/4 voxel
        jacs.append(jac)
        growth = np.log((jac * vent).sum() / vent.sum())
        assert growth == pytest.approx(g * rates["lateral_ventricles"], rel=0.1, abs=1e-3)
    head = jnp.asarray(t.labels > 0)  # outside, |J| is flat up to float jitter
    series, gs = jnp.asarray(np.stack(jacs)), jnp.array([0.0, 7.3, 15.0, 29.0])
    assert float(metrics.monotone_fraction(series, gs, head, tol=1e-4)) > 0.99


def _by_subject(rows):
    out = {}
    for r in rows:
        out.setdefault(r["participant_id"], []).append(r)
    return out


@pytest.mark.xdist_group("simulated_cohort")  # one worker builds the module fixture once
def test_regional_volume_change_matches_prescribed_rates(cohort_dir):
    root, cfg = cohort_dir
    rates = region_log_rates(cfg.atrophy)
    label_errors = {r: [] for r in CHECKED}
    for rows in _by_subject(read_volumes(root / "derivatives/simulator/volumes.tsv")).values():
        g = np.array([float(aging_profile(float(r["brain_age"]), cfg.atrophy)) for r in rows])
        for region in CHECKED:
            prescribed = rates[region] * (g[1:] - g[0])
            pv = np.array([float(r[f"{region}_pv_mm3"]) for r in rows])
            np.testing.assert_allclose(np.log(pv[1:] / pv[0]), prescribed, rtol=PV_TOLERANCE)
            lab = np.array([float(r[f"{region}_label_mm3"]) for r in rows])
            label_errors[region].extend(np.abs(np.log(lab[1:] / lab[0]) - prescribed) / np.abs(prescribed))
    for region, errors in label_errors.items():
        assert np.mean(errors) < LABEL_MEAN_TOLERANCE, region


@pytest.mark.xdist_group("simulated_cohort")  # one worker builds the module fixture once
def test_written_label_maps_show_faster_atrophy_in_dementia(cohort_dir):
    root, _ = cohort_dir
    cohort = read_bids(root, LoadConfig(normalise=None))
    assert cohort.labels is not None
    rate = {"healthy": {"hip": [], "vent": []}, "dementia": {"hip": [], "vent": []}}
    for i in range(cohort.num_subjects):
        s = cohort.subject(i)
        for key, ids in (("hip", REGIONS["hippocampus"]), ("vent", REGIONS["lateral_ventricles"])):
            vol = np.array([np.isin(s.labels[t], ids).sum() for t in range(s.num_scans)], float)
            rate[s.group][key].append(100 * np.polyfit(s.times, np.log(vol), 1)[0])  # %/yr
    mean = {g: {k: np.mean(v) for k, v in r.items()} for g, r in rate.items()}
    assert mean["dementia"]["hip"] < mean["healthy"]["hip"] < 0
    assert mean["dementia"]["vent"] > mean["healthy"]["vent"] > 0


@pytest.mark.xdist_group("simulated_cohort")  # one worker builds the module fixture once
def test_ground_truth_deformation_is_consistent_and_never_folds(cohort_dir):
    root, _ = cohort_dir
    cohort = read_bids(root, LoadConfig(normalise=None))
    volumes = _by_subject(read_volumes(root / "derivatives/simulator/volumes.tsv"))
    for i in range(cohort.num_subjects):
        sid, sessions = cohort.subject_ids[i], cohort.session_ids[i]
        base = jnp.asarray(cohort.labels[i, 0])
        head = cohort.labels[i, 0] > 0
        for t, ses in enumerate(sessions):
            jac, affine = load_image(derivative_path(root, sid, ses, "jacdet", "simulator"))
            assert jac.min() > 0
            u_mm, _ = load_displacement(derivative_path(root, sid, ses, "truth", "simulator", suffix="xfm"))
            phi = grid.displacement_from_world(jnp.asarray(u_mm), affine)
            np.testing.assert_allclose(grid.jacobian_determinant(phi), jac, rtol=1e-3, atol=1e-3)
            if t == 0:  # the identity, to interpolation accuracy of composed maps at 4 mm
                assert np.percentile(np.abs(jac[head] - 1.0), 99) < 0.06
                continue
            # the two ground truths agree: mean |J| over a baseline region = its volume ratio
            rows = volumes[f"sub-{sid}"]
            for region in ("cortical_gm", "cerebral_wm"):
                ratio = float(rows[t][f"{region}_pv_mm3"]) / float(rows[0][f"{region}_pv_mm3"])
                assert jac[np.isin(cohort.labels[i, 0], REGIONS[region])].mean() == pytest.approx(ratio, rel=0.05)
            # scan_t(phi_t(x)) = scan_0(x): warping labels of scan t back reproduces baseline labels
            ids = [17, 53, 4, 43, 2, 41]
            back = np.nanmean(metrics.dice(grid.warp_labels(jnp.asarray(cohort.labels[i, t]), phi), base, ids))
            raw = np.nanmean(metrics.dice(jnp.asarray(cohort.labels[i, t]), base, ids))
            assert back >= raw
            if t == len(sessions) - 1:  # 25 years on, the change is several voxels
                assert back > raw + 0.05
                scan, baseline = jnp.asarray(cohort.volumes[i, t]), jnp.asarray(cohort.volumes[i, 0])
                mask = jnp.asarray(head)
                assert metrics.ncc(grid.warp(scan, phi), baseline, mask) > metrics.ncc(scan, baseline, mask)


@pytest.mark.xdist_group("simulated_cohort")  # one worker builds the module fixture once
def test_paired_versions_share_anatomy(cohort_dir):
    root, _ = cohort_dir
    baseline = lambda s: nib.load(root / f"sub-{s}/ses-1/anat/sub-{s}_ses-1_T1w.nii.gz").get_fdata()  # noqa: E731
    last = lambda s: nib.load(root / f"sub-{s}/ses-4/anat/sub-{s}_ses-4_T1w.nii.gz").get_fdata()  # noqa: E731
    np.testing.assert_array_equal(baseline("0001H"), baseline("0001D"))  # same anatomy and scanner at age 50
    assert not np.array_equal(last("0001H"), last("0001D"))  # different trajectories
    assert not np.array_equal(baseline("0001H"), baseline("0002H"))


def test_same_seed_same_bytes_and_2d_round_trip(tmp_path):
    args = ["--subjects", "2", "--dim", "2", "--resolution", "4", "--sampling", "irregular", "--quiet"]
    for name, seed in (("a", "7"), ("b", "7"), ("c", "8")):
        result = CliRunner().invoke(main, ["simulate", str(tmp_path / name), *args, "--seed", seed])
        assert result.exit_code == 0, result.output
    files = lambda d: sorted(p.relative_to(d) for p in d.rglob("*") if p.is_file())  # noqa: E731
    assert files(tmp_path / "a") == files(tmp_path / "b")
    for f in files(tmp_path / "a"):
        assert filecmp.cmp(tmp_path / "a" / f, tmp_path / "b" / f, shallow=False), f
    tsv = "derivatives/simulator/volumes.tsv"
    assert filecmp.cmp(tmp_path / "a" / tsv, tmp_path / "b" / tsv, shallow=False)
    assert not filecmp.cmp(tmp_path / "a" / tsv, tmp_path / "c" / tsv, shallow=False)
    cohort = read_bids(tmp_path / "a", LoadConfig(normalise=None))
    assert cohort.ndim == 2 and cohort.labels is not None
    assert (tmp_path / "a/derivatives/simulator/montage.png").stat().st_size > 10_000
    write_bids(cohort, tmp_path / "again")
    again = read_bids(tmp_path / "again", LoadConfig(normalise=None))
    np.testing.assert_array_equal(again.volumes, cohort.volumes)
    np.testing.assert_array_equal(again.labels, cohort.labels)
    np.testing.assert_array_equal(again.ages, cohort.ages)


def test_vmapped_chunk_equals_mapped_chunk():
    base = SimulationConfig(num_subjects=2, resolution_mm=4.0, ndim=2, chunk_size=2, sampling="regular", regular_ages=(50.0, 70.0))
    from longbrain_jax.simulate import Simulator

    mapped = Simulator(dataclasses.replace(base, batch="map"))
    vmapped = Simulator(dataclasses.replace(base, batch="vmap"))
    a, b = mapped.simulate(mapped.plan()), vmapped.simulate(vmapped.plan())
    for k in ("image", "jacobian", "displacement_mm", "pv_volume", "brain_age"):
        np.testing.assert_allclose(a[k], b[k], rtol=1e-4, atol=1e-4, err_msg=k)
    assert np.mean(a["labels"] == b["labels"]) > 0.999


def test_optional_mtl_atrophy_and_misalignment():
    from longbrain_jax.simulate import AtrophyConfig, ScannerConfig, Simulator

    base = SimulationConfig(num_subjects=2, resolution_mm=4.0, ndim=2, chunk_size=2, sampling="regular", regular_ages=(50.0, 75.0))
    plain = Simulator(base)
    mtl = Simulator(dataclasses.replace(base, atrophy=AtrophyConfig(disease_mtl_pct_per_year=-3.0)))
    a, b = plain.simulate(plain.plan()), mtl.simulate(mtl.plan())
    hip = plain.region_names.index("hippocampus")
    change = lambda arrays, i: arrays["pv_volume"][i, 1, hip] / arrays["pv_volume"][i, 0, hip]  # noqa: E731
    assert change(b, 1) < change(a, 1) - 0.05  # subject 2 is dementia-like: extra hippocampal loss
    assert change(b, 0) == pytest.approx(change(a, 0), rel=1e-4)  # healthy: unchanged

    moved = Simulator(dataclasses.replace(base, scanner=ScannerConfig(rotation_deg=4.0, translation_mm=4.0)))
    c = moved.simulate(moved.plan())
    np.testing.assert_array_equal(c["image"][:, 0], a["image"][:, 0])  # the baseline defines the frame
    assert not np.allclose(c["image"][:, 1], a["image"][:, 1])
    head = jnp.asarray(moved.template.labels > 0)
    for i in range(2):  # the ground truth absorbs the misalignment: undoing it restores agreement
        phi = grid.displacement_from_world(jnp.asarray(c["displacement_mm"][i, 1]), moved.template.affine)
        scan, baseline = jnp.asarray(c["image"][i, 1]), jnp.asarray(c["image"][i, 0])
        assert metrics.ncc(grid.warp(scan, phi), baseline, head) > metrics.ncc(scan, baseline, head) + 0.05
