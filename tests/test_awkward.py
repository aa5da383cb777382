"""Real data is awkward: every command either completes on an awkward dataset or fails cleanly.

The datasets come from `tests/awkward.py` (uneven scan counts, single-scan subjects,
follow-ups on other grids, oblique / flipped / permuted affines, odd sizes, scaled
integer voxels, 2D slices and 3D volumes, clinical group names in their own column,
spreadsheet-exported tables, sessions out of order, `.nii` beside `.nii.gz`, label maps
in derivatives). A command on one either exits 0 and writes its outputs, or exits 2
with one line `longbrain: error: ...` naming the file or subject, no traceback, and
no OUT folder left behind.

Network sizes and image shapes are fixed and tiny so each program compiles once (the
run's compilation cache is shared across tests and xdist workers).
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
import traceback

import nibabel as nib
import numpy as np
import pytest
from click.testing import CliRunner

from longbrain_jax.cli import main
from longbrain_jax.io import LoadConfig, read_bids
from tests.awkward import MALFORMED, SHORT, AwkwardConfig, make_awkward, make_malformed

# fmt: off
DATASETS = {
    # OASIS-2-like: axial slices, Nondemented / Demented / Converted in `Group`, M/F, MMSE / CDR / EDUC with n/a,
    # ses-MR1..., int16 / uint8 / float32 mixed, .nii and .nii.gz mixed, tables as a spreadsheet saves them
    "oasis2d": AwkwardConfig(seed=1, scans=(3, 1, 5, 2, 4), dtype="mixed", excel_tables=True),
    # ADNI-like: oblique, permuted and flipped volumes, CN / AD / MCI in `dx`, ses-M00 / ses-M18, uint8 with scale factors,
    # .nii only, aseg label maps under derivatives/aseg
    "adni3d": AwkwardConfig(
        seed=2, scans=(2, 4, 1, 3, 2), ndim=3, shape=(15, 17, 13), voxel_mm=(2.5, 2.25, 2.75), oblique_deg=12.0, dtype="uint8",
        extension=".nii", groups=("CN", "AD", "MCI"), group_column="dx", sex_column="sex", session_style="months", labels="aseg",
    ),
    # short follow-up: no subject has the 3 scans forecasting holds one out of
    "short2d": SHORT,
}
# fmt: on
CLASSES = {"oasis2d": ("Nondemented", "Demented"), "adni3d": ("CN", "AD"), "short2d": ("CN", "AD")}
# the datasets every command runs on (once read, short2d is a smaller oasis2d; it is refused by forecast below);
# fit, classify and forecast run on the 2D dataset only (their 3D programs are tested in their own files, and
# reading the 3D dataset, the part that is awkward, is shared with register and align)
PIPELINE = ("oasis2d", "adni3d")
PIPELINE_2D, PIPELINE_3D = ("oasis2d",), ("adni3d",)  # register on 2D is tested in tests/test_registration.py

TINY = {
    "fit": ["--width", "8", "--stream-layers", "2", "--combined-layers", "1", "--shared-steps", "2", "--steps", "4",
            "--fraction", "0.3", "--shared-fraction", "0.3"],
    "register": ["--width", "16", "--hidden-layers", "1", "--time-features", "4", "--steps", "4", "--patches", "2", "--patch-size", "4"],
    # the learned forecasters' programs are tested in tests/test_forecast.py; here what matters is reading the data
    "forecast": ["--method", "last_observation,voxelwise_linear", "--segmenter-steps", "2", "--no-curve"],
    "classify": ["--token-widths", "8,8", "--head-width", "8", "--epochs", "2", "--sfcn-channels", "4,4,4,4,4", "--streams", "P_time"],
}  # fmt: skip
# what each command writes when it succeeds
OUTPUTS = {
    "fit": ("weights.npz", "subjects.tsv", "metrics.tsv", "config.json"),
    "register": ("trajectories.tsv", "subjects.tsv", "config.json"),
    "forecast": ("report.md", "scores.tsv"),
    "classify": ("report.md", "results.json"),
}


@pytest.fixture(scope="module")
def datasets(tmp_path_factory):
    """name -> AwkwardDataset, written once per module (per xdist worker)."""
    base = tmp_path_factory.mktemp("awkward")
    made = {}

    def get(name):
        if name not in made:
            made[name] = make_awkward(base / name, DATASETS[name])
        return made[name]

    return get


def invoke(*args) -> object:
    return CliRunner().invoke(main, [str(a) for a in args])


def assert_clean(result, out=None, outputs=()) -> str:
    """Exit 0 with every output written, or exit 2 with one `longbrain: error:` line and no OUT; returns "ok" or the error."""
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise AssertionError("".join(traceback.format_exception(result.exception))) from result.exception
    assert "Traceback" not in result.output, result.output
    if result.exit_code == 0:
        for name in outputs:
            assert (out / name).exists(), f"{out / name} missing after success:\n{result.output}"
        return "ok"
    assert result.exit_code == 2, result.output
    errors = [line for line in result.output.splitlines() if line.startswith("longbrain: error:")]
    assert len(errors) == 1, result.output
    assert out is None or not out.exists(), (
        f"{out} was left behind by a failed run: {sorted(p.name for p in out.iterdir())}"
    )
    return errors[0]


# -- the generator ----------------------------------------------------------------------------
def _digest(root):
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def test_generator_is_deterministic_and_has_the_quirks(tmp_path):
    cfg = DATASETS["oasis2d"]
    a, b = make_awkward(tmp_path / "a", cfg), make_awkward(tmp_path / "b", cfg)
    assert _digest(a.root) == _digest(b.root)
    other = make_awkward(tmp_path / "c", AwkwardConfig(seed=cfg.seed + 1, scans=cfg.scans))
    assert _digest(other.root) != _digest(a.root)
    images = [p for subject in a.images for p in subject]
    assert {p.name.endswith(".gz") for p in images} == {True, False}  # .nii beside .nii.gz
    headers = [nib.load(p) for p in images]
    assert {str(h.get_data_dtype()) for h in headers} == {"int16", "uint8", "float32"}
    scaled = [h for h in headers if h.get_data_dtype() != np.float32]
    assert all(h.dataobj.slope != 1 and h.dataobj.inter != 0 for h in scaled)  # real scl_slope / scl_inter
    assert len({h.shape for h in headers}) > 3  # follow-ups on other grids
    assert all(h.shape[2] == 1 for h in headers)  # slices stored X x Y x 1
    assert len({nib.aff2axcodes(h.affine) for h in headers}) >= 3  # flipped and permuted axes
    oblique = [h for h in headers if np.abs(h.affine[:2, :2] / np.linalg.norm(h.affine[:2, :2], axis=0)).min() > 0.01]
    assert oblique  # rotated in-plane
    assert (a.root / "participants.tsv").read_bytes().startswith(b"\xef\xbb\xbf")  # a spreadsheet's byte-order mark
    sub = a.subject_ids[2]
    table = (a.root / f"sub-{sub}" / f"sub-{sub}_sessions.tsv").read_text(encoding="utf-8-sig")
    listed = [float(line.split("\t")[1]) for line in table.splitlines()[1:] if line.strip()]
    assert listed != sorted(listed)  # sessions out of order


def test_heads_shrink_with_age_and_follow_ups_land_on_the_baseline(datasets):
    """Read back, every follow-up (on its own grid and orientation) matches its baseline through the affines."""
    for name in ("oasis2d", "adni3d"):
        ds = datasets(name)
        cohort = read_bids(ds.root, LoadConfig(normalise=None, group_column=ds.cfg.group_column))
        assert cohort.subject_ids == ds.subject_ids and cohort.groups == ds.groups
        assert cohort.session_ids == ds.session_ids  # chronological, whatever the table's order
        np.testing.assert_allclose(cohort.ages[cohort.mask], [a for ages in ds.ages for a in ages], rtol=1e-6)
        assert cohort.spatial_shape == ds.cfg.shape and cohort.num_scans.tolist() == list(ds.cfg.scans)
        assert cohort.volumes.max() > 700  # scale factors applied: intensities, not stored integers
        for i in range(cohort.num_subjects):
            base = cohort.volumes[i, 0]
            heads = [(cohort.volumes[i, t] > 400).sum() for t in range(cohort.num_scans[i])]
            inside = base > 400  # compared inside the head, where the structure is
            for t in range(1, cohort.num_scans[i]):
                follow = cohort.volumes[i, t]
                r = np.corrcoef(follow[inside], base[inside])[0, 1]
                flipped = [np.flip(follow, axis)[inside] for axis in range(follow.ndim)]
                mirrored = max(np.corrcoef(f, base[inside])[0, 1] for f in flipped)
                assert r > 0.97 and r > mirrored + 0.04, (name, i, t, r, mirrored)
            assert heads[-1] <= heads[0] * 1.02, heads  # the head shrinks (slightly) with age
        if ds.cfg.labels:
            assert cohort.labels is not None and {4, 17, 2} <= set(np.unique(cohort.labels).tolist())
        if ds.cfg.sex_column:
            assert set(cohort.sexes) <= {"M", "F"}


# -- every command on every awkward dataset ------------------------------------------------------
@pytest.mark.parametrize("name", list(DATASETS))
def test_inspect(datasets, name):
    ds = datasets(name)
    result = invoke("inspect", ds.root, "--group-column", ds.cfg.group_column)
    assert assert_clean(result) == "ok", result.output
    assert f"{len(ds.cfg.scans)} subjects, {sum(ds.cfg.scans)} scans" in result.output
    assert f"single-scan subjects: {ds.cfg.scans.count(1)}" in result.output
    for group in set(ds.groups):
        assert f"'{group}': {ds.groups.count(group)}" in result.output


@pytest.mark.slow
@pytest.mark.parametrize("name", PIPELINE_3D)
def test_register(datasets, name, tmp_path):
    ds = datasets(name)
    out = tmp_path / "register"
    result = invoke("register", ds.root, out, *TINY["register"], "--group-column", ds.cfg.group_column, "--quiet")
    assert assert_clean(result, out, OUTPUTS["register"]) == "ok", result.output
    baseline = nib.load(ds.images[0][0])
    sub, ses = ds.subject_ids[0], ds.session_ids[0][0]
    jac = nib.load(out / f"sub-{sub}" / "anat" / f"sub-{sub}_ses-{ses}_desc-jacdet.nii.gz")
    np.testing.assert_allclose(jac.affine, baseline.affine, atol=1e-4)  # the (oblique, permuted) baseline's affine
    assert jac.shape[: ds.cfg.ndim] == ds.cfg.shape


@pytest.mark.slow
@pytest.mark.parametrize("name", PIPELINE_2D)
def test_forecast(datasets, name, tmp_path):
    ds = datasets(name)
    out = tmp_path / "forecast"
    args = [*TINY["forecast"], "--group-column", ds.cfg.group_column, "--quiet"]
    result = invoke("forecast", ds.root, out, *args)
    assert assert_clean(result, out, OUTPUTS["forecast"]) == "ok", result.output
    scores = (out / "scores.tsv").read_text().splitlines()
    assert len(scores) > 1
    if ds.cfg.labels:
        assert "volume_error_pct_hippocampus" in scores[0]


@pytest.mark.slow
@pytest.mark.parametrize("name", PIPELINE)
def test_align(datasets, name, tmp_path):
    if "align" not in main.commands:
        pytest.skip("no `longbrain align` command yet")
    ds = datasets(name)
    out = tmp_path / "align"
    params = {p.name for p in main.commands["align"].params}
    tiny = {"iterations": "2", "samples": "256", "group_column": ds.cfg.group_column}
    args = [arg for key, value in tiny.items() if key in params for arg in ("--" + key.replace("_", "-"), value)]
    result = invoke("align", ds.root, out, *args, *(["--quiet"] if "quiet" in params else []))
    assert assert_clean(result, out) == "ok", result.output


def test_forecast_refuses_a_dataset_without_held_out_scans(datasets, tmp_path):
    ds = datasets("short2d")
    assert ds.longitudinal == 0
    out = tmp_path / "forecast"
    error = assert_clean(invoke("forecast", ds.root, out, *TINY["forecast"], "--quiet"), out)
    assert "no held-out scans" in error and str(ds.root) in error, error


# -- broken datasets ---------------------------------------------------------------------------
@pytest.mark.parametrize("kind", MALFORMED)
def test_inspect_names_the_fault(kind, tmp_path):
    bad = make_malformed(tmp_path / kind, kind)
    result = invoke("inspect", bad.root, *bad.args)
    error = assert_clean(result)
    assert error != "ok", f"{kind}: accepted\n{result.output}"
    assert bad.where in error, (kind, error)
    assert re.search(bad.problem, error), (kind, error)


GRIDS = dataclasses.replace(DATASETS["oasis2d"], subject_grids=True)  # oasis2d's sizes: its programs


@pytest.mark.parametrize("command", ["inspect", "fit", "register", "forecast", "classify"])
def test_grids_that_differ_between_subjects_need_common_grid(command, tmp_path):
    """Every command that reads a dataset offers the --common-grid its error asks for."""
    ds = make_awkward(tmp_path / "grids", GRIDS)
    args = [ds.root, tmp_path / "out"] if command != "inspect" else [ds.root]  # classify fits a BIDS SOURCE first
    error = assert_clean(invoke(command, *args), tmp_path / "out")
    assert f"sub-{ds.subject_ids[1]}_ses-{ds.session_ids[1][0]}_T1w" in error and "--common-grid" in error, error
    assert sorted(p.name for p in tmp_path.iterdir()) == ["grids"]
    assert "common_grid" in {p.name for p in main.commands[command].params}
    if command == "inspect":
        result = invoke("inspect", ds.root, "--common-grid")
        assert assert_clean(result) == "ok" and f"2D grid {ds.cfg.shape}" in result.output, result.output


@pytest.mark.slow
def test_fit_then_classify(tmp_path):
    """oasis2d with every subject's baseline on a grid of its own: fit with --common-grid, then classify
    with the dataset's own group names."""
    ds = make_awkward(tmp_path / "grids", GRIDS)
    fit, out = tmp_path / "fit", tmp_path / "classify"
    result = invoke("fit", ds.root, fit, *TINY["fit"], "--common-grid", "--group-column", ds.cfg.group_column, "--quiet")
    assert assert_clean(result, fit, OUTPUTS["fit"]) == "ok", result.output
    assert len((fit / "subjects.tsv").read_text().splitlines()) == 1 + len(ds.cfg.scans)
    negative, positive = CLASSES["oasis2d"]
    args = [*TINY["classify"], "--negative", negative, "--positive", positive, "--common-grid", "--group-column", ds.cfg.group_column, "--quiet"]
    result = invoke("classify", fit, out, *args)
    assert assert_clean(result, out, OUTPUTS["classify"]) == "ok", result.output
    report = (out / "report.md").read_text()
    assert f"Classes: {negative} (negative, 0) vs {positive} (positive, 1)" in report and "SFCN" in report


@pytest.mark.slow
@pytest.mark.parametrize("command", ["fit", "register", "forecast"])
def test_a_broken_image_found_while_streaming_leaves_nothing_behind(command, tmp_path):
    """NaN voxels pass the header check (pass one) and are found while a command reads voxels (pass two).

    (`classify` on a BIDS dataset fits it first with `fit_cohort`, the `fit` case here.)
    """
    bad = make_malformed(tmp_path / "bad", "nan_voxels", DATASETS["oasis2d"])  # oasis2d's sizes: its programs
    out = tmp_path / "out"
    error = assert_clean(invoke(command, bad.root, out, *TINY[command], "--quiet"), out)
    assert bad.where in error and "NaN" in error, error
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad"], "a partial output was left behind"


def test_spreadsheet_tables_with_trailing_fields(tmp_path):
    ds = make_awkward(tmp_path / "x", AwkwardConfig(seed=6, scans=(2, 1), excel_tables=True, followup_grids=False))
    cohort = read_bids(ds.root, LoadConfig(normalise=None))
    assert cohort.subject_ids == ds.subject_ids and cohort.metadata[0]["MMSE"] and "" not in cohort.metadata[0]
    table = ds.root / "participants.tsv"
    lines = table.read_text(encoding="utf-8-sig").splitlines()
    table.write_text("\n".join([lines[0], lines[1] + "unexpected", *lines[2:]]) + "\n")  # a value past the last column
    error = assert_clean(invoke("inspect", ds.root))
    assert "participants.tsv:2" in error and "more field(s) than the header" in error, error
