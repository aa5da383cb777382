"""Forecasting: MRExtrap's closed forms, NODER's ODE, the autoencoder, the segmenter, the forecasters."""

import dataclasses
import shutil

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from longbrain_jax import noder
from longbrain_jax import segmenter as sg
from longbrain_jax.forecast import forecasters as fc
from longbrain_jax.latent import autoencoder as ae
from longbrain_jax.latent import mrextrap


def _latent_data(key, n=5, t=4, dims=3):
    k1, k2, k3 = jax.random.split(key, 3)
    ages = 50.0 + jnp.sort(jax.random.uniform(k1, (n, t)) * 25.0, axis=1)
    slope = 0.1 + 0.02 * jax.random.normal(k2, (n, dims))
    z = 1.0 + slope[:, None] * (ages[..., None] - 60.0) + 0.01 * jax.random.normal(k3, (n, t, dims))
    mask = jnp.arange(t)[None] < jnp.array([4, 3, 2, 4, 3])[:, None]
    return z, ages, mask


def test_closed_form_lines_equal_numerical_least_squares(key):
    z, ages, mask = _latent_data(key)
    lines = mrextrap.fit_lines(z, ages, mask)
    for i in range(z.shape[0]):
        m = np.asarray(mask[i])
        design = np.stack([np.ones(m.sum()), np.asarray(ages[i])[m]], axis=1)
        coef, *_ = np.linalg.lstsq(design, np.asarray(z[i])[m], rcond=None)
        np.testing.assert_allclose(lines.slope[i], coef[1], rtol=1e-4, atol=1e-5)
        at = jnp.asarray(ages[i])[None]
        np.testing.assert_allclose(mrextrap.predict(jax.tree_util.tree_map(lambda x, i=i: x[i : i + 1], lines), at)[0],
                                   coef[0] + np.asarray(at).T * coef[1], rtol=1e-4, atol=1e-4)  # fmt: skip


def test_prior_update_reduces_to_least_squares_with_a_flat_prior_and_to_the_prior_with_one_scan(key):
    z, ages, mask = _latent_data(key)
    dims = z.shape[-1]
    flat = mrextrap.SlopePrior(jnp.full(dims, 5.0), jnp.full(dims, 1e12), jnp.full(dims, 1e-4))
    np.testing.assert_allclose(mrextrap.fit_lines_with_prior(z, ages, mask, flat).slope, mrextrap.fit_lines(z, ages, mask).slope, rtol=1e-4)
    prior = mrextrap.estimate_prior(z, ages, mask)
    np.testing.assert_allclose(prior.mean, 0.1, atol=0.03)  # the simulated population slope
    first = jnp.arange(z.shape[1])[None] < 1
    one = mrextrap.fit_lines_with_prior(z, ages, jnp.broadcast_to(first, mask.shape), prior)
    np.testing.assert_allclose(one.slope, jnp.broadcast_to(prior.mean, one.slope.shape), rtol=1e-6)
    np.testing.assert_allclose(mrextrap.predict(one, ages[:, :1])[:, 0], z[:, 0], rtol=1e-6)  # through the scan
    # each scan added shrinks the posterior variance of the slope (the Bayesian update)
    variances = [mrextrap.fit_lines_with_prior(z, ages, jnp.arange(4)[None] < k, prior).slope_var[0] for k in (1, 2, 3, 4)]
    assert all(bool(jnp.all(b < a)) for a, b in zip(variances, variances[1:]))


def test_voxelwise_linear_is_exact_on_linear_data_and_last_observation_carries_forward(key):
    ages = np.array([[50.0, 55.0, 60.0, 70.0]], np.float32)
    base = np.asarray(jax.random.normal(key, (6, 5)), np.float32)
    volumes = (base[None, None] + 0.1 * (ages[..., None, None] - 50.0)).astype(np.float32)
    known = np.array([[True, True, False, False]])
    np.testing.assert_allclose(fc.voxelwise_linear(volumes, ages, known).images, volumes, atol=1e-4)
    locf = fc.last_observation(volumes, ages, np.array([[True, False, True, False]])).images
    np.testing.assert_array_equal(locf[0, [0, 1, 2, 3]], volumes[0, [0, 0, 2, 2]])
    with pytest.raises(ValueError, match="baseline"):
        fc.last_observation(volumes, ages, np.array([[False, True, True, True]]))


# -- NODER -----------------------------------------------------------------------------------------
TINY = noder.NODERConfig(encoder_channels=(2,), latent_size=4, hidden=8, velocity_factor=3, smoothing_sigma=0.5,
                         step_years=0.5, iterations=50, learning_rate=2e-2, time_scale=10.0, velocity_scale=0.01, solver="euler")  # fmt: skip


@jax.jit
def _perturbed(key, params, scale=0.3):
    """params + scale * N(0, 1) noise, one compiled program (the noise drawn flat: see `longbrain_jax.cnn`)."""
    leaves, tree = jax.tree_util.tree_flatten(params)
    keys = jax.random.split(key, len(leaves))
    noise = [jax.random.normal(k, (x.size,), x.dtype).reshape(x.shape) for x, k in zip(leaves, keys)]
    return jax.tree_util.tree_unflatten(tree, [x + scale * n for x, n in zip(leaves, noise)])


def _discs(shape=(16, 16), radii=(3.0, 4.0, 5.0)):
    yy, xx = np.meshgrid(*(np.arange(n) - (n - 1) / 2 for n in shape), indexing="ij")
    r = np.sqrt(yy**2 + xx**2)
    return np.stack([np.tanh(rad - r) for rad in radii]).astype(np.float32)


@pytest.mark.slow  # minutes of compiling on 2 CPU cores
def test_noder_gradients_match_finite_differences(key):
    volumes, times, observed = jnp.asarray(_discs()), jnp.array([0.0, 1.0, 2.0]), jnp.array([True, True, True])
    with jax.enable_x64(True):
        params = jax.tree_util.tree_map(lambda x: x.astype(jnp.float64), _perturbed(key, noder.init(key, (16, 16), TINY)))
        v64 = volumes.astype(jnp.float64)
        loss = jax.jit(lambda p: noder.subject_loss(p, v64, times.astype(jnp.float64), observed, TINY).total)
        grads = jax.jit(jax.grad(loss))(params)
        direction = _perturbed(jax.random.fold_in(key, 1), jax.tree_util.tree_map(jnp.zeros_like, params), 1.0)
        h = 1e-5
        shift = lambda s: jax.tree_util.tree_map(lambda p, d: p + s * d, params, direction)  # noqa: E731
        fd = (loss(shift(h)) - loss(shift(-h))) / (2 * h)
        analytic = sum(jnp.vdot(g, d) for g, d in zip(jax.tree_util.tree_leaves(grads), jax.tree_util.tree_leaves(direction)))
        np.testing.assert_allclose(analytic, fd, rtol=1e-5)
        # forward mode through the solve needs the forward adjoint, and agrees
        fwd = dataclasses.replace(TINY, adjoint="forward")
        forward = lambda p: noder.subject_loss(p, v64, times.astype(jnp.float64), observed, fwd).total  # noqa: E731
        _, tangent = jax.jit(lambda p, d: jax.jvp(forward, (p,), (d,)))(params, direction)
        np.testing.assert_allclose(tangent, fd, rtol=1e-5)


@pytest.mark.slow  # minutes of compiling on 2 CPU cores
def test_noder_fits_a_growing_disc_without_folding_and_vmapped_training_equals_the_loop():
    volumes = _discs()[None].repeat(2, 0)
    volumes[1] = np.roll(volumes[1], 2, axis=-1)  # a second subject whose data differ (the disc is symmetric)
    times = np.array([[0.0, 1.0, 2.0]] * 2, np.float32)
    observed = np.array([[True, True, False]] * 2)
    params, history = noder.fit_cohort(volumes, times, observed, TINY)  # two blocks of 25 steps: one compiled program, reused below
    assert np.all(history[-1] < 0.8 * history[0])
    labels = (volumes > 0).astype(np.int32)
    images, carried, folding = noder.predict(params, volumes, labels, times, times, TINY)
    assert float(folding.max()) == 0.0
    # the held-out (extrapolated) disc is closer than the last observation
    assert np.abs(images[0, 2] - volumes[0, 2]).mean() < np.abs(volumes[0, 1] - volumes[0, 2]).mean()
    assert carried[0, 2].sum() > carried[0, 0].sum()  # the carried label grows with the disc
    # resampling a source scan: from a scan at the target's own time, phi_s^-1 o phi_t is the
    # identity up to the inversion's accuracy; targets and sources in any order give the same maps
    slots = np.tile(np.arange(3), (2, 1))
    same = noder.predict(params, volumes, labels, times, times, TINY, slots)
    assert np.abs(same[0] - volumes).mean() < 0.05 * np.abs(images[:, 2] - volumes[:, 0]).mean()  # measured: 0.004 vs 0.35
    perm = [2, 0, 1]
    shuffled = noder.predict(params, volumes, labels, times, times[:, perm], TINY, slots[:, perm])
    np.testing.assert_allclose(shuffled[0], same[0][:, perm], atol=1e-5)
    np.testing.assert_array_equal(shuffled[1], same[1][:, perm])
    # the forecaster from the most recent scan: the extrapolated disc from the t = 1 scan
    f = fc.noder_forecast(volumes, times + 60.0, observed, labels, TINY)
    assert np.abs(f.images[0, 2] - volumes[0, 2]).mean() < np.abs(volumes[0, 1] - volumes[0, 2]).mean()
    assert f.labels[0, 2].sum() > labels[0, 1].sum() and float(f.extra["folding"].max()) == 0.0
    # vmapped training equals the per-subject loop from the same start. One step: over many float32
    # steps AMSGrad amplifies reduction-order differences, which change with the CPU's vector width
    # and XLA's emitters. Even one step's update is lr * g / (|g| + eps): for a gradient near zero
    # that ratio follows the rounding, so parameters agree to a small share of the learning rate
    # (measured: 6e-6 of 2e-2 under the suite's XLA flags; 1% allowed for other CPUs) where another
    # subject's data moves many of them by up to 2 lr (AMSGrad's first step is +-lr; measured: 29% past the bound).
    start = noder._states(jax.random.split(jax.random.key(3), 2), (16, 16), TINY)
    args = (jnp.asarray(volumes), jnp.asarray(times), jnp.asarray(observed))
    together, together_terms = noder._train_block(start, *args, jnp.int32(0), jnp.int32(1), cfg=TINY, max_steps=25)  # fit_cohort's program
    for i in range(2):
        one = lambda x, i=i: x[i : i + 1]  # noqa: E731
        alone, terms = noder._train_block(jax.tree_util.tree_map(one, start), *map(one, args), jnp.int32(0), jnp.int32(1), cfg=TINY, max_steps=25)
        np.testing.assert_allclose(terms.total[:1], together_terms.total[:1, i : i + 1], rtol=1e-5)
        chex.assert_trees_all_close(alone.params, jax.tree_util.tree_map(one, together.params), rtol=0, atol=1e-2 * TINY.learning_rate)


@pytest.mark.slow  # compiles NODER's training for a group of one
def test_noder_forecast_predicts_each_group_with_its_own_networks(monkeypatch):
    # the forecaster trains and predicts a group at a time (a cohort's networks never all held):
    # in groups of one it equals fitting every subject and predicting after
    monkeypatch.setattr(noder, "subjects_per_program", lambda *args, **kwargs: 1)
    volumes = _discs()[None].repeat(3, 0)
    volumes[1], volumes[2] = np.roll(volumes[1], 2, axis=-1), np.roll(volumes[2], -1, axis=-2)
    ages = np.array([[60.0, 61.0, 62.0], [60.0, 61.0, 63.0], [55.0, 57.0, 0.0]], np.float32)  # the last subject padded
    known = np.array([[True, True, False], [True, True, False], [True, False, False]])
    labels = (volumes > 0).astype(np.int32)
    cfg = dataclasses.replace(TINY, iterations=3)
    f = fc.noder_forecast(volumes, ages, known, labels, cfg)
    times = np.maximum(ages - ages[:, :1], 0.0)
    params, history = noder.fit_cohort(volumes, times, known, cfg)
    images, carried, folding = noder.predict(params, volumes, labels, times, times, cfg, fc.last_known_slot(ages, known))
    np.testing.assert_array_equal(f.images, images)
    np.testing.assert_array_equal(f.labels, carried)
    np.testing.assert_array_equal(f.extra["folding"], folding)
    np.testing.assert_array_equal(f.extra["final_loss"], history[-1])
    assert np.all(np.isfinite(f.images))


# -- autoencoder and segmenter -----------------------------------------------------------------------
AE = ae.AutoencoderConfig(ndim=2, channels=(8, 16), latent_channels=2, groups=4, discriminator_channels=(8, 8),
                          perceptual_channels=(4, 8), steps=40, batch_size=4, learning_rate=2e-3,
                          adversarial_start=30, checkpoint_every=10)  # fmt: skip


@pytest.mark.slow  # minutes of compiling on 2 CPU cores
def test_autoencoder_shapes_training_and_resume(tmp_path):
    images = np.concatenate([_discs((15, 13), radii=(2.0, 3.0, 4.0, 5.0)), -_discs((15, 13), radii=(2.0, 3.0, 4.0, 5.0))])
    params, history = ae.train_autoencoder(images, AE)
    assert history[-5:, 1].mean() < 0.6 * history[:5, 1].mean()  # L1 falls
    assert np.all(history[AE.adversarial_start :, 5] > 0) and np.all(history[: AE.adversarial_start, 5] == 0)
    z = ae.encode_scans(params, images, AE)
    assert z.shape == (8, *ae.latent_shape((15, 13), AE)) == (8, 8, 7, 2)
    assert ae.decode_latents(params, z, AE, (15, 13)).shape == images.shape

    class Killed(Exception):
        pass

    def kill(step, total, losses):  # called after each compiled block (10 steps: the checkpoint interval)
        if step == 30:
            raise Killed

    with pytest.raises(Killed):
        ae.train_autoencoder(images, AE, tmp_path / "ckpt", progress=kill)
    resumed, resumed_history = ae.train_autoencoder(images, AE, tmp_path / "ckpt", resume=True)
    np.testing.assert_allclose(resumed_history, history, rtol=1e-5, atol=1e-6)
    chex.assert_trees_all_close(resumed, params, rtol=1e-5, atol=1e-6)
    ae.save_autoencoder(tmp_path / "model", params, AE, (15, 13))
    loaded, cfg, shape = ae.load_autoencoder(tmp_path / "model")
    assert cfg == AE and shape == (15, 13)
    np.testing.assert_allclose(ae.encode_scans(loaded, images, cfg), z, rtol=1e-6)


@pytest.mark.slow  # minutes of compiling on 2 CPU cores
def test_segmenter_reaches_dice_on_tiny_simulated_scans():
    from longbrain_jax.simulate import SimulationConfig, Simulator

    sim = Simulator(SimulationConfig(num_subjects=5, resolution_mm=4.0, ndim=2, chunk_size=5, seed=1, sampling="regular"))
    arr = sim.simulate(sim.plan())
    img = arr["image"] / np.percentile(arr["image"], 99) * 2.0 - 1.0
    flat = lambda a, s: a[s].reshape(-1, *a.shape[2:])  # noqa: E731
    cfg = sg.SegmenterConfig(channels=(8, 16, 32), steps=150, learning_rate=3e-3)  # measured: WM 0.85, cortex 0.74
    params, losses = sg.train_segmenter(flat(img, slice(0, 4)), flat(arr["labels"], slice(0, 4)), cfg)
    dice = sg.class_dice(sg.segment(params, flat(img, slice(4, 5)), cfg), sg.label_classes(flat(arr["labels"], slice(4, 5))))
    assert dice["cerebral_wm"] >= 0.8 and dice["cortical_gm"] >= 0.6, dice  # a subject it never saw
    assert losses[-20:].mean() < 0.5 * losses[:20].mean()
    # volumes: hard = arg-max counts; soft = probability sums, and both near the truth for the big classes
    test, affine = flat(img, slice(4, 5)), np.diag([4.0, 4.0, 4.0, 1.0])
    prob = sg.probabilities(params, test, cfg)
    np.testing.assert_allclose(prob.sum(-1), 1.0, rtol=1e-5)
    hard = sg.segmented_volumes(params, test, affine, dataclasses.replace(cfg, volumes="hard"))
    np.testing.assert_array_equal(hard, sg.class_volumes(sg.segment(params, test, cfg), affine))
    soft = sg.segmented_volumes(params, test, affine, cfg)
    ids = [sg.CLASSES.index(n) for n in sg.SCORED]
    np.testing.assert_allclose(soft, 64.0 * prob[..., ids].sum(axis=(1, 2)), rtol=1e-5)
    truth = sg.class_volumes(sg.label_classes(flat(arr["labels"], slice(4, 5))), affine)
    wm = sg.SCORED.index("cerebral_wm")
    assert abs(soft[:, wm] - truth[:, wm]).max() < 0.15 * truth[:, wm].min(), (soft, truth)
    with pytest.raises(ValueError, match="volumes must be"):
        sg.SegmenterConfig(volumes="counts")


def test_segmenter_cross_entropy_equals_optax_and_its_gradient_holds_no_scatter(key):
    """optax's integer-label cross-entropy takes each voxel's label logit with a gather and `[..., 0]`;
    the gradient of that is a scatter-add of constants over every voxel, which XLA constant-folded
    while compiling the 1.5 mm segmenter (over a minute per program). The one-hot form has none."""
    logits = jax.random.normal(key, (2, 5, 4, 3, len(sg.CLASSES)))
    classes = jax.random.randint(jax.random.fold_in(key, 1), logits.shape[:-1], 0, len(sg.CLASSES))
    onehot = jax.nn.one_hot(classes, len(sg.CLASSES))
    expected = jnp.mean(sg.optax.softmax_cross_entropy_with_integer_labels(logits, classes))
    np.testing.assert_allclose(sg.cross_entropy(logits, onehot), expected, rtol=1e-6)
    ours = str(jax.make_jaxpr(jax.grad(sg.cross_entropy))(logits, onehot))
    theirs = str(jax.make_jaxpr(jax.grad(lambda z: jnp.mean(sg.optax.softmax_cross_entropy_with_integer_labels(z, classes))))(logits))
    assert "scatter" in theirs and "scatter" not in ours


@pytest.mark.slow  # a whole command
@pytest.mark.xdist_group("forecast_programs")  # with notebook 4, whose 4 mm networks are the quick demo's, compiled once
def test_forecast_command_scores_every_method_and_rejects_cohorts_without_held_out_scans(tmp_path):
    from click.testing import CliRunner

    from longbrain_jax.cli import main
    from longbrain_jax.config import write_config
    from longbrain_jax.demo import DemoConfig
    from longbrain_jax.io import load_image
    from longbrain_jax.simulate import SimulationConfig, simulate_cohort
    from tests.awkward import SHORT, make_awkward

    sim = SimulationConfig(num_subjects=3, resolution_mm=4.0, ndim=2, chunk_size=3, sampling="regular")
    bids = simulate_cohort(tmp_path / "bids", sim)
    # the quick demo's networks (the same programs as the demo test at 4 mm), given as a recorded configuration
    write_config(DemoConfig().quick().forecast, tmp_path / "networks.json")
    args = ["forecast", str(bids), str(tmp_path / "out"), "--config", str(tmp_path / "networks.json"),
            "--method", "last_observation,voxelwise_linear,mrextrap", "--ae-steps", "12", "--segmenter-steps", "5", "--quiet"]  # fmt: skip
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    rows = (tmp_path / "out" / "scores.tsv").read_text().splitlines()
    header = rows[0].split("\t")
    assert {"ssim", "psnr", "mae", "dice", "volume_error_pct_hippocampus"} <= set(header)
    # 3 subjects x 2 held-out scans (interpolation, extrapolation) x (3 methods + the segmenter's reference)
    assert len(rows) - 1 == 3 * 2 * 4
    _, affine = load_image(tmp_path / "out/predictions/mrextrap/sub-0001/ses-4/anat/sub-0001_ses-4_desc-mrextrap_T1w.nii.gz")
    _, truth_affine = load_image(bids / "sub-0001/ses-4/anat/sub-0001_ses-4_T1w.nii.gz")
    np.testing.assert_allclose(affine, truth_affine)
    carried = tmp_path / "out/predictions/last_observation/sub-0001/ses-4/anat/sub-0001_ses-4_desc-lastobservation_dseg.nii.gz"
    assert carried.exists()  # the last known scan's labels, carried forward
    report = (tmp_path / "out/report.md").read_text()
    assert "| mrextrap | extrapolation |" in report and "Linearity of MRExtrap's latent space" in report
    # the saved autoencoder is reused by a second run, whose segmenter trains on a labelled dataset given
    # apart (here a copy of the same cohort: what matters is that its labels are read from there)
    labelled = shutil.copytree(bids, tmp_path / "labelled")
    again = CliRunner().invoke(main, [*args[:2], str(tmp_path / "again"), *args[3:5], "--method", "mrextrap", "--autoencoder",
                                      str(tmp_path / "out/autoencoder"), "--segmenter-steps", "5", "--segmenter-bids", str(labelled), "--quiet"])  # fmt: skip
    assert again.exit_code == 0, again.output
    assert "volume_error_pct_hippocampus" in (tmp_path / "again" / "scores.tsv").read_text()
    unlabelled = CliRunner().invoke(main, [*args[:2], str(tmp_path / "out3"), "--segmenter-bids", str(tmp_path / "out"), "--quiet"])
    assert unlabelled.exit_code == 2 and "no label maps" in unlabelled.output
    short = make_awkward(tmp_path / "short", SHORT).root  # no subject with 3 scans
    bad = CliRunner().invoke(main, ["forecast", str(short), str(tmp_path / "out2"), "--quiet"])
    assert bad.exit_code == 2 and "no held-out scans" in bad.output
