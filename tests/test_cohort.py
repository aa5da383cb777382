import jax
import numpy as np
import pytest

from longbrain_jax import Cohort, Subject, stratified_kfold, train_test_split
from tests.helpers import affine_mm, make_subject


def test_padding_mask_and_times():
    subs = [make_subject(0, 3), make_subject(1, 1), make_subject(2, 2)]
    c = Cohort.from_subjects(subs)
    assert c.volumes.shape == (3, 3, 6, 5, 4) and c.volumes.dtype == np.float32
    np.testing.assert_array_equal(c.mask, [[1, 1, 1], [1, 0, 0], [1, 1, 0]])
    np.testing.assert_array_equal(c.single_scan, [False, True, False])
    np.testing.assert_allclose(c.times[0], subs[0].ages - subs[0].ages[0], rtol=1e-6)
    assert np.all(c.times[~c.mask] == 0) and np.all(c.volumes[~c.mask] == 0)
    back = c.subject(2)
    np.testing.assert_array_equal(back.volumes, subs[2].volumes.astype(np.float32))
    np.testing.assert_array_equal(back.labels, subs[2].labels)
    assert back.session_ids == subs[2].session_ids


def test_select_and_longitudinal_warns_about_single_scan_subjects():
    c = Cohort.from_subjects([make_subject(0, 3), make_subject(1, 1), make_subject(2, 2)])
    sub = c.select([2])
    assert sub.subject_ids == ("s2",) and sub.max_scans == 2
    with pytest.warns(UserWarning, match="skipping 1 subject.*sub-s1"):
        longi = c.longitudinal(method="registration")
    assert longi.subject_ids == ("s0", "s2")


def test_subject_validation():
    with pytest.raises(ValueError, match="strictly increasing"):
        Subject("a", ["1", "2"], [60.0, 60.0], np.zeros((2, 3, 3)), affine_mm())
    with pytest.raises(ValueError, match="labels"):
        Subject("a", ["1"], [60.0], np.zeros((1, 3, 3)), affine_mm(), labels=np.zeros((1, 3, 4)))
    with pytest.raises(ValueError, match="spatial shape"):
        Cohort.from_subjects([make_subject(0, 1), make_subject(1, 1, shape=(3, 3, 3))])


def test_2d_cohort():
    c = Cohort.from_subjects([make_subject(i, 2, shape=(8, 7)) for i in range(3)])
    assert c.ndim == 2 and c.spatial_shape == (8, 7)


def test_group_index():
    c = Cohort.from_subjects([make_subject(0, 1, group="dementia"), make_subject(1, 1, group="healthy")])
    y, classes = c.group_index(("healthy", "dementia"))
    assert y.tolist() == [1, 0] and classes == ("healthy", "dementia")
    with pytest.raises(ValueError, match="not among"):
        c.group_index(("healthy",))


def test_train_test_split_by_unit_and_stratified(key):
    n = 30
    strata = ["healthy"] * 20 + ["dementia"] * 10
    train, test = train_test_split(key, n, 1 / 3, strata=strata)
    assert set(train).isdisjoint(test) and sorted([*train, *test]) == list(range(n))
    assert sum(strata[i] == "dementia" for i in test) == 3  # a third of each stratum
    # paired versions of one anatomy (same unit) never cross the split
    units = [i // 2 for i in range(n)]
    train, test = train_test_split(key, n, 1 / 3, units=units)
    assert {units[i] for i in train}.isdisjoint({units[i] for i in test})
    # deterministic given the key, different for another key
    again = train_test_split(key, n, 1 / 3, units=units)
    np.testing.assert_array_equal(again[1], test)
    assert not np.array_equal(train_test_split(jax.random.key(1), n, 1 / 3, units=units)[1], test)


def test_stratified_kfold_each_unit_tested_once(key):
    n, k = 24, 4
    strata = ["a"] * 16 + ["b"] * 8
    units = [i // 2 for i in range(n)]
    folds = stratified_kfold(key, n, k, strata=strata, units=units)
    tested = np.concatenate([te for _, te in folds])
    assert sorted(tested) == list(range(n))
    for train, test in folds:
        assert {units[i] for i in train}.isdisjoint({units[i] for i in test})
        assert len(test) == n // k
    with pytest.raises(ValueError, match="k must be"):
        stratified_kfold(key, 4, 5)
