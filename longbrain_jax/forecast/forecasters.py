"""Forecasters with one interface: scans observed at some ages -> predicted scans at other ages.

Every forecaster is registered in `FORECASTERS` under its name and used in two steps:
`prepare(context)` trains what it shares across the cohort (MRExtrap's latent lines and
slope prior, the cohort's INRs) and returns its state; `predict(state, chunk)` forecasts
one chunk of subjects, `chunk.known` (n, T) marking the scans it may use (slot 0, the
baseline, always known). A `Forecast` holds a prediction in every slot of the chunk.

- `last_observation`: the most recent known scan at or before the target age (the
  first known scan before it): the floor every learned method must beat.
- `voxelwise_linear`: a least-squares line in age per voxel over the known scans
  (the last observation where only one is known).
- `mrextrap`: encode the known scans, a line per subject in latent space
  (`latent.mrextrap`, with a population slope prior by default, estimated from the
  other subjects), decode at the target.
- `noder`: a neural ODE on deformations per subject (`longbrain_jax.noder`) fitted to the
  known scans; predicts the most recent known scan (or, as the paper, the baseline)
  warped by the flow from its time to the target, and its carried label map.
- `inr`: the cohort-fitting INR (`fit.fit_cohort`) trained on the known scans,
  evaluated at the target ages.
- `diffusion`: the 4D deformation diffusion model (`longbrain_jax.diffusion`), trained on
  the known scans (or loaded, `ForecastConfig.diffusion_model`: one trained on a larger
  separate cohort); from the baseline alone it draws `samples` velocity sequences at the
  target ages and warps the baseline (and its labels) by the exponential of their mean
  (a mean of SVFs is an SVF: the prediction stays diffeomorphic).

A new forecaster is a class with `name`, `carries_labels`, `cheap` (refitted for the
curve of error against scans used), `prepare` and `predict`, added to `FORECASTERS`.
"""

from __future__ import annotations

import dataclasses
import tempfile
import time
from typing import Any, NamedTuple, Protocol

import jax
import jax.numpy as jnp
import numpy as np

from longbrain_jax import noder
from longbrain_jax.cohort import Cohort
from longbrain_jax.latent import autoencoder as ae
from longbrain_jax.latent import mrextrap
from longbrain_jax.memory import Budget


class Forecast(NamedTuple):
    """Predicted scans (n, T, *spatial), labels where the method carries them, wall time (s), extras."""

    images: np.ndarray
    labels: np.ndarray | None
    seconds: float
    extra: dict[str, Any]


@dataclasses.dataclass(frozen=True)
class Chunk:
    """Some subjects of the cohort: `cohort` holds their scans (and labels), `indices` (n,) their
    places in the whole cohort, `known` (n, T) the scans a forecaster may use."""

    cohort: Cohort
    indices: np.ndarray
    known: np.ndarray

    @property
    def ages(self) -> np.ndarray:
        """(n, T) ages with padding slots set to the subject's last age (every slot a valid target)."""
        c = self.cohort
        last = c.ages[np.arange(c.num_subjects), c.num_scans - 1]
        return np.where(c.mask, c.ages, last[:, None]).astype(np.float32)


@dataclasses.dataclass(frozen=True)
class Context:
    """What `prepare` may use: the cohort (a `Cohort` or a streamed `BIDSDataset`), the known
    scans (N, T), the experiment's config, the trained autoencoder (MRExtrap) and the budget."""

    source: Any
    known: np.ndarray
    cfg: Any
    autoencoder: MRExtrapModel | None
    budget: Budget
    chunk_size: int


class Forecaster(Protocol):
    name: str
    carries_labels: bool
    cheap: bool

    def prepare(self, ctx: Context) -> Any: ...

    def predict(self, state: Any, chunk: Chunk) -> Forecast: ...


def _check(volumes: np.ndarray, ages: np.ndarray, known: np.ndarray) -> None:
    if volumes.shape[:2] != ages.shape or ages.shape != known.shape:
        raise ValueError(f"volumes {volumes.shape[:2]}, ages {ages.shape} and known {known.shape} disagree")
    if not np.all(known[:, 0]):
        raise ValueError("every subject's baseline (slot 0) must be a known scan")


def last_known_slot(ages: np.ndarray, known: np.ndarray) -> np.ndarray:
    """(N, T) slot of the most recent known scan at or before each slot's age (the baseline if none)."""
    n, t = known.shape
    source = np.zeros((n, t), np.int64)
    for i in range(n):
        for j in range(t):
            before = np.flatnonzero(known[i] & (ages[i] <= ages[i, j]))
            source[i, j] = before[-1] if before.size else 0
    return source


def last_observation(volumes: np.ndarray, ages: np.ndarray, known: np.ndarray, labels: np.ndarray | None = None) -> Forecast:
    """Last observation carried forward (see the module docstring); with `labels` (N, T, *spatial)
    of the scans, the label map of that scan is carried too (the Dice floor for label-carrying methods)."""
    _check(volumes, ages, known)
    start = time.perf_counter()
    source = last_known_slot(ages, known)
    rows = np.arange(known.shape[0])[:, None]
    carried = None if labels is None else labels[rows, source]
    return Forecast(volumes[rows, source], carried, time.perf_counter() - start, {})


def voxelwise_linear(volumes: np.ndarray, ages: np.ndarray, known: np.ndarray) -> Forecast:
    """Per-voxel least-squares line in age over the known scans (see the module docstring)."""
    _check(volumes, ages, known)
    start = time.perf_counter()
    n, t = known.shape
    flat = volumes.reshape(n, t, -1)
    lines = mrextrap.fit_lines(jnp.asarray(flat), jnp.asarray(ages), jnp.asarray(known))
    pred = np.asarray(mrextrap.predict(lines, jnp.asarray(ages))).reshape(volumes.shape)
    return Forecast(pred, None, time.perf_counter() - start, {})


@dataclasses.dataclass(frozen=True)
class MRExtrapModel:
    """A trained autoencoder and how to regress in its latent space.

    - `prior`: "population" (a slope prior from the known scans of the whole cohort, so
      one scan suffices), "group" (one prior per group label) or "none" (plain least
      squares, MRExtrap's original; needs >= 2 known scans).
    """

    params: Any
    cfg: ae.AutoencoderConfig
    prior: str = "population"


def slope_priors(model: MRExtrapModel, latents: np.ndarray, ages: np.ndarray, pool: np.ndarray, groups, subjects: np.ndarray) -> mrextrap.SlopePrior:
    """The slope prior of each of `subjects` from the OTHER subjects' latents (N, T, L) at the `pool`
    scans (leave-one-subject-out, so no subject informs its own prior); within its group for "group"."""
    n = latents.shape[0]
    labels = np.asarray(groups if model.prior == "group" and groups is not None else ("",) * n)
    z, a, k = jnp.asarray(latents), jnp.asarray(ages), jnp.asarray(pool)
    priors = []
    for i in subjects:
        others = np.flatnonzero((labels == labels[i]) & (np.arange(n) != i))
        priors.append(mrextrap.estimate_prior(z[others], a[others], k[others]))
    return mrextrap.SlopePrior(*(jnp.stack(f) for f in zip(*priors, strict=True)))


def mrextrap_predict(model: MRExtrapModel, latents: np.ndarray, ages: np.ndarray, known: np.ndarray, prior: mrextrap.SlopePrior | None,
                     shape: tuple[int, ...]) -> np.ndarray:  # fmt: skip
    """Decoded scans (n, T, *shape) from each subject's latent line through its `known` latents (n, T, L)."""
    z, a, k = jnp.asarray(latents), jnp.asarray(ages), jnp.asarray(known)
    lines = mrextrap.fit_lines(z, a, k) if prior is None else mrextrap.fit_lines_with_prior(z, a, k, prior)
    n, t = known.shape
    predicted = np.asarray(mrextrap.predict(lines, a)).reshape(n * t, *ae.latent_shape(shape, model.cfg))
    return ae.decode_latents(model.params, predicted, model.cfg, shape).reshape(n, t, *shape)


def mrextrap_forecast(
    model: MRExtrapModel, volumes: np.ndarray, ages: np.ndarray, known: np.ndarray,
    groups: tuple[str, ...] | None = None, prior_scans: np.ndarray | None = None,
) -> Forecast:  # fmt: skip
    """MRExtrap on an in-memory cohort (see the module docstring); priors from `prior_scans` (default `known`)."""
    _check(volumes, ages, known)
    start = time.perf_counter()
    n, t = known.shape
    shape = volumes.shape[2:]
    z = ae.encode_scans(model.params, volumes.reshape(n * t, *shape), model.cfg).reshape(n, t, -1)
    pool = known if prior_scans is None else prior_scans
    prior = None if model.prior == "none" else slope_priors(model, z, ages, pool, groups, np.arange(n))
    images = mrextrap_predict(model, z, ages, known, prior, tuple(shape))
    return Forecast(images, None, time.perf_counter() - start, {})


def noder_forecast(
    volumes: np.ndarray, ages: np.ndarray, known: np.ndarray, labels: np.ndarray | None, cfg: noder.NODERConfig,
    source: str = "last", budget: Budget | None = None,
) -> Forecast:  # fmt: skip
    """NODER fitted on the known scans of every subject (vmapped in groups that fit `budget`).

    `source`: "last" warps the most recent known scan at or before each target (the
    one `last_observation` carries) by the flow from its time, "baseline" warps the
    baseline by the whole flow (the paper's). `labels` (N, T, *spatial) of the scans
    are carried the same way (only those of known scans are read).
    """
    _check(volumes, ages, known)
    if source not in ("last", "baseline"):
        raise ValueError(f"source must be 'last' or 'baseline', got {source!r}")
    start = time.perf_counter()
    times = np.maximum(ages - ages[:, :1], 0.0)  # padding slots (age 0) at the baseline
    slots = np.zeros(known.shape, np.int32) if source == "baseline" else last_known_slot(ages, known)
    images = np.empty(volumes.shape, np.float32)
    carried = None if labels is None else np.empty(labels.shape, labels.dtype)
    folding, final_loss = np.empty(known.shape, np.float32), np.empty(len(known), np.float32)
    outputs = images.nbytes + folding.nbytes + (0 if carried is None else carried.nbytes)  # filled while groups train
    for sel, params, history in noder.fit_groups(volumes, times, known, cfg, budget=budget, host_bytes=outputs):  # each group's networks predict, then go
        if sel.start == 0:  # planned once, with the first group's programs already resident
            noder.plan_prediction(cfg, volumes.shape[2:], volumes.shape[1], volumes.shape[1], labels is not None, budget or Budget.resolve(), outputs)
        images[sel], group_labels, folding[sel] = noder.predict(params, volumes[sel], None if labels is None else labels[sel],
                                                                times[sel], times[sel], cfg, slots[sel])  # fmt: skip
        if carried is not None:
            carried[sel] = group_labels
        if cfg.iterations:
            final_loss[sel] = history[-1]
    extra = {"folding": folding, "final_loss": final_loss if cfg.iterations else None}
    return Forecast(images, carried, time.perf_counter() - start, extra)


def known_scans(cohort, known: np.ndarray):
    """The `Cohort` of only the `known` scans of each subject (in age order, padded at the end)."""
    keep = cohort.mask & known
    order = np.argsort(~keep, axis=1, kind="stable")
    t = int(keep.sum(1).max())
    take = lambda a: np.take_along_axis(a, order.reshape(order.shape + (1,) * (a.ndim - 2)), axis=1)[:, :t]  # noqa: E731
    sessions = tuple(tuple(s[j] for j in np.flatnonzero(k)) for s, k in zip(cohort.session_ids, keep, strict=True))
    return dataclasses.replace(
        cohort, volumes=take(cohort.volumes), ages=take(cohort.ages), mask=take(keep), session_ids=sessions,
        labels=None if cohort.labels is None else take(cohort.labels),
    )


class KnownScans:
    """A cohort source (`Cohort` or `BIDSDataset`) seen through a `known` mask: `select` returns
    only each subject's known scans, so a streamed driver (`fit.fit_cohort`) trains on them."""

    def __init__(self, source, known: np.ndarray):
        self.source, self.known = source, known & source.mask
        order = np.argsort(~self.known, axis=1, kind="stable")
        self.t = max(int(self.known.sum(1).max()), 1)
        self.mask = np.take_along_axis(self.known, order, axis=1)[:, : self.t]
        self.ages = np.where(self.mask, np.take_along_axis(source.ages, order, axis=1)[:, : self.t], 0.0).astype(np.float32)
        self.affines, self.subject_ids, self.groups = source.affines, tuple(source.subject_ids), tuple(source.groups)
        self.spatial_shape = tuple(source.spatial_shape)

    @property
    def num_subjects(self) -> int:
        return self.mask.shape[0]

    @property
    def max_scans(self) -> int:
        return self.t

    def select(self, indices) -> Cohort:
        idx = np.asarray(indices, dtype=int)
        cohort = self.source.select(idx)
        return known_scans(cohort, self.known[idx][:, : cohort.max_scans])


def inr_fit(source, known: np.ndarray, fit_cfg, budget: Budget | None = None):
    """The spatiotemporal INRs of every subject of `source` fitted on its known scans (stacked params)."""
    from longbrain_jax.fit import fit_cohort

    with tempfile.TemporaryDirectory() as tmp:
        return fit_cohort(KnownScans(source, known), f"{tmp}/fit", dataclasses.replace(fit_cfg, holdout="none"), budget=budget).params


def inr_predict(params, ages: np.ndarray, shape: tuple[int, ...], inr_cfg, budget: Budget | None = None) -> np.ndarray:
    """Reconstructions (n, T, *shape) of each subject's INR (`params` stacked over n) at `ages` (n, T)."""
    from longbrain_jax.fit.evaluate import reconstruct_volumes

    return np.stack([reconstruct_volumes(jax.tree_util.tree_map(lambda x, i=i: x[i], params), ages[i], shape, inr_cfg, budget)
                     for i in range(ages.shape[0])])  # fmt: skip


def inr_forecast(cohort: Cohort, known: np.ndarray, fit_cfg, budget: Budget | None = None) -> Forecast:
    """The spatiotemporal INR of cohort fitting, trained on the known scans only (`cohort` is a `Cohort`)."""
    _check(cohort.volumes, cohort.ages, known)
    start = time.perf_counter()
    params = inr_fit(cohort, known, fit_cfg, budget)
    images = inr_predict(params, cohort.ages, cohort.spatial_shape, fit_cfg.inr, budget)
    return Forecast(images, None, time.perf_counter() - start, {})


# -- the registry ---------------------------------------------------------------------------------
class LastObservation:
    name, carries_labels, cheap = "last_observation", True, True

    def prepare(self, ctx: Context) -> None:
        return None

    def predict(self, state, chunk: Chunk) -> Forecast:
        return last_observation(chunk.cohort.volumes, chunk.ages, chunk.known, chunk.cohort.labels)


class VoxelwiseLinear:
    name, carries_labels, cheap = "voxelwise_linear", False, True

    def prepare(self, ctx: Context) -> None:
        return None

    def predict(self, state, chunk: Chunk) -> Forecast:
        return voxelwise_linear(chunk.cohort.volumes, chunk.ages, chunk.known)


@dataclasses.dataclass(frozen=True)
class _MRExtrapState:
    model: MRExtrapModel
    latents: np.ndarray  # (N, T, L) of the known scans (0 elsewhere)
    ages: np.ndarray  # (N, T) with padding set to the last age
    pool: np.ndarray  # (N, T) scans the priors come from
    groups: tuple[str, ...]


class MRExtrap:
    name, carries_labels, cheap = "mrextrap", False, True

    def prepare(self, ctx: Context) -> _MRExtrapState:
        """Encode every known scan of the cohort once, chunk by chunk (the priors need them all)."""
        source, model = ctx.source, ctx.autoencoder
        n, t = ctx.known.shape
        latents = None
        for start in range(0, n, ctx.chunk_size):
            idx = np.arange(start, min(start + ctx.chunk_size, n))
            cohort = source.select(idx)
            known = ctx.known[idx][:, : cohort.max_scans]
            z = ae.encode_scans(model.params, cohort.volumes[known], model.cfg).reshape(int(known.sum()), -1)
            if latents is None:
                latents = np.zeros((n, t, z.shape[1]), np.float32)
            rows, slots = np.nonzero(known)
            latents[idx[rows], slots] = z
        last = source.ages[np.arange(n), source.mask.sum(1) - 1]
        ages = np.where(source.mask, source.ages, last[:, None]).astype(np.float32)
        return _MRExtrapState(model, latents, ages, ctx.known, tuple(source.groups))

    def predict(self, state: _MRExtrapState, chunk: Chunk) -> Forecast:
        start = time.perf_counter()
        idx, t = chunk.indices, chunk.known.shape[1]
        prior = None if state.model.prior == "none" else slope_priors(state.model, state.latents, state.ages, state.pool, state.groups, idx)
        images = mrextrap_predict(state.model, state.latents[idx, :t], state.ages[idx, :t], chunk.known, prior, chunk.cohort.spatial_shape)
        return Forecast(images, None, time.perf_counter() - start, {})


class NODER:
    name, carries_labels, cheap = "noder", True, False

    def prepare(self, ctx: Context) -> tuple:
        return ctx.cfg.noder, ctx.cfg.noder_source, ctx.budget

    def predict(self, state, chunk: Chunk) -> Forecast:
        cfg, source, budget = state
        return noder_forecast(chunk.cohort.volumes, chunk.ages, chunk.known, chunk.cohort.labels, cfg, source, budget)


class INR:
    name, carries_labels, cheap = "inr", False, False

    def prepare(self, ctx: Context) -> tuple:
        fit_cfg = dataclasses.replace(ctx.cfg.inr, inr=dataclasses.replace(ctx.cfg.inr.inr, ndim=len(ctx.source.spatial_shape)))
        start = time.perf_counter()
        params = inr_fit(ctx.source, ctx.known, fit_cfg, ctx.budget)
        return params, fit_cfg.inr, ctx.budget, time.perf_counter() - start, ctx.known.shape[0]

    def predict(self, state, chunk: Chunk) -> Forecast:
        params, inr_cfg, budget, fit_seconds, n_total = state
        start = time.perf_counter()
        mine = jax.tree_util.tree_map(lambda x: x[chunk.indices], params)
        images = inr_predict(mine, chunk.cohort.ages, chunk.cohort.spatial_shape, inr_cfg, budget)
        seconds = time.perf_counter() - start + fit_seconds * len(chunk.indices) / n_total  # the shared fit, pro rata
        return Forecast(images, None, seconds, {})


class Diffusion:
    name, carries_labels, cheap = "diffusion", True, False

    def prepare(self, ctx: Context) -> tuple:
        from longbrain_jax.diffusion import generate as gen

        start = time.perf_counter()
        if ctx.cfg.diffusion_model:
            model = gen.load_model(ctx.cfg.diffusion_model)
            gen.check_grid(model, ctx.source)
        else:
            model = gen.train_in_memory(ctx.source, ctx.known, ctx.cfg.diffusion, ctx.budget)
        return model, ctx.budget, time.perf_counter() - start, ctx.known.shape[0]

    def predict(self, state, chunk: Chunk) -> Forecast:
        from longbrain_jax.diffusion import generate as gen
        from longbrain_jax.diffusion import model as dm

        model, budget, train_seconds, n_total = state
        start = time.perf_counter()
        c = chunk.cohort
        ages = chunk.ages
        target = ages[:, 1:].copy()
        target[target <= c.ages[:, :1]] = np.nan  # padding slots of one-scan subjects: nothing to draw
        v, _ = gen.generate_velocities(model, c.volumes[:, 0], c.ages[:, 0], target, c.groups, c.sexes, chunk.indices, model.cfg.samples, budget)
        mean = v.mean(1)  # (n, T - 1, *c, D)
        images = np.repeat(c.volumes[:, :1], ages.shape[1], axis=1)
        carry = c.labels if c.labels is not None else np.zeros(c.volumes.shape, np.int32)
        labels = np.repeat(carry[:, :1], ages.shape[1], axis=1)
        folding = np.zeros(ages.shape, np.float32)
        for i in range(c.num_subjects):
            frames = np.flatnonzero(np.isfinite(target[i]))
            if frames.size:
                im, lab, det = dm.scans_from_velocities(mean[i, frames], c.volumes[i, 0], carry[i, 0], model.cfg.svf)
                images[i, frames + 1], labels[i, frames + 1], folding[i, frames + 1] = im, lab, (det <= 0).mean(axis=tuple(range(1, det.ndim)))
        seconds = time.perf_counter() - start + train_seconds * len(chunk.indices) / n_total  # the shared training, pro rata
        return Forecast(images, labels if c.labels is not None else None, seconds, {"folding": folding})


FORECASTERS: dict[str, Forecaster] = {f.name: f for f in (LastObservation(), VoxelwiseLinear(), MRExtrap(), NODER(), INR(), Diffusion())}
