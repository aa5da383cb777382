"""Small, awkward longitudinal BIDS datasets, as real data comes, for tests.

Real datasets (OASIS-2, ADNI, a clinic's export) are not the simulator's tidy output:
uneven scan counts, single-scan subjects, follow-ups on other grids and in other head
positions, oblique and non-RAS affines, odd image sizes, integer voxels with NIfTI scale
factors, 2D slices, clinical group names in a column of their own, extra and partly
missing participant columns, sessions listed out of order, `ses-M24`-style labels,
`.nii` beside `.nii.gz`, label maps for some datasets only. `make_awkward` writes such a
dataset, every quirk switchable in `AwkwardConfig`, deterministically from `seed`;
`make_malformed` writes the broken variants a reader must reject with one line naming
the file.

The images are a head phantom defined in world (RAS mm) coordinates and sampled on each
scan's own grid through its affine, so a follow-up on another grid shows the same head
(resampling through the affines brings it back onto the baseline): a bright ellipsoid
(white matter inside a darker cortical shell) with dark ventricles and two small
hippocampi on a dark background; with age the head shrinks, the hippocampi shrink and
the ventricles grow, faster in the dementia groups.

    from tests.awkward import AwkwardConfig, make_awkward, make_malformed, MALFORMED
"""

from __future__ import annotations

import csv
import dataclasses
import gzip
import json
import math
from pathlib import Path

import nibabel as nib
import numpy as np

# group name -> (head shrink %/yr, ventricle growth %/yr): the dementia-like groups atrophy faster
_RATES = {
    "nondemented": (0.15, 1.0), "cn": (0.15, 1.0), "healthy": (0.15, 1.0),
    "converted": (0.25, 2.0), "mci": (0.25, 2.0),
    "demented": (0.35, 3.0), "ad": (0.35, 3.0), "dementia": (0.35, 3.0),
}  # fmt: skip


@dataclasses.dataclass(frozen=True)
class AwkwardConfig:
    """What an awkward dataset looks like; every quirk is a switch.

    **Arguments:**

    - `seed`: everything random is drawn from it (same config, same bytes).
    - `scans`: scans per subject (1 to 6); its length is the number of subjects.
    - `ndim`: 2 (axial slices stored X x Y x 1) or 3 (volumes).
    - `shape`: the baseline grid as stored (after `permute`), shared by every subject's baseline.
    - `voxel_mm`: the baseline voxel sizes along the stored axes (anisotropic is fine).
    - `slice_mm`: thickness of a 2D slice.
    - `followup_grids`: follow-ups on other shapes, voxel sizes, orientations and head positions.
    - `oblique_deg`: largest rotation of a grid (in-plane for 2D; about every axis for 3D); 0: axis-aligned.
    - `flip`: axes stored reversed (non-RAS, e.g. LAS / LPI); drawn per subject and scan.
    - `permute`: axes stored in another order than x, y, z (dataset-wide for baselines, any for follow-ups).
    - `dtype`: "float32", "int16" or "uint8" (integers with scl_slope / scl_inter), or "mixed" (any per scan).
    - `groups`: group names dealt to the subjects in turn.
    - `group_column`: the participants.tsv column holding them (e.g. "Group", "dx").
    - `sex_column`: e.g. "M/F" or "sex" (None: no such column).
    - `extra_columns`: MMSE, CDR, EDUC, SES, eTIV in participants.tsv with some n/a values,
      and extra sessions.tsv columns.
    - `excel_tables`: tables as spreadsheets save them (UTF-8 byte-order mark, CRLF line
      ends, a trailing tab on every row, a last row of empty fields).
    - `subject_grids`: subjects' baselines on grids of their own (shape and voxel size), so
      the dataset needs `--common-grid`.
    - `shuffle_sessions`: sessions.tsv rows not in chronological order.
    - `session_style`: "months" (ses-M00, ses-M18, ADNI), "mr" (ses-MR1, OASIS) or "visit" (ses-1).
    - `extension`: ".nii.gz", ".nii" or "mixed" (per scan).
    - `labels`: derivatives pipeline holding aseg-coded label maps of every scan (None: no labels).
    - `age_range`: baseline ages are drawn inside it; follow-ups 0.6 to 2.5 years apart.
    """

    seed: int = 0
    scans: tuple[int, ...] = (3, 1, 5, 2)
    ndim: int = 2
    shape: tuple[int, ...] = (23, 29)
    voxel_mm: tuple[float, ...] = (1.75, 1.5)
    slice_mm: float = 4.0
    followup_grids: bool = True
    oblique_deg: float = 10.0
    flip: bool = True
    permute: bool = True
    dtype: str = "int16"
    groups: tuple[str, ...] = ("Nondemented", "Demented", "Converted")
    group_column: str = "Group"
    sex_column: str | None = "M/F"
    extra_columns: bool = True
    excel_tables: bool = False
    subject_grids: bool = False
    shuffle_sessions: bool = True
    session_style: str = "mr"
    extension: str = "mixed"
    labels: str | None = None
    age_range: tuple[float, float] = (60.0, 90.0)

    def __post_init__(self):
        if self.ndim not in (2, 3) or len(self.shape) != self.ndim or len(self.voxel_mm) != self.ndim:
            raise ValueError(f"shape {self.shape} and voxel_mm {self.voxel_mm} need ndim={self.ndim} entries")
        if not self.scans or not all(1 <= n <= 6 for n in self.scans):
            raise ValueError(f"scans per subject must be 1 to 6, got {self.scans}")
        if self.dtype not in ("float32", "int16", "uint8", "mixed"):
            raise ValueError(f"dtype {self.dtype!r}")
        if self.extension not in (".nii.gz", ".nii", "mixed"):
            raise ValueError(f"extension {self.extension!r}")
        if self.session_style not in ("months", "mr", "visit"):
            raise ValueError(f"session_style {self.session_style!r}")

    @property
    def num_subjects(self) -> int:
        return len(self.scans)


@dataclasses.dataclass(frozen=True)
class AwkwardDataset:
    """What `make_awkward` wrote: the folder and what a test needs to know about it."""

    root: Path
    cfg: AwkwardConfig
    subject_ids: tuple[str, ...]
    session_ids: tuple[tuple[str, ...], ...]  # chronological
    ages: tuple[tuple[float, ...], ...]  # chronological
    groups: tuple[str, ...]
    images: tuple[tuple[Path, ...], ...]  # chronological

    @property
    def longitudinal(self) -> int:
        """Subjects with >= 3 scans (what forecasting holds scans out of)."""
        return sum(n >= 3 for n in self.cfg.scans)


# -- geometry -------------------------------------------------------------------------------
def _rotation(rng: np.random.Generator, max_deg: float, ndim: int) -> np.ndarray:
    """A rotation of at most `max_deg` about each axis (only about z for 2D slices)."""
    if max_deg <= 0:
        return np.eye(3)
    ax, ay, az = np.deg2rad(rng.uniform(-max_deg, max_deg, 3))
    if ndim == 2:
        ax = ay = 0.0
    rx = np.array([[1, 0, 0], [0, np.cos(ax), -np.sin(ax)], [0, np.sin(ax), np.cos(ax)]])
    ry = np.array([[np.cos(ay), 0, np.sin(ay)], [0, 1, 0], [-np.sin(ay), 0, np.cos(ay)]])
    rz = np.array([[np.cos(az), -np.sin(az), 0], [np.sin(az), np.cos(az), 0], [0, 0, 1]])
    return rz @ ry @ rx


def _grid_affine(shape3, voxel3, perm, flips, rotation, centre) -> np.ndarray:
    """The affine of a grid whose stored axis a runs along world axis perm[a] (reversed where flipped),
    rotated by `rotation` about the grid centre, which sits at world point `centre`."""
    m = np.zeros((3, 3))
    for a in range(3):
        m[perm[a], a] = (-1.0 if flips[a] else 1.0) * voxel3[a]
    m = rotation @ m
    affine = np.eye(4)
    affine[:3, :3] = m
    affine[:3, 3] = np.asarray(centre) - m @ ((np.asarray(shape3) - 1) / 2)
    return affine


def _world(shape3, affine) -> np.ndarray:
    """(*shape3, 3) world mm of every voxel centre."""
    index = np.stack(np.meshgrid(*[np.arange(n, dtype=np.float64) for n in shape3], indexing="ij"), -1)
    return index @ affine[:3, :3].T + affine[:3, 3]


# -- the head phantom --------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class _Head:
    centre: np.ndarray  # world mm
    radii: np.ndarray  # head ellipsoid half-axes (mm) at age 60
    texture: np.ndarray  # (3, 3) wave vectors of a faint subject-specific texture
    phase: np.ndarray  # (3,)
    shrink: float  # fraction per year
    ventricle_growth: float  # fraction per year


def _sigmoid(x):
    return 0.5 * (1.0 + np.tanh(0.5 * x))


def _phantom(head: _Head, xyz: np.ndarray, age: float) -> tuple[np.ndarray, np.ndarray]:
    """Intensity (about 0 ... 1000) and aseg-coded labels of `head` at `age` at world points `xyz` (..., 3)."""
    years = age - 60.0
    radii = head.radii * (1.0 - head.shrink * years)
    q = (xyz - head.centre) / radii
    r = np.sqrt((q**2).sum(-1))  # 1 on the head's surface
    edge = 0.8 / radii.mean()  # about 0.8 mm of partial volume
    ventricle_radii = np.array([0.16, 0.34, 0.18]) * (1.0 + head.ventricle_growth * years)
    rv = np.sqrt((((q - np.array([-0.12, 0.1, 0.1])) / ventricle_radii) ** 2).sum(-1))
    hippocampus_radii = np.array([0.1, 0.2, 0.1]) * (1.0 - 1.5 * head.shrink * years)
    hippo = [np.sqrt((((q - np.array([s * 0.42, -0.15, 0.0])) / hippocampus_radii) ** 2).sum(-1)) for s in (-1, 1)]
    rh = np.minimum(*hippo)
    inside, wm = _sigmoid((1.0 - r) / edge), _sigmoid((0.8 - r) / edge)
    texture = 40.0 * np.sin(xyz @ head.texture.T + head.phase).mean(-1)
    image = inside * (620.0 + texture) + wm * 280.0  # cortex about 620, white matter about 900
    image = image - _sigmoid((1.0 - rv) / (4 * edge)) * (image - 180.0)  # ventricles about 180
    image = image - _sigmoid((1.0 - rh) / (4 * edge)) * (image - 560.0)  # hippocampi about 560
    left = (xyz[..., 0] - head.centre[0]) < 0
    labels = np.where(r < 1.0, np.where(left, 1001, 2001), 0)
    labels = np.where(r < 0.8, np.where(left, 2, 41), labels)
    labels = np.where(rv < 1.0, np.where(left, 4, 43), labels)
    labels = np.where(rh < 1.0, np.where(left, 17, 53), labels)
    return image + 20.0, labels.astype(np.int16)


# -- writing ------------------------------------------------------------------------------------
def _write_image(path: Path, data: np.ndarray, affine: np.ndarray, dtype: str) -> None:
    """Write `data` as float32, or as integers (int16 / uint8) with a scl_slope and a non-zero scl_inter.

    nibabel rewrites the scale factors of an integer array when saving it, so the header
    fields are set in the bytes (offsets 112 and 116 of the NIfTI-1 header).
    """
    if dtype == "float32":
        img = nib.Nifti1Image(data.astype(np.float32), affine)
        scale = None
    else:
        top = float(np.iinfo(np.dtype(dtype)).max)
        inter = float(data.min()) - 37.5  # every stored value is >= 0 so uint8 works; the intercept is never 0
        slope = (float(data.max()) - inter) / top
        raw = np.clip(np.round((data - inter) / slope), 0, top).astype(dtype)
        img = nib.Nifti1Image(raw, affine)
        scale = np.array([slope, inter], "<f4")
    img.header.set_xyzt_units("mm", "sec")
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    raw_bytes = bytearray(img.to_bytes())
    if scale is not None:
        raw_bytes[112:120] = scale.tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(bytes(raw_bytes), mtime=0) if path.name.endswith(".gz") else bytes(raw_bytes))


def _write_labels(path: Path, labels: np.ndarray, affine: np.ndarray) -> None:
    img = nib.Nifti1Image(labels.astype(np.int16), affine)
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(img, path)


def _write_tsv(path: Path, columns: list[str], rows: list[dict], excel: bool = False) -> None:
    """A TSV table; `excel`: as a spreadsheet exports it (byte-order mark, CRLF, a trailing tab, a last row of empty fields)."""
    with open(path, "w", newline="", encoding="utf-8-sig" if excel else "utf-8") as f:
        w = csv.writer(f, delimiter="\t", lineterminator="\r\n" if excel else "\n")
        w.writerow(columns)
        for row in rows:
            w.writerow([row.get(c, "n/a") for c in columns] + ([""] if excel else []))
        if excel:
            w.writerow([""] * len(columns))


def _session_labels(cfg: AwkwardConfig, ages: list[float]) -> list[str]:
    if cfg.session_style == "months":
        return [f"M{round(12 * (a - ages[0])):02d}" for a in ages]
    if cfg.session_style == "mr":
        return [f"MR{t + 1}" for t in range(len(ages))]
    return [str(t + 1) for t in range(len(ages))]


def make_awkward(root: str | Path, cfg: AwkwardConfig = AwkwardConfig()) -> AwkwardDataset:
    """Write an awkward longitudinal BIDS dataset to `root` (which must not exist) as `cfg` says."""
    root = Path(root)
    root.mkdir(parents=True)
    rng = np.random.default_rng(cfg.seed)
    d = cfg.ndim
    shape3 = tuple(cfg.shape) + (1,) * (3 - d)
    voxel3 = tuple(cfg.voxel_mm) + ((cfg.slice_mm,) if d == 2 else ())
    movable = list(range(d))  # world axes a grid may be permuted / flipped along (a slice stays axial)
    perm0 = list(range(3))
    if cfg.permute:
        perm0[:d] = list(np.roll(movable, 1))  # e.g. stored (y, x) or (z, x, y)
    fov = np.zeros(3)  # world field of view of the baseline grid
    for a in range(3):
        fov[perm0[a]] = shape3[a] * voxel3[a]
    (root / "dataset_description.json").write_text(
        json.dumps({"Name": "awkward", "BIDSVersion": "1.9.0"}, indent=2) + "\n"
    )
    if cfg.labels:
        deriv = root / "derivatives" / cfg.labels
        deriv.mkdir(parents=True)
        description = {
            "Name": "labels",
            "BIDSVersion": "1.9.0",
            "DatasetType": "derivative",
            "GeneratedBy": [{"Name": "awkward"}],
        }
        (deriv / "dataset_description.json").write_text(json.dumps(description, indent=2) + "\n")

    subject_ids, session_ids, all_ages, groups, images, participants = [], [], [], [], [], []
    for i, n_scans in enumerate(cfg.scans):
        if cfg.session_style == "mr":  # OASIS-like labels, with and without a prefix
            sub = f"{['OAS2', 'S', ''][i % 3]}{i + 1:04d}"
        else:  # ADNI-like (002S0295), the underscore dropped as BIDS labels must
            sub = f"{i + 1:03d}S{rng.integers(1000, 9999)}"
        group = cfg.groups[i % len(cfg.groups)]
        shrink, ventricles = _RATES.get(group.lower(), (0.2, 1.5))
        size = rng.uniform(0.9, 1.0)
        centre = rng.uniform(-2.0, 2.0, 3) * np.array([1, 1, 1 if d == 3 else 0])
        radii = 0.36 * size * fov
        if d == 2:
            radii[2] = 14.0  # the slice cuts the head near its middle
        head = _Head(
            centre=centre,
            radii=radii,
            texture=rng.normal(0, 0.35, (3, 3)),
            phase=rng.uniform(0, 2 * np.pi, 3),
            shrink=shrink / 100,
            ventricle_growth=ventricles / 100,
        )
        age0 = round(float(rng.uniform(*cfg.age_range)), 1)
        ages = [age0]
        for _ in range(n_scans - 1):
            ages.append(round(ages[-1] + float(rng.uniform(0.6, 2.5)), 2))
        sessions = _session_labels(cfg, ages)
        rows, paths = [], []
        for t, (ses, age) in enumerate(zip(sessions, ages, strict=True)):
            flips = [bool(cfg.flip and rng.random() < 0.5) if a < d else False for a in range(3)]
            if (t == 0 and not (cfg.subject_grids and i > 0)) or (t > 0 and not cfg.followup_grids):
                perm, shape_t, voxel_t = perm0, shape3, voxel3
                rotation = _rotation(rng, cfg.oblique_deg / 2, d)  # a subject's baseline: mildly oblique
                shift = np.zeros(3)
            else:  # another scanner or protocol: own voxel sizes, field of view, orientation, head position
                perm = list(range(3))
                if t == 0:
                    perm = perm0  # a baseline keeps the dataset's storage order
                elif cfg.permute:
                    perm[:d] = list(rng.permutation(movable))
                world_voxel = (
                    np.array([voxel3[perm0.index(w)] for w in range(3)])
                    * np.r_[rng.uniform(0.8, 1.25, d), np.ones(3 - d)]
                )
                world_fov = fov * np.r_[rng.uniform(1.0, 1.15, d), np.ones(3 - d)]
                voxel_t = tuple(float(world_voxel[perm[a]]) for a in range(3))
                shape_t = tuple(math.ceil(world_fov[perm[a]] / voxel_t[a]) if a < d else 1 for a in range(3))
                rotation = _rotation(rng, cfg.oblique_deg, d)
                shift = rng.uniform(-2.0, 2.0, 3) * np.r_[np.ones(d), np.zeros(3 - d)]
                if d == 2:
                    shift[2] = rng.uniform(-0.5, 0.5)  # the slice is placed again, not quite at the same height
            affine = _grid_affine(shape_t, voxel_t, perm, flips, rotation, shift)
            image, labels = _phantom(head, _world(shape_t, affine), age)
            image = image * rng.uniform(0.85, 1.15) + rng.normal(0.0, 12.0, image.shape)
            image = np.maximum(image, 0.0)
            dtype = cfg.dtype if cfg.dtype != "mixed" else str(rng.choice(["float32", "int16", "uint8"]))
            ext = cfg.extension if cfg.extension != "mixed" else str(rng.choice([".nii.gz", ".nii"]))
            anat = root / f"sub-{sub}" / f"ses-{ses}" / "anat"
            path = anat / f"sub-{sub}_ses-{ses}_T1w{ext}"
            _write_image(path, image, affine, dtype)
            paths.append(path)
            if cfg.labels:
                deriv_anat = root / "derivatives" / cfg.labels / f"sub-{sub}" / f"ses-{ses}" / "anat"
                _write_labels(deriv_anat / f"sub-{sub}_ses-{ses}_dseg.nii.gz", labels, affine)
            row = {"session_id": f"ses-{ses}", "age": f"{age:g}"}
            if cfg.extra_columns:
                row |= {
                    "MR_delay_days": str(round(365.25 * (age - ages[0]))),
                    "scanner": str(rng.choice(["Siemens Vision 1.5T", "GE 3T"])),
                }
                row["MMSE"] = "n/a" if rng.random() < 0.3 else str(int(rng.integers(15, 31)))
            rows.append(row)
        order = rng.permutation(len(rows)) if cfg.shuffle_sessions else np.arange(len(rows))
        if cfg.shuffle_sessions and len(rows) > 1 and np.all(order == np.arange(len(rows))):
            order = order[::-1]  # never in chronological order by chance
        columns = ["session_id", "age"] + (["MR_delay_days", "scanner", "MMSE"] if cfg.extra_columns else [])
        _write_tsv(root / f"sub-{sub}" / f"sub-{sub}_sessions.tsv", columns, [rows[k] for k in order], cfg.excel_tables)
        participant = {"participant_id": f"sub-{sub}", cfg.group_column: group}
        if cfg.sex_column:
            participant[cfg.sex_column] = str(rng.choice(["M", "F"]))
        if cfg.extra_columns:
            participant |= {
                "Hand": "R",
                "Age": f"{age0:g}",
                "EDUC": "n/a" if rng.random() < 0.3 else str(int(rng.integers(6, 23))),
                "SES": "n/a" if rng.random() < 0.4 else str(int(rng.integers(1, 6))),
                "MMSE": str(int(rng.integers(15, 31))),
                "CDR": str(float(rng.choice([0, 0.5, 1, 2]))),
                "eTIV": str(int(rng.integers(1100, 2000))),
            }
        participants.append(participant)
        subject_ids.append(sub)
        session_ids.append(tuple(sessions))
        all_ages.append(tuple(ages))
        groups.append(group)
        images.append(tuple(paths))
    columns = list(dict.fromkeys(k for p in participants for k in p))
    _write_tsv(root / "participants.tsv", columns, participants, cfg.excel_tables)
    return AwkwardDataset(
        root, cfg, tuple(subject_ids), tuple(session_ids), tuple(all_ages), tuple(groups), tuple(images)
    )


# -- malformed variants -----------------------------------------------------------------------
MALFORMED = (
    "truncated_gzip",
    "nan_voxels",
    "missing_image",
    "non_numeric_age",
    "duplicate_age",
    "volume_among_slices",
    "volume_first_among_slices",
    "parent_participant_id",
    "missing_group_column",
    "empty_participants",
)


@dataclasses.dataclass(frozen=True)
class Malformed:
    """A broken dataset: what a reader must name (`where`, a substring of the error's file) and say (`problem`, a regex)."""

    root: Path
    kind: str
    where: str
    problem: str
    args: tuple[str, ...] = ()  # extra CLI options that expose the fault (e.g. --group-column)


def _rewrite_tsv(path: Path, edit) -> None:
    """Read a table written by `_write_tsv`, apply `edit` to its rows (in age order, if it has ages), write it plainly."""
    with open(path, newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f, delimiter="\t")
        columns = [c for c in reader.fieldnames if c]
        rows = [{c: row[c] for c in columns} for row in reader if any(row[c] for c in columns)]
    rows = sorted(rows, key=lambda r: float(r["age"])) if "age" in columns else rows
    edit(rows)
    _write_tsv(path, columns, rows)


#: A short 2D dataset (no subject has 3 scans) of float32 .nii.gz slices: the base of `make_malformed`.
SHORT = AwkwardConfig(
    seed=3, scans=(2, 1, 2, 2), dtype="float32", extension=".nii.gz", groups=("CN", "AD"), group_column="Diagnosis",
    sex_column="sex", session_style="visit", extra_columns=False,
)  # fmt: skip


def make_malformed(root: str | Path, kind: str, cfg: AwkwardConfig = SHORT) -> Malformed:
    """Write the dataset `cfg` (float32 .nii.gz slices; its first subject needs 2 scans) at `root`
    with one fault of `kind` (one of `MALFORMED`), placed in the first subject's follow-up."""
    if kind not in MALFORMED:
        raise ValueError(f"unknown malformed kind {kind!r}; one of {MALFORMED}")
    ds = make_awkward(root, cfg)
    root = ds.root
    sub = ds.subject_ids[0]
    table = root / f"sub-{sub}" / f"sub-{sub}_sessions.tsv"
    image = ds.images[0][1]
    if kind == "truncated_gzip":
        raw = image.read_bytes()
        image.write_bytes(raw[: len(raw) // 2])
        return Malformed(root, kind, image.name, "truncated or corrupt")
    if kind == "nan_voxels":
        img = nib.load(image)
        data = np.asarray(img.dataobj, np.float32).copy()
        data.flat[data.size // 2] = np.nan
        _write_image(image, data, img.affine, "float32")
        return Malformed(root, kind, image.name, r"1 voxel\(s\) are NaN or Inf")
    if kind == "missing_image":
        image.unlink()
        _rewrite_tsv(table, lambda rows: None)  # in age order: the follow-up's row is line 3
        return Malformed(root, kind, f"{table.name}:3", f"image for ses-{ds.session_ids[0][1]} not found")
    if kind == "non_numeric_age":
        _rewrite_tsv(table, lambda rows: rows[1].update(age="seventy"))
        return Malformed(root, kind, f"{table.name}:3", "age 'seventy' is not a number")
    if kind == "duplicate_age":
        _rewrite_tsv(table, lambda rows: rows[1].update(age=rows[0]["age"]))
        return Malformed(root, kind, f"{table.name}:3", "have the same age")
    if kind in ("volume_among_slices", "volume_first_among_slices"):
        target = ds.images[-1][-1] if kind == "volume_among_slices" else ds.images[0][0]
        img = nib.load(target)
        slab = np.repeat(np.asarray(img.dataobj, np.float32), 5, axis=2)
        _write_image(target, slab, img.affine, "float32")
        return Malformed(root, kind, target.name, r"expected a 2D image, got shape \(\d+, \d+, 5\) \(3D\)")
    participants = root / "participants.tsv"
    if kind == "parent_participant_id":
        _rewrite_tsv(participants, lambda rows: rows[1].update(participant_id="sub-../.."))
        return Malformed(root, kind, f"{participants.name}:3", "not a valid BIDS sub label")
    if kind == "missing_group_column":
        return Malformed(
            root,
            kind,
            participants.name,
            "has no column 'diagnosis_at_entry'",
            ("--group-column", "diagnosis_at_entry"),
        )
    if kind == "empty_participants":
        participants.write_text("participant_id\tGroup\n")
        return Malformed(root, kind, participants.name, "lists no participants")
    raise AssertionError(kind)
