"""Weight-space classification, SFCN, and the paper's protocol."""

import dataclasses
import types

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from click.testing import CliRunner

from longbrain_jax.baselines.change_pca import block_factor, change_images, pca_scores
from longbrain_jax.baselines.sfcn import SFCN, stack_timepoints
from longbrain_jax.classification import (
    ClassifyConfig,
    paired_split,
    read_features,
    run_classification,
    standardise,
    write_classification,
)
from longbrain_jax.classifier import TrainConfig, onecycle, predict_proba, train_classifier, train_classifiers
from longbrain_jax.cli import main
from longbrain_jax.errors import InputError
from longbrain_jax.fit import fit_cohort, load_fit
from longbrain_jax.inr import INRConfig
from longbrain_jax.inr import spatiotemporal as st
from longbrain_jax.weightspace.models import TokenEncoderClassifier
from longbrain_jax.weightspace.tokens import stream_tokens, stream_vectors
from tests.helpers import TINY, blob_cohort

SMALL = ClassifyConfig(
    token_widths=(8, 16), head_width=8, encoder=TrainConfig(epochs=3, batch_size=4, learning_rate=1e-3),
    baseline=TrainConfig(epochs=3, batch_size=4), sfcn_channels=(4, 4, 8, 8, 8), sfcn=TrainConfig(epochs=3, batch_size=4),
    folds=2, repeats=1,
)  # fmt: skip


def test_tokens_are_neuron_rows_with_bias(key):
    cfg = INRConfig(ndim=2, width=6, stream_layers=3, combined_layers=2)
    params = jax.tree_util.tree_map(lambda x: jnp.stack([x, 2 * x]), st.init(key, cfg))
    tokens = stream_tokens(params, ("P_time",))
    assert tokens.shape == (2, 2 * 6, 7)  # two ReLU hidden layers of 6 neurons, 6 weights + bias
    layer = params["time"]["hidden"][0]
    np.testing.assert_array_equal(tokens[0, 3], np.r_[np.asarray(layer["w"][0, :, 3]), np.asarray(layer["b"][0, 3])])
    assert stream_tokens(params, ("P_space",)).shape == (2, 2 * 2 * 6, 7)  # WIRE: two linear maps per layer
    assert stream_vectors(params, ("P_time", "P_com")).shape == (2, (2 * 6 + 2 * 2 * 6) * 7)
    with pytest.raises(ValueError, match="unknown parameter stream"):
        stream_tokens(params, ("P_other",))


def test_encoder_is_invariant_to_the_order_of_tokens(key):
    model = TokenEncoderClassifier((8, 16), 8)
    tokens = jax.random.normal(key, (3, 10, 5))
    variables = model.init(key, tokens)
    perm = jax.random.permutation(jax.random.key(1), 10)
    a = model.apply(variables, tokens, train=False)
    b = model.apply(variables, tokens[:, perm], train=False)
    np.testing.assert_allclose(a, b, atol=1e-5)
    assert not np.allclose(a[0], a[1])


def test_encoder_learns_a_separable_weight_set():
    rng = np.random.default_rng(0)
    y = (np.arange(80) % 2).astype(np.int32)
    tokens = rng.standard_normal((80, 12, 6)).astype(np.float32)
    where = rng.integers(0, 12, size=80)  # one neuron of class-1 INRs, anywhere in the layer, carries a signal
    tokens[np.arange(80)[y == 1], where[y == 1], 2] += 5.0
    model = TokenEncoderClassifier((16, 32), 16)
    trained = train_classifier(model, tokens[:60], y[:60], TrainConfig(epochs=40, batch_size=10, learning_rate=3e-3), jax.random.key(0))
    accuracy = float(np.mean(predict_proba(model, trained.variables, tokens[60:]).argmax(1) == y[60:]))
    assert accuracy >= 0.9
    assert trained.val_loss[trained.best_epoch] == np.nanmin(trained.val_loss)


def test_batch_norm_statistics_are_ready_for_evaluation_after_a_short_training():
    """Every subject's INR starts from one theta*, so raw tokens sit far from batch-norm's initial
    statistics (mean 0, variance 1); so do unnormalised scans. With flax's default momentum (0.99)
    evaluation still used most of those after a short run and put every test subject in one class
    (measured with 0.99: encoder 0.55, SFCN 0.50 here); PyTorch's momentum (flax 0.9), as the papers trained, does not."""
    rng = np.random.default_rng(0)
    y = (np.arange(80) % 2).astype(np.int32)
    shared = 4.0 * rng.standard_normal((12, 6)).astype(np.float32)
    tokens = shared + 0.3 * rng.standard_normal((80, 12, 6)).astype(np.float32)
    tokens[y == 1, :, 2] += 1.0  # class 1 moved every neuron's third weight
    cfg = TrainConfig(epochs=20, batch_size=10, learning_rate=3e-3, validation_fraction=0)
    model = TokenEncoderClassifier((16, 32), 16)
    trained = train_classifier(model, tokens[:60], y[:60], cfg, jax.random.key(0))
    assert np.mean(predict_proba(model, trained.variables, tokens[60:]).argmax(1) == y[60:]) >= 0.95
    y = (np.arange(24) % 2).astype(np.int32)
    scans = 3.0 + rng.standard_normal((24, 20, 24, 5)).astype(np.float32) + 0.5 * y[:, None, None, None]
    model = SFCN((4, 8, 8, 8, 8), 8, dropout=0.0)
    cfg = TrainConfig(epochs=30, batch_size=8, learning_rate=1e-2, validation_fraction=0)
    trained = train_classifier(model, scans[:16], y[:16], cfg, jax.random.key(0))
    predicted = predict_proba(model, trained.variables, scans[16:]).argmax(1)
    assert np.mean(predicted == y[16:]) >= 0.85, predicted


def test_a_diverging_classifier_keeps_its_last_finite_parameters(key):
    from longbrain_jax.weightspace.models import LinearClassifier

    rng = np.random.default_rng(0)
    x = rng.standard_normal((16, 5)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.int32)
    cfg = TrainConfig(epochs=3, batch_size=16, learning_rate=1e-2, validation_fraction=0)  # one step per epoch
    clean = train_classifier(LinearClassifier(), x, y, dataclasses.replace(cfg, epochs=1), key)
    bad = x.copy()
    bad[3, 2] = np.inf  # every step sees it: the first step's loss is not finite
    with pytest.warns(UserWarning, match="diverged at step 0"):
        broken = train_classifier(LinearClassifier(), bad, y, cfg, key)
    assert broken.diverged_at == 0 and clean.diverged_at == -1 and np.isnan(broken.train_loss).all()
    initial = LinearClassifier().init({"params": jax.random.split(key, 3)[1]}, jnp.asarray(x[:1]), train=False)
    chex.assert_trees_all_equal(broken.variables, initial)  # the first step was skipped: the initial parameters
    assert not np.allclose(clean.variables["params"]["Dense_0"]["kernel"], initial["params"]["Dense_0"]["kernel"])


def test_onecycle_with_traced_lengths_is_optax_schedule():
    import optax

    steps = jnp.arange(603)  # one shape for every length: the eager ops compile once
    for total in (1, 2, 3, 7, 10, 20, 99, 600):
        ours = jax.vmap(lambda s, t=total: onecycle(s, jnp.int32(int(0.3 * t)), jnp.int32(t), 1e-3))(steps)
        with jax.numpy_dtype_promotion("standard"):  # optax's schedule mixes bool and float
            theirs = jax.vmap(optax.cosine_onecycle_schedule(total, 1e-3))(steps)
        np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-12)


def test_classifiers_trained_together_match_each_trained_alone():
    """The k-fold runs of a method train in one vmapped program; each must train as it would alone:
    its own rows (of different sizes here, so the runs have 3-5 steps per epoch and the shorter ones
    skip steps), validation share and best epoch, shuffles, dropout and schedule.

    Logistic regression agrees to float precision. The encoder agrees less closely: the biases
    before batch-norm get no gradient (the normalisation removes them), Adam turns their float-noise
    gradients into steps of +-lr and the tiny model amplifies that; under the suite's XLA flags any
    change of reduction order (vmapped or not, one model alone included) moves its losses by ~1%."""
    from longbrain_jax.weightspace.models import LinearClassifier

    rng = np.random.default_rng(0)
    y = (np.arange(48) % 2).astype(np.int32)
    tokens = rng.standard_normal((48, 6, 5)).astype(np.float32)
    tokens[y == 1, :, 1] += 0.8
    runs = [np.sort(rng.choice(48, n, replace=False)) for n in (22, 30, 41)]
    keys = [jax.random.key(i) for i in range(3)]
    cfg = TrainConfig(epochs=4, batch_size=8, learning_rate=3e-2)
    flat = tokens.reshape(48, -1)
    for x in (flat, lambda i: standardise(flat, runs[i])):  # one input for all runs; inputs of their own, built per run
        alone = train_classifiers(LinearClassifier(), x, y, cfg, keys, runs, together=1)
        together = train_classifiers(LinearClassifier(), x, y, cfg, keys, runs)
        assert [t.best_epoch for t in alone] == [t.best_epoch for t in together]
        for a, b in zip(alone, together, strict=True):
            np.testing.assert_allclose(a.train_loss, b.train_loss, rtol=1e-5)
            np.testing.assert_allclose(a.val_loss, b.val_loss, rtol=1e-5)
            chex.assert_trees_all_close(a.variables, b.variables, atol=1e-5)
        assert len({t.best_epoch for t in alone} | {len(set(np.round(t.train_loss, 4))) for t in alone}) > 1  # the runs differ
        if x is flat:
            single = train_classifier(LinearClassifier(), flat, y, cfg, keys[1], rows=runs[1])
            chex.assert_trees_all_equal(single.variables, alone[1].variables)

    model = TokenEncoderClassifier((8, 16), 8, dropout=0.5)
    cfg = dataclasses.replace(cfg, learning_rate=3e-3)
    alone = train_classifiers(model, tokens, y, cfg, keys, runs, together=1)
    together = train_classifiers(model, tokens, y, cfg, keys, runs)
    for a, b in zip(alone, together, strict=True):
        np.testing.assert_allclose(a.train_loss, b.train_loss, rtol=5e-2)
        np.testing.assert_allclose(predict_proba(model, a.variables, tokens), predict_proba(model, b.variables, tokens), atol=5e-2)


@pytest.mark.parametrize("shape", [(20, 24), (12, 14, 10)])
def test_sfcn_loss_falls_on_a_tiny_batch(shape):
    rng = np.random.default_rng(0)
    y = np.array([0, 1, 0, 1, 0, 1], np.int32)
    x = rng.standard_normal((6, *shape, 5)).astype(np.float32) + y[(...,) + (None,) * (len(shape) + 1)]
    model = SFCN((4, 8, 8, 8, 8), 8, dropout=0.0)
    trained = train_classifier(model, x, y, TrainConfig(epochs=25, batch_size=6, learning_rate=1e-2, validation_fraction=0), jax.random.key(0))
    assert np.mean(trained.train_loss[-3:]) < 0.5 * trained.train_loss[0], trained.train_loss


def test_timepoints_stack_in_order_and_zero_pad():
    volumes = np.arange(2 * 3 * 4, dtype=np.float32).reshape(2, 3, 2, 2) + 1
    mask = np.array([[True, True, False], [True, True, True]])
    stacked = stack_timepoints(volumes, mask, channels=5)
    assert stacked.shape == (2, 2, 2, 5)
    np.testing.assert_array_equal(stacked[0, ..., 1], volumes[0, 1])
    assert np.all(stacked[0, ..., 2:] == 0) and np.all(stacked[1, ..., 3:] == 0)


def test_standardised_tokens_are_z_scores_over_the_training_subjects():
    rng = np.random.default_rng(0)
    tokens = 10.0 * rng.standard_normal((1, 12, 5)) + 0.1 * rng.standard_normal((9, 12, 5))  # shared theta* + deviations
    train = np.array([0, 2, 3, 5, 8])
    z = standardise(tokens, train)
    np.testing.assert_allclose(z[train].mean(0), 0.0, atol=1e-9)
    np.testing.assert_allclose(z[train].std(0), 1.0, atol=1e-9)
    np.testing.assert_allclose(z, (tokens - tokens[train].mean(0)) / tokens[train].std(0))
    with pytest.raises(ValueError, match="tokens must be one of 'raw', 'standardised', got 'whitened'"):
        ClassifyConfig(tokens="whitened")


def test_paired_split_keeps_anatomies_apart(key):
    units = tuple(f"{i // 2:03d}" for i in range(30))  # 15 anatomies, two versions each
    y = np.array([i % 2 for i in range(30)], np.int32)
    train, test = paired_split(key, units, y, 1 / 3)
    assert not set(train) & set(test)
    train_units, test_units = {units[i] for i in train}, {units[i] for i in test}
    assert not train_units & test_units and len(test_units) == 5 and len(train_units) == 10
    assert len(train) == len(train_units)  # one version per training anatomy
    assert len(test) == 2 * len(test_units)  # both versions of each test anatomy
    assert abs(int(y[train].sum()) - len(train) / 2) <= 1


def test_feature_tables_are_read_per_subject_and_bad_ones_are_named(tmp_path):
    table = tmp_path / "aseg.tsv"
    table.write_text("participant_id\thippocampus\tventricles\r\nsub-02\t3.5\t10\r\n01\t4.0\t9.5\r\nsub-09\t1\t1\r\n", encoding="utf-8")
    x = read_features(table, ["01", "02", "03"], required=["01", "02"])
    np.testing.assert_array_equal(x[:2], [[4.0, 9.5], [3.5, 10.0]])
    assert x.dtype == np.float32 and np.all(np.isnan(x[2]))  # not in a class: may be absent
    with pytest.raises(InputError, match=r"aseg.tsv: has no row for 1 subject\(s\): 03"):
        read_features(table, ["01", "02", "03"])
    table.write_text("participant_id\thippocampus\nsub-01\tn/a\n")
    with pytest.raises(InputError, match=r"aseg.tsv:row 1: column 'hippocampus' holds 'n/a', not a number"):
        read_features(table, ["01"])
    table.write_text("participant_id\thippocampus\nsub-01\t1\n01\t2\n")
    with pytest.raises(InputError, match="row 2: subject 01 appears twice"):
        read_features(table, ["01"])
    table.write_text("subject\thippocampus\n01\t1\n")
    with pytest.raises(InputError, match="needs a participant_id column"):
        read_features(table, ["01"])


def test_features_are_classified_under_the_same_splits_and_must_be_one_finite_row_per_subject():
    groups = tuple("dementia" if i % 2 else "healthy" for i in range(24))
    cohort = types.SimpleNamespace(subject_ids=tuple(f"{i:02d}" for i in range(24)), groups=groups)
    separating = np.array([g == "dementia" for g in groups], np.float32)[:, None] + 0.1 * np.random.default_rng(0).standard_normal((24, 2))
    cfg = dataclasses.replace(SMALL, combinations=(), features=TrainConfig(epochs=30, batch_size=8, learning_rate=0.05), folds=3)
    results = run_classification(cohort, None, cfg, features={"separating": separating, "noise": np.random.default_rng(1).standard_normal((24, 2))})
    rows = {r["streams"]: r for r in results["rows"]}
    assert list(rows) == ["separating", "noise"] and all(r["method"] == "features logistic" for r in rows.values())
    assert rows["separating"]["accuracy"] == 1.0 and rows["separating"]["kfold_balanced_accuracy_mean"] == 1.0
    assert results["num_folds"] == 3 and not set(results["train"]) & set(results["test"])

    fitted = types.SimpleNamespace(subject_ids=("a", "b", "c"), groups=("healthy", "dementia", "healthy"))
    with pytest.raises(InputError, match=r"features 'volumes': need \(subjects, F\) = \(3, F\) rows, got shape \(2, 4\)"):
        run_classification(fitted, None, SMALL, features={"volumes": np.zeros((2, 4))})
    with pytest.raises(InputError, match=r"features 'volumes': non-finite values for subject\(s\) \['b'\]"):
        run_classification(fitted, None, SMALL, features={"volumes": np.array([[0.0], [np.nan], [1.0]])})


@pytest.mark.slow  # a whole command
def test_experiment_runs_every_method_and_writes_a_report(tmp_path):
    cohort = blob_cohort(12)
    cohort = dataclasses.replace(cohort, metadata=tuple({"pair_id": f"{i // 2}"} for i in range(12)))
    fit_cohort(cohort, tmp_path / "fit", TINY)
    fitted = load_fit(tmp_path / "fit")
    cfg = dataclasses.replace(SMALL, combinations=(("P_time",), ("P_space", "P_com")))
    results = run_classification(fitted, cohort, cfg, features={"volumes": np.random.default_rng(0).standard_normal((12, 3))})
    methods = [(r["method"], r["streams"]) for r in results["rows"]]
    assert methods == [("INR encoder", "P_time"), ("INR logistic", "P_time"), ("INR encoder", "P_space+P_com"),
                       ("INR logistic", "P_space+P_com"), ("SFCN", "images"), ("change-image PCA", "last - first scan"),
                       ("features logistic", "volumes")]  # fmt: skip
    for r in results["rows"]:
        assert np.sum(r["confusion"]) == len(results["test"])
        assert r["accuracy"] == pytest.approx(np.trace(r["confusion"]) / len(results["test"]))
        assert np.isfinite(r["kfold_accuracy_mean"]) and np.isfinite(r["kfold_balanced_accuracy_mean"])
    assert not set(results["train"]) & set(results["test"])
    report = write_classification(tmp_path / "cls", results, SMALL, "test run")
    assert "P_time" in report.read_text() and (tmp_path / "cls" / "confusion.png").exists()


@pytest.mark.slow  # a whole command
def test_classify_cli_on_a_fit(tmp_path):
    """A dataset that names its groups as a clinic does, in its own column, with a third group left out."""
    from longbrain_jax.io import write_bids

    cohort = blob_cohort(10)
    dx = tuple({"healthy": "Nondemented", "dementia": "Demented"}[g] if i < 8 else "Converted" for i, g in enumerate(cohort.groups))
    cohort = dataclasses.replace(cohort, groups=("",) * 10, metadata=tuple({"dx": d} for d in dx))
    write_bids(cohort, tmp_path / "bids")
    fit_args = ["fit", str(tmp_path / "bids"), str(tmp_path / "fit"), "--width", "8", "--stream-layers", "2", "--combined-layers", "1",
                "--shared-steps", "2", "--steps", "4", "--fraction", "0.3", "--shared-fraction", "0.3", "--quiet"]  # fmt: skip
    assert CliRunner().invoke(main, fit_args).exit_code == 0
    args = ["classify", str(tmp_path / "fit"), str(tmp_path / "cls"), "--token-widths", "8,8", "--head-width", "8", "--epochs", "2",
            "--sfcn-channels", "4,4,4,4,4", "--streams", "P_time", "--tokens", "standardised", "--quiet",
            "--group-column", "dx", "--negative", "Nondemented,CN", "--positive", "Demented,AD"]  # fmt: skip
    aseg = tmp_path / "aseg.tsv"  # the two Converted subjects have no row: they are not classified
    aseg.write_text("participant_id\thippocampus\n" + "".join(f"sub-{s}\t{4000 - 100 * (i % 2)}\n" for i, s in enumerate(cohort.subject_ids[:8])))
    result = CliRunner().invoke(main, [*args, "--features", str(aseg)])
    assert result.exit_code == 0, result.output
    assert "leaves out 2 subject(s) of other groups (Converted: 2)" in result.output and "| features logistic | aseg |" in result.output
    report = (tmp_path / "cls" / "report.md").read_text()
    assert "Classes: Nondemented (negative, 0) vs Demented (positive, 1)" in report and "SFCN" in result.output
    again = CliRunner().invoke(main, args)
    assert again.exit_code == 2 and "already exists" in again.output
    bad = CliRunner().invoke(main, ["classify", str(tmp_path / "nothing"), str(tmp_path / "c2")])
    assert bad.exit_code == 2 and "not found" in bad.output


def test_change_images_are_last_minus_first_block_averaged_and_bounded():
    rng = np.random.default_rng(0)
    volumes = rng.normal(size=(3, 4, 10, 7)).astype(np.float32)
    mask = np.array([[1, 1, 1, 0], [1, 0, 0, 0], [1, 1, 1, 1]], bool)
    full = change_images(volumes, mask, max_voxels=10**6)
    np.testing.assert_allclose(full[0], (volumes[0, 2] - volumes[0, 0]).ravel(), atol=1e-6)  # its last observed scan
    np.testing.assert_array_equal(full[1], 0.0)  # one scan: no change
    small = change_images(volumes, mask, max_voxels=12)
    assert block_factor((10, 7), 12) == 3 and block_factor((10, 7), 20) == 2 and small.shape == (3, 4 * 3)
    change = volumes[2, 3] - volumes[2, 0]
    assert small[2, 0] == pytest.approx(change[:3, :3].mean(), abs=1e-6)
    assert small[2, -1] == pytest.approx(change[9:, 6:].mean(), abs=1e-6)  # an edge block: the mean of its voxels
    with pytest.raises(ValueError, match="baseline"):
        change_images(volumes, mask[:, ::-1], max_voxels=20)


def test_pca_scores_use_the_training_rows_only_and_separate_a_planted_direction():
    rng = np.random.default_rng(1)
    y = np.arange(40) % 2
    x = rng.normal(size=(40, 50)) + 8.0 * np.outer(y - 0.5, np.eye(50)[3])
    train = np.arange(30)
    scores = pca_scores(x, train, components=5)
    assert scores.shape == (40, 5)
    np.testing.assert_allclose(scores[train].std(0), 1.0, rtol=1e-5)
    assert abs(np.corrcoef(scores[:, 0], y)[0, 1]) > 0.9  # the first component is the planted class direction
    moved = x.copy()
    moved[30:] += 100.0  # the test rows do not change the components
    np.testing.assert_allclose(pca_scores(moved, train, 5)[train], scores[train], atol=1e-6)
    assert pca_scores(x, np.arange(3), components=10).shape == (40, 2)  # at most the training rank


def test_class_weights_balance_an_unbalanced_cohort():
    from longbrain_jax.classifier import class_weights

    y = np.array([0, 0, 0, 1])
    w = class_weights(y, "balanced")
    np.testing.assert_allclose(w, [2 / 3, 2 / 3, 2 / 3, 2.0])
    assert w[y == 0].sum() == pytest.approx(w[y == 1].sum())  # each class weighs the same in the loss
    np.testing.assert_array_equal(class_weights(y, "none"), 1.0)
    with pytest.raises(ValueError, match="select_by"):
        TrainConfig(select_by="accuracy")
