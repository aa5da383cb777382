"""Forecasters with one interface: scans observed at some ages -> predicted scans at other ages.

Every forecaster takes a cohort's scans `volumes` (N, T, *spatial), `ages` (N, T) and a
`known` mask (N, T) of the scans it may use (the others are to be predicted; slot 0,
the baseline, is always known), and returns a `Forecast` with a prediction in every
slot (the known ones included, where the method reproduces them).

- `last_observation`: the most recent known scan at or before the target age (the
  first known scan before it): the floor every learned method must beat.
- `voxelwise_linear`: a least-squares line in age per voxel over the known scans
  (the last observation where only one is known).
- `mrextrap`: encode the known scans, a line per subject in latent space
  (`latent.mrextrap`, with a population slope prior by default), decode at the target.
- `noder`: a neural ODE on deformations per subject (`latent.noder`) fitted to the
  known scans; predicts the most recent known scan (or, as the paper, the baseline)
  warped by the flow from its time to the target, and its carried label map.
- `spatiotemporal_inr`: the cohort-fitting INR (`fit.fit_cohort`) trained on the
  known scans, evaluated at the target ages.
"""

from __future__ import annotations

import dataclasses
import tempfile
import time
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from longbrain_jax.latent import autoencoder as ae
from longbrain_jax.latent import mrextrap, noder


class Forecast(NamedTuple):
    """Predicted scans (N, T, *spatial), labels where the method carries them, wall time (s), extras."""

    images: np.ndarray
    labels: np.ndarray | None
    seconds: float
    extra: dict[str, Any]


def _check(volumes: np.ndarray, ages: np.ndarray, known: np.ndarray) -> None:
    if volumes.shape[:2] != ages.shape or ages.shape != known.shape:
        raise ValueError(f"volumes {volumes.shape[:2]}, ages {ages.shape} and known {known.shape} disagree")
    if not np.all(known[:, 0]):
        raise ValueError("every subject's baseline (slot 0) must be a known scan")


def last_observation(volumes: np.ndarray, ages: np.ndarray, known: np.ndarray, labels: np.ndarray | None = None) -> Forecast:
    """Last observation carried forward (see the module docstring); with `labels` (N, T, *spatial)
    of the scans, the label map of that scan is carried too (the Dice floor for label-carrying methods)."""
    _check(volumes, ages, known)
    start = time.perf_counter()
    source = _last_known_slot(ages, known)
    rows = np.arange(known.shape[0])[:, None]
    carried = None if labels is None else labels[rows, source]
    return Forecast(volumes[rows, source], carried, time.perf_counter() - start, {})


def _last_known_slot(ages: np.ndarray, known: np.ndarray) -> np.ndarray:
    """(N, T) slot of the most recent known scan at or before each slot's age (the baseline if none)."""
    n, t = known.shape
    source = np.zeros((n, t), np.int64)
    for i in range(n):
        for j in range(t):
            before = np.flatnonzero(known[i] & (ages[i] <= ages[i, j]))
            source[i, j] = before[-1] if before.size else 0
    return source


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


def mrextrap_forecast(
    model: MRExtrapModel, volumes: np.ndarray, ages: np.ndarray, known: np.ndarray,
    groups: tuple[str, ...] | None = None, prior_scans: np.ndarray | None = None,
) -> Forecast:  # fmt: skip
    """MRExtrap (see the module docstring).

    The slope prior of each subject is estimated from the OTHER subjects' scans in
    `prior_scans` (default `known`; leave-one-subject-out, so no subject informs its own
    prior), restricted to the subject's group with the "group" prior.
    """
    _check(volumes, ages, known)
    start = time.perf_counter()
    n, t = known.shape
    shape = volumes.shape[2:]
    z = ae.encode_scans(model.params, volumes.reshape(n * t, *shape), model.cfg).reshape(n, t, -1)
    z, a, k = jnp.asarray(z), jnp.asarray(ages), jnp.asarray(known)
    if model.prior == "none":
        lines = mrextrap.fit_lines(z, a, k)
    else:
        pool = jnp.asarray(known if prior_scans is None else prior_scans)
        labels = np.asarray(groups if model.prior == "group" and groups is not None else ("",) * n)
        priors = []
        for i in range(n):
            others = np.flatnonzero((labels == labels[i]) & (np.arange(n) != i))
            priors.append(mrextrap.estimate_prior(z[others], a[others], pool[others]))
        prior = mrextrap.SlopePrior(*(jnp.stack(f) for f in zip(*priors, strict=True)))
        lines = mrextrap.fit_lines_with_prior(z, a, k, prior)
    latents = np.asarray(mrextrap.predict(lines, a)).reshape(n * t, *ae.latent_shape(shape, model.cfg))
    images = ae.decode_latents(model.params, latents, model.cfg, shape).reshape(volumes.shape)
    return Forecast(images, None, time.perf_counter() - start, {})


def noder_forecast(
    volumes: np.ndarray, ages: np.ndarray, known: np.ndarray, labels: np.ndarray | None, cfg: noder.NODERConfig,
    source: str = "last",
) -> Forecast:  # fmt: skip
    """NODER fitted on the known scans of every subject at once.

    `source`: "last" warps the most recent known scan at or before each target (the
    one `last_observation` carries) by the flow from its time, "baseline" warps the
    baseline by the whole flow (the paper's). `labels` (N, T, *spatial) of the scans
    are carried the same way (only those of known scans are read).
    """
    _check(volumes, ages, known)
    if source not in ("last", "baseline"):
        raise ValueError(f"source must be 'last' or 'baseline', got {source!r}")
    start = time.perf_counter()
    times = ages - ages[:, :1]
    params, history = noder.fit_cohort(volumes, times, known, cfg)
    carry = labels if labels is not None else np.zeros(volumes.shape, np.int32)
    if source == "baseline":
        images, carried, folding = noder.predict(params, volumes[:, 0], carry[:, 0], times, cfg)
    else:
        slot = _last_known_slot(ages, known)
        rows = np.arange(len(slot))[:, None]
        order = np.argsort(times, axis=1, kind="stable")  # the flow is solved at non-decreasing times
        back = np.argsort(order, axis=1)
        sort = lambda a: np.take_along_axis(a, order.reshape(order.shape + (1,) * (a.ndim - 2)), axis=1)  # noqa: E731
        unsort = lambda a: np.take_along_axis(a, back.reshape(back.shape + (1,) * (a.ndim - 2)), axis=1)  # noqa: E731
        pred = noder.predict(params, sort(volumes[rows, slot]), sort(carry[rows, slot]), sort(times), cfg, sort(times[rows, slot]))
        images, carried, folding = map(unsort, pred)
    extra = {"folding": folding, "final_loss": history[-1] if len(history) else None}
    return Forecast(images, carried if labels is not None else None, time.perf_counter() - start, extra)


def inr_forecast(cohort, known: np.ndarray, fit_cfg) -> Forecast:
    """The spatiotemporal INR of cohort fitting, trained on the known scans only (`cohort` is a `Cohort`)."""
    from longbrain_jax.fit import fit_cohort
    from longbrain_jax.fit.evaluate import reconstruct_volumes

    _check(cohort.volumes, cohort.ages, known)
    start = time.perf_counter()
    sub = known_scans(cohort, known)
    with tempfile.TemporaryDirectory() as tmp:
        result = fit_cohort(sub, f"{tmp}/fit", dataclasses.replace(fit_cfg, holdout="none"))
    shape = cohort.spatial_shape
    images = np.stack([
        reconstruct_volumes(jax.tree_util.tree_map(lambda x, i=i: x[i], result.params), cohort.ages[i], shape, fit_cfg.inr)
        for i in range(cohort.num_subjects)
    ])  # fmt: skip
    return Forecast(images, None, time.perf_counter() - start, {})


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
