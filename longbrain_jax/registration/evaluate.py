"""Registration scored against the simulator's ground truth.

For every follow-up scan of every subject (training and held-out), from a
registration folder (`register_cohort`) and the simulated BIDS dataset with its
`derivatives/simulator` truth:

- Dice of the follow-up's labels carried onto the baseline by the predicted map
  (L_t o phi_t against L_0), per structure; and the same without registration, for
  reference;
- error of the predicted |J| against the true |J| per structure (mean |difference|
  over the structure's baseline voxels) and the true mean change |J| - 1;
- the structure's volume change as a fraction (mean |J| - 1 over its baseline voxels),
  predicted and true: how much of the atrophy or expansion the registration recovers;
- the Dice the simulator's own true field reaches (the ceiling on this grid);
- the share of brain voxels whose predicted |J| changes monotonically over the
  observed times and a yearly grid (`metrics.monotone_fraction`), and the share of
  voxels with |J| <= 0 (folding).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from longbrain_jax import grid, metrics
from longbrain_jax.atlas import REGIONS
from longbrain_jax.cohort import ROLES, scan_roles
from longbrain_jax.engine.checkpoint import load_tree
from longbrain_jax.io import LoadConfig, load_image, read_bids
from longbrain_jax.io.bids import derivative_path
from longbrain_jax.io.nifti import load_displacement
from longbrain_jax.registration import network as net
from longbrain_jax.registration.cohort import subject_fields
from longbrain_jax.registration.train import RegistrationConfig
from longbrain_jax.simulate.simulator import PIPELINE

STRUCTURES = ("hippocampus", "lateral_ventricles", "cortical_gm", "cerebral_wm")


def evaluate_against_truth(reg_dir: str | os.PathLike, bids_root: str | os.PathLike, cfg: RegistrationConfig) -> list[dict]:
    """One row per follow-up scan of every registered subject (see the module docstring); `cfg`
    is the registration's. The registration may cover a subset of the dataset's subjects."""
    reg_dir, bids_root = Path(reg_dir), Path(bids_root)
    cohort = read_bids(bids_root, LoadConfig(label_pipeline=PIPELINE))
    registered = json.loads((reg_dir / "config.json").read_text())["subjects"]
    cohort = cohort.select([cohort.subject_ids.index(s) for s in registered])
    template = net.init(jax.random.key(0), cfg.network)
    target = jax.tree_util.tree_map(lambda x: jax.ShapeDtypeStruct((cohort.num_subjects, *x.shape), x.dtype), template)
    params_all = load_tree(reg_dir / "params", target)

    def field(i, t):
        params = jax.tree_util.tree_map(lambda x: jnp.asarray(x[i]), params_all)
        u, det, _ = subject_fields(params, float(t), cohort.spatial_shape, cfg.network)
        return u, det

    return score_fields(field, cohort, bids_root, cfg.holdout)


def score_fields(field, cohort, bids_root: str | os.PathLike, holdout: str) -> list[dict]:
    """Score any registration given as `field(subject, years) -> (u, |J|)` on the voxel grid.

    `cohort` is the simulated dataset read with its labels, `holdout` the scan roles
    the registration was trained with. Rows as in the module docstring, plus the Dice
    reached by the simulator's true field (`dice_truth_*`: the ceiling that label
    resampling on this grid allows).
    """
    bids_root = Path(bids_root)
    roles = scan_roles(cohort.mask, holdout)
    rows = []
    for i, sid in enumerate(cohort.subject_ids):
        n = int(cohort.mask[i].sum())
        if n < 2:
            continue
        base_labels = jnp.asarray(cohort.labels[i, 0])
        brain = np.asarray(base_labels > 0)
        times = cohort.ages[i, :n] - cohort.ages[i, 0]
        grid_times = np.unique(np.concatenate([times, np.arange(0.0, times[-1] + 1.0, 1.0)]))
        series = jnp.stack([field(i, float(t))[1] for t in grid_times])
        monotone = float(metrics.monotone_fraction(series, jnp.asarray(grid_times), jnp.asarray(brain), tol=metrics.MONOTONE_TOL))
        for j in range(1, n):
            u, det = field(i, float(times[j]))
            labels = jnp.asarray(cohort.labels[i, j])
            carried = grid.warp_labels(labels, u)
            ses = cohort.session_ids[i][j]
            true_det, _ = load_image(derivative_path(bids_root, sid, ses, "jacdet", PIPELINE))
            true_u_mm, affine = load_displacement(derivative_path(bids_root, sid, ses, "truth", PIPELINE, suffix="xfm"))
            by_truth = grid.warp_labels(labels, grid.displacement_from_world(jnp.asarray(true_u_mm), affine))
            row = {"participant_id": sid, "group": cohort.groups[i], "session": ses,
                   "years": float(times[j]), "role": ROLES[roles[i, j]], "monotone": monotone,
                   "folding": float(np.mean(np.asarray(det)[brain] <= 0))}  # fmt: skip
            for name in STRUCTURES:
                ids = REGIONS[name]
                row[f"dice_{name}"] = float(metrics.dice(carried, base_labels, [ids])[0])
                row[f"dice_unregistered_{name}"] = float(metrics.dice(labels, base_labels, [ids])[0])
                row[f"dice_truth_{name}"] = float(metrics.dice(by_truth, base_labels, [ids])[0])
                region = np.isin(np.asarray(base_labels), ids)
                row[f"jac_error_{name}"] = float(np.mean(np.abs(np.asarray(det) - true_det)[region])) if region.any() else float("nan")
                row[f"jac_change_{name}"] = float(np.mean(np.abs(true_det - 1.0)[region])) if region.any() else float("nan")
                row[f"volume_change_{name}"] = float(np.mean(np.asarray(det)[region]) - 1.0) if region.any() else float("nan")
                row[f"true_volume_change_{name}"] = float(np.mean(true_det[region]) - 1.0) if region.any() else float("nan")
            rows.append(row)
    return rows


def summarise(rows: list[dict]) -> dict[str, dict[str, float]]:
    """Median per role of mean Dice (over structures), |J| error, monotone share and folding."""
    out = {}
    for role in ("train", "interpolation", "extrapolation"):
        sel = [r for r in rows if r["role"] == role]
        if not sel:
            continue
        dice = [np.nanmean([r[f"dice_{s}"] for s in STRUCTURES]) for r in sel]
        raw = [np.nanmean([r[f"dice_unregistered_{s}"] for s in STRUCTURES]) for r in sel]
        truth = [np.nanmean([r[f"dice_truth_{s}"] for s in STRUCTURES]) for r in sel]
        err = [np.nanmean([r[f"jac_error_{s}"] for s in STRUCTURES]) for r in sel]
        change = [np.nanmean([r[f"jac_change_{s}"] for s in STRUCTURES]) for r in sel]
        out[role] = {
            "n": len(sel),
            "dice": float(np.median(dice)),
            "dice_unregistered": float(np.median(raw)),
            "dice_truth": float(np.median(truth)),
            "jac_error": float(np.median(err)),
            "jac_true_change": float(np.median(change)),
            "monotone": float(np.median([r["monotone"] for r in sel])),
            "folding": float(np.max([r["folding"] for r in sel])),
        }
    return out
