"""Clinical group names as datasets spell them, mapped to the two classes of a task (issue 18)."""

import warnings

import numpy as np
import pytest

from longbrain_jax.errors import InputError
from longbrain_jax.groups import GroupMap

OASIS = ("Nondemented", "Demented", "Converted", "nondemented", "Demented", "")


def test_names_map_to_classes_without_regard_to_case():
    groups = GroupMap("Nondemented,CN", " Demented , AD ")
    assert groups.negative == ("Nondemented", "CN") and groups.positive == ("Demented", "AD")
    np.testing.assert_array_equal(groups.labels(OASIS), [0, 1, -1, 0, 1, -1])
    assert groups.class_names(OASIS) == ("Nondemented/nondemented", "Demented")
    assert GroupMap().labels(("healthy", "dementia", "Healthy")).tolist() == [0, 1, 0]


def test_other_groups_are_left_out_with_one_warning_that_counts_them():
    with pytest.warns(UserWarning, match=r"leaves out 2 subject\(s\) of other groups \(\(no group\): 1, Converted: 1\)"):
        keep = GroupMap("Nondemented", "Demented").keep(OASIS)
    np.testing.assert_array_equal(keep, [0, 1, 3, 4])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        GroupMap("a", "b").keep(("a", "b", "A"))  # nothing left out: no warning


def test_a_class_nobody_is_in_names_the_groups_the_dataset_has():
    with pytest.raises(InputError, match=r"no subject is in the positive class dementia; the groups are: .*Converted \(1\).*--negative"):
        GroupMap("Nondemented").keep(OASIS)
    with pytest.raises(ValueError, match="in both classes"):
        GroupMap("AD,CN", "ad")
    with pytest.raises(ValueError, match="at least one group name"):
        GroupMap("", "AD")
