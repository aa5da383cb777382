"""Rigid / affine alignment of follow-ups (`longbrain_jax.align`) and ITK transforms (`io.transforms`).

Programs are few and shared: every 2D test runs on the 4 mm template slice's grid
(43 x 52, the simulated cohort's) with one small configuration, so one compiled
pair program serves most of them.
"""

import dataclasses
import importlib.util
import json
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from click.testing import CliRunner

from longbrain_jax.align import (
    AlignConfig,
    AlignedSource,
    align_cohort,
    align_dataset,
    align_pairs,
    pyramid,
    register_pairs,
    similarity,
)
from longbrain_jax.align import parameters as P
from longbrain_jax.align.cohort import resample_scan, scan_key
from longbrain_jax.cli import main
from longbrain_jax.cohort import Cohort, Subject
from longbrain_jax.errors import InputError
from longbrain_jax.io import (
    LoadConfig,
    load_image,
    load_transform,
    read_bids,
    save_image,
    save_transform,
    scan_bids,
    write_bids,
)
from longbrain_jax.io.transforms import from_itk_parameters, to_itk_parameters
from longbrain_jax.simulate import ScannerConfig, SimulationConfig, load_template, simulate_cohort
from longbrain_jax.simulate.simulator import RIGID_TRUTH

CFG = AlignConfig(chunk_size=2)  # the defaults, as the command line's (one compiled program serves both)


def rigid(angles_deg, shift_mm, centre) -> np.ndarray:
    """World transform p -> R (p - c) + c + t with R = Rz Ry Rx of `angles_deg` (one angle: about z)."""
    a = np.deg2rad(np.atleast_1d(np.asarray(angles_deg, np.float64)))
    a = np.array([0.0, 0.0, a[0]]) if a.size == 1 else a
    r = np.asarray(P.rotation(jnp.asarray(a, jnp.float32), 3), np.float64)
    m = np.eye(4)
    m[:3, :3] = r
    m[:3, 3] = np.asarray(centre) + np.asarray(shift_mm, np.float64) - r @ np.asarray(centre)
    return m


def moved(image, affine, truth) -> np.ndarray:
    """The image m with m(truth(x)) = image(x): a follow-up misaligned by `truth` (baseline -> follow-up)."""
    return resample_scan(image, affine, image.shape, affine, np.linalg.inv(truth), 1)


def centre_of(image, affine) -> np.ndarray:
    return np.asarray(pyramid.voxel_positions(image.shape).reshape(-1, image.ndim) @ affine[:3, : image.ndim].T).mean(0) + affine[:3, 3]


@pytest.fixture(scope="module")
def slice2d():
    tpl = load_template(4.0, 2)
    return tpl.t1.astype(np.float32), tpl.affine


@pytest.fixture(scope="module")
def simulated(tmp_path_factory):
    cfg = SimulationConfig(num_subjects=2, resolution_mm=4.0, ndim=2, scans_per_subject=(3, 3), chunk_size=2, write_fields=False,
                           flow_step=4.0, scanner=ScannerConfig(rotation_deg=5.0, translation_mm=5.0))  # fmt: skip
    return simulate_cohort(tmp_path_factory.mktemp("sim") / "bids", cfg)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory, slice2d):
    """A small BIDS dataset on the template slice: sub-01 with two misaligned follow-ups, sub-02 with one scan."""
    image, affine = slice2d
    c = centre_of(image, affine)
    truths = [rigid(4.0, (3.0, -2.0, 0.0), c), rigid(-3.0, (-1.5, 2.5, 0.0), c)]
    labels = (image > 0.5).astype(np.int32) + (image > 0.9)
    subjects = [
        Subject("01", ("1", "2", "3"), np.array([60.0, 61.0, 62.5]), np.stack([image] + [moved(image, affine, t) for t in truths]), affine,
                labels=np.stack([labels] + [np.rint(resample_scan(labels, affine, labels.shape, affine, np.linalg.inv(t), 0)) for t in truths]).astype(np.int32),
                group="CN", sex="F", metadata={"site": "A"}),
        Subject("02", ("1",), np.array([70.0]), image[None] * 1.1, affine, labels=labels[None], group="AD", sex="M", metadata={"site": "B"}),
    ]  # fmt: skip
    root = write_bids(Cohort.from_subjects(subjects), tmp_path_factory.mktemp("data") / "bids")
    return root, truths, c


# -- transforms ---------------------------------------------------------------------------------
def test_itk_round_trip_3d_and_2d(tmp_path, rng):
    m = np.eye(4)
    m[:3, :3] += 0.1 * rng.normal(size=(3, 3))
    m[:3, 3] = rng.normal(size=3) * 5
    for centre in (None, np.array([3.0, -4.0, 5.0])):
        save_transform(tmp_path / "a.txt", m, centre, overwrite=True)
        np.testing.assert_allclose(load_transform(tmp_path / "a.txt"), m, atol=1e-12)
    text = (tmp_path / "a.txt").read_text().splitlines()
    assert text[0] == "#Insight Transform File V1.0" and text[2] == "Transform: AffineTransform_double_3_3"
    assert text[4] == "FixedParameters: -3.0 4.0 5.0"  # the centre in LPS
    flat = rigid(7.0, (2.0, -1.0, 0.0), (10.0, 20.0, 30.0))  # a 2D image's transform: z untouched
    save_transform(tmp_path / "b.txt", flat)
    back = load_transform(tmp_path / "b.txt")
    np.testing.assert_allclose(back, flat, atol=1e-12)
    np.testing.assert_allclose(back[2], [0, 0, 1, 0], atol=1e-12)
    # ITK's other linear types: the same transform written as ITK would
    params, fixed = to_itk_parameters(flat, np.array([10.0, 20.0, 30.0]))
    lps_angle = np.arctan2(params[3], params[0])
    np.testing.assert_allclose(from_itk_parameters([lps_angle, *params[9:11]], fixed[:2], "Euler2DTransform"), flat, atol=1e-9)
    np.testing.assert_allclose(from_itk_parameters(np.r_[params[[0, 1, 3, 4]], params[9:11]], fixed[:2], "AffineTransform"), flat, atol=1e-9)
    half = lps_angle / 2
    np.testing.assert_allclose(from_itk_parameters([0, 0, np.sin(half), *params[9:]], fixed, "VersorRigid3DTransform"), flat, atol=1e-9)
    np.testing.assert_allclose(from_itk_parameters([0, 0, lps_angle, *params[9:]], fixed, "Euler3DTransform"), flat, atol=1e-9)


@pytest.mark.parametrize(
    "text, problem",
    [
        ("", "not an ITK text transform"),
        ("#Insight Transform File V1.0\nTransform: AffineTransform_double_3_3\nParameters: 1 0 0\nFixedParameters: 0 0 0\n", "needs 12"),
        ("#Insight Transform File V1.0\nTransform: BSplineTransform_double_3_3\nParameters: 1\nFixedParameters: 0\n", "not supported"),
        ("#Insight Transform File V1.0\nTransform: AffineTransform_double_3_3\nParameters: 1 0 0 0 1 0 0 0 x 0 0 0\nFixedParameters: 0 0 0\n", "not a number"),
        ("#Insight Transform File V1.0\nTransform: AffineTransform_double_3_3\nParameters: 0 0 0 0 0 0 0 0 0 0 0 0\nFixedParameters: 0 0 0\n", "singular"),
        ("#Insight Transform File V1.0\nTransform: AffineTransform_double_3_3\nParameters: 1 0 0 0 1 0 0 0 1 0 0 0\n", "FixedParameters"),
    ],
)
def test_bad_transform_files_name_the_file(tmp_path, text, problem):
    path = tmp_path / "x.txt"
    path.write_text(text)
    with pytest.raises(InputError, match=problem) as err:
        load_transform(path)
    assert err.value.where == str(path)
    with pytest.raises(InputError, match="not found"):
        load_transform(tmp_path / "missing.txt")


@pytest.mark.skipif(importlib.util.find_spec("ants") is None, reason="antspyx is not installed")
def test_ants_applies_our_transform_as_we_do(tmp_path):
    import ants

    rng = np.random.default_rng(1)
    affine = np.array([[-2.0, 0, 0, 40], [0, 2.5, 0, -30], [0, 0, 2, -20], [0, 0, 0, 1]])  # a flipped axis: LPS vs RAS matters
    shape = (20, 18, 16)
    image = np.asarray(pyramid.smooth(jnp.asarray(rng.random(shape, dtype=np.float32)), 1.5)) * 100
    save_image(tmp_path / "moving.nii.gz", image, affine)
    c = affine[:3, :3] @ (np.array(shape) - 1) / 2 + affine[:3, 3]
    truth = rigid((3.0, -2.0, 4.0), (2.0, -3.0, 1.5), c)
    save_transform(tmp_path / "xfm.txt", truth, c)
    img = ants.image_read(str(tmp_path / "moving.nii.gz"))
    tx = ants.read_transform(str(tmp_path / "xfm.txt"))
    out = ants.apply_transforms(img, img, [str(tmp_path / "xfm.txt")], interpolator="linear").numpy()
    ours = resample_scan(image, affine, shape, affine, truth, 1)
    inner = (slice(3, -3),) * 3  # ITK and we treat the border (outside the image) differently
    np.testing.assert_allclose(out[inner], ours[inner], atol=1e-2 * float(image.max()))
    p = np.array([5.0, -7.0, 3.0])  # the same point map: LPS in, LPS out
    q = np.asarray(tx.apply_to_point(tuple(p * [-1, -1, 1]))) * [-1, -1, 1]
    np.testing.assert_allclose(q, (truth @ np.r_[p, 1])[:3], atol=1e-4)


# -- parameters and similarity -----------------------------------------------------------------------
def test_parameters_centre_scale_and_2d_plane():
    geometry = P.Geometry(jnp.asarray([10.0, -5.0, 3.0]), jnp.eye(3), jnp.float32(60.0))
    theta = jnp.asarray([6.0, -3.0, 9.0, 1.0, 2.0, -1.5])  # angles x radius (mm at the brain's edge), translation mm
    matrix = jax.jit(P.to_matrix, static_argnums=(2, 3))
    m = np.asarray(matrix(theta, geometry, "rigid", 3), np.float64)
    np.testing.assert_allclose(m[:3, :3] @ m[:3, :3].T, np.eye(3), atol=1e-6)
    assert np.linalg.det(m[:3, :3]) == pytest.approx(1.0, abs=1e-6)
    np.testing.assert_allclose(m[:3, :3] @ geometry.centre + m[:3, 3] - geometry.centre, [1.0, 2.0, -1.5], atol=1e-4)
    np.testing.assert_allclose(matrix(jax.jit(P.rigid_to_affine, static_argnums=2)(theta, geometry, 3), geometry, "affine", 3), m, atol=1e-5)
    assert P.num_parameters("rigid", 2) == 3 and P.num_parameters("affine", 2) == 6 and P.num_parameters("affine", 3) == 12
    np.testing.assert_allclose(jax.jit(P.affine_inverse)(jnp.asarray(m, jnp.float32)), np.linalg.inv(m), atol=1e-5)
    rot, shift = P.motion_summary(m, np.asarray(geometry.centre))
    assert shift == pytest.approx(np.linalg.norm([1.0, 2.0, -1.5]), abs=1e-4) and rot > 5.0
    affine2d = np.diag([3.0, 3.0, 3.0, 1.0])
    frame = jax.jit(P.image_frame, static_argnums=1)(jnp.asarray(affine2d), 2)
    flat = np.asarray(matrix(jnp.asarray([5.0, 1.0, -2.0]), P.Geometry(jnp.zeros(3), frame, jnp.float32(50.0)), "rigid", 2))
    np.testing.assert_allclose(flat[2], [0, 0, 1, 0], atol=1e-7)  # in the slice's plane; z untouched
    np.testing.assert_allclose(flat[:3, 2], [0, 0, 1], atol=1e-7)
    assert P.transform_error(flat, flat, np.zeros(3)) == pytest.approx((0.0, 0.0), abs=1e-3)


def test_similarity_gradients_match_finite_differences(rng):
    with jax.enable_x64(True):
        f = jnp.asarray(rng.normal(size=300))
        m = 0.7 * f + 0.5 * jnp.asarray(rng.normal(size=300))
        w = jnp.asarray(rng.random(300) > 0.1, jnp.float64)
        ranges = ((jnp.min(f), jnp.max(f)), (jnp.min(m) - 0.1, jnp.max(m) + 0.1))
        direction = jnp.asarray(rng.normal(size=300))
        for fn in (lambda x: similarity.ncc(f, x, w), lambda x: similarity.mutual_information(f, x, w, *ranges, 16)):
            h = 1e-6
            grad = jax.jit(jax.grad(fn))(m)
            fd = jax.jit(lambda x: (fn(x + h * direction) - fn(x - h * direction)) / (2 * h))(m)  # noqa: B023
            assert float(jnp.dot(grad, direction)) == pytest.approx(float(fd), rel=1e-5, abs=1e-9)
        mi = jax.jit(lambda a, b: similarity.mutual_information(a, b, jnp.ones(300), *ranges, 16))
        assert float(mi(f, f + 0.1)) > float(mi(f, m))  # more for the more dependent pair
        # the sampler's derivative is the interpolated image gradient: on a linear ramp, exact
        x, y = np.meshgrid(np.arange(12.0), np.arange(10.0), indexing="ij")
        stack = pyramid.gradient_stack(jnp.asarray(2.0 * x - 0.5 * y + 0.1 * x * y))
        index = jnp.asarray([[3.3, 4.6], [7.1, 2.2]])
        grad = jax.jit(jax.jacfwd(lambda i: pyramid.sample(stack, i)))(index)
        np.testing.assert_allclose(jnp.einsum("nnd->nd", grad), [[2.0 + 0.1 * 4.6, -0.5 + 0.1 * 3.3], [2.0 + 0.1 * 2.2, -0.5 + 0.1 * 7.1]], atol=0.06)


def test_config_validates():
    for bad in (dict(transform="similarity"), dict(metric="mse"), dict(optimizer="lm", metric="mi"), dict(smoothing_sigmas=()),
                dict(iterations=(3,)), dict(samples=1), dict(chunk_size=0), dict(batch="pmap"), dict(bias_degree=9)):  # fmt: skip
        with pytest.raises(ValueError):
            AlignConfig(**bad)
    assert AlignConfig().method == "lm" and AlignConfig(metric="mi").method == "adam"
    assert AlignConfig(smoothing_sigmas=(1.0, 0.0)).level_iterations == (6, 4)
    assert AlignConfig(chunk_size=3, seed=5, to_template=True).program() == AlignConfig().program()


# -- the method -----------------------------------------------------------------------------------------
def test_recovers_a_known_rigid_motion_2d_vmapped_equals_loop(slice2d):
    image, affine = slice2d
    c = centre_of(image, affine)
    truths = [rigid(5.0, (4.0, -3.0, 0.0), c), rigid(-4.0, (-2.0, 3.5, 0.0), c)]
    moving = np.stack([moved(image, affine, t) for t in truths])
    fixed, affines = np.stack([image, image]), np.stack([affine, affine])
    keys = jnp.stack([scan_key(0, "a", 1), scan_key(0, "a", 2)])
    looped = align_pairs(fixed, moving, affines, affines, keys, dataclasses.replace(CFG, batch="map"))
    vmapped = align_pairs(fixed, moving, affines, affines, keys, dataclasses.replace(CFG, batch="vmap"))
    for k, truth in enumerate(truths):
        assert P.transform_error(np.asarray(vmapped.matrix[k]), np.asarray(looped.matrix[k]), c) == pytest.approx((0, 0), abs=1e-3)
        rot, shift = P.transform_error(np.asarray(looped.matrix[k]), truth, c)
        assert rot < 0.1 and shift < 0.1, (k, rot, shift)
        assert float(looped.after[k]) > 0.99 > float(looped.before[k])


def test_recovers_a_known_rigid_motion_3d():
    """A smooth phantom, both images sampled from its formula (no interpolation in the truth)."""
    shape, affine = (22, 26, 20), np.array([[4.0, 0, 0, -44], [0, 4.0, 0, -52], [0, 0, 4.0, -38], [0, 0, 0, 1]])
    rng = np.random.default_rng(0)
    parts = [(1.0, np.zeros(3), np.array([34.0, 42.0, 30.0]))]
    parts += [(rng.uniform(-0.6, 0.6), rng.uniform(-20, 20, 3) * [0.8, 1.0, 0.7], rng.uniform(5, 12, 3)) for _ in range(12)]

    def phantom(world):  # ellipsoids with 3 mm soft edges
        out = sum(a / (1 + np.exp((np.sqrt(np.sum(((world - c) / r) ** 2, axis=-1)) - 1) * r.min() / 3.0)) for a, c, r in parts)
        return np.asarray(out, np.float32)

    world = np.asarray(pyramid.voxel_positions(shape)) @ affine[:3, :3].T + affine[:3, 3]
    image = phantom(world)
    c = centre_of(image, affine)
    truth = rigid((3.0, -4.0, 5.0), (3.0, -2.5, 4.0), c)
    inverse = np.linalg.inv(truth)
    moving = phantom(world @ inverse[:3, :3].T + inverse[:3, 3])  # moving(truth(x)) = image(x)
    out = register_pairs(image[None], moving[None], affine[None], affine[None], scan_key(0, "b", 1)[None], CFG)
    rot, shift = P.transform_error(out["matrix"][0], truth, c)
    assert rot < 0.15 and shift < 0.1, (rot, shift)


@pytest.mark.optimised  # runs compiled programs more than it compiles them
@pytest.mark.slow  # a program of its own (about 8 s to compile on 2 CPU cores)
def test_mutual_information_aligns_different_contrasts(slice2d):
    image, affine = slice2d
    c = centre_of(image, affine)
    truth = rigid(4.0, (3.0, 2.0, 0.0), c)
    inverted = float(image.max()) - moved(image, affine, truth)  # a T2-like contrast: global NCC would be negative
    cfg = dataclasses.replace(CFG, metric="mi", smoothing_sigmas=(1.5, 0.0), iterations=(50, 30), bins=16, chunk_size=1)
    out = register_pairs(image[None], inverted[None], affine[None], affine[None], scan_key(0, "c", 1)[None], cfg)
    rot, shift = P.transform_error(out["matrix"][0], truth, c)
    assert rot < 0.5 and shift < 0.5, (rot, shift)


@pytest.mark.xdist_group("align_cohorts")  # one worker builds the module fixture once
def test_recovers_the_simulators_misalignment(simulated, tmp_path):
    """The simulator's truth is in our convention (applying it aligns the scans) and the aligner finds it."""
    truths = sorted((simulated / "derivatives" / "simulator").glob(f"sub-*/ses-*/anat/*_{RIGID_TRUTH}"))
    assert len(truths) == 4  # follow-ups only
    out = align_dataset(simulated, tmp_path / "aligned", CFG)
    for path in truths:
        sub, ses = path.parts[-4][4:], path.parts[-3][4:]
        truth = load_transform(path)
        base, affine = load_image(simulated / f"sub-{sub}" / "ses-1" / "anat" / f"sub-{sub}_ses-1_T1w.nii.gz")
        # the truth convention: the scan's labels carried by the truth agree with the baseline's, by its inverse they do not
        labels = [load_image(simulated / "derivatives" / "simulator" / f"sub-{sub}" / f"ses-{s}" / "anat" / f"sub-{sub}_ses-{s}_dseg.nii.gz")[0] for s in ("1", ses)]
        head = labels[0] > 0
        agree = {name: np.mean(resample_scan(labels[1], affine, base.shape, affine, m, 0)[head] == labels[0][head])
                 for name, m in (("truth", truth), ("identity", np.eye(4)), ("inverse", np.linalg.inv(truth)))}  # fmt: skip
        assert agree["truth"] > max(agree["identity"], agree["inverse"]) + 0.03, agree
        estimate = load_transform(out / "derivatives" / "longbrain-align" / f"sub-{sub}" / f"ses-{ses}" / "anat" / f"sub-{sub}_ses-{ses}_from-orig_to-baseline_mode-image_xfm.txt")
        rot, shift = P.transform_error(estimate, truth, centre_of(base, affine))
        assert rot < 0.6 and shift < 1.5, (sub, ses, rot, shift)  # 4 mm voxels, 2D; misaligned by up to 5 degrees and 7 mm


# -- outputs ------------------------------------------------------------------------------------------
@pytest.mark.xdist_group("align_cohorts")  # one worker builds the module fixture once
def test_align_dataset_writes_a_readable_aligned_dataset(dataset, tmp_path):
    root, truths, c = dataset
    out = align_dataset(root, tmp_path / "out", CFG)
    cohort = read_bids(out, LoadConfig(normalise=None))
    assert cohort.subject_ids == ("01", "02") and cohort.labels is not None
    for name in ("participants.tsv", "dataset_description.json", "sub-01/sub-01_sessions.tsv", "sub-02/sub-02_sessions.tsv"):
        assert (out / name).read_bytes() == (root / name).read_bytes()
    for rel in ("sub-01/ses-1/anat/sub-01_ses-1_T1w.nii.gz", "sub-02/ses-1/anat/sub-02_ses-1_T1w.nii.gz",
                "derivatives/labels/sub-02/ses-1/anat/sub-02_ses-1_dseg.nii.gz"):  # fmt: skip
        assert (out / rel).read_bytes() == (root / rel).read_bytes()  # baselines and single scans: copied
    xfm = out / "derivatives" / "longbrain-align"
    for t, truth in enumerate(truths, start=2):
        estimate = load_transform(xfm / "sub-01" / f"ses-{t}" / "anat" / f"sub-01_ses-{t}_from-orig_to-baseline_mode-image_xfm.txt")
        rot, shift = P.transform_error(estimate, truth, c)
        assert rot < 0.1 and shift < 0.1
        base, scan = cohort.volumes[0, 0], cohort.volumes[0, t - 1]
        inner = (slice(6, -6),) * 2
        assert np.corrcoef(base[inner].ravel(), scan[inner].ravel())[0, 1] > 0.99
        assert np.mean(cohort.labels[0, t - 1] == cohort.labels[0, 0]) > 0.97  # labels carried with the scan
    np.testing.assert_array_equal(load_transform(xfm / "sub-01" / "ses-1" / "anat" / "sub-01_ses-1_from-orig_to-baseline_mode-image_xfm.txt"), np.eye(4))
    rows = [line.split("\t") for line in (xfm / "alignment.tsv").read_text().splitlines()]
    assert rows[0][:6] == ["participant_id", "session_id", "role", "transform", "rotation_deg", "translation_mm"] and len(rows) == 5
    assert rows[2][2] == "follow-up" and float(rows[2][4]) == pytest.approx(4.0, abs=0.1) and float(rows[2][7]) > float(rows[2][6])
    assert json.loads((xfm / "config.json").read_text())["config"]["samples"] == CFG.samples

    # in memory: the same transforms, and a streamed source that aligns what it loads
    aligned, transforms = align_cohort(read_bids(root), CFG)
    np.testing.assert_allclose(transforms.to_baseline[0, 1], load_transform(xfm / "sub-01" / "ses-2" / "anat" / "sub-01_ses-2_from-orig_to-baseline_mode-image_xfm.txt"), atol=1e-5)
    source = AlignedSource(scan_bids(root), CFG)
    assert (source.num_subjects, source.max_scans, source.spatial_shape) == (2, 3, cohort.spatial_shape)
    assert source.subset([1]).subject_ids == ("02",) and source.metadata[0]["site"] == "A" and source.has_labels
    assert source.subject_ids == ("01", "02") and source.groups == ("CN", "AD") and source.affines.shape == (2, 4, 4)
    chunk = source.select([0])
    np.testing.assert_allclose(chunk.volumes[0, 1], read_bids(out).volumes[0, 1], atol=1e-4)  # normalised as read_bids would
    assert np.corrcoef(chunk.volumes[0, 0].ravel(), aligned.volumes[0, 2].ravel())[0, 1] > 0.98


@pytest.mark.xdist_group("align_cohorts")  # one worker builds the module fixture once
def test_align_dataset_is_atomic_and_rejects_bad_input(dataset, tmp_path, monkeypatch):
    root, _, _ = dataset
    with pytest.raises(InputError, match="dataset folder not found"):
        align_dataset(tmp_path / "missing", tmp_path / "a", CFG)
    (tmp_path / "exists").mkdir()
    with pytest.raises(InputError, match="already exists"):
        align_dataset(root, tmp_path / "exists", CFG)
    broken = tmp_path / "broken"
    shutil.copytree(root, broken)
    bad = broken / "derivatives" / "labels" / "sub-01" / "ses-2" / "anat" / "sub-01_ses-2_dseg.nii.gz"
    image, affine = load_image(bad)
    save_image(bad, image + 0.5, affine, overwrite=True)
    with pytest.raises(InputError, match="non-integer") as err:
        align_dataset(broken, tmp_path / "never", CFG)
    assert err.value.where == str(bad)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["broken", "exists"]  # nothing half-written

    import longbrain_jax.align.cohort as cohort_module

    monkeypatch.setattr(cohort_module, "save_transform", lambda *a, **k: (_ for _ in ()).throw(OSError("disk full")))
    with pytest.raises(OSError):
        align_dataset(root, tmp_path / "exists", CFG, overwrite=True)
    assert list((tmp_path / "exists").iterdir()) == []  # the old output untouched, no partial one
    assert sorted(p.name for p in tmp_path.iterdir()) == ["broken", "exists"]


@pytest.mark.xdist_group("align_cohorts")  # one worker builds the module fixture once
def test_dataset_without_follow_ups_still_writes(dataset, tmp_path):
    root, _, _ = dataset
    single = tmp_path / "single"
    shutil.copytree(root, single, ignore=shutil.ignore_patterns("sub-01", "participants.tsv"))
    out = align_dataset(single, tmp_path / "out", CFG)
    assert read_bids(out).subject_ids == ("02",)
    assert (out / "derivatives" / "longbrain-align" / "sub-02" / "ses-1" / "anat" / "sub-02_ses-1_from-orig_to-baseline_mode-image_xfm.txt").is_file()


@pytest.mark.xdist_group("align_cohorts")  # one worker builds the module fixture once
def test_cli_align_and_to_template(dataset, tmp_path):
    root, _, _ = dataset
    args = ["align", str(root), str(tmp_path / "out"), "--to-template", "--template-resolution", "4", "--chunk-size", "2", "--quiet"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    out = tmp_path / "out"
    tpl = load_template(4.0, 2)
    cohort = read_bids(out)  # every scan on the template grid
    np.testing.assert_allclose(cohort.affines, np.broadcast_to(tpl.affine, (2, 4, 4)))
    anat = out / "derivatives" / "longbrain-align" / "sub-01" / "ses-1" / "anat"
    to_template = load_transform(anat / "sub-01_ses-1_from-orig_to-MNI152NLin2009aSym_mode-image_xfm.txt")
    assert (anat.parent.parent / "ses-2" / "anat" / "sub-01_ses-2_from-orig_to-baseline_mode-image_xfm.txt").is_file()
    assert P.transform_error(to_template, np.eye(4), centre_of(tpl.t1, tpl.affine))[1] < 1.0  # the dataset is the template slice
    assert np.corrcoef(cohort.volumes[0, 0].ravel(), cohort.volumes[0, 2].ravel())[0, 1] > 0.98
    missing = CliRunner().invoke(main, ["align", str(tmp_path / "nope"), str(tmp_path / "out2")])
    assert missing.exit_code == 2
    assert missing.output.strip().count("\n") == 0 and "dataset folder not found" in missing.output
    assert CliRunner().invoke(main, ["align", str(root), str(tmp_path / "out3"), "--transform", "shear"]).exit_code == 2
