import gzip
import shutil
import warnings

import nibabel as nib
import numpy as np
import pytest

from longbrain_jax import Cohort, InputError
from longbrain_jax.io import (
    IntensityNorm,
    LoadConfig,
    derivative_path,
    load_displacement,
    load_image,
    normalise_intensity,
    read_bids,
    save_displacement,
    save_image,
    scan_bids,
    scan_path,
    write_bids,
    write_derivative,
)
from tests.helpers import affine_mm, make_subject

RAW = LoadConfig(normalise=None)


def _sessions(root, sub):
    return root / f"sub-{sub}" / f"sub-{sub}_sessions.tsv"


@pytest.mark.parametrize("shape", [(6, 5, 4), (9, 8)])
def test_round_trip_keeps_everything(tmp_path, shape):
    cohort = Cohort.from_subjects([make_subject(i, n, shape=shape) for i, n in enumerate([3, 1, 2])])
    root = write_bids(cohort, tmp_path / "ds")
    back = read_bids(root, RAW)
    assert back.spatial_shape == shape
    np.testing.assert_array_equal(back.volumes, cohort.volumes)
    np.testing.assert_array_equal(back.labels, cohort.labels)
    np.testing.assert_array_equal(back.mask, cohort.mask)
    np.testing.assert_array_equal(back.ages, cohort.ages)
    np.testing.assert_allclose(back.affines, cohort.affines)
    assert back.subject_ids == cohort.subject_ids and back.session_ids == cohort.session_ids
    assert back.groups == cohort.groups
    assert back.single_scan.tolist() == cohort.single_scan.tolist()
    img = nib.load(scan_path(root, "s0", "0"))
    np.testing.assert_allclose(img.affine, affine_mm())
    assert img.get_data_dtype() == np.float32


def test_scan_bids_indexes_without_voxels_and_loads_any_subset(dataset):
    root, cohort = dataset
    indexed = scan_bids(root, RAW)
    assert indexed.num_subjects == 3 and indexed.max_scans == 3 and indexed.spatial_shape == cohort.spatial_shape
    np.testing.assert_array_equal(indexed.mask, cohort.mask)
    np.testing.assert_allclose(indexed.ages, cohort.ages)
    full = read_bids(root, RAW)
    part = indexed.select([2, 0])
    assert part.subject_ids == (full.subject_ids[2], full.subject_ids[0])
    np.testing.assert_array_equal(part.volumes[1], full.volumes[0])
    np.testing.assert_array_equal(part.volumes[0, :1], full.volumes[2, :1])


def test_normalisation_per_scan(dataset):
    root, _ = dataset
    c = read_bids(root, LoadConfig(normalise=IntensityNorm(1, 99, -1, 1)))
    for i, t in zip(*np.nonzero(c.mask), strict=True):
        assert c.volumes[i, t].min() == -1.0 and c.volumes[i, t].max() == 1.0
    v = np.arange(101, dtype=np.float32)
    np.testing.assert_allclose(normalise_intensity(v, IntensityNorm(10, 90, 0, 1))[[10, 50, 90]], [0, 0.5, 1])
    with pytest.raises(ValueError):
        IntensityNorm(90, 10)


def test_follow_up_on_another_grid_is_resampled_onto_baseline(tmp_path):
    rng = np.random.default_rng(0)
    base = rng.random((8, 8, 6)).astype(np.float32)
    cohort = Cohort.from_subjects([make_subject(0, 2, shape=(8, 8, 6))])
    root = write_bids(cohort, tmp_path / "ds")
    a = affine_mm()
    save_image(scan_path(root, "s0", "0"), base, a, overwrite=True)
    # follow-up: the same image stored one voxel shifted in world space, on a bigger grid
    bigger = np.zeros((9, 8, 6), np.float32)
    bigger[1:] = base
    shifted = a.copy()
    shifted[0, 3] -= 2.0
    save_image(scan_path(root, "s0", "1"), bigger, shifted, overwrite=True)
    c = read_bids(root, LoadConfig(normalise=None, labels=False))
    np.testing.assert_allclose(c.volumes[0, 1], base, atol=1e-5)
    np.testing.assert_allclose(c.affines[0], a)


def test_common_grid_when_subject_grids_differ(tmp_path):
    c1 = Cohort.from_subjects([make_subject(0, 1, shape=(6, 6, 4))])
    root = write_bids(c1, tmp_path / "ds")
    c2 = Cohort.from_subjects([make_subject(1, 1, shape=(8, 6, 4))])
    other = write_bids(c2, tmp_path / "other")
    shutil.copytree(other / "sub-s1", root / "sub-s1")
    (root / "participants.tsv").write_text("participant_id\tgroup\nsub-s0\thealthy\nsub-s1\thealthy\n")
    with pytest.raises(InputError, match="common_grid"):
        read_bids(root, LoadConfig(normalise=None, labels=False))
    c = read_bids(root, LoadConfig(normalise=None, labels=False, common_grid=True))
    assert c.spatial_shape == (6, 6, 4)
    np.testing.assert_allclose(c.volumes[1], c2.volumes[0, :, :6], atol=1e-5)


def test_derivatives_layout_and_affine(tmp_path):
    path = write_derivative(tmp_path, "s0", "1", "jacdet", np.ones((4, 4, 3)), affine_mm())
    assert path == tmp_path / "derivatives/longbrain/sub-s0/ses-1/anat/sub-s0_ses-1_desc-jacdet.nii.gz"
    img = nib.load(path)
    np.testing.assert_allclose(img.affine, affine_mm())
    assert img.get_data_dtype() == np.float32
    with pytest.raises(InputError, match="already exists"):
        write_derivative(tmp_path, "s0", "1", "jacdet", np.ones((4, 4, 3)), affine_mm())
    with pytest.raises(ValueError, match="affine"):
        save_image(tmp_path / "x.nii.gz", np.ones((3, 3, 3)), None)


def test_displacement_round_trip_itk_convention(tmp_path):
    u = np.random.default_rng(0).standard_normal((4, 5, 3, 3)).astype(np.float32)
    p = save_displacement(tmp_path / "warp.nii.gz", u, affine_mm())
    img = nib.load(p)
    assert img.shape == (4, 5, 3, 1, 3) and img.header.get_intent()[0] == "vector"
    np.testing.assert_allclose(np.asarray(img.dataobj)[..., 0, 0], -u[..., 0])  # LPS flip of x
    back, aff = load_displacement(p)
    np.testing.assert_allclose(back, u)
    np.testing.assert_allclose(aff, affine_mm())


def test_labels_that_are_not_bids_labels_never_make_paths(tmp_path):
    for bad in ("../evil", "a_b", "x/y", ""):
        with pytest.raises(InputError, match="not a valid BIDS"):
            derivative_path(tmp_path, bad, "1", "jacdet")
        with pytest.raises(InputError, match="not a valid BIDS"):
            scan_path(tmp_path, "s0", bad)
    cohort = Cohort.from_subjects([make_subject(0, 1)])
    evil = Cohort(**{**cohort.__dict__, "subject_ids": ("../../escape",)})
    with pytest.raises(InputError, match="not a valid BIDS"):
        write_bids(evil, tmp_path / "ds")
    assert not (tmp_path / "ds").exists() and not (tmp_path.parent / "escape").exists()


def test_write_refuses_to_overwrite_and_is_atomic(dataset, tmp_path):
    root, cohort = dataset
    before = sorted(p.name for p in root.rglob("*"))
    with pytest.raises(InputError, match="already exists"):
        write_bids(cohort, root)
    write_bids(cohort, root, overwrite=True)
    assert sorted(p.name for p in root.rglob("*")) == before
    assert [p.name for p in tmp_path.iterdir()] == ["ds"]  # no partial folders left behind


# -- malformed inputs: each gets its own clear error naming the file ---------------------
def _break_image(root, how):
    path = scan_path(root, "s0", "1")
    if how == "missing":
        path.unlink()
        return "image for ses-1 not found", "sub-s0_sessions.tsv"
    if how == "unreadable":
        path.write_bytes(b"this is not a nifti file at all" * 20)
        return "cannot read as NIfTI", path.name
    if how == "truncated":
        raw = gzip.decompress(path.read_bytes())
        path.write_bytes(gzip.compress(raw[: len(raw) // 2]))
        return "truncated or corrupt", path.name
    if how == "4d":
        save_image(path, np.zeros((6, 5, 4, 2)), affine_mm(), overwrite=True)
        return "expected a 3D image", path.name
    if how == "nan":
        data = np.zeros((6, 5, 4), np.float32)
        data[1, 2, 3] = np.nan
        data[0, 0, 0] = np.inf
        save_image(path, data, affine_mm(), overwrite=True)
        return "2 voxel\\(s\\) are NaN or Inf", path.name
    raise AssertionError(how)


@pytest.mark.parametrize("how", ["missing", "unreadable", "truncated", "4d", "nan"])
def test_bad_images(dataset, how):
    root, _ = dataset
    message, filename = _break_image(root, how)
    with pytest.raises(InputError, match=message) as err:
        read_bids(root, RAW)
    assert filename in err.value.where
    with pytest.raises(InputError):
        load_image(scan_path(root, "s0", "1")) if how != "missing" else load_image(root / "nope.nii.gz")


@pytest.mark.parametrize(
    "table, message",
    [
        ("session_id\tage\nses-0\t\nses-1\t61\nses-2\t62\n", "age is missing"),
        ("session_id\tage\nses-0\tsixty\nses-1\t61\nses-2\t62\n", "'sixty' is not a number"),
        ("session_id\tage\nses-0\t60\nses-1\t60\nses-2\t62\n", "ses-0 and ses-1 have the same age"),
        ("session_id\tage\nses-0\t60\nses-0\t61\n", "listed twice"),
        ("session_id\tage\nses-0\t60\nses-9\t61\n", "image for ses-9 not found"),
        ("session_id\tage\nses-a_b\t60\n", "not a valid BIDS ses label"),
        ("session_id\tyears\nses-0\t60\n", "has no age column"),
    ],
)
def test_bad_sessions_tables(dataset, table, message):
    root, _ = dataset
    _sessions(root, "s0").write_text(table)
    with pytest.raises(InputError, match=message) as err:
        read_bids(root, RAW)
    assert "sub-s0_sessions.tsv" in err.value.where


def test_bad_participants_and_empty_cohort(dataset, tmp_path):
    root, _ = dataset
    _sessions(root, "s1").unlink()
    with pytest.raises(InputError, match="sessions file not found"):
        read_bids(root, RAW)
    (root / "participants.tsv").write_text("participant_id\nsub-s0\nsub-bad_label\n")
    with pytest.raises(InputError, match="not a valid BIDS sub label") as err:
        read_bids(root, RAW)
    assert err.value.where.endswith("participants.tsv:3")
    (root / "participants.tsv").write_text("participant_id\n")
    with pytest.raises(InputError, match="empty cohort"):
        read_bids(root, RAW)
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="empty cohort"):
        read_bids(tmp_path / "empty", RAW)
    with pytest.raises(InputError, match="dataset folder not found"):
        read_bids(tmp_path / "nowhere", RAW)


def test_participants_table_is_optional(dataset):
    root, cohort = dataset
    (root / "participants.tsv").unlink()
    c = read_bids(root, RAW)
    assert c.subject_ids == cohort.subject_ids and set(c.groups) == {""}


def test_single_scan_subject_is_kept_and_flagged(dataset):
    root, _ = dataset
    c = read_bids(root, RAW)
    assert c.single_scan.tolist() == [False, False, True]
    with pytest.warns(UserWarning, match="sub-s2"):
        c.longitudinal(method="registration")


def test_partial_labels_are_dropped_with_a_warning(dataset):
    root, _ = dataset
    next((root / "derivatives").rglob("sub-s1_ses-0_dseg.nii.gz")).unlink()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        c = read_bids(root, RAW)
    assert c.labels is None
    assert any("label maps missing" in str(w.message) for w in caught)


@pytest.mark.parametrize("shape", [(40, 40, 40), (7, 9), (50000,)])
def test_fast_percentiles_are_exact(shape):
    from longbrain_jax.io.intensity import percentiles

    rng = np.random.default_rng(1)
    qs = (0.0, 1.0, 37.5, 99.0, 100.0)
    for values in (rng.standard_normal(shape), np.round(rng.random(shape) * 5), np.zeros(shape)):
        values = values.astype(np.float32)
        np.testing.assert_array_equal(percentiles(values, qs), np.percentile(values, qs))


def test_gzip_bytes_is_standard_deterministic_gzip():
    import gzip

    from longbrain_jax.io.nifti import gzip_bytes

    raw = np.random.default_rng(0).normal(size=50_000).astype(np.float32).tobytes()
    for level in (0, 1, 6, 9):
        packed = gzip_bytes(raw, level)
        assert gzip.decompress(packed) == raw
        assert packed == gzip_bytes(raw, level)  # zero timestamp: same data, same bytes
    assert len(gzip_bytes(raw, 9)) <= len(gzip_bytes(raw, 0))
    with pytest.raises(ValueError, match="compresslevel"):
        gzip_bytes(raw, 10)
