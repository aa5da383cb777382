"""Rigid / affine registration of image pairs: one pure function, batched over a chunk of pairs.

`register_pair(fixed, moving, fixed_affine, moving_affine, key, cfg)` estimates the
world transform T (fixed point -> moving point, `io.transforms`'s convention) with
`moving(T(x)) ~ fixed(x)`:

1. Start: the translation between the images' centres of mass (as ANTs'
   `--initial-moving-transform [fixed, moving, 1]`), rotations about the fixed
   image's centre of mass (`parameters.py`).
2. A pyramid, coarse to fine (`pyramid.py`): both images smoothed by a Gaussian
   per level and the same number of random sub-voxel points drawn on the fixed grid
   at every level; the moving image is read at the mapped points through both NIfTI
   affines (fixed voxel -> world -> T -> moving voxel), trilinear and differentiable.
   Points that map outside the moving image get weight 0.
3. A fixed number of iterations per level, all levels in one `jax.lax.scan`:
   Levenberg-Marquardt on the (intensity-modulated) NCC residuals (J from
   `jax.linearize`; a step is kept only if it lowers the cost, else lambda grows;
   Gauss-Newton's J^T J is the curvature of a sum of squares, so a handful of steps
   per level converge), or Adam on 1 - NCC / -MI with per-level learning rates in mm.
4. Affine: the rigid result starts an affine stage on the same pyramid.

Everything is shape-static, so `align_pairs` compiles once per chunk shape and
`register_pairs` runs any number of pairs in chunks of `cfg.chunk_size`.
"""

from __future__ import annotations

import functools
import itertools
import math
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jaxtyping import Array, Float

from longbrain_jax.align import parameters as P
from longbrain_jax.align.config import AlignConfig
from longbrain_jax.align.pyramid import Levels, make_levels, sample, voxel_positions
from longbrain_jax.align.similarity import mutual_information, ncc
from longbrain_jax.engine.training import optimiser_update
from longbrain_jax.grid import voxel_to_world
from longbrain_jax.memory import Budget, Program, plan_batch


class PairResult(NamedTuple):
    """One pair's alignment (with a leading pair axis when batched).

    **Fields:** `matrix` (4, 4) world transform, fixed point -> moving point;
    `params` (P,) its parameters (`parameters.py`, the last stage's model); `centre`
    (3,) world mm, the fixed image's centre of mass (the centre of rotation);
    `radius` () mm; `before`, `after` () the metric (NCC, or MI in nats) at the
    identity and at the result, on the finest level's points.
    """

    matrix: Float[Array, "4 4"]
    params: Float[Array, " P"]
    centre: Float[Array, "3"]
    radius: Float[Array, ""]
    before: Float[Array, ""]
    after: Float[Array, ""]


def centre_of_mass(image: Float[Array, "*spatial"], affine: Float[Array, "4 4"]) -> tuple[jnp.ndarray, jnp.ndarray]:
    """World centre of mass (3,) and RMS radius () in mm of the image's above-mean intensity.

    Weights max(I - mean(I), 0): the head counts, the noisy background hardly does.
    """
    w = jnp.maximum(image - jnp.mean(image), 0.0)
    w = w / jnp.maximum(jnp.sum(w), 1e-12)
    world = voxel_to_world(voxel_positions(image.shape), affine)
    centre = jnp.tensordot(w, world, axes=image.ndim)
    radius = jnp.sqrt(jnp.sum(w * jnp.sum((world - centre) ** 2, axis=-1)))
    return centre, jnp.maximum(radius, 1.0)


class _Problem(NamedTuple):
    """What the optimisers need besides the parameters and the level."""

    geometry: P.Geometry
    fixed_affine: jax.Array
    moving_inverse: jax.Array
    ranges: tuple  # ((lo, hi) fixed, (lo, hi) moving) intensity ranges for MI


def _level(levels: Levels, k) -> Levels:
    """Level `k` (traced) of the stacked pyramid."""
    return jax.tree_util.tree_map(lambda a: a[k], levels)


def _mapped(params, level: Levels, problem: _Problem, transform: str):
    """Moving values at one level's points under `params`, and the in-image weights (N,)."""
    d = level.points.shape[-1]
    g = problem.moving_inverse @ P.to_matrix(params, problem.geometry, transform, d) @ problem.fixed_affine
    index = level.points @ g[:d, :d].T + g[:d, 3]  # fixed voxel -> moving voxel
    size = jnp.asarray(level.moving.shape[:d], jnp.float32)
    inside = jnp.all((index >= 0.0) & (index <= size - 1.0), axis=-1).astype(jnp.float32)
    return sample(level.moving, index), jax.lax.stop_gradient(inside)


def _similarity(params, level: Levels, problem: _Problem, transform: str, cfg: AlignConfig):
    values, weights = _mapped(params, level, problem, transform)
    if cfg.metric == "ncc":
        return ncc(level.fixed, values, weights)
    return mutual_information(level.fixed, values, weights, *problem.ranges, cfg.bins)


def polynomial_basis(points: Float[Array, "N D"], shape: tuple[int, ...], degree: int) -> Float[Array, "N K"]:
    """Monomials of total degree <= `degree` of the points' coordinates scaled to [-1, 1] over the grid."""
    half = jnp.maximum((jnp.asarray(shape, jnp.float32) - 1.0) / 2.0, 1.0)
    x = (points - half) / half
    columns = [jnp.ones(points.shape[:1], points.dtype)]
    for k in range(1, degree + 1):
        for combo in itertools.combinations_with_replacement(range(points.shape[-1]), k):
            columns.append(functools.reduce(lambda a, j: a * x[:, j], combo, jnp.ones(points.shape[:1], points.dtype)))
    return jnp.stack(columns, axis=-1)


def _schedule(iterations: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """Per iteration of the flattened pyramid: its level and whether it is the level's first (an evaluation only)."""
    level = np.concatenate([np.full(n + 1, k) for k, n in enumerate(iterations) if n > 0]).astype(np.int32)
    first = np.concatenate([[True] + [False] * n for n in iterations if n > 0])
    return level, first


def _lm(params, levels: Levels, problem: _Problem, transform: str, cfg: AlignConfig, shape: tuple[int, ...]):
    """Levenberg-Marquardt (variable projection) on intensity-modulated residuals, through every level.

    At each level the fixed values are fitted by the moving ones under a smooth
    intensity map, f ~ sum_k b_k phi_k(x) + m(T x) sum_k a_k phi_k(x), phi the monomials
    of degree <= `cfg.bias_degree` (K of them). With phi = 1 this is a linear
    regression of f on m, whose residual variance is 1 - NCC^2, so the optimum is
    global NCC's; low-degree polynomials also absorb the two scans' different smooth
    bias fields, which pull a global NCC a few tenths of a mm off (on the simulator's
    2 mm scans, 13 follow-ups: median translation error 0.31 mm with phi = 1, 0.09 mm
    with degree 2; on another 14, 0.16 mm with degree 2 and 0.12 mm with degree 3).
    (a, b) are solved exactly for each T (weighted least squares) and J is Kaufman's
    projected Jacobian (Golub & Pereyra, Inverse Problems 19, 2003). A step is kept
    only if it lowers the cost, else lambda grows; each level starts by evaluating
    the previous level's result. Returns the best parameters of the last level.
    """

    bases = jax.vmap(lambda p: polynomial_basis(p, shape, cfg.bias_degree))(levels.points)  # (L, N, K), once

    def evaluate(theta, level: Levels, basis):
        k, f = basis.shape[-1], level.fixed
        (m, v), jvp = jax.linearize(lambda t: _mapped(t, level, problem, transform), theta)
        dm = jax.vmap(lambda t: jvp(t)[0], out_axes=1)(jnp.eye(theta.shape[0], dtype=theta.dtype))  # (N, P)
        w = v / jnp.maximum(jnp.sum(v), 1.0)
        x = jnp.concatenate([basis, basis * m[:, None]], axis=1)  # (N, 2K)
        xw = x * w[:, None]
        gram = xw.T @ x
        factor = jax.scipy.linalg.cho_factor(gram + 1e-6 * jnp.trace(gram) / (2 * k) * jnp.eye(2 * k))
        coef = jax.scipy.linalg.cho_solve(factor, xw.T @ f)
        r = f - x @ coef
        jac = -dm * (basis @ coef[k:])[:, None]  # d r / d theta at fixed coefficients
        jac = jac - x @ jax.scipy.linalg.cho_solve(factor, xw.T @ jac)  # Kaufman: project out the intensity model
        scale = jnp.sum(w * (f - jnp.sum(w * f)) ** 2) + 1e-12  # costs relative to the fixed variance
        wj = (w / scale)[:, None] * jac
        return 0.5 * jnp.sum(w * r**2) / scale, wj.T @ jac, wj.T @ r

    def step(state, xs):
        k, first = xs
        best, best_cost, hessian, gradient, lam = state
        diag = jnp.diag(hessian)
        damped = hessian + jnp.diag(lam * diag + 1e-9 * (jnp.max(diag) + 1e-12))
        trial = jnp.where(first, best, best - jax.scipy.linalg.cho_solve(jax.scipy.linalg.cho_factor(damped), gradient))
        cost, h, g = evaluate(trial, _level(levels, k), bases[k])
        better = first | (cost < best_cost)  # a level's first evaluation sets its reference cost
        pick = lambda a, b: jnp.where(better, a, b)  # noqa: E731
        lam = jnp.where(first, cfg.damping, jnp.clip(jnp.where(better, lam * 0.3, lam * 8.0), 1e-7, 1e7))
        return (pick(trial, best), pick(cost, best_cost), pick(h, hessian), pick(g, gradient), lam), None

    p = params.shape[0]
    start = (params, jnp.float32(jnp.inf), jnp.eye(p, dtype=params.dtype), jnp.zeros_like(params), jnp.float32(cfg.damping))
    level, first = _schedule(cfg.level_iterations)
    state, _ = jax.lax.scan(step, start, (jnp.asarray(level), jnp.asarray(first)))
    return state[0]


def _adam(params, levels: Levels, problem: _Problem, transform: str, cfg: AlignConfig):
    """Adam on -similarity through every level; each level's learning rate (mm) decays to 1% along a cosine."""
    tx = optax.scale_by_adam()
    level, first = _schedule(cfg.level_iterations)
    rates = np.concatenate(
        [[0.0] + [cfg.learning_rate / 2**k * (0.01 + 0.99 * 0.5 * (1 + np.cos(np.pi * i / n))) for i in range(n)]
         for k, n in enumerate(cfg.level_iterations) if n > 0]
    ).astype(np.float32)  # fmt: skip

    def step(carry, xs):
        k, fresh, rate = xs
        theta, opt = carry
        opt = jax.tree_util.tree_map(lambda a, b: jnp.where(fresh, a, b), tx.init(theta), opt)  # new level: new moments
        loss = lambda t: -_similarity(t, _level(levels, k), problem, transform, cfg)  # noqa: E731
        update, opt = optimiser_update(tx, jax.grad(loss)(theta), opt, theta)
        return (theta - rate * update, opt), None

    (params, _), _ = jax.lax.scan(step, (params, tx.init(params)), (jnp.asarray(level), jnp.asarray(first), jnp.asarray(rates)))
    return params


def register_pair(
    fixed: Float[Array, "*fixed"],
    moving: Float[Array, "*moving"],
    fixed_affine: Float[Array, "4 4"],
    moving_affine: Float[Array, "4 4"],
    key: jax.Array,
    cfg: AlignConfig,
    transform: str | None = None,
) -> PairResult:
    """Align one pair (module docstring); pure, jit- and vmap-safe.

    **Arguments:**

    - `fixed`, `moving`: (*spatial) float32 images, 2D or 3D (the same D; shapes may differ).
    - `fixed_affine`, `moving_affine`: (4, 4) voxel -> world (RAS+ mm).
    - `key`: PRNG key of the random point samples.
    - `cfg`: see `AlignConfig`; `transform` overrides `cfg.transform`.

    **Returns:** a `PairResult`.
    """
    transform = transform or cfg.transform
    d = fixed.ndim
    fixed, moving = jnp.asarray(fixed, jnp.float32), jnp.asarray(moving, jnp.float32)
    fixed_affine = jnp.asarray(fixed_affine, jnp.float32)
    moving_affine = jnp.asarray(moving_affine, jnp.float32)
    centre, radius = centre_of_mass(fixed, fixed_affine)
    geometry = P.Geometry(centre, P.image_frame(fixed_affine, d), radius)
    ranges = ((jnp.min(fixed), jnp.max(fixed)), (jnp.min(moving), jnp.max(moving)))
    problem = _Problem(geometry, fixed_affine, P.affine_inverse(moving_affine), ranges)
    params = jnp.zeros((P.num_parameters("rigid", d),), jnp.float32)
    if cfg.centre_of_mass:
        moving_centre, _ = centre_of_mass(moving, moving_affine)
        params = P.translation_only(moving_centre - centre, geometry, "rigid", d)
    levels = make_levels(fixed, moving, cfg.smoothing_sigmas, cfg.samples, key)
    stages = ("rigid",) if transform == "rigid" else ("rigid", "affine")
    for stage in stages:
        if stage == "affine":
            params = P.rigid_to_affine(params, geometry, d)
        if cfg.method == "lm":
            params = _lm(params, levels, problem, stage, cfg, fixed.shape)
        else:
            params = _adam(params, levels, problem, stage, cfg)
    finest = _level(levels, len(cfg.smoothing_sigmas) - 1)
    before, after = jax.vmap(lambda theta: _similarity(theta, finest, problem, stages[-1], cfg))(jnp.stack([jnp.zeros_like(params), params]))
    return PairResult(P.to_matrix(params, geometry, stages[-1], d), params, centre, radius, before, after)


def batch_mode(cfg: AlignConfig) -> str:
    """'vmap' or 'map': `cfg.batch` with 'auto' resolved (map on CPU, where XLA's batched gathers are slow)."""
    if cfg.batch != "auto":
        return cfg.batch
    return "map" if jax.default_backend() == "cpu" else "vmap"


@functools.partial(jax.jit, static_argnames=("cfg", "transform"))
def align_pairs(
    fixed: Float[Array, "C ..."],
    moving: Float[Array, "C ..."],
    fixed_affine: Float[Array, "C 4 4"],
    moving_affine: Float[Array, "C 4 4"],
    keys: jax.Array,
    cfg: AlignConfig,
    transform: str | None = None,
) -> PairResult:
    """`register_pair` of a chunk of C pairs in one compiled program (a leading pair axis everywhere).

    A clean function of fixed-shape arrays, so a memory planner may choose C freely.
    Pairs are batched by `jax.vmap` or, on CPU by default, `jax.lax.map` (`AlignConfig.batch`);
    the results agree to float rounding.
    """
    one = lambda f, m, fa, ma, k: register_pair(f, m, fa, ma, k, cfg, transform)  # noqa: E731
    args = (fixed, moving, fixed_affine, moving_affine, keys)
    if batch_mode(cfg) == "vmap":
        return jax.vmap(one)(*args)
    return jax.lax.map(lambda a: one(*a), args)


def pairs_per_program(cfg: AlignConfig, shape: tuple[int, ...], upper: int, transform: str | None = None, budget: Budget | None = None) -> int:
    """Pairs aligned by one program (at most `upper`) under `budget` (default: the current one);
    on the host, each pair's two images are also held while the chunk is prepared."""
    s = jax.ShapeDtypeStruct

    def trace(c):
        img, aff = s((c, *shape), jnp.float32), s((c, 4, 4), jnp.float32)
        return align_pairs.trace(img, img, aff, aff, jax.random.split(jax.random.key(0), c), cfg.program(), transform)

    program = Program(trace, ("align", cfg.program(), shape, transform))
    host = lambda c: 3 * 2 * 4 * math.prod(shape) * c  # noqa: E731  (read, converted, on the device)
    return plan_batch("align", "pairs per program", budget or Budget.resolve(), upper, program, host).sizes["pairs per program"]


def register_pairs(
    fixed: np.ndarray | Callable[[np.ndarray], np.ndarray],
    moving: np.ndarray | Callable[[np.ndarray], np.ndarray],
    fixed_affines: np.ndarray,
    moving_affines: np.ndarray,
    keys: jax.Array,
    cfg: AlignConfig,
    transform: str | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, np.ndarray]:
    """Align n pairs in chunks of `cfg.chunk_size` (the last chunk padded by repeating its last pair).

    **Arguments:**

    - `fixed`, `moving`: (n, *spatial) arrays, or functions returning the (c, *spatial)
      images of an index array (so only one chunk needs to be in memory).
    - `fixed_affines`, `moving_affines`: (n, 4, 4); `keys`: (n,) PRNG keys.
    - `transform`: overrides `cfg.transform`.
    - `progress`: called as `progress(done, n)` after each chunk.

    **Returns:** the `PairResult` fields as numpy arrays with a leading axis of n.
    """
    n = len(fixed_affines)
    if n == 0:
        raise ValueError("no pairs to align")
    take = lambda src, idx: np.asarray(src(idx) if callable(src) else src[idx], np.float32)  # noqa: E731
    out: dict[str, list[np.ndarray]] = {name: [] for name in PairResult._fields}
    shape = tuple(take(fixed, np.arange(1)).shape[1:])
    c = pairs_per_program(cfg, shape, min(cfg.chunk_size, n), transform)
    if progress is not None:
        progress(0, n)
    for start in range(0, n, c):
        real = np.arange(start, min(start + c, n))
        idx = np.concatenate([real, np.full(c - real.size, real[-1])])
        result = align_pairs(
            jnp.asarray(take(fixed, idx)),
            jnp.asarray(take(moving, idx)),
            jnp.asarray(np.asarray(fixed_affines)[idx], jnp.float32),
            jnp.asarray(np.asarray(moving_affines)[idx], jnp.float32),
            keys[idx],
            cfg.program(),
            transform,
        )
        for name, value in result._asdict().items():
            out[name].append(np.asarray(value)[: real.size])
        if progress is not None:
            progress(int(real[-1]) + 1, n)
    return {name: np.concatenate(values) for name, values in out.items()}
