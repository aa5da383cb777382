"""Reconstructions of fitted INRs and their agreement with the scans.

The spatial stream does not depend on time, so a subject's volumes at T times cost
one spatial pass and T cheap heads per block of voxels.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Bool, Float

from longbrain_jax import metrics
from longbrain_jax.cohort import ROLES
from longbrain_jax.grid import normalised_grid
from longbrain_jax.inr import spatiotemporal as st
from longbrain_jax.memory import MAX_BLOCK, MIN_BLOCK, Budget, Program, plan_batch

DATA_RANGE = 2.0  # intensities are scaled to [-1, 1]


def abstract_params(cfg: st.INRConfig, n: int | None = None):
    """Shapes of one INR's parameters (with a leading axis of n subjects if given), for lowering without data."""
    one = jax.eval_shape(lambda: st.init(jax.random.key(0), cfg))
    lead = () if n is None else (n,)
    return jax.tree_util.tree_map(lambda x: jax.ShapeDtypeStruct((*lead, *x.shape), x.dtype), one)


def reconstruct(
    params: st.Params, ages: Float[Array, " T"], spatial_shape: tuple[int, ...], cfg: st.INRConfig, block: int = 32768
) -> Float[Array, "T *spatial"]:
    """One subject's INR evaluated on its whole voxel grid at each age in `ages` (years)."""
    coords = st.network_coordinates(normalised_grid(spatial_shape), spatial_shape, cfg).reshape(-1, len(spatial_shape))
    n = coords.shape[0]
    block = min(block, n)
    n_blocks = -(-n // block)
    coords = jnp.pad(coords, ((0, n_blocks * block - n), (0, 0))).reshape(n_blocks, block, -1)
    h_time = st.temporal_features(params, cfg.time_input(ages), cfg)  # (T, W)

    def one_block(x):
        h_space = st.spatial_features(params, x, cfg)  # (block, W)
        return st.head(params, h_space[None] + h_time[:, None], cfg)  # (T, block)

    values = jax.lax.map(one_block, coords)  # (n_blocks, T, block)
    values = jnp.moveaxis(values, 1, 0).reshape(ages.shape[0], -1)[:, :n]
    return values.reshape(ages.shape[0], *spatial_shape)


_reconstruct = jax.jit(reconstruct, static_argnums=(2, 3, 4))


def reconstruction_block(cfg: st.INRConfig, num_ages: int, shape: tuple[int, ...], budget: Budget) -> int:
    """Voxels per block of `reconstruct` (one subject at `num_ages` ages) that fit `budget`."""
    ages = jax.ShapeDtypeStruct((num_ages,), jnp.float32)
    program = Program(lambda blk: _reconstruct.trace(abstract_params(cfg), ages, shape, cfg, blk),
                      ("reconstruct", cfg, num_ages, shape), (MIN_BLOCK, 2 * MIN_BLOCK))  # fmt: skip
    upper = min(MAX_BLOCK, max(MIN_BLOCK, math.prod(shape)))
    return plan_batch("reconstruction", "voxels per block", budget, upper, program, multiple=MIN_BLOCK).sizes["voxels per block"]


def reconstruct_volumes(params: st.Params, ages: np.ndarray, shape: tuple[int, ...], cfg: st.INRConfig, budget: Budget | None = None) -> np.ndarray:
    """One subject's reconstructions (T, *shape) at `ages` (years), in voxel blocks planned from `budget`."""
    ages = jnp.asarray(ages, jnp.float32)
    block = reconstruction_block(cfg, ages.shape[0], tuple(shape), budget or Budget.resolve())
    return np.asarray(_reconstruct(params, ages, tuple(shape), cfg, block))


def scan_scores(
    recon: Float[Array, "T *spatial"], truth: Float[Array, "T *spatial"]
) -> tuple[Float[Array, " T"], Float[Array, " T"]]:
    """PSNR (dB, data range 2) and SSIM of each reconstructed scan against its scan."""
    psnr = jax.vmap(lambda a, b: metrics.psnr(a, b, DATA_RANGE))(recon, truth)
    ssim = jax.vmap(lambda a, b: metrics.ssim(a, b, DATA_RANGE))(recon, truth)
    return psnr, ssim


@functools.partial(jax.jit, static_argnames=("spatial_shape", "cfg", "block"))
def cohort_scores(
    params: st.Params,
    ages: Float[Array, "n T"],
    volumes: Float[Array, "n T V"],
    mask: Bool[Array, "n T"],
    *,
    spatial_shape: tuple[int, ...],
    cfg: st.INRConfig,
    block: int = 32768,
) -> tuple[Float[Array, "n T"], Float[Array, "n T"]]:
    """PSNR and SSIM of every scan of a chunk (NaN in padding slots); vmapped over subjects."""

    def one(p, a, v):
        recon = reconstruct(p, a, spatial_shape, cfg, block)
        return scan_scores(recon, v.reshape(recon.shape))

    psnr, ssim = jax.vmap(one)(params, ages, volumes)
    return jnp.where(mask, psnr, jnp.nan), jnp.where(mask, ssim, jnp.nan)


def carried_forward_psnr(result, volumes: np.ndarray) -> np.ndarray:
    """(N, T) PSNR (dB) of carrying the previous training scan forward to each held-out scan.

    The no-model prediction of a held-out scan: every scan has its own noise and bias, so
    this shows what is predictable at all. NaN for training scans, padding and held-out
    scans with no training scan before them. `volumes` are the fitted cohort's (N, T, *s).
    """
    out = np.full(result.roles.shape, np.nan)
    for i, t in zip(*np.nonzero(result.roles > ROLES.index("train")), strict=True):
        earlier = [j for j in range(t) if result.roles[i, j] == ROLES.index("train")]
        if earlier:
            out[i, t] = float(metrics.psnr(jnp.asarray(volumes[i, earlier[-1]]), jnp.asarray(volumes[i, t]), DATA_RANGE))
    return out


def role_summary(result, volumes: np.ndarray, groups: tuple[str, ...]) -> list[dict]:
    """Median PSNR/SSIM of a `FitResult` per scan role and group, with a reference.

    For held-out scans the reference is `carried_forward_psnr`. `volumes` are the fitted
    cohort's (N, T, *s).

    **Returns:** one dict per (role, group) present: role, group, n, psnr, ssim, carried_forward_psnr.
    """
    carried = carried_forward_psnr(result, volumes)
    rows = []
    for role in ROLES[1:]:
        for group in sorted(set(groups), reverse=True):
            sel = (result.roles == ROLES.index(role)) & np.array([g == group for g in groups])[:, None]
            if not sel.any():
                continue
            reference = carried[sel][np.isfinite(carried[sel])]
            rows.append({
                "role": role, "group": group, "n": int(sel.sum()),
                "psnr": float(np.median(result.psnr[sel])), "ssim": float(np.median(result.ssim[sel])),
                "carried_forward_psnr": float(np.median(reference)) if reference.size else float("nan"),
            })  # fmt: skip
    return rows
