"""What a cohort fit leaves on disk, and reading it back.

- `params/`: the stacked cohort parameters (orbax), leading subject axis, in the
  order of `subjects.tsv`.
- `weights.npz`: one flat row per subject for each parameter group (`P_space`,
  `P_time`, `P_com`), built from neuron tokens (`inr.tokens`): for every layer,
  each neuron's incoming weights with its bias appended; plus `subject_id`, `group`.
- `subjects.tsv`, `metrics.tsv`: per subject and per scan scores.
- `figures/reconstruction.png`: scans and reconstructions of up to two subjects.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import os
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from longbrain_jax.cohort import ROLES
from longbrain_jax.config import config_from_dict
from longbrain_jax.engine.checkpoint import load_tree, save_tree
from longbrain_jax.errors import InputError
from longbrain_jax.files import age_tag, atomic_file, write_tsv
from longbrain_jax.fit.config import FitConfig
from longbrain_jax.fit.evaluate import reconstruct_volumes
from longbrain_jax.inr import spatiotemporal as st
from longbrain_jax.inr.tokens import flat_weights
from longbrain_jax.io.nifti import save_image


def write_fit_outputs(out: Path, result, source, cfg) -> None:
    """Write params, weights, tables and the figure of a finished fit (see the module docstring)."""
    save_tree(out / "params", result.params, alone=True)  # process 0 writes the outputs
    with atomic_file(out / "weights.npz", overwrite=True) as tmp:
        np.savez(
            tmp,
            subject_id=np.array(result.subject_ids),
            group=np.array(result.groups),
            **{g: flat_weights(result.params, g) for g in st.GROUPS},
        )
    rows = []
    for i, sid in enumerate(result.subject_ids):
        train = result.roles[i] == 1
        status = "ok" if result.diverged_at[i] < 0 else f"diverged at step {int(result.diverged_at[i])}"
        rows.append([
            sid, result.groups[i], int((result.roles[i] > 0).sum()), status, float(result.loss[i]),
            float(np.nanmedian(result.psnr[i][train])) if train.any() else float("nan"),
            float(np.nanmedian(result.ssim[i][train])) if train.any() else float("nan"),
        ])  # fmt: skip
    write_tsv(out / "subjects.tsv", ["participant_id", "group", "scans", "status", "loss", "psnr_train", "ssim_train"], rows)
    rows = [
        [sid, f"{result.ages[i, t]:.2f}", ROLES[result.roles[i, t]], float(result.psnr[i, t]), float(result.ssim[i, t])]
        for i, sid in enumerate(result.subject_ids)
        for t in range(result.roles.shape[1])
        if result.roles[i, t] > 0
    ]
    write_tsv(out / "metrics.tsv", ["participant_id", "age", "role", "psnr", "ssim"], rows)
    reconstruction_figure(out / "figures" / "reconstruction.png", result, source, cfg)


def reconstruction_figure(path: Path, result, source, cfg) -> Path:
    """Scans (top) and INR reconstructions (bottom) of up to two subjects, one per group."""
    from longbrain_jax.report import save_figure, series_montage

    picks: list[int] = []
    for g in dict.fromkeys(result.groups):
        picks.append(result.groups.index(g))
    picks = picks[:2]
    cohort = source.select(np.array(picks))
    rows, titles, cols = [], [], []
    for k, i in enumerate(picks):
        n = int(cohort.mask[k].sum())
        params = jax.tree_util.tree_map(lambda x, i=i: jnp.asarray(x[i]), result.params)
        recon = reconstruct_volumes(params, cohort.ages[k, :n], tuple(source.spatial_shape), cfg.inr)
        label = f"sub-{result.subject_ids[i]} ({result.groups[i] or 'no group'})"
        rows += [list(cohort.volumes[k, :n]), list(recon)]
        titles += [f"{label}: scans", "INR"]
        roles = [ROLES[r] for r in result.roles[i, :n]]
        cols += [[f"{a:.1f} y ({r})" for a, r in zip(cohort.ages[k, :n], roles, strict=True)],
                 [f"{p:.1f} dB" for p in result.psnr[i, :n]]]  # fmt: skip
    fig = series_montage(rows, titles, cols, vmin=-1.0, vmax=1.0)
    return save_figure(fig, path)


@dataclasses.dataclass
class FittedCohort:
    """A fit read back from disk (`load_fit`)."""

    cfg: object
    params: st.Params
    subject_ids: tuple[str, ...]
    groups: tuple[str, ...]
    status: tuple[str, ...]

    def select(self, indices) -> FittedCohort:
        """The fitted subjects `indices`, in that order."""
        idx = np.asarray(indices, dtype=int)
        pick = lambda seq: tuple(seq[i] for i in idx)  # noqa: E731
        params = jax.tree_util.tree_map(lambda x: x[idx], self.params)
        return FittedCohort(self.cfg, params, pick(self.subject_ids), pick(self.groups), pick(self.status))


def load_fit(out: str | os.PathLike) -> FittedCohort:
    """Read the configuration, stacked parameters and subject table of a finished fit."""

    out = Path(out)
    for name in ("config.json", "subjects.tsv", "params"):
        if not (out / name).exists():
            raise InputError(out / name, "not found: is this the folder of a finished `longbrain fit`?")
    cfg = config_from_dict(FitConfig, json.loads((out / "config.json").read_text())["config"])
    with open(out / "subjects.tsv", newline="") as f:
        table = list(csv.DictReader(f, delimiter="\t"))
    template = st.init(jax.random.key(0), cfg.inr)
    target = jax.tree_util.tree_map(lambda x: jax.ShapeDtypeStruct((len(table), *x.shape), x.dtype), template)
    params = jax.tree_util.tree_map(np.asarray, load_tree(out / "params", target))
    return FittedCohort(
        cfg=cfg,
        params=params,
        subject_ids=tuple(r["participant_id"] for r in table),
        groups=tuple(r["group"] for r in table),
        status=tuple(r["status"] for r in table),
    )


def write_reconstructions(
    out_dir: str | os.PathLike, fitted: FittedCohort, index: int, ages: np.ndarray, spatial_shape: tuple[int, ...], affine: np.ndarray,
    budget=None,
) -> list[Path]:
    """Write subject `index`'s reconstruction at each age (years) as NIfTI with its affine.

    Files: `out_dir/sub-X/anat/sub-X_desc-inrAGE_T1w.nii.gz` with AGE like `072p5`.
    """

    params = jax.tree_util.tree_map(lambda x: jnp.asarray(x[index]), fitted.params)
    volumes = reconstruct_volumes(params, ages, tuple(spatial_shape), fitted.cfg.inr, budget)
    sid = fitted.subject_ids[index]
    paths = []
    for age, vol in zip(ages, volumes, strict=True):
        path = Path(out_dir) / f"sub-{sid}" / "anat" / f"sub-{sid}_desc-inr{age_tag(age)}_T1w.nii.gz"
        save_image(path, vol, affine, overwrite=True)
        paths.append(path)
    return paths
