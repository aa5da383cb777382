"""Longitudinal BIDS datasets in and out.

Layout read and written::

    ROOT/participants.tsv                  participant_id [group|diagnosis|dx|any --group-column] [sex] ...
    ROOT/sub-X/sub-X_sessions.tsv          session_id  age (years)
    ROOT/sub-X/ses-Y/anat/sub-X_ses-Y_T1w.nii[.gz]
    ROOT/sub-X/ses-Y/anat/sub-X_ses-Y[_desc-D]_dseg.nii[.gz]                  (optional)
    ROOT/derivatives/PIPELINE/sub-X/ses-Y/anat/sub-X_ses-Y[_desc-D]_dseg.nii[.gz]  (optional)

Derived maps go to `ROOT/derivatives/longbrain/sub-X/ses-Y/anat/sub-X_ses-Y_desc-<what>.nii.gz`
with the source affine (`derivative_path`, `write_derivative`).

Every problem raises `InputError` naming the file (and row) at fault; labels are
checked against BIDS's alphanumeric rule before any path is built from them, so
nothing can be written outside the dataset folder.
"""

from __future__ import annotations

import concurrent.futures
import csv
import dataclasses
import json
import math
import os
import re
import threading
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np

from longbrain_jax.cohort import Cohort, Subject
from longbrain_jax.errors import InputError
from longbrain_jax.files import atomic_dir, write_tsv
from longbrain_jax.io.intensity import IntensityNorm, normalise_intensity
from longbrain_jax.io.nifti import NIFTI_SUFFIXES, ImageHandle, open_image, save_image

_LABEL = re.compile(r"^[A-Za-z0-9]+$")
_MISSING = {"", "n/a", "na", "nan"}


@dataclasses.dataclass(frozen=True)
class LoadConfig:
    """How `read_bids` turns a dataset into a `Cohort`.

    **Arguments:**

    - `normalise`: per-scan intensity normalisation, or None to keep raw values.
    - `ndim`: 2 or 3 spatial axes expected; None infers it from the first image.
    - `common_grid`: resample every subject onto the first subject's baseline grid
      (needed when subjects' image shapes differ). Otherwise each subject keeps its
      baseline grid and follow-ups on another grid are resampled onto it.
    - `labels`: read label maps (`*_dseg`) where every scan has one.
    - `label_pipeline`: derivatives folder to take label maps from; None searches the
      raw `anat` folders first, then any pipeline (an ambiguity is an error).
    - `age_column`: the sessions.tsv column holding age in years (any case).
    - `group_column`: the participants.tsv column holding each subject's clinical group
      (e.g. "dx"; any case); None takes the first of group, diagnosis, dx. Group names
      are kept as the dataset spells them (`groups.GroupMap` maps them to classes).
    - `workers`: threads reading images (decompression runs in parallel).
    """

    normalise: IntensityNorm | None = IntensityNorm()
    ndim: int | None = None
    common_grid: bool = False
    labels: bool = True
    label_pipeline: str | None = None
    age_column: str = "age"
    group_column: str | None = None
    workers: int = 2


# -- names and paths ------------------------------------------------------------------
def bids_label(value: str, prefix: str, where: str | os.PathLike) -> str:
    """The label of `value` (`"sub-01"` or `"01"` -> `"01"`), checked alphanumeric."""
    raw = str(value).strip()
    label = raw[len(prefix) + 1 :] if raw.startswith(prefix + "-") else raw
    if not _LABEL.match(label):
        raise InputError(where, f"{raw!r} is not a valid BIDS {prefix} label (letters and digits only)")
    return label


def scan_path(root: str | os.PathLike, subject: str, session: str, suffix: str = "T1w", ext: str = ".nii.gz") -> Path:
    """ROOT/sub-X/ses-Y/anat/sub-X_ses-Y_<suffix><ext>."""
    sub, ses = bids_label(subject, "sub", root), bids_label(session, "ses", root)
    return Path(root) / f"sub-{sub}" / f"ses-{ses}" / "anat" / f"sub-{sub}_ses-{ses}_{suffix}{ext}"


def derivative_path(
    root: str | os.PathLike,
    subject: str,
    session: str,
    desc: str,
    pipeline: str = "longbrain",
    suffix: str | None = None,
    ext: str = ".nii.gz",
) -> Path:
    """ROOT/derivatives/<pipeline>/sub-X/ses-Y/anat/sub-X_ses-Y_desc-<desc>[_<suffix>]<ext>."""
    sub, ses = bids_label(subject, "sub", root), bids_label(session, "ses", root)
    desc = bids_label(desc, "desc", root)
    if not re.match(r"^[A-Za-z0-9][A-Za-z0-9_-]*$", pipeline):
        raise InputError(root, f"{pipeline!r} is not a valid derivatives pipeline name")
    name = f"sub-{sub}_ses-{ses}_desc-{desc}" + (f"_{suffix}" if suffix else "") + ext
    return Path(root) / "derivatives" / pipeline / f"sub-{sub}" / f"ses-{ses}" / "anat" / name


def write_derivative(
    root: str | os.PathLike,
    subject: str,
    session: str,
    desc: str,
    data: np.ndarray,
    affine: np.ndarray,
    pipeline: str = "longbrain",
    dtype: type | np.dtype = np.float32,
    overwrite: bool = False,
) -> Path:
    """Write one derived map (float32 by default) with the source affine, atomically."""
    return save_image(derivative_path(root, subject, session, desc, pipeline), data, affine, dtype, overwrite)


def _find_nifti(stem: Path) -> Path | None:
    """`stem` + .nii.gz or .nii; an error if both exist."""
    found = [stem.with_name(stem.name + s) for s in NIFTI_SUFFIXES if stem.with_name(stem.name + s).is_file()]
    if len(found) > 1:
        raise InputError(found[0], f"both {found[0].name} and {found[1].name} exist; keep one")
    return found[0] if found else None


# -- TSV tables ------------------------------------------------------------------------
def read_tsv(path: Path) -> list[dict[str, str]]:
    """The rows of a TSV table as dicts of stripped strings.

    Tables as spreadsheets export them are read too: a UTF-8 byte-order mark, CRLF line
    ends, empty fields past the last column (trailing tabs) and rows of empty fields are
    ignored; a row with more non-empty fields than the header has columns is an error.
    """
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f, delimiter="\t")
            rows = []
            for row in reader:
                extra = [v for v in row.pop(None, None) or () if v.strip()]
                if extra:
                    raise InputError(f"{path}:{reader.line_num}", f"has {len(extra)} more field(s) than the header has columns")
                rows.append({(k or "").strip(): (v or "").strip() for k, v in row.items()})
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise InputError(path, f"cannot read table ({e})") from None
    return [row for row in rows if any(row.values())]


def _write_tsv(path: Path, columns: list[str], rows: list[dict[str, object]]) -> None:
    """`files.write_tsv` of BIDS rows: missing or empty values as `n/a`, every value as its text
    (metadata read from a dataset is written back as it was read)."""
    write_tsv(path, columns, [[None if row.get(c) in (None, "") else str(row[c]) for c in columns] for row in rows])


def _years(age: float) -> str:
    """The shortest text that reads back as the same float32 age."""
    return np.format_float_positional(np.float32(age), unique=True, trim="-")


def _age(text: str, where: str) -> float:
    if text.lower() in _MISSING:
        raise InputError(where, "age is missing")
    try:
        age = float(text)
    except ValueError:
        raise InputError(where, f"age {text!r} is not a number (years)") from None
    if not math.isfinite(age):
        raise InputError(where, f"age {text!r} is not finite")
    return age


@dataclasses.dataclass(frozen=True)
class _SubjectEntry:
    """What pass one learns of a subject before any voxel is read."""

    subject_id: str
    group: str
    sex: str
    metadata: dict[str, str]
    session_ids: tuple[str, ...]
    ages: tuple[float, ...]
    images: tuple[Path, ...]
    label_maps: tuple[Path, ...] | None


GROUP_COLUMNS = ("group", "diagnosis", "dx")
SEX_COLUMNS = ("sex", "gender", "m/f")


def _column(columns, wanted: str) -> str | None:
    """The column of `columns` named `wanted`, without regard to case (None if absent)."""
    return next((c for c in columns if c.lower() == wanted.lower()), None)


def _group_column(root: Path, rows: list[dict[str, str]], cfg: LoadConfig) -> str | None:
    """The participants.tsv column that holds groups (see `LoadConfig.group_column`)."""
    columns = list(rows[0]) if rows else []
    if cfg.group_column is not None:
        found = _column(columns, cfg.group_column)
        if found is None:
            raise InputError(root / "participants.tsv", f"has no column {cfg.group_column!r} for groups; its columns are {columns}")
        return found
    return next((c for name in GROUP_COLUMNS if (c := _column(columns, name)) is not None), None)


def _participants(root: Path, cfg: LoadConfig) -> list[dict[str, str]]:
    table = root / "participants.tsv"
    if cfg.group_column is not None and not table.is_file():
        raise InputError(table, f"not found, so there is no column {cfg.group_column!r} for groups")
    if table.is_file():
        rows = read_tsv(table)
        if not rows:
            raise InputError(table, "lists no participants: empty cohort")
        if _column(rows[0], "participant_id") is None:
            raise InputError(table, "has no participant_id column")
        id_column = _column(rows[0], "participant_id")
        seen: set[str] = set()
        for i, row in enumerate(rows, start=2):
            label = bids_label(row.pop(id_column), "sub", f"{table}:{i}")
            if label in seen:
                raise InputError(f"{table}:{i}", f"participant sub-{label} is listed twice")
            seen.add(label)
            row["participant_id"] = label
        return rows
    subjects = sorted(p.name for p in root.glob("sub-*") if p.is_dir())
    return [{"participant_id": bids_label(s, "sub", root / s)} for s in subjects]


def _label_map(root: Path, sub: str, ses: str, pipeline: str | None) -> Path | None:
    """The dseg image for one scan, following `LoadConfig.label_pipeline`."""
    pattern = f"sub-{sub}_ses-{ses}*_dseg.nii*"
    rel = Path(f"sub-{sub}") / f"ses-{ses}" / "anat"
    if pipeline is not None:
        places = [root / "derivatives" / pipeline / rel]
    else:
        places = [root / rel] + sorted((root / "derivatives").glob(f"*/{rel}"))
    for place in places:
        hits = sorted(place.glob(pattern))
        if len(hits) > 1:
            raise InputError(hits[0].parent, f"several label maps for sub-{sub} ses-{ses}: {[h.name for h in hits]}")
        if hits:
            return hits[0]
    return None


def _scan_subject(root: Path, row: dict[str, str], cfg: LoadConfig, group_column: str | None) -> _SubjectEntry:
    sub = row["participant_id"]
    table = root / f"sub-{sub}" / f"sub-{sub}_sessions.tsv"
    if not table.is_file():
        raise InputError(table, "sessions file not found (it must give each session's age in years)")
    rows = read_tsv(table)
    if not rows:
        raise InputError(table, "lists no sessions")
    session_column, age_column = _column(rows[0], "session_id"), _column(rows[0], cfg.age_column)
    for wanted, col in (("session_id", session_column), (cfg.age_column, age_column)):
        if col is None:
            raise InputError(table, f"has no {wanted} column")
    sessions: dict[str, tuple[float, Path, Path | None]] = {}
    by_age: dict[float, str] = {}
    for i, r in enumerate(rows, start=2):
        where = f"{table}:{i}"
        ses = bids_label(r[session_column], "ses", where)
        if ses in sessions:
            raise InputError(where, f"session ses-{ses} is listed twice")
        age = _age(r[age_column], where)
        if age in by_age:
            raise InputError(where, f"sessions ses-{by_age[age]} and ses-{ses} have the same age {age}")
        by_age[age] = ses
        stem = scan_path(root, sub, ses, ext="")
        image = _find_nifti(stem)
        if image is None:
            raise InputError(where, f"image for ses-{ses} not found: expected {stem}.nii.gz")
        labels = _label_map(root, sub, ses, cfg.label_pipeline) if cfg.labels else None
        sessions[ses] = (age, image, labels)
    order = sorted(sessions, key=lambda s: sessions[s][0])
    label_maps = [sessions[s][2] for s in order]
    group = row.get(group_column, "") if group_column is not None else ""
    group = "" if group.lower() in _MISSING else group
    sex_column = next((c for name in SEX_COLUMNS if (c := _column(row, name)) is not None), None)
    sex = row.get(sex_column, "") if sex_column is not None else ""
    sex = "" if sex.lower() in _MISSING else sex
    meta = {k: v for k, v in row.items() if k not in ("participant_id", group_column, sex_column)}
    return _SubjectEntry(
        subject_id=sub,
        group=group,
        sex=sex,
        metadata=meta,
        session_ids=tuple(order),
        ages=tuple(sessions[s][0] for s in order),
        images=tuple(sessions[s][1] for s in order),
        label_maps=tuple(label_maps) if all(m is not None for m in label_maps) else None,
    )


# -- reading ---------------------------------------------------------------------------
def read_bids(
    root: str | os.PathLike,
    cfg: LoadConfig = LoadConfig(),
    progress: Callable[[int, int], None] | None = None,
) -> Cohort:
    """Load a longitudinal BIDS dataset as a `Cohort`.

    Pass one (`scan_bids`) reads the tables and every image header (cheap) and checks
    them all, so a broken dataset fails before any voxel is read; pass two reads the
    voxels into one preallocated padded array with `cfg.workers` threads.

    **Arguments:**

    - `root`: the dataset folder.
    - `cfg`: see `LoadConfig`.
    - `progress`: called as `progress(done, total)` after each scan is read (pass
      two only, so a bar opened on the first call never precedes an input error).

    **Returns:** the cohort; `cohort.single_scan` flags subjects with one scan.
    """
    dataset = scan_bids(root, cfg)
    return dataset.select(np.arange(dataset.num_subjects), progress)


def scan_bids(root: str | os.PathLike, cfg: LoadConfig = LoadConfig()) -> BIDSDataset:
    """Pass one of `read_bids`: validate a dataset and index it without reading voxels.

    The returned `BIDSDataset` loads any subset of subjects on demand
    (`dataset.select(indices)`), so a cohort larger than memory can be streamed in
    chunks of subjects.
    """
    root = Path(root)
    if not root.is_dir():
        raise InputError(root, "dataset folder not found")
    participants = _participants(root, cfg)
    group_column = _group_column(root, participants, cfg)
    entries = [_scan_subject(root, row, cfg, group_column) for row in participants]
    if not entries:
        raise InputError(root, "empty cohort: no subjects in participants.tsv or sub-* folders")
    if cfg.labels:
        partial = [e.subject_id for e in entries if e.label_maps is None]
        if partial and len(partial) < len(entries):
            warnings.warn(
                f"label maps missing for some scans of {len(partial)} subject(s); the cohort keeps no labels",
                stacklevel=2,
            )

    handles = _open_images([path for e in entries for path in e.images + (e.label_maps or ())], cfg.ndim)
    grid_of = lambda path: (handles[path].shape, handles[path].affine)  # noqa: E731
    ref_grid = grid_of(entries[0].images[0])
    grids = [ref_grid if cfg.common_grid else grid_of(e.images[0]) for e in entries]
    shapes = {g[0] for g in grids}
    if len(shapes) > 1:
        odd = next(e for e, g in zip(entries, grids, strict=True) if g[0] != ref_grid[0])
        raise InputError(
            odd.images[0],
            f"grid {handles[odd.images[0]].shape} differs from the first subject's {ref_grid[0]}; "
            "use common_grid=True (--common-grid) to resample every subject onto one grid",
        )
    with_labels = cfg.labels and all(e.label_maps is not None for e in entries)
    return BIDSDataset(root, cfg, entries, handles, grids, with_labels)


def _open_images(paths: list[Path], ndim: int | None) -> dict[Path, ImageHandle]:
    """Every image's validated header, all of `ndim` spatial axes.

    With `ndim` None the dataset's dimensionality is what most of its images have (ties:
    the first image's), so the odd one out is the image named, wherever it comes: a 3D
    volume among 2D slices, or a 2D slice (X x Y x 1) among 3D volumes.
    """
    if ndim is not None:
        return {path: open_image(path, ndim) for path in paths}
    natural: dict[Path, ImageHandle | None] = {}
    for path in paths:
        try:
            natural[path] = open_image(path)
        except InputError:  # reported below, against the dataset's dimensionality
            natural[path] = None
    dims = [len(h.shape) for h in natural.values() if h is not None]
    common = max(set(dims), key=lambda d: (dims.count(d), d == dims[0])) if dims else None
    handles = {}
    for path, handle in natural.items():
        if handle is None or len(handle.shape) != common:
            slice_2d = handle is not None and len(handle.shape) == 2
            handle = open_image(path, common)  # raises, naming the file, unless a 2D slice reads as a thin volume
            if slice_2d:
                raise InputError(path, f"expected a {common}D image, got shape {handle.shape} (a 2D slice)")
        handles[path] = handle
    return handles


class BIDSDataset:
    """A validated, indexed dataset (from `scan_bids`): tables in memory, voxels on disk.

    Offers the `Cohort` attributes that need no voxels (`num_subjects`, `max_scans`,
    `spatial_shape`, `ages`, `mask`, `subject_ids`, `groups`, `affines`) and
    `select(indices)`, which reads those subjects into a `Cohort`.
    """

    def __init__(self, root, cfg, entries, handles, grids, with_labels):
        self.root, self.cfg = root, cfg
        self._entries, self._handles, self._grids, self._with_labels = entries, handles, grids, with_labels
        n, t_max = len(entries), max(len(e.images) for e in entries)
        self.ages = np.zeros((n, t_max), np.float32)
        self.mask = np.zeros((n, t_max), bool)
        for i, e in enumerate(entries):
            self.ages[i, : len(e.ages)] = e.ages
            self.mask[i, : len(e.ages)] = True
        self.affines = np.stack([g[1] for g in grids])
        self.subject_ids = tuple(e.subject_id for e in entries)
        self.groups = tuple(e.group for e in entries)
        self.spatial_shape = tuple(grids[0][0])

    @property
    def num_subjects(self) -> int:
        return self.mask.shape[0]

    @property
    def max_scans(self) -> int:
        return self.mask.shape[1]

    @property
    def ndim(self) -> int:
        return len(self.spatial_shape)

    @property
    def metadata(self) -> tuple[dict[str, str], ...]:
        """Every subject's other participants.tsv columns (as `Cohort.metadata`)."""
        return tuple(e.metadata for e in self._entries)

    def subset(self, indices) -> BIDSDataset:
        """The dataset of the subjects `indices` (in that order), still without reading voxels."""
        idx = [int(i) for i in indices]
        if not idx:
            raise InputError(self.root, "no subject left to read")
        return BIDSDataset(self.root, self.cfg, [self._entries[i] for i in idx], self._handles, [self._grids[i] for i in idx], self._with_labels)

    @property
    def has_labels(self) -> bool:
        """Whether every scan has a label map (they are read with the scans)."""
        return self._with_labels

    def scan_bytes(self) -> int:
        """Host bytes one subject of `select` holds: T_max float32 scans (and int32 label maps)."""
        return self.max_scans * int(np.prod(self.spatial_shape)) * 4 * (2 if self._with_labels else 1)

    def select(self, indices: np.ndarray, progress: Callable[[int, int], None] | None = None) -> Cohort:
        """Read the subjects `indices` (pass two) into a `Cohort`, T_max trimmed to fit."""
        entries = [self._entries[i] for i in indices]
        grids = [self._grids[i] for i in indices]
        handles, cfg = self._handles, self.cfg
        n, t_max = len(entries), max(len(e.images) for e in entries)
        shape = self.spatial_shape
        volumes = np.zeros((n, t_max, *shape), np.float32)
        labels = np.zeros((n, t_max, *shape), np.int32) if self._with_labels else None

        def load(i: int, t: int) -> None:
            target_shape, target_affine = grids[i]
            e = entries[i]
            image = handles[e.images[t]]
            data = _onto_grid(image.read(), image.affine, target_shape, target_affine, order=1)
            if cfg.normalise is not None:
                normalise_intensity(data, cfg.normalise, out=volumes[i, t])
            else:
                volumes[i, t] = data
            if labels is not None:
                label_map = handles[e.label_maps[t]]
                lab = label_map.read()
                if np.any(lab != np.round(lab)):
                    raise InputError(label_map.path, "label map holds non-integer values")
                labels[i, t] = _onto_grid(lab, label_map.affine, target_shape, target_affine, order=0)

        jobs = [(i, t) for i, e in enumerate(entries) for t in range(len(e.images))]
        with concurrent.futures.ThreadPoolExecutor(max(1, cfg.workers)) as pool:
            futures = [pool.submit(load, i, t) for i, t in jobs]
            for done, f in enumerate(concurrent.futures.as_completed(futures), start=1):
                f.result()
                if progress is not None:
                    progress(done, len(jobs))

        idx = np.asarray(indices, dtype=int)
        return Cohort(
            volumes=volumes,
            mask=self.mask[idx, :t_max],
            ages=self.ages[idx, :t_max],
            affines=self.affines[idx],
            subject_ids=tuple(e.subject_id for e in entries),
            session_ids=tuple(e.session_ids for e in entries),
            groups=tuple(e.group for e in entries),
            sexes=tuple(e.sex for e in entries),
            labels=labels,
            metadata=tuple(e.metadata for e in entries),
        )


def _onto_grid(data: np.ndarray, affine: np.ndarray, shape: tuple[int, ...], target: np.ndarray, order: int):
    """`data` itself if already on (shape, target), else resampled through the affines."""
    if data.shape == tuple(shape) and np.allclose(affine, target, atol=1e-5):
        return data
    from longbrain_jax.grid import resample  # jax import only when resampling is needed

    return np.asarray(resample(data, affine, shape, target, order=order))


# -- writing ---------------------------------------------------------------------------
def _description(name: str, derivative: bool = False) -> str:
    record = {"Name": name, "BIDSVersion": "1.9.0", "DatasetType": "derivative" if derivative else "raw"}
    if derivative:
        record["GeneratedBy"] = [{"Name": "longbrain_jax"}]
    return json.dumps(record, indent=2) + "\n"


class BIDSWriter:
    """Write a longitudinal BIDS dataset one subject at a time, atomically.

    The dataset is built in a temporary folder beside `root` and moved into place by
    `close()` (or on leaving a `with` block without an exception); `participants.tsv`
    is written last, from the subjects added. Use `path` to place extra derivatives.

    **Arguments:**

    - `root`: the dataset folder to create.
    - `overwrite`: replace an existing `root` (only once the new one is complete).
    - `name`: the dataset's name in dataset_description.json.
    - `label_pipeline`: derivatives folder receiving label maps (`*_dseg.nii.gz`).
    - `compresslevel`: gzip level of the images (1 fast ... 9 small).
    """

    def __init__(
        self,
        root: str | os.PathLike,
        overwrite: bool = False,
        name: str = "longbrain_jax cohort",
        label_pipeline: str = "labels",
        compresslevel: int = 6,
    ):
        self.root = Path(root)
        self.name, self.label_pipeline, self.compresslevel = name, label_pipeline, compresslevel
        self._context = atomic_dir(self.root, overwrite=overwrite)
        self.path = self._context.__enter__()
        self._rows: list[dict[str, object]] = []
        self._lock = threading.Lock()  # add_subject may run in several threads
        self._labels_started = False
        (self.path / "dataset_description.json").write_text(_description(name))

    def add_subject(self, subject: Subject, session_columns: dict[str, list[object]] | None = None) -> None:
        """Write one subject's images, label maps and sessions.tsv (thread-safe).

        `session_columns` adds columns to sessions.tsv (one value per scan).
        """
        sub = bids_label(subject.subject_id, "sub", self.root)
        sessions = [bids_label(ses, "ses", self.root) for ses in subject.session_ids]
        extra = session_columns or {}
        (self.path / f"sub-{sub}").mkdir()
        rows = [
            {"session_id": f"ses-{ses}", "age": _years(a), **{k: v[t] for k, v in extra.items()}}
            for t, (ses, a) in enumerate(zip(sessions, subject.ages, strict=True))
        ]
        _write_tsv(self.path / f"sub-{sub}" / f"sub-{sub}_sessions.tsv", ["session_id", "age", *extra], rows)
        for t, ses in enumerate(sessions):
            save_image(scan_path(self.path, sub, ses), subject.volumes[t], subject.affine, compresslevel=self.compresslevel)
            if subject.labels is not None:
                with self._lock:
                    if not self._labels_started:
                        deriv = self.path / "derivatives" / self.label_pipeline
                        deriv.mkdir(parents=True, exist_ok=True)
                        (deriv / "dataset_description.json").write_text(_description(f"{self.name}: derivatives", True))
                        self._labels_started = True
                save_image(
                    scan_path(self.path / "derivatives" / self.label_pipeline, sub, ses, suffix="dseg"),
                    subject.labels[t],
                    subject.affine,
                    dtype=np.int16,
                    compresslevel=self.compresslevel,
                )
        with self._lock:
            self._rows.append(
                {"participant_id": f"sub-{sub}", "group": subject.group, "sex": subject.sex, **subject.metadata}
            )

    def close(self) -> Path:
        """Write participants.tsv (sorted by participant) and move the dataset into place."""
        extra = sorted({k for row in self._rows for k in row} - {"participant_id", "group", "sex"})
        rows = sorted(self._rows, key=lambda row: str(row["participant_id"]))
        _write_tsv(self.path / "participants.tsv", ["participant_id", "group", "sex", *extra], rows)
        self._context.__exit__(None, None, None)
        return self.root

    def abort(self) -> None:
        """Delete the partial dataset; `root` is left as it was."""
        self._context.__exit__(RuntimeError, RuntimeError("aborted"), None)

    def __enter__(self) -> BIDSWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


def write_bids(
    cohort: Cohort,
    root: str | os.PathLike,
    overwrite: bool = False,
    label_pipeline: str = "labels",
    name: str = "longbrain_jax cohort",
    progress: Callable[[int, int], None] | None = None,
) -> Path:
    """Write `cohort` as a longitudinal BIDS dataset, atomically (see `BIDSWriter`).

    Images go to `sub-X/ses-Y/anat/sub-X_ses-Y_T1w.nii.gz` with each subject's affine;
    label maps (if any) to `derivatives/<label_pipeline>/.../sub-X_ses-Y_dseg.nii.gz`.
    """
    for i, sub in enumerate(cohort.subject_ids):  # fail before anything is written
        bids_label(sub, "sub", root)
        for ses in cohort.session_ids[i]:
            bids_label(ses, "ses", root)
    with BIDSWriter(root, overwrite, name, label_pipeline) as writer:
        for i in range(cohort.num_subjects):
            writer.add_subject(cohort.subject(i))
            if progress is not None:
                progress(i + 1, cohort.num_subjects)
    return Path(root)
