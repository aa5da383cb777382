"""Align a whole cohort: every follow-up to its baseline, optionally every subject to the MNI152 template.

Three ways in, one estimate (`estimate_transforms`): all (baseline, follow-up) pairs
of the cohort go through `register.align_pairs` in chunks of `cfg.chunk_size` pairs,
read chunk by chunk from the source, so the cohort never needs to fit in memory.
Estimation runs on the source's arrays (`BIDSDataset.select` already puts every
follow-up on its baseline's grid through the affines); every output is resampled
ONCE from the original image: follow-up -> baseline grid through both affines and
the transform.

- `align_dataset(bids, out, cfg)` writes an aligned BIDS dataset that every command
  reads (layout below).
- `align_cohort(cohort, cfg)` returns the aligned `Cohort` and the transforms.
- `AlignedSource(dataset, cfg)` wraps a `BIDSDataset` for streamed drivers
  (`fit_cohort`, `register_cohort`): its `select` aligns the chunk it loads.

Written by `align_dataset`:

    OUT/dataset_description.json, participants.tsv, sub-X/sub-X_sessions.tsv   (copied)
    OUT/sub-X/ses-Y/anat/sub-X_ses-Y_T1w.nii.gz     follow-ups on the baseline grid (the
                                                    baseline copied), or all on the template grid
    OUT/derivatives/PIPELINE/.../*_dseg.nii.gz      label maps, nearest neighbour, same transform
    OUT/derivatives/longbrain-align/sub-X/ses-Y/anat/sub-X_ses-Y_from-orig_to-baseline_mode-image_xfm.txt
        the ITK transform that resamples the original scan onto the baseline
        (`io.transforms`: baseline point -> original scan point; the identity for the
        baseline); with `to_template` also `..._from-orig_to-MNI152NLin2009aSym_...`, the
        composite (template point -> original scan point) each written scan was resampled with
    OUT/derivatives/longbrain-align/alignment.tsv   per scan: rotation (degrees), translation
                                                    (mm at the baseline's centre of mass), similarity
                                                    (plain NCC, or MI) before / after, on the finest
                                                    level's points (with `to_template`, also vs the template)
    OUT/derivatives/longbrain-align/config.json

Other derivatives (e.g. the simulator's fields) describe the unaligned scans and are not carried over.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import functools
import os
import shutil
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from longbrain_jax import grid
from longbrain_jax.align.config import AlignConfig
from longbrain_jax.align.parameters import motion_summary
from longbrain_jax.align.register import register_pairs
from longbrain_jax.cohort import Cohort
from longbrain_jax.config import write_config
from longbrain_jax.errors import InputError
from longbrain_jax.files import atomic_dir, check_writable
from longbrain_jax.io.bids import BIDSDataset, LoadConfig, scan_bids
from longbrain_jax.io.intensity import normalise_intensity
from longbrain_jax.io.nifti import load_image, save_image
from longbrain_jax.io.transforms import save_transform
from longbrain_jax.memory import Budget, within_budget

PIPELINE = "longbrain-align"
#: The template's space label (TemplateFlow naming): the MNI152 2009a symmetric T1 of the nilearn wheel.
TEMPLATE_SPACE = "MNI152NLin2009aSym"
_TSV_COLUMNS = ("participant_id", "session_id", "role", "transform", "rotation_deg", "translation_mm",
                "similarity_before", "similarity_after", "metric")  # fmt: skip


class CohortTransforms(NamedTuple):
    """The transforms of a cohort (numpy, float64 matrices).

    **Fields:**

    - `to_scan`: (N, T_max, 4, 4) world (RAS+ mm) transform from the output space
      (the subject's baseline, or the template with `to_template`) to each scan's own
      space: resampling scan t onto the output grid reads it at `to_scan[i, t] @ x`.
      The identity for baselines without `to_template`, and in padding.
    - `to_baseline`: (N, T_max, 4, 4) baseline -> scan (the follow-up registration alone).
    - `template`: (N, 4, 4) template -> baseline, or None without `to_template`.
    - `centre`: (N, 3) world mm, the baseline's centre of mass (where translations are reported).
    - `before`, `after`: (N, T_max) the metric of each follow-up against its baseline
      at the identity and after alignment (NaN for baselines and padding).
    - `template_before`, `template_after`: (N,) the same for baseline vs template, or None.
    """

    to_scan: np.ndarray
    to_baseline: np.ndarray
    template: np.ndarray | None
    centre: np.ndarray
    before: np.ndarray
    after: np.ndarray
    template_before: np.ndarray | None
    template_after: np.ndarray | None


def scan_key(seed: int, subject_id: str, t: int) -> jax.Array:
    """The PRNG key of scan `t` of a subject: from its label, so no chunking or order changes it."""
    return jax.random.fold_in(jax.random.key(seed), zlib.crc32(f"{subject_id}/{t}".encode()) & 0x7FFFFFFF)


@dataclasses.dataclass(frozen=True)
class TemplateImage:
    """The template the cohort is registered to: `image` (*spatial) float32 and its (4, 4) `affine`."""

    image: np.ndarray
    affine: np.ndarray


def load_align_template(cfg: AlignConfig, ndim: int) -> TemplateImage:
    """The MNI152 T1 at `cfg.template_resolution_mm` (a 2D cohort: the simulator's axial slice)."""
    from longbrain_jax.simulate.template import load_template

    tpl = load_template(cfg.template_resolution_mm, ndim)
    return TemplateImage(tpl.t1, tpl.affine)


class _Chunks:
    """Reads the subjects a chunk of pairs needs from a source (`Cohort` or `BIDSDataset`), one selection at a time."""

    def __init__(self, source):
        self.source, self._ids, self._cohort = source, None, None

    def cohort(self, subjects: np.ndarray) -> tuple[Cohort, dict[int, int]]:
        ids = tuple(sorted({int(i) for i in subjects}))
        if ids != self._ids:
            self._ids, self._cohort = ids, self.source.select(np.asarray(ids))
        return self._cohort, {s: row for row, s in enumerate(ids)}

    def volumes(self, subjects: np.ndarray, scans: np.ndarray) -> np.ndarray:
        cohort, row = self.cohort(subjects)
        return np.stack([cohort.volumes[row[int(i)], int(t)] for i, t in zip(subjects, scans, strict=True)])


def estimate_transforms(
    source, cfg: AlignConfig, template: TemplateImage | None = None, progress: Callable[[dict], None] | None = None
) -> CohortTransforms:
    """Register every follow-up of `source` to its baseline (and each baseline to `template`).

    **Arguments:**

    - `source`: a `Cohort` or `BIDSDataset` (anything with `mask`, `subject_ids`,
      `affines` and `select(indices)`); the pairs of one subject share its grid.
    - `cfg`: see `AlignConfig`; `template` is required when `cfg.to_template`.
    - `progress`: called with `{"stage": "align" | "template", "done": k, "total": n}`
      after each chunk of pairs.

    **Returns:** `CohortTransforms`.
    """
    mask = np.asarray(source.mask)
    n, t_max = mask.shape
    affines = np.asarray(source.affines, np.float64)
    counts = mask.sum(1)
    pairs = [(i, t) for i in range(n) for t in range(1, int(counts[i]))]
    to_baseline = np.tile(np.eye(4), (n, t_max, 1, 1))
    before, after = np.full((n, t_max), np.nan), np.full((n, t_max), np.nan)
    centre = np.zeros((n, 3))
    chunks = _Chunks(source)
    report = lambda stage: (lambda done, total: progress({"stage": stage, "done": done, "total": total})) if progress else None  # noqa: E731
    if pairs:
        subj, scans = np.array([p[0] for p in pairs]), np.array([p[1] for p in pairs])
        keys = jnp.stack([scan_key(cfg.seed, source.subject_ids[i], t) for i, t in pairs])
        out = register_pairs(
            lambda idx: chunks.volumes(subj[idx], np.zeros_like(idx)),
            lambda idx: chunks.volumes(subj[idx], scans[idx]),
            affines[subj], affines[subj], keys, cfg, progress=report("align"),
        )  # fmt: skip
        to_baseline[subj, scans] = out["matrix"]
        before[subj, scans], after[subj, scans] = out["before"], out["after"]
        centre[subj] = out["centre"]
        bad = ~np.all(np.isfinite(out["matrix"]), axis=(1, 2))
        if bad.any():
            k = int(np.flatnonzero(bad)[0])
            raise InputError(f"sub-{source.subject_ids[subj[k]]}", f"alignment of scan {scans[k] + 1} to the baseline failed (non-finite transform)")
    single = counts == 1
    if single.any():  # no pair: the centre of mass of the baseline itself
        from longbrain_jax.align.register import centre_of_mass

        for i in np.flatnonzero(single):
            vol = chunks.volumes(np.array([i]), np.array([0]))[0]
            centre[i] = np.asarray(centre_of_mass(jnp.asarray(vol), jnp.asarray(affines[i], jnp.float32))[0])
    tpl = tpl_before = tpl_after = None
    to_scan = to_baseline.copy()
    if cfg.to_template:
        if template is None:
            raise ValueError("cfg.to_template needs the template image")
        subjects = np.arange(n)
        out = register_pairs(
            lambda idx: np.broadcast_to(template.image, (len(idx), *template.image.shape)),
            lambda idx: chunks.volumes(subjects[idx], np.zeros_like(idx)),
            np.broadcast_to(template.affine, (n, 4, 4)), affines,
            jnp.stack([scan_key(cfg.seed, sid, -1) for sid in source.subject_ids]), cfg, transform=cfg.template_transform,
            progress=report("template"),
        )  # fmt: skip
        tpl, tpl_before, tpl_after = out["matrix"].astype(np.float64), out["before"], out["after"]
        if not np.all(np.isfinite(tpl)):
            k = int(np.flatnonzero(~np.all(np.isfinite(tpl), axis=(1, 2)))[0])
            raise InputError(f"sub-{source.subject_ids[k]}", "registration of the baseline to the template failed (non-finite transform)")
        to_scan = to_baseline @ tpl[:, None]
    return CohortTransforms(to_scan, to_baseline, tpl, centre, before, after, tpl_before, tpl_after)


@functools.partial(jax.jit, static_argnames=("shape", "order"))
def _resample(image, source_affine, target_affine, cval, shape: tuple[int, ...], order: int):
    return grid.resample(image, source_affine, shape, target_affine, order=order, cval=cval)


def resample_scan(
    image: np.ndarray, affine: np.ndarray, shape: tuple[int, ...], target_affine: np.ndarray, to_scan: np.ndarray, order: int = 1, cval: float = 0.0
) -> np.ndarray:
    """`image` (with its `affine`) resampled onto the grid (`shape`, `target_affine`) through a transform.

    out(v) = image(affine^-1 @ to_scan @ target_affine @ v): `to_scan` maps target world
    points to the image's world points (`io.transforms`). Linear (`order=1`) or nearest
    (`order=0`, label maps; the result is rounded); outside the image: `cval`.
    """
    data = np.asarray(image, np.float32)
    composed = np.asarray(to_scan, np.float64) @ np.asarray(target_affine, np.float64)
    if data.shape == tuple(shape) and np.allclose(composed, affine, atol=1e-6):
        return data
    out = np.asarray(_resample(jnp.asarray(data), jnp.asarray(affine, jnp.float32), jnp.asarray(composed, jnp.float32), jnp.float32(cval), shape=tuple(shape), order=order))
    return np.rint(out) if order == 0 else out


def _output_grid(i: int, grids, template: TemplateImage | None):
    return (template.image.shape, template.affine) if template is not None else grids[i]


def align_cohort(cohort: Cohort, cfg: AlignConfig = AlignConfig(), progress: Callable[[dict], None] | None = None) -> tuple[Cohort, CohortTransforms]:
    """Align an in-memory cohort: follow-ups onto their baseline (every scan onto the template with `to_template`).

    Scans are resampled from the cohort's arrays (linear; label maps nearest), the
    space outside a scan filled with its minimum (the background of normalised
    scans). For files, `align_dataset` and `AlignedSource` resample the originals.

    **Returns:** the aligned `Cohort` (with the output grid's affines) and its `CohortTransforms`.
    """
    template = load_align_template(cfg, cohort.ndim) if cfg.to_template else None
    transforms = estimate_transforms(cohort, cfg, template, progress)
    grids = [(cohort.spatial_shape, cohort.affines[i]) for i in range(cohort.num_subjects)]
    shape = template.image.shape if template is not None else cohort.spatial_shape
    volumes = np.zeros((cohort.num_subjects, cohort.max_scans, *shape), np.float32)
    labels = None if cohort.labels is None else np.zeros(volumes.shape, np.int32)
    for i in range(cohort.num_subjects):
        out_shape, out_affine = _output_grid(i, grids, template)
        for t in range(int(cohort.mask[i].sum())):
            vol = cohort.volumes[i, t]
            volumes[i, t] = resample_scan(vol, cohort.affines[i], out_shape, out_affine, transforms.to_scan[i, t], 1, float(vol.min()))
            if labels is not None:
                labels[i, t] = resample_scan(cohort.labels[i, t], cohort.affines[i], out_shape, out_affine, transforms.to_scan[i, t], 0)
    affines = cohort.affines if template is None else np.broadcast_to(template.affine, cohort.affines.shape).copy()
    return dataclasses.replace(cohort, volumes=volumes, labels=labels, affines=affines), transforms


class AlignedSource:
    """A `BIDSDataset` whose `select(indices)` returns the chunk aligned (for streamed drivers).

    Offers the `BIDSDataset` attributes (`num_subjects`, `max_scans`, `spatial_shape`,
    `ndim`, `ages`, `mask`, `subject_ids`, `groups`, `affines`, `metadata`,
    `has_labels`, `scan_bytes()`, `subset(indices)`, `root`, `cfg`); with `to_template`
    the grid is the template's. `select` estimates the transforms of
    subjects it has not seen (kept for later calls), then resamples each follow-up
    (every scan with `to_template`) ONCE from its original file and normalises it as
    the dataset's `LoadConfig` says, as `BIDSDataset.select` does for unaligned scans.

    **Arguments:** `dataset` (from `io.scan_bids`), `cfg` (`AlignConfig`).
    """

    def __init__(self, dataset: BIDSDataset, cfg: AlignConfig = AlignConfig()):
        self.dataset, self.align_cfg = dataset, cfg
        self.root, self.cfg = dataset.root, dataset.cfg
        self.ages, self.mask = dataset.ages, dataset.mask
        self.subject_ids, self.groups = dataset.subject_ids, dataset.groups
        self.template = load_align_template(cfg, dataset.ndim) if cfg.to_template else None
        if self.template is None:
            self.affines, self.spatial_shape = dataset.affines, dataset.spatial_shape
        else:
            self.affines = np.broadcast_to(self.template.affine, dataset.affines.shape).copy()
            self.spatial_shape = tuple(self.template.image.shape)
        self._transforms: dict[int, np.ndarray] = {}

    @property
    def num_subjects(self) -> int:
        return self.dataset.num_subjects

    @property
    def max_scans(self) -> int:
        return self.dataset.max_scans

    @property
    def ndim(self) -> int:
        return self.dataset.ndim

    @property
    def metadata(self) -> tuple[dict[str, str], ...]:
        return self.dataset.metadata

    @property
    def has_labels(self) -> bool:
        return self.dataset.has_labels

    def scan_bytes(self) -> int:
        """Host bytes one subject of `select` holds (as `BIDSDataset.scan_bytes`, on the output grid)."""
        return self.max_scans * int(np.prod(self.spatial_shape)) * 4 * (2 if self.has_labels else 1)

    def subset(self, indices) -> AlignedSource:
        """The aligned source of the subjects `indices` (transforms already estimated are kept)."""
        idx = [int(i) for i in indices]
        sub = AlignedSource.__new__(AlignedSource)
        sub.__dict__.update(self.__dict__)
        sub.dataset = self.dataset.subset(idx)
        sub.ages, sub.mask = sub.dataset.ages, sub.dataset.mask
        sub.subject_ids, sub.groups = sub.dataset.subject_ids, sub.dataset.groups
        sub.affines = self.affines[idx]
        sub._transforms = {new: self._transforms[old] for new, old in enumerate(idx) if old in self._transforms}
        return sub

    def transforms(self, indices) -> np.ndarray:
        """(len(indices), T_max, 4, 4) output space -> scan transforms of these subjects (estimated once)."""
        todo = [int(i) for i in indices if int(i) not in self._transforms]
        if todo:
            est = estimate_transforms(self.dataset.subset(todo), self.align_cfg, self.template)
            for row, i in enumerate(todo):
                self._transforms[i] = est.to_scan[row]
        return np.stack([self._transforms[int(i)] for i in indices])

    def select(self, indices, progress: Callable[[int, int], None] | None = None) -> Cohort:
        """The subjects `indices` aligned (a `Cohort` on the output grids)."""
        indices = np.asarray(indices, int)
        to_scan = self.transforms(indices)
        cohort = self.dataset.select(indices, progress)
        volumes = cohort.volumes if self.template is None else np.zeros((len(indices), cohort.max_scans, *self.spatial_shape), np.float32)
        labels = cohort.labels if self.template is None or cohort.labels is None else np.zeros(volumes.shape, np.int32)
        norm = self.dataset.cfg.normalise
        for row, i in enumerate(indices):
            grid_shape, grid_affine = _output_grid(i, self.dataset._grids, self.template)
            entry = self.dataset._entries[i]
            for t in range(len(entry.images)):
                if self.template is None and (t == 0 or np.allclose(to_scan[row, t], np.eye(4))):
                    continue  # the baseline on its own grid: as the dataset loaded it
                handle = self.dataset._handles[entry.images[t]]
                data = resample_scan(handle.read(), handle.affine, grid_shape, grid_affine, to_scan[row, t], 1)
                volumes[row, t] = data if norm is None else normalise_intensity(data, norm)
                if labels is not None:
                    lab = self.dataset._handles[entry.label_maps[t]]
                    labels[row, t] = resample_scan(lab.read(), lab.affine, grid_shape, grid_affine, to_scan[row, t], 0)
        return dataclasses.replace(cohort, volumes=volumes, labels=labels, affines=self.affines[indices])


# -- writing ---------------------------------------------------------------------------------
def open_dataset(bids: str | os.PathLike | BIDSDataset) -> BIDSDataset:
    """A `BIDSDataset` for alignment: given, or scanned without labels (subjects on different
    grids are estimated on the first subject's grid: `LoadConfig(common_grid=True)`)."""
    if isinstance(bids, BIDSDataset):
        return bids
    try:
        return scan_bids(bids, LoadConfig(labels=False))
    except InputError as e:
        if "common_grid" not in e.problem:
            raise
        return scan_bids(bids, LoadConfig(labels=False, common_grid=True))


def _label_maps(root: Path, sub: str, ses: str) -> list[Path]:
    """Every label map (`*_dseg.nii[.gz]`) of a scan: raw `anat` and every derivatives pipeline."""
    rel = Path(f"sub-{sub}") / f"ses-{ses}" / "anat"
    places = [root / rel] + sorted((root / "derivatives").glob(f"*/{rel}"))
    return [p for place in places for p in sorted(place.glob(f"sub-{sub}_ses-{ses}*_dseg.nii*"))]


def _xfm_name(sub: str, ses: str, to: str) -> Path:
    return Path("derivatives") / PIPELINE / f"sub-{sub}" / f"ses-{ses}" / "anat" / f"sub-{sub}_ses-{ses}_from-orig_to-{to}_mode-image_xfm.txt"


def _fmt(x: float) -> str:
    return "n/a" if not np.isfinite(x) else f"{x:.6g}"


@within_budget
def align_dataset(
    bids: str | os.PathLike | BIDSDataset,
    out: str | os.PathLike,
    cfg: AlignConfig = AlignConfig(),
    overwrite: bool = False,
    progress: Callable[[dict], None] | None = None,
    budget: Budget | None = None,
) -> Path:
    """Align every follow-up of a BIDS dataset to its baseline and write the aligned dataset to `out`.

    See the module docstring for the layout. The output appears atomically (nothing
    is left on error); an existing `out` is replaced only with `overwrite`. A subject
    with one scan is copied (or put on the template grid); a dataset without any
    follow-up is still written.

    **Arguments:**

    - `bids`: the dataset folder, or a `BIDSDataset` from `io.scan_bids`.
    - `out`: the folder to create.
    - `cfg`: see `AlignConfig`.
    - `overwrite`: replace an existing `out`.
    - `progress`: called with `{"stage": "align" | "template" | "write", "done": k, "total": n}`.

    **Returns:** `out`.
    """
    out = Path(out)
    dataset = open_dataset(bids)
    root = Path(dataset.root)
    if out.resolve() == root.resolve() or root.resolve() in out.resolve().parents:
        raise InputError(out, f"must not be inside the dataset it aligns ({root})")
    check_writable(out, overwrite)
    template = load_align_template(cfg, dataset.ndim) if cfg.to_template else None
    est = estimate_transforms(dataset, cfg, template, progress)
    to = TEMPLATE_SPACE if template is not None else "baseline"
    rows: list[list[str]] = []
    with atomic_dir(out, overwrite=overwrite) as tmp:
        for name in sorted(p.name for p in root.iterdir() if p.is_file()):
            shutil.copyfile(root / name, tmp / name)  # dataset_description.json, participants.tsv, README, ...
        if not (tmp / "dataset_description.json").exists():
            (tmp / "dataset_description.json").write_text('{\n  "Name": "aligned cohort",\n  "BIDSVersion": "1.9.0",\n  "DatasetType": "raw"\n}\n')
        deriv = tmp / "derivatives" / PIPELINE
        deriv.mkdir(parents=True)
        (deriv / "dataset_description.json").write_text(
            '{\n  "Name": "longbrain align: transforms",\n  "BIDSVersion": "1.9.0",\n  "DatasetType": "derivative",\n'
            '  "GeneratedBy": [{"Name": "longbrain_jax", "Description": "rigid / affine alignment of follow-ups to their baseline"}]\n}\n'
        )

        def write_subject(i: int) -> list[list[str]]:
            entry = dataset._entries[i]
            sub = entry.subject_id
            (tmp / f"sub-{sub}").mkdir()
            shutil.copyfile(root / f"sub-{sub}" / f"sub-{sub}_sessions.tsv", tmp / f"sub-{sub}" / f"sub-{sub}_sessions.tsv")
            base = dataset._handles[entry.images[0]]  # the subject's own baseline grid (not a common one)
            grid_shape, grid_affine = (template.image.shape, template.affine) if template is not None else (base.shape, base.affine)
            subject_rows = []
            for t, (ses, image) in enumerate(zip(entry.session_ids, entry.images, strict=True)):
                matrix = est.to_scan[i, t]
                moved = template is not None or t > 0
                target = tmp / image.relative_to(root)
                target.parent.mkdir(parents=True, exist_ok=True)
                if moved:
                    data, affine = load_image(image, dataset.ndim)
                    save_image(target, resample_scan(data, affine, grid_shape, grid_affine, matrix, 1), grid_affine)
                else:
                    shutil.copyfile(image, target)
                for labels in _label_maps(root, sub, ses):
                    dest = tmp / labels.relative_to(root)
                    dest.parent.mkdir(parents=True, exist_ok=True)
                    if moved:
                        lab, affine = load_image(labels, dataset.ndim)
                        if np.any(lab != np.round(lab)):
                            raise InputError(labels, "label map holds non-integer values")
                        save_image(dest, resample_scan(lab, affine, grid_shape, grid_affine, matrix, 0), grid_affine, dtype=np.int32)
                    else:
                        shutil.copyfile(labels, dest)
                save_transform(tmp / _xfm_name(sub, ses, to), matrix, centre=est.centre[i])
                if template is not None:  # the follow-up registration alone, too
                    save_transform(tmp / _xfm_name(sub, ses, "baseline"), est.to_baseline[i, t], centre=est.centre[i])
                rot, shift = motion_summary(est.to_baseline[i, t], est.centre[i])
                row = [f"sub-{sub}", f"ses-{ses}", "baseline" if t == 0 else "follow-up", "identity" if t == 0 else cfg.transform,
                       _fmt(rot), _fmt(shift), _fmt(est.before[i, t]), _fmt(est.after[i, t]), cfg.metric]  # fmt: skip
                if template is not None:
                    row += [_fmt(est.template_before[i]), _fmt(est.template_after[i])]
                subject_rows.append(row)
            return subject_rows

        with concurrent.futures.ThreadPoolExecutor(2) as pool:
            futures = [pool.submit(write_subject, i) for i in range(dataset.num_subjects)]
            for done, future in enumerate(futures, start=1):
                rows.extend(future.result())
                if progress is not None:
                    progress({"stage": "write", "done": done, "total": len(futures)})
        for pipeline in sorted({p.parent.parent.parent.parent.name for p in (tmp / "derivatives").glob("*/sub-*/ses-*/anat/*_dseg.nii*")}):
            src = root / "derivatives" / pipeline / "dataset_description.json"
            if src.is_file():
                shutil.copyfile(src, tmp / "derivatives" / pipeline / "dataset_description.json")
        columns = list(_TSV_COLUMNS) + (["template_similarity_before", "template_similarity_after"] if template is not None else [])
        (deriv / "alignment.tsv").write_text("\n".join("\t".join(r) for r in [columns, *rows]) + "\n")
        write_config(cfg, deriv / "config.json", source=str(root), output_space=to)
    return out


__all__ = ["AlignedSource", "CohortTransforms", "align_cohort", "align_dataset", "estimate_transforms", "resample_scan", "scan_key"]
