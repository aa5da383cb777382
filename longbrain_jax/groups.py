"""Clinical groups as datasets name them, and the two classes of a binary task.

Datasets spell their groups their own way: the simulator's `healthy` / `dementia`,
OASIS's `Nondemented` / `Demented` / `Converted`, ADNI's `CN` / `MCI` / `AD`. A
`GroupMap` says which names make the negative (reference) class and which the
positive one, matched without regard to case; subjects of any other group are left
out with one warning that counts them, and reports name the classes as the dataset
does (`class_names`).
"""

from __future__ import annotations

import collections
import dataclasses
import warnings
from collections.abc import Sequence

import numpy as np

from longbrain_jax.errors import InputError


def _names(text: str | Sequence[str]) -> tuple[str, ...]:
    items = text.split(",") if isinstance(text, str) else list(text)
    return tuple(s.strip() for s in items if s.strip())


@dataclasses.dataclass(frozen=True)
class GroupMap:
    """Which group names are the negative (0) and the positive (1) class.

    **Arguments:**

    - `negative`: names of the reference class, e.g. ("Nondemented", "CN").
    - `positive`: names of the other class, e.g. ("Demented", "AD").

    Defaults are the simulator's names.
    """

    negative: tuple[str, ...] = ("healthy",)
    positive: tuple[str, ...] = ("dementia",)

    def __post_init__(self):
        object.__setattr__(self, "negative", _names(self.negative))
        object.__setattr__(self, "positive", _names(self.positive))
        if not self.negative or not self.positive:
            raise ValueError("each class needs at least one group name (--negative / --positive)")
        both = {n.lower() for n in self.negative} & {n.lower() for n in self.positive}
        if both:
            raise ValueError(f"group names {sorted(both)} are in both classes")

    def label(self, group: str) -> int:
        """0 (negative), 1 (positive) or -1 (neither) for one subject's group."""
        g = group.strip().lower()
        if g in {n.lower() for n in self.negative}:
            return 0
        if g in {n.lower() for n in self.positive}:
            return 1
        return -1

    def labels(self, groups: Sequence[str]) -> np.ndarray:
        """(N,) int32 class per subject, -1 for subjects of other groups."""
        return np.array([self.label(g) for g in groups], np.int32)

    def keep(self, groups: Sequence[str], where: str = "participants.tsv", task: str = "classification") -> np.ndarray:
        """Indices of the subjects in either class; warns once, counting the others by group.

        Raises `InputError` naming `where` when a class has no subject, listing the groups
        the dataset has, so the user can say which are which.
        """
        y = self.labels(groups)
        counts = collections.Counter(g or "(no group)" for g in groups)
        found = ", ".join(f"{g} ({n})" for g, n in sorted(counts.items()))
        for cls, names in ((0, self.negative), (1, self.positive)):
            if not (y == cls).any():
                raise InputError(
                    where,
                    f"no subject is in the {'negative' if cls == 0 else 'positive'} class {'/'.join(names)}; "
                    f"the groups are: {found}. Say which are the two classes with --negative NAMES --positive NAMES",
                )
        others = collections.Counter(g or "(no group)" for g, label in zip(groups, y, strict=True) if label < 0)
        if others:
            listed = ", ".join(f"{g}: {n}" for g, n in sorted(others.items()))
            warnings.warn(f"{task} leaves out {sum(others.values())} subject(s) of other groups ({listed})", stacklevel=2)
        return np.flatnonzero(y >= 0)

    def class_names(self, groups: Sequence[str]) -> tuple[str, str]:
        """The two classes as the dataset spells them (its names that matched, joined by '/')."""
        seen = [dict.fromkeys(g for g in groups if self.label(g) == cls) for cls in (0, 1)]
        return tuple("/".join(s) if s else "/".join(names) for s, names in zip(seen, (self.negative, self.positive), strict=True))
