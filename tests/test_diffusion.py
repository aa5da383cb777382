"""The deformation diffusion model (stage 2 and `longbrain generate`): masks, sampling, resume, bad input."""

import dataclasses

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from click.testing import CliRunner

from longbrain_jax import grid
from longbrain_jax.cli import main
from longbrain_jax.cohort import Cohort
from longbrain_jax.diffusion import DenoiserConfig, DiffusionConfig, SVFConfig
from longbrain_jax.diffusion import generate as gen
from longbrain_jax.diffusion import model as dm
from longbrain_jax.diffusion import schedule as sch
from longbrain_jax.io import write_bids
from tests.helpers import make_subject

COARSE = (10, 12)
TINY = DiffusionConfig(
    svf=SVFConfig(steps=4), denoiser=DenoiserConfig(channels=(8, 16), heads=2, embedding=16, groups=4),
    steps=12, batch_size=4, sample_steps=4, samples=2, checkpoint_every=6,
)  # fmt: skip
VOCAB = dm.Vocabulary(("dementia", "healthy"), ("F", "M"))


def _pattern() -> np.ndarray:
    """A smooth 2-D velocity pattern on COARSE (normalised units): a contraction towards the centre."""
    x = np.asarray(grid.normalised_grid(COARSE))
    return (-x * np.exp(-np.sum(x**2, -1, keepdims=True) / 0.3)).astype(np.float32)


def _sequences(n=8, t=4, seed=0):
    """Stage-1-like SVFs: each subject's pattern grows linearly with time at a group-dependent rate."""
    rng = np.random.default_rng(seed)
    groups = ["healthy", "dementia"] * (n // 2)
    rate = np.where(np.array(groups) == "dementia", 0.004, 0.002) * (1 + 0.1 * rng.standard_normal(n))
    ages = 70 + np.cumsum(rng.uniform(1, 3, (n, t)), 1).astype(np.float32)
    valid = np.ones((n, t), bool)
    valid[:, 0] = False
    valid[0, -1] = False  # a padded slot
    velocities = rate[:, None, None, None, None] * (ages - ages[:, :1])[..., None, None, None] * _pattern()
    images = np.asarray(dm.baseline_features(rng.random((n, 20, 24)), COARSE))
    return dm.training_sequences(velocities * valid[..., None, None, None], valid, images, ages, VOCAB.ids(groups, ["F", "M"] * (n // 2)), "rate")


def test_frames_are_rates_and_back():
    v = np.random.default_rng(0).standard_normal((2, 3, *COARSE, 2)).astype(np.float32)
    intervals = np.array([[1.0, 2.5, 4.0], [0.5, 1.0, 9.0]], np.float32)
    rates = dm.to_frames(v, intervals, "rate")
    np.testing.assert_allclose(rates[1, 2], v[1, 2] / 9.0, rtol=1e-6)
    np.testing.assert_allclose(dm.from_frames(rates, intervals, "rate"), v, rtol=1e-6)
    assert dm.to_frames(v, intervals, "velocity") is v


def test_a_monotone_path_keeps_steady_and_accelerating_sequences_and_orders_noisy_ones():
    """`monotone_path`: v_k = t_k r comes back unchanged, v_k = g(t_k) r (g increasing) too; a pace
    that goes back is pooled to one (isotonic), a negative one clipped at 0; padding stays zero; and
    frames drawn with independent noise (the 0.26 monotone share of the benchmark) become a path
    whose |J| changes monotonically in nearly every voxel (monotone share 0.26 -> 1.0 here)."""
    from longbrain_jax import metrics

    r = _pattern() * 0.004  # per year, normalised units
    t = np.array([[2.0, 5.0, 9.0]], np.float32)
    mask = np.ones((1, 3), bool)
    steady = (t[0, :, None, None, None] * r)[None, None]  # (1, 1, 3, *c, 2)
    np.testing.assert_allclose(dm.monotone_path(steady, t, mask), steady, rtol=1e-5, atol=1e-9)
    pace = np.array([1.0, 2.0, 8.0], np.float32)  # speeding up
    accelerating = (pace[:, None, None, None] * r)[None, None]
    np.testing.assert_allclose(dm.monotone_path(accelerating, t, mask), accelerating, rtol=1e-5, atol=1e-9)
    back = (np.array([-1.0, 4.0, 3.0], np.float32)[:, None, None, None] * r)[None, None]
    got = dm.monotone_path(back, t, mask)
    along = np.sum(got * r, axis=(-3, -2, -1)) / np.sum(r * r)
    np.testing.assert_allclose(along[0, 0], np.array([0.0, 3.5, 3.5]) * np.sum(back[0, 0, 2] * r) / np.sum(r * r) / 3.0, rtol=1e-5)
    padded = np.array([[True, True, False]])
    assert not dm.monotone_path(steady + 1.0, t, padded)[0, 0, 2].any()

    rng = np.random.default_rng(0)
    shape = (20, 24)
    noise = np.stack([np.asarray(grid.gaussian_smooth(jnp.asarray(rng.standard_normal((*COARSE, 2)), jnp.float32), 1.0, ndim=2)) for _ in range(3)])
    noise *= np.sqrt(np.mean(r**2) / np.mean(noise**2))  # each frame's rate off by as much as the rate itself
    noisy = (t[0, :, None, None, None] * (r + noise))[None, None]
    times = jnp.asarray(np.r_[0.0, t[0]], jnp.float32)

    def share(v):
        dets = [np.ones(shape)] + [np.asarray(grid.jacobian_determinant(dm.field(jnp.asarray(f), shape, TINY.svf))) for f in v[0, 0]]
        return float(metrics.monotone_fraction(jnp.asarray(np.stack(dets)), times))

    drawn, walked = share(noisy), share(dm.monotone_path(noisy, t, mask))
    assert drawn < 0.7 and walked > 0.95, (drawn, walked)


def test_unfold_smooths_only_the_sequences_that_fold_until_they_do_not():
    """`model.unfold`: a folding draw is smoothed (all its frames, the first width that works), a
    smooth draw is kept bit for bit, a monotone path stays one, and a width too small is reported."""
    cfg, shape = SVFConfig(), (20, 24)
    rng = np.random.default_rng(0)
    rough = rng.standard_normal((*COARSE, 2)).astype(np.float32)
    r = rough * 0.3  # a monotone path s_k r that folds at its later pace
    draws = np.stack([np.stack([rough * 0.001, rough * 0.002]), np.stack([rough * 0.2, rough * 0.3]), np.stack([r * 0.1, r])])[:, None]

    def folds(sequence):
        return any(bool(np.any(np.asarray(grid.jacobian_determinant(dm.field(jnp.asarray(v), shape, cfg))) <= 0)) for v in sequence)

    assert [folds(d[0]) for d in draws] == [False, True, True]
    out, sigma = dm.unfold(draws, shape, cfg, (0.5, 1.0, 2.0, 4.0))
    assert out.shape == draws.shape and sigma.shape == (3, 1)
    np.testing.assert_array_equal(out[0], draws[0])
    assert sigma[0, 0] == 0 and sigma[1, 0] > 0 and sigma[2, 0] > 0
    assert not folds(out[1, 0]) and not folds(out[2, 0])
    for k in range(2):  # each frame smoothed with the width chosen: the same operator on every frame
        want = grid.gaussian_smooth(jnp.asarray(draws[1, 0, k]), float(sigma[1, 0]), ndim=2)
        np.testing.assert_allclose(out[1, 0, k], want, atol=1e-6)
    np.testing.assert_allclose(out[2, 0, 0] * 10, out[2, 0, 1], rtol=1e-4, atol=1e-6)  # still s_k smooth(r)
    assert sigma[1, 0] == 1.0 and folds(np.asarray(dm._smooth_frames(jnp.asarray(draws[1, 0]), 0.5)))  # the first width that works
    _, too_small = dm.unfold(draws, shape, cfg, (0.01,))
    assert np.isnan(too_small[1, 0]) and too_small[0, 0] == 0
    kept, none = dm.unfold(draws, shape, cfg, ())
    np.testing.assert_array_equal(kept, draws)
    np.testing.assert_array_equal(none, 0)
    nan = draws[:1].copy()
    nan[0, 0, 1, 0, 0, 0] = np.nan  # a draw that diverged is not passed as unfolded
    assert np.isnan(dm.unfold(nan, shape, cfg, (0.5,))[1][0, 0])


def test_a_model_recorded_before_unfolding_samples_every_draw_as_drawn():
    from longbrain_jax.config import config_from_dict, config_to_dict

    recorded = config_to_dict(DiffusionConfig())
    del recorded["unfold_sigmas"]  # as models before the field wrote it
    assert config_from_dict(DiffusionConfig, recorded).unfold_sigmas == ()
    assert config_from_dict(DiffusionConfig, config_to_dict(DiffusionConfig())) == DiffusionConfig()
    for bad in ((0.0, 1.0), (2.0, 1.0), (1.0, 1.0), (1.0, float("inf"))):
        with pytest.raises(ValueError, match="unfold_sigmas"):
            DiffusionConfig(unfold_sigmas=bad)


def test_padding_frames_change_neither_the_loss_nor_the_real_frames_predictions(key):
    seq, _ = _sequences()
    params = dm.init_params(key, TINY, VOCAB, seq.frames.shape[1], COARSE)
    # a trained network's output is not zero: perturb the zero-initialised output layers
    perturb = jax.jit(lambda tree: jax.tree_util.tree_map(lambda p: p + 0.05 * jax.random.normal(jax.random.key(1), p.shape), tree))
    params = perturb(params)
    net, sched = dm.network(TINY, VOCAB), sch.schedule(TINY.diffusion_steps)
    batch = jax.tree_util.tree_map(lambda a: jnp.asarray(a)[:2], seq)
    other = batch._replace(frames=batch.frames.at[0, -1].set(5.0))  # subject 0's last frame is padding
    unknown = jnp.asarray(VOCAB.unknown(1)[0])
    # compiled once each (op by op, the network's hundreds of primitives compile one at a time)
    loss = jax.jit(lambda b: dm.denoising_loss(params, b, jax.random.key(2), TINY, net, sched, unknown))
    np.testing.assert_allclose(loss(batch), loss(other), rtol=1e-6)
    x = jax.random.normal(jax.random.key(3), batch.frames.shape)
    apply = jax.jit(lambda x: dm.apply(params, net, x, jnp.int32(500), batch, batch.cond_ids))
    a, b = apply(x), apply(x.at[0, -1].set(9.0))
    np.testing.assert_allclose(a[0, :-1], b[0, :-1], atol=1e-5)  # real frames do not see the padding
    assert float(jnp.max(jnp.abs(a[0, 0] - apply(x.at[0, 1].set(9.0))[0, 0]))) > 1e-4


def test_resumed_training_equals_uninterrupted_and_sampling_is_per_subject(tmp_path):
    seq, _ = _sequences()
    params, history = dm.train(seq, TINY, VOCAB, batch=4)  # one step per compiled call on the CPU (engine.training.block_steps)
    assert np.all(np.isfinite(history))

    class Killed(Exception):
        pass

    def kill(step, total, loss):  # after the checkpoint at step 6
        if step == 6:
            raise Killed

    with pytest.raises(Killed):
        dm.train(seq, TINY, VOCAB, tmp_path / "ckpt", progress=kill, batch=4)
    resumed, resumed_history = dm.train(seq, TINY, VOCAB, tmp_path / "ckpt", resume=True, batch=4)
    np.testing.assert_allclose(resumed_history, history, rtol=1e-5, atol=1e-6)
    chex.assert_trees_all_close(resumed, params, rtol=1e-5, atol=1e-6)

    # vmapped sampling == the per-subject loop (each subject's draws come from its own keys)
    subjects = np.array([3, 7, 11])
    cond = jax.tree_util.tree_map(lambda a: np.asarray(a)[:3], seq)
    together = dm.sample_sequences(params, cond, subjects, 2, TINY, VOCAB)
    assert together.shape == (3, 2, *seq.frames.shape[1:]) and np.all(np.isfinite(together))
    for i in range(3):
        alone = dm.sample_sequences(params, jax.tree_util.tree_map(lambda a, i=i: a[i : i + 1], cond), subjects[i : i + 1], 2, TINY, VOCAB)
        np.testing.assert_allclose(alone[0], together[i], rtol=1e-4, atol=1e-4)
    assert not np.allclose(together[0, 0], together[0, 1])  # two samples differ


@pytest.mark.optimised  # runs compiled programs more than it compiles them
@pytest.mark.slow
def test_a_trained_model_generates_the_group_rates_it_learned_without_folding():
    """Trained on SVF sequences whose rate doubles with dementia, samples reproduce each group's
    rate (measured along the pattern) and their maps do not fold."""
    seq, scale = _sequences(n=16, t=4, seed=1)
    cfg = dataclasses.replace(TINY, steps=500, batch_size=8, learning_rate=2e-3, sample_steps=20, checkpoint_every=500, prediction="v")
    params, history = dm.train(seq, cfg, VOCAB)
    assert history[-50:].mean() < 0.5 * history[:50].mean()
    target = np.array([[74.0, 78.0]] * 4, np.float32)
    groups = ["healthy", "dementia", "healthy", "dementia"]
    cond = dm.conditions(np.random.default_rng(5).random((4, 20, 24)), np.full(4, 70.0, np.float32), target, VOCAB.ids(groups, ["F"] * 4), COARSE, 2)
    frames = dm.sample_sequences(params, cond, np.arange(4), 8, cfg, VOCAB)
    rates = frames * scale  # per year
    p = _pattern()
    along = np.sum(rates * p, axis=(-3, -2, -1)) / np.sum(p * p)  # (4 subjects, 8 samples, 2 frames)
    healthy, dementia = along[0::2].mean(), along[1::2].mean()
    # truth 0.002 and 0.004 (10% spread); measured 0.0023 and 0.0031, sample sd 0.00045 (500 steps, 16 subjects;
    # 1000 steps: 0.0023 and 0.0031, sd 0.00015)
    assert 0.0015 < healthy < 0.003 and 0.0025 < dementia < 0.0045 and dementia - healthy > 0.0004, (healthy, dementia)
    assert along.std() < 0.001
    velocities = dm.from_frames(rates, np.asarray(cond.intervals)[:, None], "rate")
    dets = np.stack([np.asarray(grid.jacobian_determinant(dm.field(jnp.asarray(v), (20, 24), cfg.svf))) for v in velocities.reshape(-1, *COARSE, 2)])
    assert np.mean(dets <= 0) <= 1e-5


# -- the command ------------------------------------------------------------------------------------
def _bids(tmp_path, scans=(3, 2, 3, 1), shape=(20, 24), name="ds"):
    subjects = [make_subject(i, n, shape=shape, group=("healthy", "dementia")[i % 2]) for i, n in enumerate(scans)]
    return write_bids(Cohort.from_subjects(subjects), tmp_path / name)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("generate")
    root = _bids(tmp)
    gen.train_model(_dataset(root), tmp / "model", TINY)
    return root, tmp / "model"


def _dataset(root):
    from longbrain_jax.io import scan_bids

    return scan_bids(root)


@pytest.mark.xdist_group("trained_diffusion")  # one worker builds the module fixture once
def test_generate_sample_writes_every_subject_age_and_sample(trained, tmp_path):
    root, model = trained
    out = tmp_path / "gen"
    result = CliRunner().invoke(main, ["generate", "sample", str(model), str(root), str(out), "--ages", "95,99", "--samples", "2", "--quiet"])
    assert result.exit_code == 0, result.output
    files = sorted(p.name for p in (out / "sub-s0").iterdir())
    assert "sub-s0_age-095p0_sample-1_T1w.nii.gz" in files and "sub-s0_age-099p0_desc-sd_jacdet.nii.gz" in files
    assert "sub-s0_age-095p0_sample-0_dseg.nii.gz" in files and "sub-s0_age-095p0_sample-0_desc-velocity.nii.gz" in files
    rows = (out / "generated.tsv").read_text().splitlines()
    assert len(rows) == 1 + 4 * 2 * 2  # subjects x ages x samples
    header = rows[0].split("\t")
    widths = [float(r.split("\t")[header.index("unfold_sigma")]) for r in rows[1:]]
    assert all(w == 0 or w in TINY.unfold_sigmas for w in widths)  # as drawn, or the width that unfolded it
    import nibabel as nib

    early, late = (np.asarray(nib.load(out / "sub-s0" / f"sub-s0_age-{a}_sample-0_desc-velocity.nii.gz").dataobj).ravel() for a in ("095p0", "099p0"))
    assert np.dot(early, late) >= 0.999 * np.linalg.norm(early) * np.linalg.norm(late)  # one direction (the default, monotone)
    assert np.linalg.norm(late) >= np.linalg.norm(early)  # walked at a non-decreasing pace
    years = tmp_path / "years"
    result = CliRunner().invoke(main, ["generate", "sample", str(model), str(root), str(years), "--years", "3", "--samples", "1", "--trajectory", "frames",
                                       "--unfold-sigmas", "none", "--quiet"])  # fmt: skip
    assert result.exit_code == 0, result.output
    baseline = float((root / "sub-s1" / "sub-s1_sessions.tsv").read_text().splitlines()[1].split("\t")[1])
    written = [line.split("\t") for line in (years / "generated.tsv").read_text().splitlines()[1:]]
    assert [float(r[1]) for r in written if r[0] == "s1"] == pytest.approx([baseline + 3], abs=1e-3)


@pytest.mark.xdist_group("trained_diffusion")  # one worker builds the module fixture once
@pytest.mark.parametrize("case", ["before_baseline", "unknown_group", "other_grid", "not_a_model", "no_ages", "years_not_after", "bad_unfold"])
def test_generate_sample_refuses_bad_input_and_writes_nothing(trained, tmp_path, case):
    root, model = trained
    args = {"before_baseline": [str(model), str(root), "--ages", "61"],
            "unknown_group": [str(model), str(root), "--ages", "95", "--group", "AD"],
            "other_grid": [str(model), str(_bids(tmp_path, shape=(16, 24), name="other")), "--ages", "95"],
            "not_a_model": [str(root), str(root), "--ages", "95"],
            "no_ages": [str(model), str(root)],
            "years_not_after": [str(model), str(root), "--years", "0,2"],
            "bad_unfold": [str(model), str(root), "--ages", "95", "--unfold-sigmas", "2,1"]}[case]  # fmt: skip
    out = tmp_path / "gen"
    result = CliRunner().invoke(main, ["generate", "sample", *args[:2], str(out), *args[2:], "--quiet"])
    assert result.exit_code == 2, result.output
    assert result.output.count("\n") == 1 and "error:" in result.output
    assert not out.exists()


def test_generate_train_refuses_a_cohort_without_follow_ups(tmp_path):
    root = _bids(tmp_path, scans=(1, 1, 1))
    result = CliRunner().invoke(main, ["generate", "train", str(root), str(tmp_path / "model"), "--quiet"])
    assert result.exit_code == 2 and "no subject has two or more scans" in result.output
    assert not (tmp_path / "model").exists()


@pytest.mark.xdist_group("trained_diffusion")  # one worker builds the module fixture once
def test_the_diffusion_forecaster_predicts_every_slot_from_the_baseline(trained):
    """The forecasting experiment's `diffusion` row with a trained model: the baseline slot is the
    baseline itself, every later slot a warped baseline with carried labels and a folding share."""
    from longbrain_jax.forecast import ForecastConfig
    from longbrain_jax.forecast.forecasters import FORECASTERS, Chunk, Context
    from longbrain_jax.memory import Budget

    root, model = trained
    source = _dataset(root)
    forecaster = FORECASTERS["diffusion"]
    ctx = Context(source, source.mask.copy(), ForecastConfig(diffusion_model=str(model)), None, Budget.resolve(), 4)
    state = forecaster.prepare(ctx)
    cohort = source.select(np.arange(source.num_subjects))
    forecast = forecaster.predict(state, Chunk(cohort, np.arange(cohort.num_subjects), cohort.mask.copy()))
    assert forecast.images.shape == cohort.volumes.shape and forecast.labels.shape == cohort.labels.shape
    np.testing.assert_array_equal(forecast.images[:, 0], cohort.volumes[:, 0])
    assert not np.allclose(forecast.images[0, 1], cohort.volumes[0, 0])
    assert forecast.extra["folding"].shape == cohort.mask.shape and np.all(np.isfinite(forecast.images))


def test_subject_chunks_fit_their_share_of_the_free_budget():
    """`generate`'s chunks: per-subject host arrays beside whole-cohort outputs in a quarter of what is free."""
    from longbrain_jax.memory import Budget, process_resident

    class Source:
        num_subjects = 5

    mib = 2**20
    budget = Budget(process_resident() + 1024 * mib, "cpu", "test")
    chunks = gen._chunks(Source(), budget, "test", 100 * mib)  # a quarter of ~1 GiB: 2 subjects
    assert [c.tolist() for c in chunks] == [[0, 1], [2, 3], [4]]
    chunks = gen._chunks(Source(), budget, "test", 100 * mib, fixed=600 * mib)  # a quarter of ~424 MiB: 1
    assert [c.tolist() for c in chunks] == [[0], [1], [2], [3], [4]]
    with pytest.raises(MemoryError, match="test: even 1 subjects per chunk"):
        gen._chunks(Source(), budget, "test", 100 * mib, fixed=1100 * mib)


def test_stage_one_chunks_count_every_host_array_a_chunk_holds(tmp_path, monkeypatch):
    """Stage 1's per-subject cost covers the chunk's scans, the (baseline, follow-up) copies that
    `register_cohort` hands to `register_pairs`, the velocities and their smoothed copy."""
    from longbrain_jax.diffusion import svf

    source = Cohort.from_subjects([make_subject(i, n, shape=(20, 24)) for i, n in enumerate((3, 4, 2))])
    planned, held = [], []
    chunks = gen._chunks
    monkeypatch.setattr(gen, "_chunks", lambda src, budget, stage, per_subject, fixed=0: planned.append(per_subject) or chunks(src, budget, stage, per_subject, fixed))

    def register_pairs(baselines, followups, cfg, *args, **kwargs):
        held.append(baselines.nbytes + followups.nbytes)
        return np.zeros((len(baselines), *svf.coarse_shape(baselines.shape[1:], cfg.velocity_factor), baselines.ndim - 1), np.float32)

    monkeypatch.setattr(svf, "register_pairs", register_pairs)
    gen.stage_one(source, TINY, gen.Budget.resolve())
    field = int(np.prod(svf.coarse_shape((20, 24), TINY.svf.velocity_factor))) * 2 * 4
    n, t = source.mask.shape
    chunk = source.volumes.nbytes + (source.labels.nbytes if source.labels is not None else 0) + sum(held) + 2 * n * t * field
    assert planned[0] * n >= chunk


@pytest.mark.xdist_group("trained_diffusion")  # one worker builds the module fixture once
def test_sampling_in_chunks_of_one_subject_writes_the_same(trained, tmp_path, monkeypatch):
    """A subject's draws are keyed by its index in the dataset, so the chunks a budget makes change nothing."""
    root, model_dir = trained
    model, source = gen.load_model(model_dir), _dataset(root)
    gen.sample_model(model, source, tmp_path / "whole", years=(2.0,))
    monkeypatch.setattr(gen, "_chunks", lambda source, *args, **kwargs: [np.array([i]) for i in range(source.num_subjects)])
    gen.sample_model(model, source, tmp_path / "ones", years=(2.0,))
    assert (tmp_path / "whole" / "generated.tsv").read_text() == (tmp_path / "ones" / "generated.tsv").read_text()
